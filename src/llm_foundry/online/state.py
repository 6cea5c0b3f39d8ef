"""The online learner's state folder on disk: its lock, its saves, recovery after a crash.

Layout (one learner per folder)::

    STATE/
      replay/            the durable replay store (see replay.py): every input, forever
      model/             the last save, a normal model folder -- `foundry generate STATE/model` works:
        config.json, model.safetensors (the EMA weights), tokenizer.json (the grown char vocabulary),
        training_state.pt  the training state every trainer writes (``training.state``): step,
                           raw weights, optimizer moments, EMA shadow, RNG, and in its ``extra``
                           how many stored records the model has seen (and of which store)
        online.json        train config, sampling settings, recent losses
      history            the REPL's line history
      lock               held while a learner has the folder open (holds its pid)

A save replaces ``model/`` as one unit, as every checkpoint does (``utils.io.replace_folder``):
a kill at any moment leaves the old or the new save whole, and :func:`recover_model_dir`
finishes the swap on the next open (also one that the saves before it left). This module
knows files, not training: the learner hands it a captured training state and settings
and gets them back (:func:`write_save`, :func:`read_save`).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ModelConfig, TrainConfig
from ..config.presets import configs_from_dict
from ..models import MiniLLM
from ..models.model_dir import STATE_FILE, load_model_config, load_model_dir, write_model_folder
from ..tokenizers import CharTokenizer
from ..training.ema import EMA
from ..training.optim import build_optimizers, peak_lrs
from ..training.state import TrainingState, load_state
from ..utils.errors import FoundryError
from ..utils.io import read_json, recover_folder
from ..utils.lock import StateLock  # noqa: F401 (re-exported; the lock lives in utils/lock.py)
from .replay import repair_store

ONLINE_FILE = "online.json"
ONLINE_VERSION = 2  # 1: the learner's counters were in online.json, not in the training state's extra
MODEL_DIR = "model"
# The save and the leftovers a kill mid-save can leave beside it: replace_folder's, and
# (non-hidden) those of the saves before it.
MODEL_DIRS = (MODEL_DIR, *(f".{MODEL_DIR}.{tag}" for tag in ("tmp", "new", "old")),
              *(f"{MODEL_DIR}.{tag}" for tag in ("new", "old")))


# ------------------------------------------------------------- save / recovery
def recover_save(target: Path, snapshot: bool = False) -> Path | None:
    """Finish or roll back a save of ``target`` that a kill interrupted; the save if whole, else None.

    A ``snapshot`` (``/save DIR``, a folder the user named) has neighbours that are not ours:
    only the swap's own marked folders are touched there (``utils.io.recover_folder``)."""
    # A .NAME.new of the saves before replace_folder may be half-written: online.json came last.
    recover_folder(target, lambda folder: (folder / ONLINE_FILE).is_file(), legacy=not snapshot)
    return target if (target / ONLINE_FILE).is_file() else None


def recover_model_dir(state: Path) -> Path | None:
    """The state folder's last save, after finishing a save a kill interrupted.

    Saves before ``utils.io.replace_folder`` wrote ``model.new`` in place (``online.json``
    last), then renamed ``model`` to ``model.old`` and ``model.new`` to ``model``: leftovers
    of theirs are handed to ``recover_folder`` under its own names (``.model.new``, ...).
    """
    target = state / MODEL_DIR
    for tag in ("new", "old"):
        legacy, hidden = state / f"{MODEL_DIR}.{tag}", state / f".{MODEL_DIR}.{tag}"
        if legacy.is_dir() and not hidden.exists():
            os.replace(legacy, hidden)
    return recover_save(target)


def check_save_target(target: Path, snapshot: bool) -> None:
    """One-line errors for a save folder that is a file, or (a snapshot) holds something else."""
    if target.exists() and not target.is_dir():
        raise FoundryError(f"cannot save to {target}: it is a file (give a folder name)")
    if snapshot and target.is_dir() and any(target.iterdir()) and not (target / ONLINE_FILE).is_file():
        raise FoundryError(f"cannot save to {target}: it is a folder holding something else")


