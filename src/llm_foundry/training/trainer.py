"""One trainer for every run that learns from batches: pretraining and the chat stages.

A :class:`Trainer` trains a model on a :class:`BatchSource`: pretraining on a prepared
token data folder (:class:`TokenFolderSource`), mid-training and SFT on a conversation
mixture (``stages.py``'s ``ChatSource``). The source supplies what differs (the
tokenizer, batch ``i``, the validation batches, the run-config record, the log lines);
everything else is the same code.

The step is ``step.py``'s (sample -> forward -> backward -> optimizer step), the loop
``loop.py``'s and the checkpoint ``state.py``'s: everything a resumed run needs is in
``training_state.pt`` (optimizer moments, the EMA, RNG state, the step counter; every
source's batches are a pure function of the step, see ``data/loader.py``), saved as one
unit with the weights. So an interrupted run continued with ``--resume`` produces the
same losses as one that never stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from typing import Callable, Protocol
from pathlib import Path

import torch

from .. import __version__
from ..config import ModelConfig, TrainConfig, config_to_dict
from ..data import TokenDataset, WindowLoader
from ..eval.metrics import loss_metrics, mean_loss
from ..models import MiniLLM
from ..tokenizers import Tokenizer
from ..utils.device import keep_freed_memory, resolve_device, resolve_dtype
from ..utils.errors import FoundryError
from ..utils.io import atomic_write_json
from ..utils.progress import console
from ..models.model_dir import (CHECKPOINT_DIR, CHECKPOINT_FILES, STATE_FILE, TOKENIZER_FILE, load_model_config,
                                load_model_dir, recover_checkpoint_dir)
from . import distributed
from .loop import MetricsLog, TensorBoardLog, run_loop
from .optim import peak_lrs
from .schedule import lr_factor
from .state import save_checkpoint
from .step import StepParts, train_step

RUN_CONFIG_FILE, METRICS_FILE, TENSORBOARD_DIR = "run_config.json", "metrics.jsonl", "tensorboard"
Batch = tuple[torch.Tensor, torch.Tensor]


def same_tokenizer(a: Path, b: Path) -> bool:
    """Whether two tokenizer.json files hold the same tokenizer (as data, not bytes)."""
    try:
        return json.loads(a.read_text(encoding="utf-8")) == json.loads(b.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def check_run_folder(out: Path, resume: bool) -> None:
    """Check that ``out`` holds a run to resume (``resume``) or none to overwrite, after finishing
    a checkpoint save a kill interrupted (the old or the new checkpoint is taken).

    Raises:
        FoundryError: nothing to resume, or a run already there.
    """
    if out.is_dir():
        recover_checkpoint_dir(out)
    if resume and not (out / STATE_FILE).is_file():
        raise FoundryError(f"nothing to resume in {out} (no {STATE_FILE})")
    if not resume and (out / STATE_FILE).exists():
        raise FoundryError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")


def nothing_saved_yet(out: Path) -> bool:
    """Whether ``out`` is the folder of a run killed before its first checkpoint: it exists and,
    once an interrupted save is finished, holds no checkpoint. ``--resume`` starts such a run over.

    A folder with a model in it (``config.json``, weights ...) but no training state is no such run:
    a model folder given to ``--resume`` by mistake must be refused, not trained over from step 0."""
    if not out.is_dir():
        return False
    recover_checkpoint_dir(out)
    return not any((out / name).exists() or (out / name).is_symlink() for name in (*CHECKPOINT_FILES, CHECKPOINT_DIR))


def run_device(device: str, precision: str, dim: int) -> tuple[torch.device, torch.dtype | None]:
    """The device and autocast dtype of a training run."""
    dev = resolve_device(device)
    if dev.type == "cpu":
        keep_freed_memory()
    return dev, resolve_dtype(precision, dev, dim)


class BatchSource(Protocol):
    """What a :class:`Trainer` trains on: batches, and how the run is described.

    Attributes:
        label: the run's name in the progress bar (``train``, ``midtrain``, ``sft``).
        val_batches: the fixed validation batches (empty: no validation); set by ``open``.
    """

    label: str
    val_batches: list[Batch]

    def tokenizer_for(self, model_dir: Path | None, resume: bool) -> Tokenizer:
        """The run's tokenizer, given the model folder the run starts from: the run's own
        folder (``resume``), the one it fine-tunes, or None for a new model.

        Raises:
            FoundryError: this data cannot train that model (another tokenizer).
        """

    def open(self, tokenizer: Tokenizer, seq_len: int, cfg: TrainConfig, device: torch.device) -> None:
        """Get the training and validation batches ready (before the run folder is touched)."""

    def batch(self, index: int) -> Batch:
        """Micro-batch ``index`` as ``(x, y)`` on the run's device: a pure function of ``index``."""

    def val_metrics(self, loss: float) -> dict[str, float]:
        """The validation metrics of a mean validation ``loss`` (at least ``loss``)."""

    def describe_val(self, metrics: dict[str, float]) -> str:
        """The validation log line's text."""

    def run_config(self, run: "Trainer") -> tuple[str, dict]:
        """The run-config file's name in the run folder and the record written to it."""

    def headline(self, run: "Trainer") -> str:
        """The line printed when the run starts."""

    def summary(self, run: "Trainer", last_val: dict[str, float] | None) -> dict:
        """What ``Trainer.run`` returns."""


