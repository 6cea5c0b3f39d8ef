"""The online learner: a MiniLLM that trains a short pulse on every input and keeps it all.

This module owns the learner itself: its model and optimizers, the vocabulary that grows
with every new character, the training pulse over replayed windows, and generation. The
state folder on disk (layout, lock, atomic saves, crash recovery) is ``state.py``; the
durable store of inputs is ``replay.py``; checking the text files a person loads is
``textfiles.py``.

What the original TinyGPT got wrong, and what this does instead:

* Vocabulary growth gave the optimizer a stale tensor, so new embeddings never
  learned. Here each grown parameter is handed to the optimizers with its moments
  carried over and zero rows added (``training.optim.replace_parameter``), and the
  EMA shadow grows with it (``EMA.resize_like``). A growth copies the embedding, the
  head, their moments and the EMA, so the model's rows *double* (from ``VOCAB_CHUNK``):
  a few growths in all, not one every 64 characters (quadratic in the vocabulary).
  Rows beyond the characters in use are reserved: no input maps to them and the
  generator never samples them. The vocabulary stops at ``settings.max_vocab``
  characters: later new characters are UNK (stored, never trained on as targets),
  so a stream of random text cannot grow the model without end.
* The EMA was created before the checkpoint was loaded, so restarts sampled noise.
  Here the EMA is built from the *loaded* raw weights and then given its saved shadow.
* The schedule decayed to a floor forever and was not saved. Here it is warmup, then
  constant (a never-ending run has no end to decay towards); its position (the step)
  is saved with the optimizer and the EMA.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from ..config import ModelConfig, TrainConfig, apply_overrides, load_config
from ..config.online import OnlineSettings
from ..inference import Generator
from ..models import MiniLLM
from ..tokenizers import CharTokenizer
from ..tokenizers.special import PAD, UNK
from ..training.ema import EMA
from ..training.optim import build_optimizers, replace_parameter
from ..training.schedule import lr_factor
from ..training.state import TrainingState
from ..training.step import StepParts, loss_scaler, train_step
from ..utils.device import keep_freed_memory, resolve_device, resolve_dtype
from ..utils.errors import FoundryError
from . import replay
from .replay import ReplayStore
from .state import (MODEL_DIR, StateLock, check_save_target, disk_bytes, erase, read_save, read_saved_configs,
                    recover_model_dir, recover_save, write_save)
from .textfiles import check_text_file, iter_text_lines

SEPARATOR = "\n"  # joins stored inputs into training windows; never part of an input
VOCAB_CHUNK = 64  # the model's first vocabulary rows; growth doubles them
# Defaults of online learning, applied on top of the preset (overridable with key=value):
# small batches keep a pulse under a second; a constant schedule never decays to a floor;
# a faster EMA lets a line typed today show in generation after a few pulses.
ONLINE_TRAIN_DEFAULTS = ("train.batch_size=4", "train.schedule=constant", "train.warmup_steps=20",
                         "train.ema_decay=0.99")


@dataclass
class PulseResult:
    """What one pulse did: steps trained, their mean loss (None if none ran), wall time."""

    steps: int
    loss: float | None
    seconds: float


def vocab_capacity(n: int, cap: int | None = None) -> int:
    """Model rows for ``n`` token ids: ``VOCAB_CHUNK`` doubled until it holds them, at most
    ``max(cap, n)`` (a vocabulary that stops at ``cap`` needs no more rows)."""
    rows = VOCAB_CHUNK << max(0, math.ceil(math.log2(max(n, 1) / VOCAB_CHUNK)))
    while rows < n:  # float rounding of log2 at exact powers
        rows *= 2
    return rows if cap is None else max(n, min(rows, cap))


class OnlineLearner:
    """Continual learner over a state folder (layout: see ``state.py``).

    Build it with :meth:`open` (loads the folder's last save, or starts an empty one).

    Args:
        state_dir: the state folder.
        model_cfg, train_cfg: for a new state (``vocab_size`` is set here).
        settings: REPL settings.
        device, precision: where and how to train (``auto`` = bf16 where fast).
    """

    def __init__(self, state_dir: str | os.PathLike, model_cfg: ModelConfig, train_cfg: TrainConfig,
                 settings: OnlineSettings | None = None, device: str = "auto", precision: str = "auto"):
        self.state = Path(state_dir)
        self.state.mkdir(parents=True, exist_ok=True)
        self._lock: StateLock | None = StateLock(self.state)
        try:
            self.device = resolve_device(device if device != "auto" else train_cfg.device)
            if self.device.type == "cpu":
                keep_freed_memory()  # as Trainer.__init__: no page faults on every step's activations
            self.precision = precision
            self.train_cfg = _check_train_cfg(train_cfg)
            self.settings = (settings or OnlineSettings()).validate()
            self.store = ReplayStore(self.state / "replay")
            self.stop_requested = False  # set by a signal handler; pulses stop at the next step
            self._compile_failed = False  # set when compiling failed: blocks run eagerly from then on
            self._model_cfg = model_cfg
            self._fresh(model_cfg)
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------- building
    @classmethod
    def open(cls, state_dir: str | os.PathLike, preset: str = "tinygpt", overrides: Iterable[str] = (),
             settings: dict | None = None, device: str = "auto", precision: str = "auto") -> "OnlineLearner":
        """Open a state folder: load its last save, or start empty from ``preset``.

        Args:
            overrides: ``key=value`` config overrides; model ones only for a new state.
            settings: :class:`OnlineSettings` fields to change (e.g. ``{"steps": 5}``).
        """
        state = Path(state_dir)
        overrides = list(overrides)
        model_dir = recover_model_dir(state)
        if model_dir is not None:
            saved_model, train_cfg, saved_settings = read_saved_configs(model_dir)
            model_cfg, train_cfg = apply_overrides(saved_model, train_cfg, overrides)
            # Re-running the same command line is fine; changing the saved shape is not.
            changed = [f.name for f in dataclasses.fields(ModelConfig)
                       if f.name != "vocab_size" and getattr(model_cfg, f.name) != getattr(saved_model, f.name)]
            if changed:
                raise FoundryError(f"{state} already holds a model whose shape is fixed: cannot change "
                                   f"model.{changed[0]} (drop that override or use another --state)")
            base = {**saved_settings, **(settings or {})}
        else:
            model_cfg, train_cfg = load_config(preset, [*ONLINE_TRAIN_DEFAULTS, *overrides])
            base = dict(settings or {})
        learner = cls(state, model_cfg, train_cfg, OnlineSettings.from_dict(base), device, precision)
        if model_dir is not None:
            try:
                learner.load(model_dir, keep_settings=True)
            except BaseException:
                learner.close()
                raise
        learner.catch_up()
        return learner

    def _fresh(self, model_cfg: ModelConfig) -> None:
        torch.manual_seed(self.train_cfg.seed)
        self.rng = random.Random(self.train_cfg.seed)
        self.tokenizer = CharTokenizer(SEPARATOR)
        cfg = dataclasses.replace(model_cfg, vocab_size=vocab_capacity(self.tokenizer.vocab_size,
                                                                       self.settings.max_vocab))
        self.model = MiniLLM(cfg).to(self.device).train()
        self.optimizers = build_optimizers(self.model, self.train_cfg)
        self.ema = EMA(self.model, self.train_cfg.ema_decay) if self.train_cfg.ema_decay > 0 else None
        self.step = 0
        self.records_seen = 0
        self.losses: deque[float] = deque(maxlen=200)
        self.last_pulse: PulseResult | None = None
        self._after_model_change()

    def _after_model_change(self) -> None:
        self.amp_dtype = resolve_dtype(self.precision, self.device, self.model.cfg.dim)
        # What a step changes (the same objects as self.model/optimizers/ema; vocabulary growth
        # keeps them), for the shared step function.
        self.parts = StepParts(self.model, self.optimizers, self.ema, loss_scaler(self.device, self.amp_dtype),
                               self.amp_dtype, self.train_cfg.grad_clip)
        self.seq_len = min(self.train_cfg.seq_len or self.model.cfg.max_seq_len, self.model.cfg.max_seq_len)
        self.sep_id = self.tokenizer.stoi[SEPARATOR]
        self.pad_id = self.tokenizer.token_id(PAD)
        self.unk_id = self.tokenizer.token_id(UNK)
        self._gen_model: MiniLLM | None = None
        self._gen_stale = True
        self._compile_blocks()

    def _compile_blocks(self) -> None:
        """With ``train.compile`` (the tinygpt preset): compile the transformer blocks.

        Only the blocks: they share one graph (compiled once, about 10 s the first time on
        a machine, a few seconds from the compiler's disk cache later), and the embedding,
        head and loss stay eager, so a growing vocabulary never recompiles. Shapes are
        static (faster kernels than dynamic ones); :meth:`batch` rounds its width up to a
        power of two so only a few widths ever compile.
        """
        self.compiled = bool(self.train_cfg.compile) and not self._compile_failed
        if self.compiled:
            for layer in self.model.layers:
                layer.compile(dynamic=False)

    def _uncompile_blocks(self, error: Exception) -> None:
        # No working compiler here (e.g. no C++ toolchain): the same math, uncompiled.
        print(f"warning: training uncompiled ({type(error).__name__}: {str(error).splitlines()[0][:200]})",
              file=sys.stderr)
        self._compile_failed, self.compiled = True, False
        for layer in self.model.layers:
            layer._compiled_call_impl = None  # what nn.Module.compile() set

    # -------------------------------------------------------------- vocabulary
    def observe(self, text: str) -> list[str]:
        """Add ``text``'s new characters to the vocabulary (growing the model if needed).

        Past ``settings.max_vocab`` characters nothing is added: the rest are UNK."""
        new = self._take_chars(text)
        if new:
            self._ensure_capacity()
        return new

    def _take_chars(self, text: str) -> list[str]:
        """Add ``text``'s new characters to the tokenizer while the cap allows; returns them."""
        room = self.settings.max_vocab - self.tokenizer.vocab_size
        if room <= 0:
            return []
        stoi = self.tokenizer.stoi
        new = [ch for ch in dict.fromkeys(text) if ch not in stoi][:room]
        return self.tokenizer.add_chars(new)

    def _ensure_capacity(self) -> None:
        need = self.tokenizer.vocab_size
        if need > self.model.cfg.vocab_size:
            self.grow_vocab(vocab_capacity(need, self.settings.max_vocab))

    def grow_vocab(self, rows: int) -> None:
        """Give the model ``rows`` vocabulary rows; optimizer state and EMA follow."""
        before = dict(self.model.named_parameters())
        self.model.resize_vocab(rows)
        for name, p in self.model.named_parameters():
            old = before.get(name)
            if old is not None and old is not p:
                replace_parameter(self.optimizers, old, p)
        if self.ema is not None:
            self.ema.resize_like(self.model)
        self._gen_model = None
        self._gen_stale = True

    def catch_up(self) -> int:
        """Take into the vocabulary every character of inputs stored after the last save.

        A line stored durably just before a kill is in the store but not in the saved
        tokenizer; without this it would train as UNK forever. Returns new characters.
        """
        before = self.tokenizer.vocab_size
        for text in self.store.iter_records(self.records_seen):
            self._take_chars(text)
        self.records_seen = len(self.store)
        self._ensure_capacity()
        return self.tokenizer.vocab_size - before

    # --------------------------------------------------------------- training
    def add(self, text: str, durable: bool = True, typed: bool = True) -> int:
        """Store an input (durably by default) and learn its characters; returns its index."""
        index = self.store.append(text, durable=durable, typed=typed)
        self.observe(text)
        self.records_seen = len(self.store)
        return index

    def learn(self, text: str, steps: int | None = None) -> PulseResult:
        """One typed line: store it durably, then train a pulse."""
        self.add(text, durable=True)
        return self.pulse(self.settings.steps if steps is None else steps)

    def learn_file(self, path: str | os.PathLike, steps_per_line: float | None = None,
                   on_line: Callable[[int, int, PulseResult | None], None] | None = None) -> dict:
        """Train on a UTF-8 text file line by line (blank lines skipped).

        Every line is stored; ``steps_per_line`` (default ``settings.file_steps``)
        steps are trained after each, fractions accumulating. The file is checked
        completely before anything is stored (encoding, and every line fits one
        record), so a bad file stores nothing.
        """
        total = check_text_file(path, max_line_bytes=replay.MAX_RECORD)
        rate = self.settings.steps_per_file_line if steps_per_line is None else float(steps_per_line)
        if not rate > 0:
            raise FoundryError("steps per line must be positive")
        credit, steps, losses, t0 = 0.0, 0, [], time.perf_counter()
        done = 0
        try:
            for i, line in enumerate(iter_text_lines(path)):
                if self.stop_requested:
                    break
                self.add(line, durable=False, typed=False)
                done = i + 1
                credit += rate
                n = int(credit + 1e-9)
                result = None
                if n:
                    credit -= n
                    result = self.pulse(n)
                    steps += result.steps
                    if result.loss is not None:
                        losses.append(result.loss)
                self.store.maybe_sync()
                if on_line is not None:
                    on_line(i + 1, total, result)
        finally:
            self.store.sync()  # every stored line is on disk before the prompt returns
        return {"lines": done, "total_lines": total, "steps": steps,
                "loss": sum(losses[-20:]) / len(losses[-20:]) if losses else None,
                "seconds": time.perf_counter() - t0}

    def _window(self, start: int) -> list[int]:
        """Up to ``seq_len + 1`` ids: SEP, input ``start``, SEP, the inputs after it, ..."""
        need = self.seq_len + 1
        stoi, unk, sep = self.tokenizer.stoi, self.unk_id, self.sep_id
        ids = [sep]
        i, n = start, len(self.store)
        while len(ids) < need and i < n:
            rec = [stoi.get(ch, unk) for ch in self.store[i]]
            i += 1
            if not rec:  # a damaged record (see ReplayStore.damaged): nothing to train on
                continue
            if len(ids) == 1 and len(rec) + 1 > need:
                # A long input: a random stretch of it.
                off = self.rng.randrange(len(rec) - need + 1)
                return rec[off:off + need]
            ids.extend(rec)
            ids.append(sep)
        return ids[:need]

    def batch(self, batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets for one step: replayed windows, PAD-padded; PAD/UNK are never targets."""
        s = self.settings
        starts = self.store.sample_starts(batch_size or self.train_cfg.batch_size, self.rng, s.recent_ratio,
                                          s.recent_records, s.typed_ratio)
        windows = [self._window(st) for st in starts]
        width = max(len(w) for w in windows) - 1
        if self.compiled:  # few distinct shapes: each compiles once
            width = min(self.seq_len, max(32, 1 << (width - 1).bit_length()))
        x = torch.full((len(windows), width), self.pad_id, dtype=torch.long)
        y = torch.full((len(windows), width), -100, dtype=torch.long)
        for r, w in enumerate(windows):
            t = torch.tensor(w, dtype=torch.long)
            x[r, :len(w) - 1] = t[:-1]
            y[r, :len(w) - 1] = t[1:]
        y[(y == self.pad_id) | (y == self.unk_id)] = -100
        return x.to(self.device), y.to(self.device)

    def lr_factor(self, step: int | None = None) -> float:
        """Warmup, then constant: the schedule of a run that never ends."""
        return lr_factor(self.step if step is None else step, 0.0, "constant", self.train_cfg.warmup_steps, 1.0)

    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimizer step on ``(x, y)`` through the shared step; returns the loss (detached)."""
        factor = self.lr_factor()
        try:
            return train_step(self.parts, factor, 1, lambda _micro: self.model(x, y)[1])
        except Exception as e:
            # A compiled block fails at its first call where there is no working compiler.
            if not self.compiled:
                raise
            self._uncompile_blocks(e)
            for opt in self.optimizers:
                opt.zero_grad(set_to_none=True)
            return train_step(self.parts, factor, 1, lambda _micro: self.model(x, y)[1])

    def pulse(self, steps: int) -> PulseResult:
        """Train ``steps`` steps on replayed windows; stops early if ``stop_requested``.

        Not ``training.loop.run_loop``: a pulse has no progress bar, no checkpoints and no
        signal handling of its own (the REPL turns signals into ``stop_requested`` and saves
        after the pulse returns), and it tries ``steps`` batches, skipping any without a
        target, where the loop steps until a step count is reached.
        """
        t0 = time.perf_counter()
        if len(self.store) == 0 or steps <= 0:
            return PulseResult(0, None, 0.0)
        self.model.train()
        total, done = 0.0, 0
        for _ in range(steps):
            if self.stop_requested:
                break
            x, y = self.batch()
            if not (y != -100).any():
                continue
            loss = self._train_step(x, y)
            self.step += 1
            value = float(loss)
            self.losses.append(value)
            total += value
            done += 1
        self._gen_stale = True
        result = PulseResult(done, total / done if done else None, time.perf_counter() - t0)
        self.last_pulse = result
        return result

    # -------------------------------------------------------------- generation
    def generation_model(self) -> MiniLLM:
        """A model holding the EMA weights (the raw ones without EMA), for sampling and scoring."""
        if self._gen_model is None or self._gen_model.cfg.vocab_size != self.model.cfg.vocab_size:
            self._gen_model = MiniLLM(self.model.cfg).to(self.device)
            self._gen_stale = True
        if self._gen_stale:
            if self.ema is not None:
                self.ema.copy_to(self._gen_model)
            else:
                self._gen_model.load_state_dict(self.model.state_dict())
            self._gen_stale = False
        return self._gen_model.eval()

    def generate(self, prefix: str = "", temperature: float | None = None, top_p: float | None = None,
                 max_new_tokens: int | None = None, seed: int | None = None) -> str:
        """Continue ``prefix`` (the start of a new input) to the end of its line, with the EMA weights."""
        return "".join(self.stream(prefix, temperature, top_p, max_new_tokens, seed))

    def stream(self, prefix: str = "", temperature: float | None = None, top_p: float | None = None,
               max_new_tokens: int | None = None, seed: int | None = None) -> Iterator[str]:
        """:meth:`generate`, piece by piece as the characters come (the REPL's ``/gen``)."""
        s = self.settings
        gen = Generator(self.generation_model(), self.tokenizer, self.precision)
        top_p = s.top_p if top_p is None else top_p
        yield from gen.stream(SEPARATOR + prefix, max_new_tokens=max_new_tokens or s.max_new_tokens,
                              temperature=s.temperature if temperature is None else temperature,
                              top_p=top_p if top_p < 1 else None, stop=[SEPARATOR], seed=seed)

    @torch.no_grad()
    def text_loss(self, text: str, given: int = 1) -> float:
        """Mean cross-entropy (nats/char) of an input ``text``, EMA weights.

        Scored: every character after the first ``given`` ones, and the line end, each
        given the line so far. The first character is by default not scored: which input
        follows a separator is a guess among everything stored, rightly harder the more is
        stored; remembering a line means knowing how it goes on once begun. ``given=0``
        scores the whole line.
        """
        model = self.generation_model()
        ids = [self.sep_id] + [self.tokenizer.stoi.get(ch, self.unk_id) for ch in text] + [self.sep_id]
        ids = ids[-(self.model.cfg.max_seq_len + 1):]
        x = torch.tensor([ids[:-1]], device=self.device)
        y = torch.tensor([ids[1:]], device=self.device)
        y[0, :min(given, y.size(1) - 1)] = -100
        _, loss = model(x, y)
        return float(loss)

    # ------------------------------------------------------------- save / load
    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Save model, optimizer, EMA, schedule position, vocabulary and settings atomically.

        ``path`` None = the state folder's ``model/``; else a snapshot folder.
        """
        target = self.state / MODEL_DIR if path is None else Path(path)
        check_save_target(target, snapshot=path is not None)
        self.store.sync()  # the save counts records_seen: they are on disk first
        state = TrainingState.capture(self.step, self.model, self.optimizers, self.ema, self.parts.scaler,
                                      {"records_seen": self.records_seen, "store_id": self.store.id}, self.rng)
        return write_save(target, self.model, self.tokenizer, state, self.ema, {
            "train": dataclasses.asdict(self.train_cfg), "settings": dataclasses.asdict(self.settings),
            "losses": [round(v, 5) for v in self.losses], "saved_at": time.time(),
        }, snapshot=path is not None)

    def load(self, path: str | os.PathLike | None = None, keep_settings: bool = False) -> None:
        """Load a save (default: the state folder's); on any error nothing changes."""
        if path is None:
            src = recover_model_dir(self.state)
            if src is None:
                raise FoundryError(f"nothing saved yet in {self.state}")
        else:
            src = recover_save(Path(path), snapshot=True) or Path(path)  # read_save names what is missing
        saved = read_save(src, self.device, self.train_cfg, SEPARATOR)
        meta = saved.meta
        settings = self.settings if keep_settings else OnlineSettings.from_dict(meta.get("settings", {}))
        # Everything checked: switch over.
        self.model, self.optimizers, self.ema, self.tokenizer = saved.model, saved.optimizers, saved.ema, saved.tokenizer
        self.settings = settings
        self.step = saved.step
        self.losses = deque((float(v) for v in meta.get("losses", [])), maxlen=200)
        self.last_pulse = None
        same_store = saved.counter("store_id") == self.store.id
        self.records_seen = min(int(saved.counter("records_seen", 0)), len(self.store)) if same_store else 0
        saved.state.restore_rng(self.rng)
        self._after_model_change()
        if saved.state.scaler and self.parts.scaler.is_enabled():
            self.parts.scaler.load_state_dict(saved.state.scaler)
        self.catch_up()

    def reset(self) -> None:
        """Erase everything: stored inputs, model, optimizer, history of losses."""
        self.store.close()
        erase(self.state)
        self.store = ReplayStore(self.state / "replay")
        self._fresh(self._model_cfg)

    # ------------------------------------------------------------------ stats
    def stats(self) -> dict:
        """Figures for ``/stats``: vocabulary, inputs, steps, recent loss, sizes, settings."""
        recent = list(self.losses)[-20:]
        return {
            "vocab_size": self.tokenizer.vocab_size,
            "vocab_capacity": self.model.cfg.vocab_size,
            "inputs": len(self.store),
            "damaged": self.store.damaged,
            "input_bytes": self.store.payload_bytes,
            "steps": self.step,
            "recent_loss": sum(recent) / len(recent) if recent else None,
            "lr": self.train_cfg.lr * self.lr_factor(),
            "parameters": self.model.num_parameters(),
            "disk_bytes": disk_bytes(self.state),
            "cache_bytes": self.store.cached_bytes,
            "state": str(self.state),
            "settings": dataclasses.asdict(self.settings),
        }

    def close(self) -> None:
        """Close the replay store and let go of the state folder's lock (idempotent)."""
        store = getattr(self, "store", None)
        if store is not None:
            store.close()
        if getattr(self, "_lock", None) is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "OnlineLearner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------- helpers
def _check_train_cfg(cfg: TrainConfig) -> TrainConfig:
    cfg = dataclasses.replace(cfg).validate()
    if cfg.schedule != "constant":
        raise FoundryError(f"online learning runs without end, so it uses train.schedule=constant (warmup, then "
                           f"constant); '{cfg.schedule}' would decay to a floor and stay there")
    if cfg.grad_accum != 1:
        raise FoundryError("online learning uses train.grad_accum=1")
    return cfg