def write_save(target: Path, model: MiniLLM, tokenizer: CharTokenizer, state: TrainingState, ema: EMA | None,
               online: dict, snapshot: bool = False) -> Path:
    """Write a whole save and swap it in place of ``target`` as one unit (``utils.io.replace_folder``).

    ``model.safetensors`` holds the EMA weights (what generation uses); the training state
    (``training.state``: raw weights, optimizers, EMA shadow, RNG, the learner's counters in
    ``extra``) goes to ``training_state.pt``; ``online`` (settings, recent losses, ...) to
    ``online.json``. A ``snapshot`` leaves every folder beside ``target`` that is not the
    swap's own alone (see :func:`recover_save`).
    """
    weights = {k: ema.shadow.get(k, v) for k, v in state.raw_weights.items()} if ema is not None else None
    meta = {"format": "llm_foundry.online", "version": ONLINE_VERSION, "step": state.step, **online}
    return write_model_folder(target, model, tokenizer, state.step, weights, state.to_bytes(),
                              {ONLINE_FILE: (json.dumps(meta, ensure_ascii=False, indent=2) + "\n").encode("utf-8")},
                              legacy=not snapshot)


@dataclass
class Save:
    """A save read back, checked whole, nothing of the learner changed yet (not even the RNG:
    ``state.restore_rng`` once the learner has switched over)."""

    model: MiniLLM
    tokenizer: CharTokenizer
    optimizers: list[torch.optim.Optimizer]
    ema: EMA | None
    meta: dict  # online.json
    state: TrainingState

    @property
    def step(self) -> int:
        return self.state.step

    def counter(self, key: str, default=None):
        """One of the learner's counters: the state's ``extra``; saves before it kept them in ``online.json``."""
        return self.state.extra.get(key, self.meta.get(key, default))


def read_saved_configs(model_dir: Path) -> tuple[ModelConfig, TrainConfig, dict]:
    """A save's model config, train config and settings dict (for reopening the state)."""
    saved = read_json(model_dir / ONLINE_FILE, "online state")
    _, train_cfg = configs_from_dict({"train": saved.get("train", {})}, strict=False)
    return load_model_config(model_dir), train_cfg, saved.get("settings", {})


def read_save(src: Path, device: torch.device, train_cfg: TrainConfig, separator: str) -> Save:
    """Read and check the save in ``src``; raises a one-line error for anything wrong.

    Order matters: raw weights first, then the optimizers, then an EMA built from the
    loaded weights and given its saved shadow (building the EMA before loading made
    the original TinyGPT sample noise after every restart). The optimizers and the EMA
    follow ``train_cfg`` (its learning rates and decay), not the saved config.
    """
    if not (src / ONLINE_FILE).is_file():
        raise FoundryError(f"{src} is not an online-learner save (no {ONLINE_FILE})")
    meta = read_json(src / ONLINE_FILE, "online state")
    bundle = load_model_dir(src, device)
    if not isinstance(bundle.tokenizer, CharTokenizer) or separator not in bundle.tokenizer.stoi:
        raise FoundryError(f"{src} does not hold an online learner's character vocabulary")
    state = load_state(src / STATE_FILE, device)  # this layout or the learner's unversioned one before it
    if state.step != bundle.step or meta.get("step") != bundle.step:
        raise FoundryError(f"{src} holds parts of different saves (weights of step {bundle.step}, "
                           f"training state of step {state.step})")
    model = bundle.model
    optimizers = build_optimizers(model, train_cfg)
    state.restore(model, optimizers, base_lrs=peak_lrs(optimizers, train_cfg), rng=False)
    model.train()
    ema = None
    if train_cfg.ema_decay > 0:
        ema = EMA(model, train_cfg.ema_decay)  # from the loaded raw weights ...
        if state.ema is not None:
            ema.load_state_dict(state.ema)  # ... then the saved average
            ema.decay = train_cfg.ema_decay
    return Save(model, bundle.tokenizer, optimizers, ema, meta, state)


def repair(state: Path) -> dict:
    """``foundry online --repair``: rewrite the state's replay store without its damaged
    records (``replay.repair_store``), holding the folder's lock meanwhile.

    Returns:
        ``{"kept": N, "dropped": N, "typed": N}``.
    """
    state = Path(state)
    if not (state / "replay").is_dir():
        raise FoundryError(f"{state} holds no replay store to repair")
    lock = StateLock(state)
    try:
        return repair_store(state / "replay")
    finally:
        lock.release()


def erase(state: Path) -> None:
    """Delete the replay store and every save of ``state`` (the lock and history stay)."""
    swap_leftovers = [p.name for p in state.glob(".*.foundry-*-*")]  # of interrupted folder swaps
    for name in ("replay", *MODEL_DIRS, *swap_leftovers):
        p = state / name
        if p.exists():
            shutil.rmtree(p)


def disk_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (files vanishing meanwhile count 0)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total
