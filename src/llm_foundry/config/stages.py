"""Settings of the chat stages: mid-training and SFT (:class:`StageConfig`) and RL (:class:`RLConfig`).

Both are read and overridden by the shared loader (``config/loader.py``): a speedrun
preset's ``midtrain:``/``sft:``/``rl:`` section, a saved ``stage_config.json`` or
``rl_config.json``, and ``key=value`` overrides all go through the same code as
``ModelConfig``/``TrainConfig``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..utils.errors import FoundryError
from .loader import build
from .sampling import GREEDY_TEMPERATURE, check_sampling
from .schema import MAX_SEQ_LEN, TrainConfig, require_int, require_real

STAGES = ("midtrain", "sft")

# Per-stage defaults of the data side; the optimisation side is a TrainConfig.
DEFAULT_MIXTURES = {
    "midtrain": {"arithmetic": 4.0, "count_letters": 3.0, "spelling": 2.0, "identity": 0.5, "facts": 1.0, "text": 1.0},
    "sft": {"arithmetic": 3.0, "count_letters": 3.0, "spelling": 1.0, "identity": 0.5, "facts": 1.0},
}
DEFAULT_LOSS_ON = {"midtrain": "all", "sft": "assistant"}  # nanochat's choices; the presets set their own
MAX_EXAMPLES = 10**7  # generated examples per task (and held out): past this, generation alone takes hours


def parse_mixture(spec: str | Mapping[str, float] | None) -> dict[str, float]:
    """``"arithmetic=4,count_letters=3,text=1"`` (or a mapping) -> ``{name: weight}``.

    Raises:
        FoundryError: malformed entry, negative weight, or all weights zero.
    """
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        items = list(spec.items())
    else:
        items = []
        for part in str(spec).split(","):
            part = part.strip()
            if not part:
                continue
            name, sep, weight = part.rpartition("=")
            if not sep:
                name, weight = part, "1"
            items.append((name.strip(), weight.strip()))
    out: dict[str, float] = {}
    for name, weight in items:
        try:
            w = float(weight)
        except (TypeError, ValueError):
            raise FoundryError(f"mixture weight of '{name}' must be a number, got {weight!r}") from None
        if not name or w < 0 or not math.isfinite(w):
            raise FoundryError(f"bad mixture entry '{name}={weight}' (write NAME=WEIGHT with WEIGHT >= 0)")
        out[str(name)] = w
    if out and not any(w > 0 for w in out.values()):
        raise FoundryError("every mixture weight is 0; give at least one source a positive weight")
    return {k: v for k, v in out.items() if v > 0}


@dataclass
class StageConfig:
    """What a mid-training or SFT stage trains on, and how.

    Attributes:
        stage: ``midtrain`` or ``sft``.
        mixture: source -> weight (built-in task, ``text``, or a ``.jsonl`` file).
        loss_on: ``all`` tokens or only the ``assistant``'s (masked loss).
        examples_per_task: pool size of each synthetic task.
        lang: ``en``, ``zh`` or ``mixed`` for the synthetic tasks.
        text_data: a prepared data folder for the ``text`` source.
        text_len: tokens per pretraining-text window.
        val_examples: held-out examples per task for the validation loss.
        train: optimisation settings (``seq_len`` None = the model's context).
    """

    stage: str = "sft"
    mixture: dict[str, float] = field(default_factory=dict)
    loss_on: str = ""
    examples_per_task: int = 4000
    lang: str = "mixed"
    text_data: str | None = None
    text_len: int = 128
    val_examples: int = 200
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> "StageConfig":
        if self.stage not in STAGES:
            raise FoundryError(f"stage must be one of {', '.join(STAGES)}, not '{self.stage}'")
        self.mixture = parse_mixture(self.mixture or DEFAULT_MIXTURES[self.stage])
        self.loss_on = self.loss_on or DEFAULT_LOSS_ON[self.stage]
        for name, lo, hi in (("examples_per_task", 1, MAX_EXAMPLES), ("val_examples", 0, MAX_EXAMPLES),
                             ("text_len", 8, MAX_SEQ_LEN)):
            require_int(getattr(self, name), f"{self.stage}.{name}", lo, hi)
        if self.loss_on not in ("all", "assistant"):
            raise FoundryError(f"{self.stage}.loss_on must be all or assistant, not {self.loss_on!r}")
        if self.lang not in ("mixed", "en", "zh"):
            raise FoundryError(f"{self.stage}.lang must be mixed, en or zh, not {self.lang!r}")
        self.train = dataclasses.replace(self.train).validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def stage_config_from_dict(stage: str, raw: Mapping[str, Any] | None) -> StageConfig:
    """A validated :class:`StageConfig` from plain data (a speedrun preset's section, or a saved stage config).

    The ``train:`` sub-mapping holds TrainConfig fields; everything else is a StageConfig field.

    Raises:
        FoundryError: unknown keys or bad values.
    """
    raw = {k: v for k, v in (raw or {}).items() if k != "stage"}  # the caller names the stage
    cfg = build(StageConfig, raw, stage)
    cfg.stage = stage
    return cfg.validate()


@dataclass
class RLConfig:
    """Settings of the RL stage.

    Attributes:
        tasks: the built-in tasks to train on (their checkers give the reward; an unknown
            name is reported when the stage builds its prompts).
        steps: optimizer steps.
        prompts_per_step: prompts per step.
        group_size: completions sampled per prompt (the group of GRPO).
        max_tokens: longest completion.
        temperature: sampling temperature of the completions.
        top_k: sample among the k likeliest tokens (None = all).
        lr: AdamW learning rate (peak; warmup then linear decay, as nanochat does).
        warmup_steps: linear warmup of the rate.
        weight_decay: AdamW weight decay.
        grad_clip: clip the global grad norm (0 = off).
        std_normalize: divide advantages by the group's std (GRPO); nanochat only centres them.
        kl_coef: weight of the KL penalty to the starting model (0 = off, no reference kept).
        examples: training prompts per task in the pool.
        split: where the training prompts come from: ``stretch`` (the default: the SFT
            templates with longer numbers and words, which a fine-tuned model gets right only
            some of the time, so groups disagree and RL has something to learn) or ``train``
            (the SFT distribution itself, often solved already: every advantage is zero).
        eval_examples: held-out prompts per task for the reward before and after.
        eval_samples: completions per held-out prompt.
        lang: ``en``, ``zh`` or ``mixed``.
        seed: seeds the prompt draws and the sampling.
        device: auto, cpu, cuda, mps.
        precision: auto, bf16 or fp32.
        checkpoint_interval: steps between checkpoints (0 = only at the end).
        reward: ``MODULE:FUNCTION`` or ``path/to/file.py:FUNCTION``, a reward of your own in place of
            the task checkers: ``f(prompt, completion) -> float`` or the checkers' ``f(task,
            completion, answer) -> float`` (``training/rl.py``); None = the checkers.
    """

    tasks: list[str] = field(default_factory=lambda: ["arithmetic"])
    steps: int = 40
    prompts_per_step: int = 4
    group_size: int = 8
    max_tokens: int = 64
    temperature: float = 1.0
    top_k: int | None = None
    lr: float = 3e-5
    warmup_steps: int = 2
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    std_normalize: bool = False
    kl_coef: float = 0.0
    examples: int = 2000
    split: str = "stretch"
    eval_examples: int = 64
    eval_samples: int = 4
    lang: str = "mixed"
    seed: int = 1337
    device: str = "auto"
    precision: str = "auto"
    checkpoint_interval: int = 10
    reward: str | None = None

    def validate(self) -> "RLConfig":
        if isinstance(self.tasks, str):
            self.tasks = [t.strip() for t in self.tasks.split(",") if t.strip()]
        if not isinstance(self.tasks, list) or not self.tasks or not all(isinstance(t, str) for t in self.tasks):
            raise FoundryError(f"rl.tasks must name at least one built-in task, got {self.tasks!r}")
        for name in ("steps", "prompts_per_step", "group_size", "max_tokens", "examples", "eval_samples"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise FoundryError(f"rl.{name} must be a positive integer")
        if self.split not in ("train", "stretch"):
            raise FoundryError(f"rl.split must be train or stretch, got '{self.split}'")
        if self.group_size < 2:
            raise FoundryError("rl.group_size must be at least 2 (advantages compare the samples of a group)")
        if self.eval_examples < 0 or self.checkpoint_interval < 0 or self.warmup_steps < 0:
            raise FoundryError("rl.eval_examples, rl.warmup_steps and rl.checkpoint_interval must be >= 0")
        check_sampling(temperature=self.temperature, top_k=self.top_k, max_new_tokens=self.max_tokens,
                       names={"temperature": "rl.temperature", "top_k": "rl.top_k", "max_new_tokens": "rl.max_tokens"})
        if self.temperature < GREEDY_TEMPERATURE:  # a group of greedy samples is one sample: no advantage
            raise FoundryError("rl.temperature must be > 0 (RL compares sampled completions)")
        require_real(self.lr, "rl.lr", 0, 10, lo_open=True)
        require_real(self.kl_coef, "rl.kl_coef", 0, 1000)
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise FoundryError(f"rl.precision must be auto, bf16, fp16 or fp32, not '{self.precision}'")
        if self.reward is not None and (not isinstance(self.reward, str) or ":" not in self.reward.strip(":")):
            raise FoundryError(f"rl.reward must be MODULE:FUNCTION or path/to/file.py:FUNCTION, got {self.reward!r}")
        return self

    def train_config(self) -> TrainConfig:
        """The TrainConfig the Trainer machinery sees (AdamW, linear decay to 0)."""
        return TrainConfig(seed=self.seed, device=self.device, precision=self.precision, max_steps=self.steps,
                           lr=self.lr, weight_decay=self.weight_decay, grad_clip=self.grad_clip, schedule="wsd",
                           decay_fraction=1.0, min_lr_ratio=0.0, warmup_steps=self.warmup_steps,
                           checkpoint_interval=self.checkpoint_interval, eval_interval=0, batch_size=1).validate()


def rl_config_from_dict(raw: Mapping[str, Any] | None) -> RLConfig:
    """A validated :class:`RLConfig` from plain data (a speedrun preset's ``rl:`` section, a saved rl config)."""
    return build(RLConfig, raw, "rl").validate()


def _dpo_train() -> TrainConfig:
    # A short, gentle run: DPO moves a chat model a little, from its own SFT weights.
    return TrainConfig(max_steps=200, batch_size=8, lr=1e-4, weight_decay=0.0, warmup_steps=10, eval_interval=50,
                       eval_batches=4, log_interval=10, checkpoint_interval=50)


@dataclass
class DPOConfig:
    """Settings of direct preference optimisation (``foundry dpo``).

    Attributes:
        beta: the strength of the pull toward the reference (the start model); the implicit
            reward of a reply is ``beta * (log p_policy - log p_reference)``.
        data: a ``.jsonl`` file of ``{"prompt", "chosen", "rejected"}`` pairs; None = the
            built-in pairs (correct vs incorrect answers of the synthetic tasks).
        tasks: the built-in tasks whose pairs are used without ``data``.
        examples_per_task: built-in pairs per task.
        val_pairs: held-out pairs for the preference accuracy and reward margin (from
            ``data``: taken out of it; built-in: held-out templates and numbers).
        lang: ``en``, ``zh`` or ``mixed`` for the built-in pairs.
        train: optimisation settings (``batch_size`` counts pairs).
    """

    beta: float = 0.1
    data: str | None = None
    tasks: str = "arithmetic,count_letters,spelling"
    examples_per_task: int = 400
    val_pairs: int = 64
    lang: str = "en"
    train: TrainConfig = field(default_factory=_dpo_train)

    def task_list(self) -> list[str]:
        return [t.strip() for t in self.tasks.split(",") if t.strip()]

    def validate(self) -> "DPOConfig":
        require_real(self.beta, "dpo.beta", 0, 1000, lo_open=True)
        require_int(self.examples_per_task, "dpo.examples_per_task", 1, MAX_EXAMPLES)
        require_int(self.val_pairs, "dpo.val_pairs", 0, MAX_EXAMPLES)
        if not isinstance(self.tasks, str) or not self.task_list():
            raise FoundryError(f"dpo.tasks must name at least one built-in task, got {self.tasks!r}")
        if self.lang not in ("mixed", "en", "zh"):
            raise FoundryError(f"dpo.lang must be mixed, en or zh, not {self.lang!r}")
        self.train = dataclasses.replace(self.train).validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def dpo_config_from_dict(raw: Mapping[str, Any] | None) -> DPOConfig:
    """A validated :class:`DPOConfig` from plain data (defaults, a saved ``dpo_config.json``)."""
    return build(DPOConfig, raw, "dpo").validate()