class TokenFolderSource:
    """Pretraining's :class:`BatchSource`: random windows of a prepared token data folder
    (``foundry prepare``).

    Args:
        data_dir: the data folder; validation uses its ``val`` split when it has one.
    """

    label = "train"

    def __init__(self, data_dir: str | Path):
        self.data_dir = Path(data_dir)
        self.dataset = TokenDataset(data_dir)
        self.val_batches: list[Batch] = []

    def tokenizer_for(self, model_dir: Path | None, resume: bool) -> Tokenizer:
        if model_dir is not None and not same_tokenizer(model_dir / TOKENIZER_FILE, self.data_dir / TOKENIZER_FILE):
            hint = "" if resume else f"; prepare the data with --tokenizer-from {model_dir}"
            raise FoundryError(f"the data folder's tokenizer differs from the model's: {self.data_dir} vs {model_dir}{hint}")
        return self.dataset.tokenizer

    def open(self, tokenizer: Tokenizer, seq_len: int, cfg: TrainConfig, device: torch.device) -> None:
        self.train = WindowLoader(self.dataset, "train", cfg.batch_size, seq_len, cfg.seed, device)
        if self.dataset.has_split("val"):
            val = WindowLoader(self.dataset, "val", cfg.batch_size, seq_len, cfg.seed, device)
            self.val_batches = val.fixed_batches(cfg.eval_batches)

    def batch(self, index: int) -> Batch:
        return self.train.batch(index)

    def val_metrics(self, loss: float) -> dict[str, float]:
        return loss_metrics(loss, self.dataset.bytes_per_token("val"))

    def describe_val(self, metrics: dict[str, float]) -> str:
        return (f"val loss {metrics['loss']:.4f} | ppl {metrics['perplexity']:.2f}"
                f" | {metrics['bits_per_byte']:.3f} bits/byte")

    def run_config(self, run: "Trainer") -> tuple[str, dict]:
        return RUN_CONFIG_FILE, {
            **config_to_dict(run.model_cfg, run.cfg),
            "data": str(self.data_dir.resolve()),
            "init_from": str(run.init_from.resolve()) if run.init_from else None,
            "tokenizer": run.tokenizer.kind,
            "llm_foundry_version": __version__,
        }

    def headline(self, run: "Trainer") -> str:
        cfg, amp = run.cfg, run.amp_dtype
        return (f"[bold]training[/] {run.model.num_parameters() / 1e6:.2f}M parameters on {run.device}"
                f" ({'bf16 autocast' if amp == torch.bfloat16 else 'fp32' if amp is None else 'fp16'}),"
                f" batch {cfg.batch_size}x{run.seq_len}x{cfg.grad_accum}, {cfg.optimizer}, from step {run.step}"
                + (f", {run.dist.world} process{'es' if run.dist.world > 1 else ''} ({run.dist.parallel})"
                   if run.dist.active else ""))

    def summary(self, run: "Trainer", last_val: dict[str, float] | None) -> dict:
        summary = {"step": run.step, "tokens_seen": run.tokens_seen, "train_time": round(run.train_time, 2),
                   "tok_per_s": round(run.tokens_seen / max(run.train_time, 1e-9), 1),
                   "parameters": run.model.num_parameters()}
        if last_val:
            summary.update({f"val_{k}": v for k, v in last_val.items()})
        return summary


