"""YAML presets and ``key=value`` overrides.

A preset is a YAML file with a ``model:`` and a ``train:`` section. Presets ship in
``llm_foundry/configs/`` (the repository's ``configs/`` points there). Overrides name
a field as ``model.dim=128`` or, where unambiguous, just ``dim=128``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from ..utils.errors import FoundryError
from .loader import apply_to, build, coerce, field_types, resolve_key
from .schema import ModelConfig, TrainConfig

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"
SECTIONS = {"model": ModelConfig, "train": TrainConfig}


def list_presets() -> list[str]:
    """Names of the built-in presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def read_yaml(path: Path, what: str = "config file") -> dict[str, Any]:
    """A YAML file holding a mapping (empty file = ``{}``); bad files are one-line errors."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise FoundryError(f"{what} is not UTF-8 text: {path}") from None
    except yaml.YAMLError as e:
        raise FoundryError(f"{what} is not valid YAML: {path}: {str(e).splitlines()[0]}") from None
    except (ValueError, RecursionError) as e:  # an integer past Python's 4,300-digit limit; nesting too deep
        raise FoundryError(f"{what} is not valid YAML: {path}: {str(e).split(':')[0].split(';')[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise FoundryError(f"{what} must hold a mapping of sections: {path}")
    return data


def find_preset(name_or_path: str, preset_dir: Path, what: str = "preset") -> Path:
    """The YAML file of a built-in preset name (a file in ``preset_dir``) or of a path."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = preset_dir / f"{name_or_path}.yaml"
        if not path.is_file():
            builtin = sorted(p.stem for p in preset_dir.glob("*.yaml"))
            raise FoundryError(f"unknown {what} '{name_or_path}' (built-in: {', '.join(builtin)})")
    elif not path.is_file():
        raise FoundryError(f"config file not found: {path}")
    return path


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
    raw = read_yaml(find_preset(name_or_path, PRESET_DIR)) if name_or_path else {}
    model_cfg, train_cfg = configs_from_dict(raw)
    return apply_overrides(model_cfg, train_cfg, overrides)


@dataclass
class RunConfig:
    """The two sections of a preset, as one settings tree for the shared loader."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def configs_from_dict(raw: dict[str, Any], strict: bool = True) -> tuple[ModelConfig, TrainConfig]:
    """Configs from plain data ``{"model": {...}, "train": {...}}``.

    Args:
        raw: the data (a preset's YAML, or a run's ``run_config.json``).
        strict: reject top-level keys other than model/train (a run config carries more).
    """
    unknown_sections = set(raw) - set(SECTIONS)
    if strict and unknown_sections:
        raise FoundryError(f"unknown config section(s): {', '.join(sorted(unknown_sections))} (use model: and train:)")
    for section in SECTIONS:
        if not isinstance(raw.get(section) or {}, dict):
            raise FoundryError(f"config section '{section}' must be a mapping")
    cfg = build(RunConfig, {s: raw.get(s) or {} for s in SECTIONS})
    return cfg.model, cfg.train


def coerce_fields(cls: type, section: str, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with each field of dataclass ``cls`` converted to its annotated type.

    Unknown keys pass through unchanged for the caller to check.
    """
    types = field_types(cls)
    return {k: coerce(v, types[k], f"{section}.{k}") if k in types else v for k, v in values.items()}


def apply_overrides(model_cfg: ModelConfig, train_cfg: TrainConfig, overrides: Iterable[str]) -> tuple[ModelConfig, TrainConfig]:
    """Apply ``key=value`` overrides and validate; returns new config objects."""
    cfg = apply_to(RunConfig(model_cfg, train_cfg), overrides)
    return cfg.model.validate(), cfg.train.validate()


def override_sections(overrides: Iterable[str]) -> set[str]:
    """Which sections (``model``, ``train``) a list of ``key=value`` overrides touches (bad keys are skipped)."""
    touched = set()
    for item in overrides:
        try:
            touched.add(resolve_key(RunConfig, item.split("=", 1)[0])[0][0])
        except FoundryError:
            pass
    return touched


def resolved_yaml(data: dict[str, Any]) -> str:
    """Settings as YAML, in field order (what `foundry config show` prints)."""
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)


def config_to_dict(model_cfg: ModelConfig, train_cfg: TrainConfig) -> dict[str, Any]:
    """The resolved config as plain data (saved with every run)."""
    return {"model": dataclasses.asdict(model_cfg), "train": dataclasses.asdict(train_cfg)}
