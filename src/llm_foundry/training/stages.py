"""Mid-training and SFT: continue a model folder on a conversation mixture into a new one.

Both stages are the same loop with different data (nanochat's ``mid_train.py`` and
``chat_sft.py``):

* **midtrain** teaches the base model the chat layout, the special tokens and tool
  calls, from a large mixture of synthetic conversations plus some pretraining text,
  with the loss on every token (``loss_on="all"``);
* **sft** polishes the chat model on conversations with the loss on the assistant's
  tokens only (``loss_on="assistant"``: the masked loss), usually at a lower rate.

The loop is the :class:`~llm_foundry.training.trainer.Trainer`'s, reused piece by
piece: the same optimizers, schedule, checkpoint files (``training_state.pt`` beside
the weights), metrics log, Ctrl-C handling and exact resume. Only the batches
differ: they come from a :class:`~llm_foundry.data.chat_batches.ChatMixture`, whose
batch ``k`` depends on ``(seed, k)`` alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .. import __version__
from ..config import TrainConfig, coerce_fields, configs_from_dict
from ..tokenizers import load_tokenizer
from ..utils.errors import FoundryError
from ..utils.io import atomic_write_json, read_json
from ..utils.progress import console
from ..data.chat_batches import ChatMixture, parse_mixture
from ..models.model_dir import TOKENIZER_FILE, load_model_config
from .trainer import Trainer, check_run_folder

STAGE_CONFIG_FILE = "stage_config.json"
STAGES = ("midtrain", "sft")

# Per-stage defaults of the data side; the optimisation side is a TrainConfig.
DEFAULT_MIXTURES = {
    "midtrain": {"arithmetic": 4.0, "count_letters": 3.0, "spelling": 2.0, "identity": 0.5, "facts": 1.0, "text": 1.0},
    "sft": {"arithmetic": 3.0, "count_letters": 3.0, "spelling": 1.0, "identity": 0.5, "facts": 1.0},
}
DEFAULT_LOSS_ON = {"midtrain": "all", "sft": "assistant"}  # nanochat's choices; the presets set their own


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
        for name in ("examples_per_task", "val_examples", "text_len"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise FoundryError(f"{self.stage}.{name} must be an integer, got {getattr(self, name)!r}")
        if self.loss_on not in ("all", "assistant"):
            raise FoundryError(f"{self.stage}.loss_on must be all or assistant, not {self.loss_on!r}")
        if self.lang not in ("mixed", "en", "zh"):
            raise FoundryError(f"{self.stage}.lang must be mixed, en or zh, not {self.lang!r}")
        if self.examples_per_task < 1 or self.val_examples < 0 or self.text_len < 8:
            raise FoundryError("examples_per_task must be >= 1, val_examples >= 0 and text_len >= 8")
        self.train = dataclasses.replace(self.train).validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def stage_config_from_dict(stage: str, raw: Mapping[str, Any] | None) -> StageConfig:
    """A :class:`StageConfig` from plain data (a speedrun preset's section, or a saved stage config).

    The ``train:`` sub-mapping holds TrainConfig fields; everything else is a StageConfig field.

    Raises:
        FoundryError: unknown keys or bad values.
    """
    raw = dict(raw or {})
    _, train = configs_from_dict({"train": raw.pop("train", None) or {}})
    known = {f.name for f in dataclasses.fields(StageConfig)} - {"train", "stage"}
    unknown = sorted(set(raw) - known - {"stage"})
    if unknown:
        raise FoundryError(f"unknown key(s) in the {stage} settings: {', '.join(unknown)} (known: {', '.join(sorted(known))}, train)")
    raw.pop("stage", None)
    return StageConfig(stage=stage, train=train, **coerce_fields(StageConfig, stage, raw)).validate()


class StageTrainer(Trainer):
    """Train a model folder on a conversation mixture into a new model folder.

    Subclasses :class:`Trainer` for its state handling (``_build``, ``save_checkpoint``,
    ``_load_state``, the metrics log) and replaces only where batches come from.

    Args:
        init_from: the model folder to start from (the previous stage).
        out_dir: the stage's output model folder.
        cfg: the stage settings.
        resume: continue the stage saved in ``out_dir``.
        quiet: no progress bar or log lines.
        on_step: called with ``(step, progress in [0, 1])`` after every optimizer step.
    """

    def __init__(self, init_from: str | Path, out_dir: str | Path, cfg: StageConfig, resume: bool = False,
                 quiet: bool = False, on_step: Callable[[int, float], None] | None = None):
        # Trainer.__init__ reads a token data folder, a stage reads conversations: only the setup
        # they share (`_configure`, `check_run_folder` in stage_source) is reused.
        self.stage_cfg = cfg.validate()
        self.out, self.resume, self.quiet, self.on_step = Path(out_dir), resume, quiet, on_step
        self.init_from = Path(init_from)
        self.data_dir = Path(cfg.text_data) if cfg.text_data else None
        model_cfg, self.tokenizer = stage_source(self.init_from, self.out, resume)
        self._configure(model_cfg, cfg.train)

    def _write_run_config(self) -> None:
        atomic_write_json(self.out / STAGE_CONFIG_FILE, {
            **self.stage_cfg.to_dict(),
            "init_from": str(self.init_from.resolve()),
            "seq_len": self.seq_len,
            "mixture_share": self.train_mix.describe(),
            "llm_foundry_version": __version__,
        })

    def evaluate(self) -> dict[str, float] | None:
        """Mean masked loss on held-out conversations (held-out templates and number ranges)."""
        return {"loss": self._val_loss()} if self.val_batches else None

    def run(self) -> dict:
        """Train until ``max_steps`` or the time budget; returns a summary dict.

        Raises:
            TrainingInterrupted: after Ctrl-C/SIGTERM, with the checkpoint saved.
        """
        sc, cfg = self.stage_cfg, self.cfg
        self.train_mix = ChatMixture(self.tokenizer, sc.mixture, seq_len=self.seq_len, examples_per_task=sc.examples_per_task,
                                     split="train", seed=cfg.seed, lang=sc.lang, loss_on=sc.loss_on,
                                     text_data=sc.text_data, text_len=sc.text_len)
        self.val_batches = []
        val_mix = {k: v for k, v in sc.mixture.items() if k != "text" and not k.endswith(".jsonl")}
        if sc.val_examples and val_mix:
            held = ChatMixture(self.tokenizer, val_mix, seq_len=self.seq_len, examples_per_task=sc.val_examples,
                               split="heldout", seed=cfg.seed + 1, lang=sc.lang, loss_on="assistant")
            self.val_batches = held.fixed_batches(cfg.eval_batches, cfg.batch_size, self.device)
        self.out.mkdir(parents=True, exist_ok=True)
        self._build()
        self._write_run_config()
        if not self.quiet:
            console.print(f"[bold]{sc.stage}[/] from {self.init_from}: {self.model.num_parameters() / 1e6:.2f}M parameters, "
                          f"loss on {sc.loss_on} tokens, batch {cfg.batch_size}x{self.seq_len}x{cfg.grad_accum}, "
                          f"from step {self.step}; mixture " + ", ".join(f"{k} {v['weight']:.2f}" for k, v in self.train_mix.describe().items()))
        last_val = self._train_loop(lambda i: self.train_mix.batch(i, cfg.batch_size, self.device), sc.stage, self.on_step)
        self.save_checkpoint()
        summary = {"stage": sc.stage, "step": self.step, "tokens_seen": self.tokens_seen, "train_time": round(self.train_time, 2)}
        if last_val:
            summary["val_loss"] = round(last_val["loss"], 5)
        return summary

    def _describe_val(self, metrics: dict[str, float]) -> str:
        return f"held-out chat loss {metrics['loss']:.4f}"


def stage_source(init_from: Path, out: Path, resume: bool):
    """``(model config, tokenizer)`` a stage starts from: its saved run in ``out`` when
    resuming, else the previous stage's folder ``init_from``.

    Raises:
        FoundryError: nothing to resume, a run already in ``out``, or ``out`` is ``init_from``.
    """
    check_run_folder(out, resume)
    if out.resolve() == init_from.resolve():
        raise FoundryError("--out must differ from the input model folder (each stage writes its own)")
    source = out if resume else init_from
    return load_model_config(source), load_tokenizer(source / TOKENIZER_FILE)


def run_stage(init_from: str | Path, out_dir: str | Path, cfg: StageConfig, resume: bool = False, quiet: bool = False,
              on_step: Callable[[int, float], None] | None = None) -> dict:
    """Run (or resume) a mid-training or SFT stage; returns its summary."""
    return StageTrainer(init_from, out_dir, cfg, resume=resume, quiet=quiet, on_step=on_step).run()


def load_stage_config(model_dir: str | Path) -> dict | None:
    """The saved ``stage_config.json`` of a stage's model folder, or None."""
    path = Path(model_dir) / STAGE_CONFIG_FILE
    return read_json(path, "stage config") if path.is_file() else None