class Trainer:
    """Train a MiniLLM on a batch source into a run folder.

    The run folder is itself a model folder (config.json, model.safetensors,
    tokenizer.json) holding the latest checkpoint, plus ``training_state.pt``, the
    source's run-config record (``run_config.json`` for pretraining) and ``metrics.jsonl``.

    Args:
        model_cfg: model shape (``vocab_size`` is taken from the data's tokenizer);
            may be None with ``resume`` or ``init_from``, whose checkpoint fixes the shape.
        train_cfg: optimisation settings.
        data_dir: a folder made by ``foundry prepare``, or any :class:`BatchSource`
            (the chat stages pass a conversation mixture, see ``stages.py``).
        out_dir: the run folder.
        resume: continue the run saved in ``out_dir``.
        init_from: start a new run from this model folder's weights (fine-tuning); its
            shape replaces ``model_cfg``, and the data must use its tokenizer
            (``foundry prepare --tokenizer-from MODEL``).
        quiet: no progress bar or log lines (library use, tests).
    """

    def __init__(self, model_cfg: ModelConfig | None, train_cfg: TrainConfig, data_dir: str | Path | BatchSource,
                 out_dir: str | Path, resume: bool = False, init_from: str | Path | None = None, quiet: bool = False):
        self.out = Path(out_dir)
        # Under torchrun: join the process group; rank 0 alone writes (and talks).
        self.dist, device = distributed.setup(train_cfg.device, train_cfg.parallel)
        quiet = quiet or not self.dist.main
        if train_cfg.tensorboard:
            TensorBoardLog.writer_class()  # a missing package stops every process now, not rank 0 mid-run
        if self.dist.active:
            if self.dist.main and self.out.is_dir():
                recover_checkpoint_dir(self.out)  # once, before the others read the folder
            self.dist.barrier()
        self.resume, self.quiet = resume, quiet
        self.init_from = Path(init_from) if init_from else None
        if resume and self.init_from:
            raise FoundryError("--resume and --init-from exclude each other")
        self.source = TokenFolderSource(data_dir) if isinstance(data_dir, (str, os.PathLike)) else data_dir
        if resume and nothing_saved_yet(self.out):
            # Killed before its first checkpoint: there is nothing to continue, so the run starts over,
            # which ends where it would have ended (its metrics are logged again).
            if not quiet:
                console.print(f"note: nothing was saved in {self.out} yet; the run starts over from step 0")
            if self.dist.main:
                (self.out / METRICS_FILE).unlink(missing_ok=True)
            self.resume = resume = False
        check_run_folder(self.out, resume)
        # The model folder the run starts from fixes the shape; a new model takes the data's vocabulary.
        origin = self.out if resume else self.init_from
        if origin is not None:
            model_cfg = load_model_config(origin)
        elif model_cfg is None:
            raise FoundryError("a model config is needed unless resuming or starting from --init-from")
        self.tokenizer = self.source.tokenizer_for(origin, resume)
        if origin is None:
            model_cfg = dataclasses.replace(model_cfg, vocab_size=self.tokenizer.vocab_size)
        self.model_cfg, self.cfg = model_cfg.validate(), dataclasses.replace(train_cfg).validate()
        self.seq_len = train_cfg.seq_len or model_cfg.max_seq_len
        if self.seq_len > model_cfg.max_seq_len:
            raise FoundryError(f"train.seq_len ({self.seq_len}) exceeds model.max_seq_len ({model_cfg.max_seq_len})")
        self.device, self.amp_dtype = run_device(device, train_cfg.precision, self.model_cfg.dim)
        # This process's micro-batches of a step and rows of each: the global batch is the config's.
        self.share = distributed.rank_share(self.cfg.batch_size, self.cfg.grad_accum, self.dist)
        self.val_batches: list[Batch] = []

    # ------------------------------------------------------------------ state
    def _build(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        lora = cfg.lora_rank > 0
        if self.resume or self.init_from:
            # A LoRA run resumes its base weights and its adapters apart (every other reader merges them).
            bundle = load_model_dir(self.out if self.resume else self.init_from, self.device, with_tokenizer=False,
                                    adapters=not (lora and self.resume))
            self.model = bundle.model
        else:
            self.model = MiniLLM(self.model_cfg).to(self.device)
        if lora:
            from .lora import attach_lora

            if self.dist.active:
                raise FoundryError("train.lora_rank runs in one process: start it without torchrun")
            attach_lora(self.model, cfg, adapters_from=self.out if self.resume else None)
        self.model.train()
        self.model.activation_checkpointing = cfg.activation_checkpointing
        # DDP wraps the model; FSDP shards it in place (so the optimizers are built after).
        wrapped, grad_sync = distributed.wrap(self.model, self.dist)
        self.parts = StepParts.build(self.model, cfg, self.amp_dtype)
        self.parts.grad_sync = grad_sync
        self.optimizers, self.ema, self.scaler = self.parts.optimizers, self.parts.ema, self.parts.scaler
        self.step, self.tokens_seen, self.train_time, self.best_val = 0, 0, 0.0, math.inf
        self.metrics = MetricsLog(self.out / METRICS_FILE)
        if self.resume:
            self._load_state(bundle.step)
        self.tensorboard = (TensorBoardLog(self.out / TENSORBOARD_DIR, self.step)
                            if cfg.tensorboard and self.dist.main else None)
        self.forward = torch.compile(wrapped) if cfg.compile else wrapped

    def _load_state(self, weights_step: int) -> None:
        state = distributed.resume_checkpoint(self.out, self.parts, weights_step, peak_lrs(self.optimizers, self.cfg),
                                              self.dist)
        self.step = state.step
        self.tokens_seen, self.train_time = state.extra.get("tokens_seen", 0), state.extra.get("train_time", 0.0)
        self.best_val = state.extra.get("best_val", math.inf)
        if self.dist.main:
            self.metrics.trim(self.step)

    def save_checkpoint(self) -> None:
        """Write the run folder's checkpoint (weights, tokenizer, config, training state) as one unit."""
        extra = {"tokens_seen": self.tokens_seen, "train_time": self.train_time, "best_val": self.best_val}
        if self.dist.active:
            distributed.save_checkpoint(self.out, self.parts, self.tokenizer, self.step, extra, self.dist)
        else:
            save_checkpoint(self.out, self.parts, self.tokenizer, self.step, extra)
        self._window_start = time.perf_counter()  # saving is not training throughput

    def _write_run_config(self) -> None:
        if not self.dist.main:
            return
        name, record = self.source.run_config(self)
        atomic_write_json(self.out / name, record)

    # ---------------------------------------------------------------- metrics
    def _log(self, record: dict) -> None:
        if not self.dist.main:
            return
        self.metrics.append(record)
        if self.tensorboard is not None:
            self.tensorboard.append(record)

    def evaluate(self) -> dict[str, float] | None:
        """Validation metrics of the weights that will be saved (EMA if enabled)."""
        if not self.val_batches:
            return None
        return self.source.val_metrics(self._val_loss())

    def _val_loss(self) -> float:
        """Mean loss over ``val_batches`` of the weights that will be saved (EMA if enabled)."""
        raw = None
        if self.ema is not None:
            raw = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.ema.copy_to(self.model)
        try:
            return mean_loss(self.model, self.val_batches, self.amp_dtype)
        finally:
            if raw is not None:
                self.model.load_state_dict(raw)

    # ------------------------------------------------------------------- loop
    def batch_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss of one micro-batch: the mean next-token cross-entropy (DPO has its own, ``dpo.py``)."""
        return self.forward(x, y)[1]

    def train_step(self, batch: Callable[[int], Batch], loss_sum: torch.Tensor) -> torch.Tensor:
        """One optimizer step: ``grad_accum`` micro-batches ``batch(i)`` at the schedule's lr.

        Adds each micro-batch's loss to ``loss_sum`` and returns the number of target
        tokens trained (labels other than -100) as a tensor: neither forces a device
        sync.
        """
        cfg = self.cfg
        trained = torch.zeros((), dtype=torch.long, device=self.device)
        first = self.step * cfg.grad_accum
        micro_batches, rows = self.share  # all of them, on one process

        def loss_of(micro: int) -> torch.Tensor:
            nonlocal trained
            x, y = batch(first + micro_batches[micro])
            if rows is not None:
                x, y = x[rows], y[rows]
            trained += (y != -100).sum()
            return self.batch_loss(x, y)

        factor = lr_factor(self.step, self._progress(), cfg.schedule, cfg.warmup_steps, cfg.min_lr_ratio, cfg.decay_fraction)
        loss_sum += train_step(self.parts, factor, len(micro_batches), loss_of)
        self.step += 1
        return trained

    def run(self, on_step: Callable[[int, float], None] | None = None) -> dict:
        """Train until ``max_steps`` or the time budget; returns the source's summary dict.

        Args:
            on_step: called with ``(step, progress in [0, 1])`` after every optimizer step.

        Raises:
            TrainingInterrupted: after Ctrl-C/SIGTERM, with the checkpoint saved.
        """
        self.source.open(self.tokenizer, self.seq_len, self.cfg, self.device)
        self.val_batches = self.source.val_batches
        self.out.mkdir(parents=True, exist_ok=True)
        self._build()
        self._write_run_config()
        if not self.quiet:
            console.print(self.source.headline(self))
        if self.cfg.lora_rank and not self.quiet:
            from .lora import describe_trainable

            console.print(f"LoRA rank {self.cfg.lora_rank} on {self.cfg.lora_targets}: {describe_trainable(self.model)}")
        try:
            last_val = self._train_loop(on_step)
            self.save_checkpoint()
        finally:
            if self.tensorboard is not None:
                self.tensorboard.close()
        summary = self.source.summary(self, last_val)
        if self.cfg.lora_rank:
            from .lora import lora_summary

            summary.update(lora_summary(self.model))
        return summary

    def _train_loop(self, on_step: Callable[[int, float], None] | None = None) -> dict[str, float] | None:
        """Step through the source's batches until ``max_steps`` or the time budget, with progress,
        logs, evals and checkpoints.

        The loop itself is :func:`~llm_foundry.training.loop.run_loop`. Returns the last validation metrics.
        """
        cfg, batch = self.cfg, self.source.batch
        tokens_per_step = cfg.batch_size * self.seq_len * cfg.grad_accum
        loss_sum = torch.zeros((), device=self.device)
        # What the log lines report since the last one; the step's own timing is below.
        window = {"losses": 0, "trained": 0, "tokens": 0, "last_val": None, "first": True}
        self._window_start = time.perf_counter()

        def one_step() -> None:
            t_step = time.perf_counter()
            window["trained"] += self.train_step(batch, loss_sum)
            window["losses"] += len(self.share[0])
            self.tokens_seen += tokens_per_step
            if cfg.compile and window["first"]:
                # This step waited for the compiler: start-up, not training time (the
                # time budget and tokens/s count from here; the step's update still counts).
                self._window_start = time.perf_counter()
            else:
                window["tokens"] += tokens_per_step
                self.train_time += time.perf_counter() - t_step
            window["first"] = False

        def after_step(step: int, view) -> None:
            if step % cfg.log_interval == 0 or step == cfg.max_steps:
                now = time.perf_counter()
                # Every process's losses and tokens: the global batch's (collectives at the same steps on all).
                train_loss = float(self.dist.sum(loss_sum)) / max(window["losses"] * self.dist.world, 1)
                trained = int(self.dist.sum(torch.as_tensor(window["trained"])))
                tok_s = window["tokens"] / max(now - self._window_start, 1e-9)
                record = {"step": step, "loss": round(train_loss, 5),
                          "lr": self.optimizers[0].param_groups[0]["lr"], "tokens": self.tokens_seen,
                          "trained_tokens": trained, "tok_per_s": round(tok_s, 1), "time": round(self.train_time, 2)}
                norm = self.parts.grad_norm
                if norm is not None:
                    record["grad_norm"] = round(float(norm.full_tensor() if distributed.is_sharded(norm) else norm), 5)
                self._log(record)
                view.show(step, self._progress(), f"loss {train_loss:.4f} | {tok_s / 1000:.1f}k tok/s")
                loss_sum.zero_()
                window.update(losses=0, trained=0, tokens=0)
                self._window_start = now
            if cfg.eval_interval and step % cfg.eval_interval == 0:
                window["last_val"] = self._eval_and_log(view)
                self._window_start = time.perf_counter()  # eval time is not training throughput

        def after_loop(view) -> None:
            if window["last_val"] is None or cfg.eval_interval == 0 or self.step % cfg.eval_interval:
                window["last_val"] = self._eval_and_log(view)

        # Under torchrun a stop request of its own kind (see distributed.StopOnce); else the loop's.
        with distributed.StopOnce(self.quiet) if self.dist.active else contextlib.nullcontext() as stop:
            run_loop(label=self.source.label, max_steps=cfg.max_steps, step=lambda: self.step, train_step=one_step,
                     progress=self._progress, save=self.save_checkpoint, quiet=self.quiet,
                     checkpoint_interval=cfg.checkpoint_interval,
                     out_of_time=(lambda: self.train_time >= cfg.time_budget) if cfg.time_budget else None,
                     after_step=after_step, on_step=on_step, after_loop=after_loop,
                     stop=stop, agree=self.dist.agree if self.dist.active else None)
        return window["last_val"]

    def _progress(self) -> float:
        p = self.step / self.cfg.max_steps
        if self.cfg.time_budget:
            p = max(p, self.train_time / self.cfg.time_budget)
        return min(p, 1.0)

    def _eval_and_log(self, view) -> dict[str, float] | None:
        metrics = self.evaluate()
        if metrics is None:
            return None
        self.best_val = min(self.best_val, metrics["loss"])
        self._log({"step": self.step, **{f"val_{k}": round(v, 5) for k, v in metrics.items()}})
        if not self.quiet:
            view.print(f"step {self.step:>6} | {self.source.describe_val(metrics)} | {self.train_time:.0f}s")
        return metrics
