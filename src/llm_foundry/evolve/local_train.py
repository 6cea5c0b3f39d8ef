"""Local training of H2Q-Evo: epochs over the fixed split, with the source's console output.

AdamW at the preset's peak rate (h2q: 1e-4) with linear warmup and cosine decay,
batch 8, gradient clipping at 1.0. An epoch is one pass worth of windows over the
training split (``--steps-per-epoch`` caps it). After every epoch the model is scored
on the fixed validation split and one entry goes to ``training_log.json``; every
``--save-every`` epochs a checkpoint is written, the best epoch goes to ``best/``, and
``checkpoints/last/`` (with the optimizer) lets an interrupted run continue.

The step loop :func:`run_steps` is shared with the evolution engine and the
benchmark, so every arm trains with exactly the same code; its step is the one every
trainer uses (``training/step.py``), and ``checkpoints/last/`` holds the shared
training state (``training/state.py``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..config import TrainConfig, apply_overrides, load_config, override_sections
from ..config.evolve import TrainOptions
from ..data import TokenDataset, WindowLoader
from ..eval.metrics import mean_loss
from ..models import MiniLLM
from ..models.model_dir import STATE_FILE, load_model_config, load_model_dir
from ..training.optim import build_optimizers
from ..training.schedule import lr_factor
from ..training.loop import run_loop
from ..training.state import TrainingState, load_state
from ..training.step import StepParts, loss_scaler, train_step
from ..utils.signals import StopRequest
from ..utils.device import resolve_device, resolve_dtype
from ..utils.errors import FoundryError, TrainingInterrupted
from ..utils.io import atomic_write_json, read_json
from .corpus import fingerprint, find_text_files, load_corpus, make_split, read_split
from .state import (StatePaths, load_settings, lock_state, model_shape_changes, recover_model_dir, save_settings,
                    weights_digest, write_model_dir)

Batch = tuple[torch.Tensor, torch.Tensor]

# A forward pass costs about a third of a training step (forward + backward = 3 forwards),
# so scoring, mining and generation count 1/3 token per token in the compute budget.
FORWARD_COST = 1 / 3


class EvolveInterrupted(Exception):
    """Ctrl-C/SIGTERM stopped a run; what was finished is saved and the same command continues it."""


@dataclass
class Compute:
    """Compute spent, in tokens: trained tokens, and tokens only run forward."""

    train_tokens: int = 0
    forward_tokens: int = 0

    @property
    def total(self) -> float:
        """Training-token equivalents: ``train_tokens + forward_tokens / 3``."""
        return self.train_tokens + FORWARD_COST * self.forward_tokens

    def add(self, other: "Compute") -> None:
        self.train_tokens += other.train_tokens
        self.forward_tokens += other.forward_tokens

    def as_dict(self) -> dict:
        return {"train_tokens": self.train_tokens, "forward_tokens": self.forward_tokens, "total": round(self.total, 1)}


@dataclass
class Runtime:
    """Device, precision and the fixed validation batches of a state folder."""

    device: torch.device
    amp_dtype: torch.dtype | None
    dataset: TokenDataset
    seq_len: int
    val_batches: list[Batch] = field(default_factory=list)

    @classmethod
    def open(cls, paths: StatePaths, seq_len: int, batch_size: int, eval_batches: int, device: str = "auto",
             precision: str = "auto", dim: int | None = None) -> "Runtime":
        dev = resolve_device(device)
        dataset = TokenDataset(paths.data)
        val = WindowLoader(dataset, "val", batch_size, seq_len, 0, dev).fixed_batches(eval_batches)
        return cls(dev, resolve_dtype(precision, dev, dim), dataset, seq_len, val)

    def val_loss(self, model: MiniLLM, compute: Compute | None = None, batches: list[Batch] | None = None) -> float:
        batches = self.val_batches if batches is None else batches
        if compute is not None:
            compute.forward_tokens += sum(x.numel() for x, _ in batches)
        return mean_loss(model, batches, self.amp_dtype)

    @property
    def quick_batches(self) -> list[Batch]:
        """The first quarter of the validation batches (for early rejection)."""
        return self.val_batches[:max(1, len(self.val_batches) // 4)]

    def val_losses(self, model: MiniLLM, compute: Compute | None = None) -> tuple[float, float]:
        """``(full, quick)`` validation loss in one pass: quick is the loss on :attr:`quick_batches`."""
        quick_b = self.quick_batches
        rest = self.val_batches[len(quick_b):]
        quick = self.val_loss(model, compute, quick_b)
        if not rest:
            return quick, quick
        n_q, n_r = (sum(y.numel() for _, y in b) for b in (quick_b, rest))
        return (quick * n_q + self.val_loss(model, compute, rest) * n_r) / (n_q + n_r), quick


def run_steps(model: MiniLLM, optimizers: list[torch.optim.Optimizer], batch_fn: Callable[[int], Batch],
              cfg: TrainConfig, start: int, stop_at: int, total: int, amp_dtype: torch.dtype | None,
              on_step: Callable[[int, float, float], None] | None = None, stop: StopRequest | None = None,
              compute: Compute | None = None) -> int:
    """Optimizer steps ``start .. stop_at-1`` of a run of ``total`` steps (warmup + ``cfg.schedule``).

    Args:
        batch_fn: step index -> ``(x, y)``; a pure function, so a resumed run sees the same data.
        on_step: called with ``(step, loss, lr)`` after each step.
        stop: a :class:`StopRequest`; when it is set the loop ends at a step boundary.

    Returns:
        the index of the next step (``stop_at`` unless stopped early).
    """
    warmup = min(cfg.warmup_steps, max(1, total // 5))
    parts = StepParts(model, optimizers, scaler=loss_scaler(next(model.parameters()).device, amp_dtype),
                      amp_dtype=amp_dtype, grad_clip=cfg.grad_clip)
    model.train()
    step = start

    def one_step() -> None:
        nonlocal step
        x, y = batch_fn(step)
        factor = lr_factor(step, step / max(total, 1), cfg.schedule, warmup, cfg.min_lr_ratio, cfg.decay_fraction)
        loss = train_step(parts, factor, 1, lambda _micro: model(x, y)[1])
        if compute is not None:
            compute.train_tokens += x.numel()
        if on_step is not None:
            on_step(step, float(loss), optimizers[0].param_groups[0]["lr"])
        step += 1

    # The callers save at their own boundaries (epochs, candidates), so a stop saves nothing here.
    try:
        run_loop(label="train", max_steps=stop_at, step=lambda: step, train_step=one_step,
                 progress=lambda: step / max(total, 1), save=lambda: None, quiet=True, stop=stop)
    except TrainingInterrupted:
        if stop is None:  # the caller holds no stop request: Ctrl-C is what it was before
            raise KeyboardInterrupt from None
    return step


# ----------------------------------------------------------------------------- train mode
def prepare_state(paths: StatePaths, opts: TrainOptions, say: Callable[[str], None]):
    """Make (once) the split and settings of a state folder; return ``(model_cfg, train_cfg, settings)``."""
    paths.root.mkdir(parents=True, exist_ok=True)
    if not paths.has_split():
        docs = load_corpus(opts.data_dir, quiet=opts.quiet)
        model_cfg, train_cfg = load_config(opts.config, opts.overrides)
        seed = train_cfg.seed if opts.seed is None else opts.seed
        info = make_split(docs, opts.tokenizer, paths.data, val_fraction=opts.val_fraction,
                          test_fraction=opts.test_fraction, vocab_size=opts.vocab_size, seed=seed, quiet=opts.quiet)
        say(f"held-out split made once and kept fixed: {len(docs)} file(s); tokens "
            + ", ".join(f"{k} {v:,}" for k, v in info["tokens"].items()) + f"; test {info['test_chars']:,} characters")
        model_cfg = dataclasses.replace(model_cfg, vocab_size=info["vocab_size"]).validate()
        save_settings(paths, model_cfg, train_cfg, info["tokenizer"], seed)
    else:
        files = find_text_files(opts.data_dir)
        if files:
            docs = load_corpus(opts.data_dir, create_samples=False, quiet=True)
            if fingerprint(docs) != read_split(paths.data)["fingerprint"]:
                say(f"note: {opts.data_dir} differs from the text the fixed split of {paths.root} was made from; "
                    f"the fixed split is kept (use a new --state to train on the new text)")
    saved_model, saved_train, raw = load_settings(paths)
    model_cfg, train_cfg = apply_overrides(saved_model, saved_train, opts.overrides)
    if "model" in override_sections(opts.overrides) and model_shape_changes(saved_model, model_cfg):
        # A shape given again unchanged is fine; a different one would not fit the champion.
        raise FoundryError(f"the model shape of {paths.root} is fixed (model.{model_shape_changes(saved_model, model_cfg)[0]}); "
                           "use a new --state for another shape")
    if opts.seed is not None:
        raw["seed"] = opts.seed
    return model_cfg, train_cfg, raw


def _read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    data = read_json(path, "training log")
    return data if isinstance(data, list) else []


def train(state_dir: str | Path, opts: TrainOptions, say: Callable[[str], None] = print) -> dict:
    """Train the state's model for ``opts.epochs`` epochs; the best epoch becomes the champion
    if it is better on the held-out split than the champion there is (the gate of ``--mode evolve``).

    Continues an interrupted run (same command) at the last finished epoch. Holds the state
    folder's lock while it runs.

    Returns:
        a summary: epochs, steps, final/best losses, times, and whether the champion was replaced.

    Raises:
        FoundryError: bad options, or another process holds the state folder.
    """
    paths = StatePaths(state_dir)
    if opts.quiet:
        say = lambda *_: None  # noqa: E731
    if opts.epochs < 1:
        raise FoundryError("--epochs must be >= 1")
    if opts.save_every < 1:
        raise FoundryError("--save-every must be >= 1")
    with lock_state(paths, "train"):
        return _train(paths, opts, say)


def _train(paths: StatePaths, opts: TrainOptions, say: Callable[[str], None]) -> dict:
    model_cfg, cfg, settings = prepare_state(paths, opts, say)
    seed = settings["seed"]
    seq_len = min(cfg.seq_len or model_cfg.max_seq_len, model_cfg.max_seq_len)
    rt = Runtime.open(paths, seq_len, cfg.batch_size, cfg.eval_batches, opts.device, opts.precision, model_cfg.dim)
    tokenizer = rt.dataset.tokenizer
    n_train = rt.dataset.meta["splits"]["train"]["tokens"]
    spe = opts.steps_per_epoch or max(1, math.ceil(n_train / (cfg.batch_size * seq_len)))

    # Resume an unfinished run, else start a new one from the champion (or from scratch).
    run = read_json(paths.train_run, "train run") if paths.train_run.is_file() else None
    recover_model_dir(paths.champion)
    recover_model_dir(paths.last)
    resuming = bool(run and not run.get("finished") and (paths.last / STATE_FILE).is_file())
    state = None
    if resuming:
        state = load_state(paths.last / STATE_FILE, rt.device)
        # The run record saved with the checkpoint is the one that matches it (train_run.json is
        # written after it, so a kill in between leaves train_run.json one epoch behind).
        run = {**run, **state.extra.get("run", {})}
        if state.step != run["step"]:
            raise FoundryError(f"{paths.last} does not match {paths.train_run} (interrupted while saving?); "
                               f"delete {paths.train_run} to start the run anew")
    if resuming:
        if run["epochs"] != opts.epochs or run["steps_per_epoch"] != spe:
            say(f"continuing the unfinished run of {run['epochs']} epochs x {run['steps_per_epoch']} steps "
                f"(delete {paths.train_run} to start a new one)")
        epochs, spe = run["epochs"], run["steps_per_epoch"]
        model = load_model_dir(paths.last, rt.device, with_tokenizer=False).model
    else:
        epochs = opts.epochs
        torch.manual_seed(seed)
        if paths.has_champion():
            if model_shape_changes(load_model_config(paths.champion), model_cfg):
                raise FoundryError(f"the champion in {paths.champion} has another shape than the settings")
            model = load_model_dir(paths.champion, rt.device, with_tokenizer=False).model
        else:
            model = MiniLLM(model_cfg).to(rt.device)
        run = {"epochs": epochs, "steps_per_epoch": spe, "epoch_done": 0, "step": 0, "total_time": 0.0,
               "started_from": "champion" if paths.has_champion() else "scratch", "best_val": None,
               "run_id": int(time.time()), "finished": False,
               # a later run from the champion sees other batches than the runs before it
               "data_seed": seed + len({e.get("run_id") for e in _read_log(paths.training_log)})}
    optimizers = build_optimizers(model, cfg)
    if resuming:
        state.restore(model, optimizers)
        say(f"resuming training at epoch {run['epoch_done'] + 1}/{epochs}")
    total = epochs * spe
    train_loader = WindowLoader(rt.dataset, "train", cfg.batch_size, seq_len, run.get("data_seed", seed), rt.device)
    log = [e for e in _read_log(paths.training_log) if e.get("run_id") != run["run_id"] or e["epoch"] <= run["epoch_done"]]
    best_val = run["best_val"]
    say(f"training {model.num_parameters() / 1e6:.2f}M parameters on {rt.device}: {epochs} epoch(s) x {spe} steps, "
        f"batch {cfg.batch_size}x{seq_len}, AdamW lr {cfg.lr:g}, warmup + {cfg.schedule}, clip {cfg.grad_clip}")
    last_train_loss = math.nan
    from ..utils.progress import progress_bar

    # The bar lives on stderr and only on a terminal; the source's lines go to stdout above it.
    with StopRequest(opts.quiet) as stop, progress_bar(not opts.quiet) as bar:
        task = bar.add_task("training", total=total, completed=run["step"])
        for epoch in range(run["epoch_done"] + 1, epochs + 1):
            say(f"\nEpoch {epoch}/{epochs}\n" + "-" * 40)
            t0 = time.perf_counter()
            losses: list[float] = []

            def on_step(step: int, loss: float, lr: float) -> None:
                losses.append(loss)
                bar.update(task, completed=step + 1, description=f"epoch {epoch}/{epochs}")
                k = step - (epoch - 1) * spe
                if k % opts.log_every == 0:
                    say(f"  batch {k:4d} | loss: {loss:.4f} | perplexity: {math.exp(min(loss, 50)):.2f} | LR: {lr:.6f}")

            step = run["step"]
            end = epoch * spe
            step = run_steps(model, optimizers, train_loader.batch, cfg, step, end, total, rt.amp_dtype, on_step, stop)
            if step < end:
                raise EvolveInterrupted(f"training interrupted in epoch {epoch}; epochs 1-{epoch - 1} are saved; "
                                        "run the same command again to continue")
            epoch_time = time.perf_counter() - t0
            eval_loss = rt.val_loss(model)
            train_loss = sum(losses) / max(len(losses), 1)
            last_train_loss = train_loss
            run["total_time"] += epoch_time
            entry = {"epoch": epoch, "train_loss": round(train_loss, 5), "eval_loss": round(eval_loss, 5),
                     "perplexity": round(math.exp(min(eval_loss, 50)), 3), "epoch_time": round(epoch_time, 2),
                     "total_time": round(run["total_time"], 2), "step": step, "run_id": run["run_id"]}
            say(f"eval loss: {eval_loss:.4f} | perplexity: {entry['perplexity']:.2f} | epoch time {epoch_time:.1f}s")
            if best_val is None or eval_loss < best_val:
                best_val = eval_loss
                write_model_dir(paths.best, model, tokenizer, step)
            if epoch % opts.save_every == 0 or epoch == epochs:
                write_model_dir(paths.checkpoints / f"epoch_{epoch:03d}", model, tokenizer, step)
            # The resume point as one unit (weights, optimizer, run record), then the logs that follow it.
            run.update(epoch_done=epoch, step=step, best_val=best_val)
            last = TrainingState.capture(step, model, optimizers, extra={"run": dict(run)})
            write_model_dir(paths.last, model, tokenizer, step, state_bytes=last.to_bytes())
            log.append(entry)
            atomic_write_json(paths.training_log, log)
            atomic_write_json(paths.train_run, run)
    replaced, champion_val = _gate(paths, rt, best_val)
    run.update(finished=True, champion="replaced" if replaced else "kept", champion_val=champion_val)
    atomic_write_json(paths.train_run, run)
    final_eval = [e for e in log if e.get("run_id") == run["run_id"]][-1]["eval_loss"]
    say("\ntraining done")
    say(f"total training time: {run['total_time']:.2f} s")
    if not math.isnan(last_train_loss):
        say(f"final loss: {last_train_loss:.4f}")
    say(f"final perplexity: {math.exp(min(final_eval, 50)):.2f} (eval loss {final_eval:.4f})")
    if replaced:
        was = "" if champion_val is None else f" (it replaces a champion with held-out loss {champion_val:.4f})"
        say(f"best eval loss: {best_val:.4f} -> champion {paths.champion}{was}")
    else:
        say(f"best eval loss: {best_val:.4f} is not lower than the champion's {champion_val:.4f}; "
            f"champion kept (this run's best epoch is in {paths.best})")
    return {"epochs": epochs, "steps": epochs * spe, "final_eval_loss": final_eval, "best_eval_loss": best_val,
            "total_time": round(run["total_time"], 2), "champion": str(paths.champion),
            "champion_replaced": replaced, "champion_val_loss": champion_val}


def _gate(paths: StatePaths, rt: Runtime, best_val: float) -> tuple[bool, float | None]:
    """Make the run's best epoch (``best/``) the champion only if its held-out loss ``best_val``
    is lower than the champion's, scored now on the same fixed validation batches.

    Returns:
        ``(replaced, champion's held-out loss before, or None where there was none)``.
    """
    champion_val = None
    if paths.has_champion():
        if weights_digest(paths.champion) == weights_digest(paths.best):
            return True, None  # a kill after the swap, before the run was marked finished: it is done
        champion_val = rt.val_loss(load_model_dir(paths.champion, rt.device, with_tokenizer=False).model)
        if not best_val < champion_val:
            return False, champion_val
    best = load_model_dir(paths.best, rt.device)
    write_model_dir(paths.champion, best.model, best.tokenizer, best.step)
    return True, champion_val
