"""Mid-training and SFT: continue a model folder on a conversation mixture into a new one.

Both stages are pretraining's :class:`~llm_foundry.training.trainer.Trainer` fed by another
batch source (nanochat's ``mid_train.py`` and ``chat_sft.py``):

* **midtrain** teaches the base model the chat layout, the special tokens and tool
  calls, from a large mixture of synthetic conversations plus some pretraining text,
  with the loss on every token (``loss_on="all"``);
* **sft** polishes the chat model on conversations with the loss on the assistant's
  tokens only (``loss_on="assistant"``: the masked loss), usually at a lower rate.

So a stage has the same optimizers, schedule, checkpoint files (``training_state.pt``
beside the weights), metrics log, Ctrl-C handling and exact resume as pretraining. Only
the :class:`ChatSource` is its own: batches from a
:class:`~llm_foundry.data.chat_batches.ChatMixture`, whose batch ``k`` depends on
``(seed, k)`` alone, held-out conversations for validation, and ``stage_config.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from .. import __version__
from ..config import TrainConfig
from ..config.stages import StageConfig
from ..tokenizers import Tokenizer
from ..utils.errors import FoundryError
from ..utils.io import read_json
from ..data.chat_batches import ChatMixture
from ..models.model_dir import load_model_config, load_model_tokenizer
from .trainer import Batch, Trainer, check_run_folder

STAGE_CONFIG_FILE = "stage_config.json"


class ChatSource:
    """A stage's batches for the :class:`~llm_foundry.training.trainer.Trainer`: packed, masked
    rows of its conversation mixture, and held-out conversations for validation.

    Args:
        cfg: the (validated) stage settings.
        init_from: the model folder the stage started from (recorded in ``stage_config.json``).
    """

    def __init__(self, cfg: StageConfig, init_from: Path):
        self.stage_cfg, self.init_from = cfg, init_from
        self.label = cfg.stage
        self.val_batches: list[Batch] = []

    def tokenizer_for(self, model_dir: Path | None, resume: bool) -> Tokenizer:
        # The conversations are rendered with the model's own tokenizer: nothing to compare.
        if model_dir is None:
            raise FoundryError(f"a {self.label} stage starts from a model folder")
        return load_model_tokenizer(model_dir)

    def open(self, tokenizer: Tokenizer, seq_len: int, cfg: TrainConfig, device: torch.device) -> None:
        sc = self.stage_cfg
        self.seq_len, self.batch_size, self.device = seq_len, cfg.batch_size, device
        self.mix = ChatMixture(tokenizer, sc.mixture, seq_len=seq_len, examples_per_task=sc.examples_per_task,
                               split="train", seed=cfg.seed, lang=sc.lang, loss_on=sc.loss_on,
                               text_data=sc.text_data, text_len=sc.text_len)
        # Validation: the mean masked loss on held-out templates and number ranges of the built-in tasks.
        val_mix = {k: v for k, v in sc.mixture.items() if k != "text" and not k.endswith(".jsonl")}
        if sc.val_examples and val_mix:
            held = ChatMixture(tokenizer, val_mix, seq_len=seq_len, examples_per_task=sc.val_examples,
                               split="heldout", seed=cfg.seed + 1, lang=sc.lang, loss_on="assistant")
            self.val_batches = held.fixed_batches(cfg.eval_batches, cfg.batch_size, device)

    def batch(self, index: int) -> Batch:
        return self.mix.batch(index, self.batch_size, self.device)

    def val_metrics(self, loss: float) -> dict[str, float]:
        return {"loss": loss}

    def describe_val(self, metrics: dict[str, float]) -> str:
        return f"held-out chat loss {metrics['loss']:.4f}"

    def run_config(self, run: Trainer) -> tuple[str, dict]:
        return STAGE_CONFIG_FILE, {
            **self.stage_cfg.to_dict(),
            "init_from": str(self.init_from.resolve()),
            "seq_len": self.seq_len,
            "mixture_share": self.mix.describe(),
            "llm_foundry_version": __version__,
        }

    def headline(self, run: Trainer) -> str:
        sc, cfg = self.stage_cfg, run.cfg
        return (f"[bold]{sc.stage}[/] from {self.init_from}: {run.model.num_parameters() / 1e6:.2f}M parameters, "
                f"loss on {sc.loss_on} tokens, batch {cfg.batch_size}x{self.seq_len}x{cfg.grad_accum}, "
                f"from step {run.step}; mixture " + ", ".join(f"{k} {v['weight']:.2f}" for k, v in self.mix.describe().items()))

    def summary(self, run: Trainer, last_val: dict[str, float] | None) -> dict:
        summary = {"stage": self.stage_cfg.stage, "step": run.step, "tokens_seen": run.tokens_seen,
                   "train_time": round(run.train_time, 2)}
        if last_val:
            summary["val_loss"] = round(last_val["loss"], 5)
        return summary


def check_stage_folders(init_from: Path, out: Path) -> None:
    """Refuse a stage that would write into the folder it starts from.

    Raises:
        FoundryError: ``out`` is ``init_from``.
    """
    if out.resolve() == init_from.resolve():
        raise FoundryError("--out must differ from the input model folder (each stage writes its own)")


def stage_trainer(init_from: str | Path, out_dir: str | Path, cfg: StageConfig, resume: bool = False,
                  quiet: bool = False) -> Trainer:
    """The :class:`~llm_foundry.training.trainer.Trainer` of a mid-training or SFT stage.

    Args:
        init_from: the model folder to start from (the previous stage).
        out_dir: the stage's output model folder.
        cfg: the stage settings.
        resume: continue the stage saved in ``out_dir`` (its weights, not ``init_from``'s, are loaded).
        quiet: no progress bar or log lines.

    Raises:
        FoundryError: bad settings, nothing to resume, a run already in ``out_dir``, or
            ``out_dir`` is ``init_from``.
    """
    cfg, init_from = cfg.validate(), Path(init_from)
    check_stage_folders(init_from, Path(out_dir))
    return Trainer(None, cfg.train, ChatSource(cfg, init_from), out_dir, resume=resume,
                   init_from=None if resume else init_from, quiet=quiet)


def run_stage(init_from: str | Path, out_dir: str | Path, cfg: StageConfig, resume: bool = False, quiet: bool = False,
              on_step: Callable[[int, float], None] | None = None) -> dict:
    """Run (or resume) a mid-training or SFT stage; returns its summary.

    Raises:
        TrainingInterrupted: after Ctrl-C/SIGTERM, with the checkpoint saved.
    """
    return stage_trainer(init_from, out_dir, cfg, resume=resume, quiet=quiet).run(on_step=on_step)


def stage_source(init_from: Path, out: Path, resume: bool):
    """``(model config, tokenizer)`` a stage starts from: its saved run in ``out`` when
    resuming, else the previous stage's folder ``init_from`` (RL's start).

    Raises:
        FoundryError: nothing to resume, a run already in ``out``, or ``out`` is ``init_from``.
    """
    check_run_folder(out, resume)
    check_stage_folders(init_from, out)
    source = out if resume else init_from
    return load_model_config(source), load_model_tokenizer(source)


def load_stage_config(model_dir: str | Path) -> dict | None:
    """The saved ``stage_config.json`` of a stage's model folder, or None."""
    path = Path(model_dir) / STAGE_CONFIG_FILE
    return read_json(path, "stage config") if path.is_file() else None
