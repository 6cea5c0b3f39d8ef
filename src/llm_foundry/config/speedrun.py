"""Settings of the speedrun: one dataclass per section of a speedrun preset.

A speedrun preset (YAML under ``configs/speedrun/``) has the sections ``tokenizer``,
``model``, ``pretrain`` (a TrainConfig), ``midtrain`` and ``sft`` (StageConfigs),
``rl`` (an RLConfig) and ``eval``. Overrides reach into it by path with the shared
loader's rules (``pretrain.time_budget=60``, ``midtrain.train.max_steps=200``,
``rl.steps=10``; a bare key where only one section has it, e.g. ``dim=128``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..utils.errors import FoundryError
from .loader import build, override_dict
from .presets import find_preset, read_yaml
from .schema import MAX_VOCAB, ModelConfig, TrainConfig, require_int
from .stages import MAX_EXAMPLES, RLConfig, StageConfig

SPEEDRUN_DIR = Path(__file__).resolve().parent.parent / "configs" / "speedrun"
SECTIONS = ("tokenizer", "model", "pretrain", "midtrain", "sft", "rl", "eval")


@dataclass
class TokenizerSettings:
    """The speedrun's tokenizer.

    Attributes:
        kind: ``byte`` or ``bpe`` (chat needs the reserved chat tokens, which char lacks).
        vocab_size: BPE vocabulary size.
        chat_examples: synthetic chat examples per task mixed into the BPE training text.
    """

    kind: str = "byte"
    vocab_size: int = 4096
    chat_examples: int = 500

    def validate(self) -> "TokenizerSettings":
        if self.kind not in ("byte", "bpe"):
            raise FoundryError("tokenizer.kind must be byte or bpe (chat needs the reserved chat tokens)")
        require_int(self.vocab_size, "tokenizer.vocab_size", 1, MAX_VOCAB)
        require_int(self.chat_examples, "tokenizer.chat_examples", 0, MAX_EXAMPLES)
        return self


@dataclass
class EvalSettings:
    """The speedrun's evaluation of every stage's model.

    Attributes:
        tasks: built-in tasks asked of every model, with the tool.
        no_tool_tasks: tasks asked of the RL model again without the tool.
        examples: held-out questions per task.
        max_tokens: longest answer.
        batch_size: questions decoded together.
        samples: example answers kept per task for the report.
        lang: ``en``, ``zh`` or ``mixed``.
    """

    tasks: list[str] = field(default_factory=lambda: ["arithmetic", "count_letters", "spelling", "identity", "facts"])
    no_tool_tasks: list[str] = field(default_factory=lambda: ["arithmetic", "count_letters"])
    examples: int = 100
    max_tokens: int = 64
    batch_size: int = 50
    samples: int = 2
    lang: str = "mixed"

    def validate(self) -> "EvalSettings":
        for name in ("tasks", "no_tool_tasks"):
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, [t.strip() for t in value.split(",") if t.strip()])
            elif not isinstance(value, list):
                raise FoundryError(f"eval.{name} must be a list of task names")
        for name in ("examples", "max_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise FoundryError(f"eval.{name} must be a positive integer")
        if self.samples < 0 or self.lang not in ("mixed", "en", "zh"):
            raise FoundryError("eval.samples must be >= 0 and eval.lang mixed, en or zh")
        return self


@dataclass
class SpeedrunConfig:
    """Every section of a speedrun preset, resolved."""

    tokenizer: TokenizerSettings = field(default_factory=TokenizerSettings)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: TrainConfig = field(default_factory=TrainConfig)
    midtrain: StageConfig = field(default_factory=lambda: StageConfig(stage="midtrain"))
    sft: StageConfig = field(default_factory=lambda: StageConfig(stage="sft"))
    rl: RLConfig = field(default_factory=RLConfig)
    eval: EvalSettings = field(default_factory=EvalSettings)

    def validate(self) -> "SpeedrunConfig":
        self.midtrain.stage, self.sft.stage = "midtrain", "sft"  # the section names the stage
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def list_speedrun_presets() -> list[str]:
    """Names of the built-in speedrun presets."""
    return sorted(p.stem for p in SPEEDRUN_DIR.glob("*.yaml"))


def load_speedrun_config(preset: str = "cpu", overrides: Iterable[str] = ()) -> dict[str, Any]:
    """A speedrun preset (name or YAML file) with ``key=value`` overrides, checked, as plain data.

    The data is what the preset file says plus the overrides (a run folder keeps it to tell
    a re-run of the same command from another one); :func:`check_speedrun_config` resolves it.

    Raises:
        FoundryError: unknown preset, section or key (with a hint); bad value.
    """
    raw = read_yaml(find_preset(preset, SPEEDRUN_DIR, "speedrun preset"), "speedrun config")
    raw = override_dict(SpeedrunConfig, raw, overrides)
    check_speedrun_config(raw)
    return raw


def check_speedrun_config(raw: dict[str, Any]) -> SpeedrunConfig:
    """Every section validated (a FoundryError names the first bad key) and resolved."""
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise FoundryError(f"unknown speedrun section(s): {', '.join(unknown)} (sections: {', '.join(SECTIONS)})")
    return build(SpeedrunConfig, {k: v or {} for k, v in raw.items()}).validate()
