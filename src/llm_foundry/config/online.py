"""Settings of the online learner (``foundry online``): what the REPL changes and the state folder keeps.

Read and overridden by the shared loader (``config/loader.py``), like every other config:
``foundry online steps=5 temperature=0.5`` sets them from the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from .loader import parse_override
from .sampling import check_sampling
from .schema import ModelConfig, TrainConfig, require


@dataclass
class OnlineSettings:
    """Settings the REPL changes and the state folder keeps.

    Attributes:
        steps: training steps in the pulse after each typed line (``/steps=N``).
        file_steps: steps per line of ``/load_txt``/``/train`` (None = ``steps``);
            fractions spread steps over lines (0.25 = one step every four lines).
        temperature: sampling temperature of ``/gen`` (``/temp=X``; 0 = greedy).
        top_p: nucleus sampling of ``/gen`` (``/topp=X``; 1 = off).
        max_new_tokens: most characters ``/gen`` writes (it stops at the end of the line).
        recent_ratio: share of training windows that start among the newest inputs.
        recent_records: how many of the newest inputs count as recent.
        typed_ratio: of the other (history) windows, the share that starts at a line a
            person typed rather than at any stored input; so a few taught lines keep
            being replayed after a long file is loaded (0 = plain uniform history).
        max_vocab: most characters in the vocabulary (special tokens included); new
            characters past it are UNK. The model's rows double as the vocabulary grows
            and never exceed this (unless a save already has more).
    """

    steps: int = 20
    file_steps: float | None = None
    temperature: float = 0.8
    top_p: float = 0.9
    max_new_tokens: int = 200
    recent_ratio: float = 0.2
    recent_records: int = 16
    typed_ratio: float = 0.5
    max_vocab: int = 8192

    def validate(self) -> "OnlineSettings":
        require(isinstance(self.steps, int) and 1 <= self.steps <= 100_000, "steps must be an integer from 1 to 100000")
        require(self.file_steps is None or 0 < self.file_steps <= 100_000, "file steps must be in (0, 100000]")
        check_sampling(temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_new_tokens)
        require(0 <= self.recent_ratio <= 1, "recent_ratio must be in [0, 1]")
        require(isinstance(self.recent_records, int) and self.recent_records >= 1, "recent_records must be >= 1")
        require(0 <= self.typed_ratio <= 1, "typed_ratio must be in [0, 1]")
        require(isinstance(self.max_vocab, int) and not isinstance(self.max_vocab, bool)
                and 16 <= self.max_vocab <= 1_000_000, "max_vocab must be an integer from 16 to 1000000")
        return self

    @property
    def steps_per_file_line(self) -> float:
        """Steps after each line of a loaded file (``file_steps``, else ``steps``)."""
        return float(self.steps if self.file_steps is None else self.file_steps)

    @classmethod
    def from_dict(cls, values: dict) -> "OnlineSettings":
        """Settings from a dict (a save's, or the command line's); unknown keys are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known}).validate()


@dataclass
class OnlineConfig:
    """Everything ``foundry online`` takes as ``key=value``: its settings (bare or ``online.``), model and training."""

    online: OnlineSettings = field(default_factory=OnlineSettings)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def split_settings(overrides: list[str]) -> tuple[dict, list[str]]:
    """The online settings among ``overrides`` (typed values) and the model/training overrides left.

    Raises:
        FoundryError: an unknown key (with a hint) or a bad value.
    """
    settings, rest = {}, []
    for item in overrides:
        path, value = parse_override(OnlineConfig, item)
        if path[0] == "online":
            settings[path[1]] = value
        else:
            rest.append(item)
    return settings, rest
