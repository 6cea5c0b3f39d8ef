"""The training loop, kept readable: one step is sample -> forward -> backward -> step.

Everything a resumed run needs is in ``training_state.pt``: optimizer moments, the
EMA, RNG state and the step counter (the data loader is a pure function of the
step, see ``data/loader.py``). So an interrupted run continued with ``--resume``
produces the same losses as one that never stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Callable
from pathlib import Path

import torch

from .. import __version__
from ..config import ModelConfig, TrainConfig, config_to_dict
from ..data import TokenDataset, WindowLoader
from ..eval.metrics import loss_metrics, mean_loss
from ..models import MiniLLM
from ..utils.device import autocast_context, keep_freed_memory, resolve_device, resolve_dtype
from ..utils.errors import FoundryError, TrainingInterrupted
from ..utils.io import atomic_torch_save, atomic_write_json, atomic_write_text
from ..utils.progress import console
from ..utils.signals import StopRequest
from ..models.model_dir import STATE_FILE, TOKENIZER_FILE, load_model_config, load_model_dir, save_model_dir
from .ema import EMA
from .optim import build_optimizers, optimizer_step, set_lr
from .schedule import lr_factor

RUN_CONFIG_FILE, METRICS_FILE = "run_config.json", "metrics.jsonl"


def same_tokenizer(a: Path, b: Path) -> bool:
    """Whether two tokenizer.json files hold the same tokenizer (as data, not bytes)."""
    try:
        return json.loads(a.read_text(encoding="utf-8")) == json.loads(b.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


class Trainer:
    """Train a MiniLLM on a prepared data folder into a run folder.

    The run folder is itself a model folder (config.json, model.safetensors,
    tokenizer.json) holding the latest checkpoint, plus ``training_state.pt``,
    ``run_config.json`` and ``metrics.jsonl``.

    Args:
        model_cfg: model shape (``vocab_size`` is taken from the data's tokenizer);
            may be None with ``resume`` or ``init_from``, whose checkpoint fixes the shape.
        train_cfg: optimisation settings.
        data_dir: a folder made by ``foundry prepare``.
        out_dir: the run folder.
        resume: continue the run saved in ``out_dir``.
        init_from: start a new run from this model folder's weights (fine-tuning); its
            shape replaces ``model_cfg``, and the data must use its tokenizer
            (``foundry prepare --tokenizer-from MODEL``).
        quiet: no progress bar or log lines (library use, tests).
    """

    def __init__(self, model_cfg: ModelConfig | None, train_cfg: TrainConfig, data_dir: str | Path, out_dir: str | Path,
                 resume: bool = False, init_from: str | Path | None = None, quiet: bool = False):
        self.out = Path(out_dir)
        self.data_dir = Path(data_dir)
        self.resume, self.quiet = resume, quiet
        self.init_from = Path(init_from) if init_from else None
        if resume and self.init_from:
            raise FoundryError("--resume and --init-from exclude each other")
        self.dataset = TokenDataset(data_dir)
        self.tokenizer = self.dataset.tokenizer
        state_path = self.out / STATE_FILE
        source = self.out if resume else self.init_from
        if resume and not state_path.is_file():
            raise FoundryError(f"nothing to resume in {self.out} (no {STATE_FILE})")
        if not resume and state_path.exists():
            raise FoundryError(f"{self.out} already holds a run; pass --resume to continue it, or choose another --out")
        if source is not None:
            model_cfg = load_model_config(source)
            if not same_tokenizer(source / TOKENIZER_FILE, self.data_dir / TOKENIZER_FILE):
                hint = "" if resume else f"; prepare the data with --tokenizer-from {source}"
                raise FoundryError(f"the data folder's tokenizer differs from the model's: {self.data_dir} vs {source}{hint}")
        elif model_cfg is None:
            raise FoundryError("a model config is needed unless resuming or starting from --init-from")
        else:
            model_cfg = dataclasses.replace(model_cfg, vocab_size=self.tokenizer.vocab_size)
        self.model_cfg, self.cfg = model_cfg.validate(), dataclasses.replace(train_cfg).validate()
        self.seq_len = train_cfg.seq_len or model_cfg.max_seq_len
        if self.seq_len > model_cfg.max_seq_len:
            raise FoundryError(f"train.seq_len ({self.seq_len}) exceeds model.max_seq_len ({model_cfg.max_seq_len})")
        self.device = resolve_device(train_cfg.device)
        if self.device.type == "cpu":
            keep_freed_memory()
        self.amp_dtype = resolve_dtype(train_cfg.precision, self.device, self.model_cfg.dim)

    # ------------------------------------------------------------------ state
    def _build(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        if self.resume or self.init_from:
            bundle = load_model_dir(self.out if self.resume else self.init_from, self.device, with_tokenizer=False)
            self.model = bundle.model
        else:
            self.model = MiniLLM(self.model_cfg).to(self.device)
        self.model.train()
        self.optimizers = build_optimizers(self.model, cfg)
        self.ema = EMA(self.model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        # fp16 gradients underflow without loss scaling; for bf16/fp32 the scaler is a no-op.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.step, self.tokens_seen, self.train_time, self.best_val = 0, 0, 0.0, math.inf
        if self.resume:
            self._load_state(bundle.step)
        self.forward = torch.compile(self.model) if cfg.compile else self.model

    def _load_state(self, weights_step: int) -> None:
        try:
            state = torch.load(self.out / STATE_FILE, map_location=self.device, weights_only=True)
        except Exception as e:
            raise FoundryError(f"training state is corrupt: {self.out / STATE_FILE} ({str(e).splitlines()[0][:100]})") from None
        if state.get("step") != weights_step:
            raise FoundryError(f"{self.out} holds weights of step {weights_step} but training state of step "
                               f"{state.get('step')} (interrupted while saving?)")
        if len(state["optimizers"]) != len(self.optimizers):
            raise FoundryError("saved optimizer state does not match train.optimizer; resume with the same optimizer")
        if state.get("raw_weights") is not None:
            # With EMA on, model.safetensors holds the EMA weights; training continues from the raw ones.
            self.model.load_state_dict(state["raw_weights"])
        for opt, sd in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(sd)
            for g in opt.param_groups:  # base_lr follows the (possibly overridden) config
                g["base_lr"] = self.cfg.muon_lr if isinstance(opt, torch.optim.Muon) else self.cfg.lr
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.train_time, self.best_val = state["train_time"], state["best_val"]
        torch.set_rng_state(state["rng"]["torch"].cpu())
        if torch.cuda.is_available() and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
        self._trim_metrics(self.step)

    def save_checkpoint(self) -> None:
        """Write the run folder: training state first, then weights (which carry the step)."""
        raw = self.model.state_dict()
        state = {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "train_time": self.train_time,
            "best_val": self.best_val,
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "ema": self.ema.state_dict() if self.ema else None,
            "scaler": self.scaler.state_dict(),
            "raw_weights": raw if self.ema else None,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }
        atomic_torch_save(self.out / STATE_FILE, state)
        weights = None
        if self.ema is not None:
            weights = {k: self.ema.shadow[k] if k in self.ema.shadow else v for k, v in raw.items()}
        save_model_dir(self.out, self.model, self.tokenizer, self.step, weights=weights)

    def _write_run_config(self) -> None:
        atomic_write_json(self.out / RUN_CONFIG_FILE, {
            **config_to_dict(self.model_cfg, self.cfg),
            "data": str(self.data_dir.resolve()),
            "init_from": str(self.init_from.resolve()) if self.init_from else None,
            "tokenizer": self.tokenizer.kind,
            "llm_foundry_version": __version__,
        })

    # ---------------------------------------------------------------- metrics
    def _log(self, record: dict) -> None:
        with open(self.out / METRICS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _trim_metrics(self, step: int) -> None:
        # Lines logged after the checkpoint we resume from would otherwise repeat.
        path = self.out / METRICS_FILE
        if not path.is_file():
            return
        keep = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a kill
        atomic_write_text(path, "".join(line + "\n" for line in keep))

    def evaluate(self) -> dict[str, float] | None:
        """Validation metrics of the weights that will be saved (EMA if enabled)."""
        if not self.val_batches:
            return None
        return loss_metrics(self._val_loss(), self.dataset.bytes_per_token("val"))

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
    def train_step(self, batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]], loss_sum: torch.Tensor) -> torch.Tensor:
        """One optimizer step: ``grad_accum`` micro-batches ``batch(i)`` at the schedule's lr.

        Adds each micro-batch's loss to ``loss_sum`` and returns the number of target
        tokens trained (labels other than -100) as a tensor: neither forces a device
        sync. Shared by every loop built on this class (pretraining, mid-training, SFT).
        """
        cfg = self.cfg
        set_lr(self.optimizers, lr_factor(self.step, self._progress(), cfg.schedule, cfg.warmup_steps,
                                          cfg.min_lr_ratio, cfg.decay_fraction))
        trained = torch.zeros((), dtype=torch.long, device=self.device)
        for micro in range(cfg.grad_accum):
            x, y = batch(self.step * cfg.grad_accum + micro)
            with autocast_context(self.device, self.amp_dtype):
                _, loss = self.forward(x, y)
            self.scaler.scale(loss / cfg.grad_accum).backward()
            loss_sum += loss.detach()
            trained += (y != -100).sum()
        if not self.scaler.is_enabled():  # bf16 or fp32: no loss scaling
            optimizer_step(self.model, self.optimizers, cfg.grad_clip, self.ema)
        else:
            if cfg.grad_clip > 0:
                for opt in self.optimizers:
                    self.scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip, foreach=True)
            for opt in self.optimizers:
                self.scaler.step(opt)
            self.scaler.update()
            for opt in self.optimizers:
                opt.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update(self.model)
        self.step += 1
        return trained

    def run(self) -> dict:
        """Train until ``max_steps`` or the time budget; returns a summary dict.

        Raises:
            TrainingInterrupted: after Ctrl-C/SIGTERM, with the checkpoint saved.
        """
        self.out.mkdir(parents=True, exist_ok=True)
        self._build()
        self._write_run_config()
        cfg = self.cfg
        train = WindowLoader(self.dataset, "train", cfg.batch_size, self.seq_len, cfg.seed, self.device)
        self.val_batches = []
        if self.dataset.has_split("val"):
            val = WindowLoader(self.dataset, "val", cfg.batch_size, self.seq_len, cfg.seed, self.device)
            self.val_batches = val.fixed_batches(cfg.eval_batches)
        if not self.quiet:
            console.print(f"[bold]training[/] {self.model.num_parameters() / 1e6:.2f}M parameters on {self.device}"
                          f" ({'bf16 autocast' if self.amp_dtype == torch.bfloat16 else 'fp32' if self.amp_dtype is None else 'fp16'}),"
                          f" batch {cfg.batch_size}x{self.seq_len}x{cfg.grad_accum}, {cfg.optimizer}, from step {self.step}")
        last_val = self._train_loop(train.batch, "train")
        self.save_checkpoint()
        summary = {"step": self.step, "tokens_seen": self.tokens_seen, "train_time": round(self.train_time, 2),
                   "tok_per_s": round(self.tokens_seen / max(self.train_time, 1e-9), 1),
                   "parameters": self.model.num_parameters()}
        if last_val:
            summary.update({f"val_{k}": v for k, v in last_val.items()})
        return summary

    def _train_loop(self, batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]], label: str,
                    on_step: Callable[[int, float], None] | None = None) -> dict[str, float] | None:
        """Step until ``max_steps`` or the time budget, with progress, logs, evals and checkpoints.

        Shared by pretraining and the chat stages: ``batch(i)`` gives micro-batch ``i``;
        ``on_step(step, progress)`` is called after every optimizer step. Saves and raises
        :class:`TrainingInterrupted` on Ctrl-C/SIGTERM. Returns the last validation metrics.
        """
        from rich.progress import TextColumn

        from ..utils.progress import progress_bar

        cfg = self.cfg
        tokens_per_step = cfg.batch_size * self.seq_len * cfg.grad_accum
        last_val = None
        loss_sum, loss_count, trained = torch.zeros((), device=self.device), 0, 0
        window_start, window_tokens = time.perf_counter(), 0
        with StopRequest(self.quiet) as stop, progress_bar(not self.quiet, TextColumn("{task.fields[status]}")) as bar:
            task = bar.add_task(label, total=1000, status="")
            first_step_here = True
            while self.step < cfg.max_steps:
                if stop.requested:
                    self.save_checkpoint()
                    raise TrainingInterrupted(self.step)
                if cfg.time_budget and self.train_time >= cfg.time_budget:
                    break
                t_step = time.perf_counter()
                trained += self.train_step(batch, loss_sum)
                loss_count += cfg.grad_accum
                self.tokens_seen += tokens_per_step
                if cfg.compile and first_step_here:
                    # This step waited for the compiler: start-up, not training time (the
                    # time budget and tokens/s count from here; the step's update still counts).
                    first_step_here = False
                    window_start = time.perf_counter()
                else:
                    window_tokens += tokens_per_step
                    self.train_time += time.perf_counter() - t_step
                if on_step is not None:
                    on_step(self.step, self._progress())
                if self.step % cfg.log_interval == 0 or self.step == cfg.max_steps:
                    now = time.perf_counter()
                    train_loss = float(loss_sum) / max(loss_count, 1)
                    tok_s = window_tokens / max(now - window_start, 1e-9)
                    self._log({"step": self.step, "loss": round(train_loss, 5),
                               "lr": self.optimizers[0].param_groups[0]["lr"], "tokens": self.tokens_seen,
                               "trained_tokens": int(trained), "tok_per_s": round(tok_s, 1), "time": round(self.train_time, 2)})
                    bar.update(task, completed=int(1000 * self._progress()), description=f"{label} step {self.step}",
                               status=f"loss {train_loss:.4f} | {tok_s / 1000:.1f}k tok/s")
                    loss_sum.zero_()
                    loss_count, trained, window_start, window_tokens = 0, 0, now, 0
                if cfg.eval_interval and self.step % cfg.eval_interval == 0:
                    last_val = self._eval_and_log(bar)
                    window_start = time.perf_counter()  # eval time is not training throughput
                if cfg.checkpoint_interval and self.step % cfg.checkpoint_interval == 0:
                    self.save_checkpoint()
                    window_start = time.perf_counter()
            if last_val is None or cfg.eval_interval == 0 or self.step % cfg.eval_interval:
                last_val = self._eval_and_log(bar)
            bar.update(task, completed=1000)
        return last_val

    def _progress(self) -> float:
        p = self.step / self.cfg.max_steps
        if self.cfg.time_budget:
            p = max(p, self.train_time / self.cfg.time_budget)
        return min(p, 1.0)

    def _eval_and_log(self, bar) -> dict[str, float] | None:
        metrics = self.evaluate()
        if metrics is None:
            return None
        self.best_val = min(self.best_val, metrics["loss"])
        self._log({"step": self.step, **{f"val_{k}": round(v, 5) for k, v in metrics.items()}})
        if not self.quiet:
            bar.console.print(f"step {self.step:>6} | {self._describe_val(metrics)} | {self.train_time:.0f}s")
        return metrics

    def _describe_val(self, metrics: dict[str, float]) -> str:
        return (f"val loss {metrics['loss']:.4f} | ppl {metrics['perplexity']:.2f}"
                f" | {metrics['bits_per_byte']:.3f} bits/byte")
