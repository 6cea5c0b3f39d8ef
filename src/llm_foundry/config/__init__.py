"""Configs are data: two dataclasses, YAML presets, and ``key=value`` overrides."""

from .schema import ModelConfig, TrainConfig
from .presets import list_presets, load_config, apply_overrides, coerce_fields, config_to_dict, configs_from_dict, override_sections

__all__ = ["ModelConfig", "TrainConfig", "list_presets", "load_config", "apply_overrides", "coerce_fields", "config_to_dict", "configs_from_dict", "override_sections"]
