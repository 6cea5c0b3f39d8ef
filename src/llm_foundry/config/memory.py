"""Settings of the explicit-memory pipeline (``foundry memory backbone|init|train|eval``).

A memory preset (YAML under ``configs/memory/``) has four sections, read by the shared
loader like every other preset (``key=value`` overrides reach in by path: ``router.steps=10``,
``backbone.train.max_steps=50``, ``world.n_train=20``):

* ``world``: the built-in fact world (its seed, sizes, languages, distractors);
* ``backbone``: the small MiniLLM ``foundry memory backbone`` trains for the ``cpu`` preset
  (a ``model:`` and a ``train:`` section, our normal Trainer's);
* ``modules``: the memory modules' shape (read layer, inject layers, k, projection width);
* ``router``, ``fusion``, ``joint``, ``memory``: one :class:`StageSettings` per training stage;
* ``eval``: the evaluation's sizes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .loader import build, override_dict
from .presets import find_preset, read_yaml
from .schema import ModelConfig, TrainConfig, require, require_int, require_real

MEMORY_PRESET_DIR = Path(__file__).resolve().parent.parent / "configs" / "memory"
STAGE_NAMES = ("router", "fusion", "joint", "memory")
MAX_ENTITIES = 10**6
MAX_STORE = 10**8


@dataclass
class WorldSettings:
    """The built-in fact world (``memory/facts.py``).

    Attributes:
        seed: the world's seed (names, values, phrasings).
        n_train: entities per language whose facts train the memory modules.
        n_memory_only: entities per language whose facts only ever reach the store.
        n_modules_only: entities per language whose facts train the memory modules but never
            the backbone (retrieval and reading then learn names the backbone does not know,
            as the memory-only ones are; 200 train entities alone let the gate memorise names).
        langs: ``en``, ``zh`` or both.
        distractors: extra facts about other entities in the training bank (retrieval must pick).
    """

    seed: int = 0
    n_train: int = 200
    n_memory_only: int = 100
    n_modules_only: int = 0
    langs: list[str] = field(default_factory=lambda: ["en", "zh"])
    distractors: int = 2000

    def validate(self) -> "WorldSettings":
        require_int(self.seed, "world.seed", 0, 2**31 - 1)
        require_int(self.n_train, "world.n_train", 1, MAX_ENTITIES)
        require_int(self.n_memory_only, "world.n_memory_only", 1, MAX_ENTITIES)
        require_int(self.n_modules_only, "world.n_modules_only", 0, MAX_ENTITIES)
        require_int(self.distractors, "world.distractors", 0, MAX_STORE)
        if isinstance(self.langs, str):
            self.langs = [x.strip() for x in self.langs.split(",") if x.strip()]
        require(isinstance(self.langs, list) and bool(self.langs) and all(x in ("en", "zh") for x in self.langs),
                f"world.langs must be a non-empty list of en, zh, got {self.langs!r}")
        return self


@dataclass
class BackboneSettings:
    """The small backbone ``foundry memory backbone`` trains (our Trainer, a byte tokenizer).

    Attributes:
        model: its shape (``vocab_size`` comes from the tokenizer).
        train: its optimisation (``max_steps``, ``batch_size``, ``lr`` ...).
        repeats: how many times the train entities' text is repeated in the corpus (shuffled).
    """

    model: ModelConfig = field(default_factory=lambda: ModelConfig(dim=128, n_layers=4, n_heads=4, max_seq_len=256))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_steps=600, batch_size=16, lr=3e-3,
                                                                   warmup_steps=30, eval_interval=0,
                                                                   checkpoint_interval=200, device="cpu"))
    repeats: int = 1

    def validate(self) -> "BackboneSettings":
        self.model.validate()
        self.train.validate()
        require_int(self.repeats, "backbone.repeats", 1, 1000)
        return self


@dataclass
class ModuleSettings:
    """The memory modules' shape (``memory/gate.py``, ``memory/fusion.py``).

    Attributes:
        read_layer: the block whose states the gate reads (None: the middle one).
        inject_layers: blocks the fusion adds memory after (empty: up to three above ``read_layer``).
        k: entries retrieved per question.
        proj_dim: width of the gate's entry and query vectors.
        heads: attention heads of the fusion (None: as the gate's default).
        max_len: tokens read per entry or question.
        hybrid: the BM25 weight in retrieval when answering (`ask`, `chat --memory`, `serve --memory`;
            0: the gate's cosine alone). The lexical index is rebuilt on the question after an edit,
            a cost that grows with the store (dense retrieval has none).
    """

    read_layer: int | None = None
    inject_layers: list[int] = field(default_factory=list)
    k: int = 4
    proj_dim: int = 256
    heads: int | None = None
    max_len: int = 64
    hybrid: float = 0.0

    def validate(self) -> "ModuleSettings":
        require_int(self.read_layer, "modules.read_layer", 0, 1024, optional=True)
        require(isinstance(self.inject_layers, list) and all(isinstance(i, int) and i >= 0 for i in self.inject_layers),
                f"modules.inject_layers must be a list of block indices, got {self.inject_layers!r}")
        require_int(self.k, "modules.k", 1, 256)
        require_int(self.proj_dim, "modules.proj_dim", 1, 65536)
        require_int(self.heads, "modules.heads", 1, 1024, optional=True)
        require_int(self.max_len, "modules.max_len", 1, 4096)
        require_real(self.hybrid, "modules.hybrid", 0, 1)
        return self


@dataclass
class StageSettings:
    """One training stage of the memory modules.

    Attributes:
        steps: optimizer steps (0: skip the stage).
        batch_size: questions per step.
        lr: AdamW peak learning rate (after ``warmup_steps``).
        warmup_steps: linear warmup.
        schedule: ``cosine`` (decay to 0 over the stage; the router's last loss 0.03 against 0.32
            with ``constant`` in the ``cpu`` preset's 1,500 steps) or ``constant``.
        hard_negatives: the router's hard negatives per question.
        missing: share of questions whose gold entry is left out (fusion, joint, memory).
        retrieval_weight: weight of the retrieval loss (joint).
        text_weight: weight of the plain-text loss with memory attached (memory stage).
        kl_weight: weight of the KL keeping memory-free text unchanged (memory stage).
        checkpoint_interval: steps between checkpoints (0: only at the end).
        refresh: steps between encodings of the whole training bank under the gate's current
            weights (its hard negatives and routed entries); in between, the last encoding serves.
    """

    steps: int = 100
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 10
    schedule: str = "cosine"
    hard_negatives: int = 4
    missing: float = 0.15
    retrieval_weight: float = 0.5
    text_weight: float = 0.5
    kl_weight: float = 1.0
    checkpoint_interval: int = 50
    refresh: int = 10

    def validate(self, name: str = "stage") -> "StageSettings":
        require_int(self.steps, f"{name}.steps", 0, 10**9)
        require_int(self.batch_size, f"{name}.batch_size", 1, 65536)
        require_int(self.warmup_steps, f"{name}.warmup_steps", 0, 10**9)
        require_int(self.hard_negatives, f"{name}.hard_negatives", 0, 1024)
        require_int(self.checkpoint_interval, f"{name}.checkpoint_interval", 0, 10**9)
        require_int(self.refresh, f"{name}.refresh", 1, 10**9)
        require_real(self.lr, f"{name}.lr", 0, 10, lo_open=True)
        require(self.schedule in ("cosine", "constant"), f"{name}.schedule must be cosine or constant, got {self.schedule!r}")
        require_real(self.missing, f"{name}.missing", 0, 1, hi_open=True)
        for w in ("retrieval_weight", "text_weight", "kl_weight"):
            require_real(getattr(self, w), f"{name}.{w}", 0, 1000)
        return self


@dataclass
class EvalSettings:
    """``foundry memory eval``'s sizes.

    Attributes:
        store_size: entries in the store while answering (memory-only facts plus distractors;
            the issue's protocol asks for at least 40,000).
        questions: memory-only questions asked per row (0: all).
        edits: facts edited (and then deleted) for the edit rows (at most half the questions: the
            rest measure locality).
        max_tokens: longest generated answer.
        hybrid: the BM25 weight of the hybrid row.
    """

    store_size: int = 40000
    questions: int = 500
    edits: int = 250
    max_tokens: int = 24  # a Chinese value of five characters is 15 bytes
    hybrid: float = 0.3

    def validate(self) -> "EvalSettings":
        require_int(self.store_size, "eval.store_size", 1, MAX_STORE)
        require_int(self.questions, "eval.questions", 0, MAX_STORE)
        require_int(self.edits, "eval.edits", 0, MAX_STORE)
        require_int(self.max_tokens, "eval.max_tokens", 1, 4096)
        require_real(self.hybrid, "eval.hybrid", 0, 1)
        return self


@dataclass
class MemoryConfig:
    """Every section of a memory preset (see the module docstring)."""

    world: WorldSettings = field(default_factory=WorldSettings)
    backbone: BackboneSettings = field(default_factory=BackboneSettings)
    modules: ModuleSettings = field(default_factory=ModuleSettings)
    router: StageSettings = field(default_factory=lambda: StageSettings(steps=200, lr=3e-3, batch_size=32))
    fusion: StageSettings = field(default_factory=StageSettings)
    joint: StageSettings = field(default_factory=StageSettings)
    memory: StageSettings = field(default_factory=StageSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    seed: int = 0
    device: str = "cpu"

    def validate(self) -> "MemoryConfig":
        self.world.validate()
        self.backbone.validate()
        self.modules.validate()
        for name in STAGE_NAMES:
            getattr(self, name).validate(name)
        self.eval.validate()
        require_int(self.seed, "seed", 0, 2**31 - 1)
        require(isinstance(self.device, str) and bool(self.device), "device must be a device name (cpu, cuda ...)")
        return self

    def stage(self, name: str) -> StageSettings:
        """The settings of stage ``name`` (one of :data:`STAGE_NAMES`)."""
        require(name in STAGE_NAMES, f"unknown memory stage {name!r} (stages: {', '.join(STAGE_NAMES)})")
        return getattr(self, name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def list_memory_presets() -> list[str]:
    """Names of the built-in memory presets."""
    return sorted(p.stem for p in MEMORY_PRESET_DIR.glob("*.yaml"))


def memory_config_from_dict(raw: dict[str, Any] | None) -> MemoryConfig:
    """A validated :class:`MemoryConfig` from plain data (a preset's YAML, a saved ``memory_config.json``)."""
    return build(MemoryConfig, raw or {}).validate()


def load_memory_config(preset: str = "cpu", overrides: Iterable[str] = ()) -> MemoryConfig:
    """A memory preset (a built-in name or a YAML file) with ``key=value`` overrides, validated.

    Raises:
        FoundryError: unknown preset, section or key (with a hint); bad value.
    """
    raw = read_yaml(find_preset(preset, MEMORY_PRESET_DIR, "memory preset"), "memory config")
    return memory_config_from_dict(override_dict(MemoryConfig, raw, overrides))
