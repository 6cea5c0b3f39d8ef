"""Configs are data: dataclasses for every part, YAML presets, and ``key=value`` overrides.

One loader (``loader.py``) reads and overrides them all: ModelConfig/TrainConfig
(``schema.py``, ``presets.py``), the chat stages and RL (``stages.py``), the speedrun
(``speedrun.py``), the online learner (``online.py``) and evolve (``evolve.py``).
"""

from .schema import ModelConfig, TrainConfig
from .presets import list_presets, load_config, apply_overrides, coerce_fields, config_to_dict, configs_from_dict, override_sections

__all__ = ["ModelConfig", "TrainConfig", "list_presets", "load_config", "apply_overrides", "coerce_fields", "config_to_dict", "configs_from_dict", "override_sections"]
