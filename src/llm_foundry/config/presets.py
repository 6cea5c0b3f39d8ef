"""YAML presets and ``key=value`` overrides.

A preset is a YAML file with a ``model:`` and a ``train:`` section. Presets ship in
``llm_foundry/configs/`` (the repository's ``configs/`` points there). Overrides name
a field as ``model.dim=128`` or, where unambiguous, just ``dim=128``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterable

import yaml

from ..utils.errors import FoundryError
from .schema import ModelConfig, TrainConfig, field_types

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"
SECTIONS = {"model": ModelConfig, "train": TrainConfig}


def list_presets() -> list[str]:
    """Names of the built-in presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise FoundryError(f"config file is not UTF-8 text: {path}") from None
    except yaml.YAMLError as e:
        raise FoundryError(f"config file is not valid YAML: {path}: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise FoundryError(f"config file must hold a mapping with model:/train: sections: {path}")
    return data


def load_config(name_or_path: str | None = None, overrides: Iterable[str] = ()) -> tuple[ModelConfig, TrainConfig]:
    """Build validated configs from a preset name or YAML file plus overrides.

    Args:
        name_or_path: a preset name (``tiny``) or a path to a YAML file; None = defaults.
        overrides: ``key=value`` strings applied on top.

    Returns:
        ``(ModelConfig, TrainConfig)``, both validated.

    Raises:
        FoundryError: unknown preset, unknown key, bad value.
    """
    raw: dict[str, Any] = {}
    if name_or_path:
        path = Path(name_or_path)
        if not path.suffix and not path.exists():
            path = PRESET_DIR / f"{name_or_path}.yaml"
            if not path.is_file():
                raise FoundryError(f"unknown preset '{name_or_path}' (built-in: {', '.join(list_presets())})")
        elif not path.is_file():
            raise FoundryError(f"config file not found: {path}")
        raw = _read_yaml(path)
    model_cfg, train_cfg = configs_from_dict(raw)
    return apply_overrides(model_cfg, train_cfg, overrides)


def configs_from_dict(raw: dict[str, Any], strict: bool = True) -> tuple[ModelConfig, TrainConfig]:
    """Configs from plain data ``{"model": {...}, "train": {...}}``.

    Args:
        raw: the data (a preset's YAML, or a run's ``run_config.json``).
        strict: reject top-level keys other than model/train (a run config carries more).
    """
    unknown_sections = set(raw) - set(SECTIONS)
    if strict and unknown_sections:
        raise FoundryError(f"unknown config section(s): {', '.join(sorted(unknown_sections))} (use model: and train:)")
    configs = {}
    for section, cls in SECTIONS.items():
        values = raw.get(section) or {}
        if not isinstance(values, dict):
            raise FoundryError(f"config section '{section}' must be a mapping")
        configs[section] = _build(cls, section, values)
    return configs["model"], configs["train"]


def coerce_fields(cls: type, section: str, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with each field of dataclass ``cls`` converted to its annotated scalar type.

    YAML reads ``1e-4`` as a string and a command line gives strings: this makes ``lr=1e-4``
    a float and ``steps=40`` an int, or raises a one-line error. Unknown keys and non-scalar
    fields (lists, mappings) pass through unchanged for the caller to check.
    """
    types = field_types(cls)
    return {k: _coerce(v, str(types[k]), f"{section}.{k}") if k in types else v for k, v in values.items()}


def _build(cls: type, section: str, values: dict[str, Any]):
    obj = cls()
    for key, value in values.items():
        _set_field(obj, section, key, value)
    return obj


def _coerce(value: Any, annotation: str, key: str) -> Any:
    optional = "None" in annotation
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise FoundryError(f"invalid config: {key} cannot be null")
    base = annotation.replace("| None", "").strip()
    try:
        if base == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
                return value.lower() in ("true", "yes", "1", "on")
            raise ValueError
        if base == "int":
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if base == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base == "str":
            return str(value)
    except (TypeError, ValueError):
        raise FoundryError(f"invalid config: {key} expects {base}, got {value!r}") from None
    return value


def _set_field(obj: Any, section: str, key: str, value: Any) -> None:
    types = field_types(type(obj))
    if key not in types:
        raise FoundryError(f"unknown config key '{section}.{key}'")
    setattr(obj, key, _coerce(value, str(types[key]), f"{section}.{key}"))


def apply_overrides(model_cfg: ModelConfig, train_cfg: TrainConfig, overrides: Iterable[str]) -> tuple[ModelConfig, TrainConfig]:
    """Apply ``key=value`` overrides and validate; returns new config objects."""
    objs = {"model": dataclasses.replace(model_cfg), "train": dataclasses.replace(train_cfg)}
    for item in overrides:
        if "=" not in item:
            raise FoundryError(f"override '{item}' must look like key=value (e.g. model.dim=128 or lr=3e-4)")
        key, value = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if "." in key:
            section, name = key.split(".", 1)
            if section not in objs:
                raise FoundryError(f"unknown config key '{key}' (sections are model. and train.)")
        else:
            owners = [s for s, o in objs.items() if name_in(o, key)]
            if not owners:
                raise FoundryError(f"unknown config key '{key}'")
            if len(owners) > 1:
                raise FoundryError(f"config key '{key}' is ambiguous; write model.{key} or train.{key}")
            section, name = owners[0], key
        _set_field(objs[section], section, name, value.strip())
    return objs["model"].validate(), objs["train"].validate()


def name_in(obj: Any, key: str) -> bool:
    return key in field_types(type(obj))


def override_sections(overrides: Iterable[str]) -> set[str]:
    """Which sections (``model``, ``train``) a list of ``key=value`` overrides touches."""
    sections = set()
    for item in overrides:
        key = item.split("=", 1)[0].strip().replace("-", "_")
        if "." in key:
            sections.add(key.split(".", 1)[0])
        else:
            sections.update(s for s, cls in SECTIONS.items() if key in field_types(cls))
    return sections


def config_to_dict(model_cfg: ModelConfig, train_cfg: TrainConfig) -> dict[str, Any]:
    """The resolved config as plain data (saved with every run)."""
    return {"model": dataclasses.asdict(model_cfg), "train": dataclasses.asdict(train_cfg)}
