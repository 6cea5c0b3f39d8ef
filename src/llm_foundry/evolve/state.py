"""The state folder of H2Q-Evo and the atomic replacement of model folders.

    STATE/
      settings.json          model and training config, tokenizer kind, seed
      data/                  the fixed split: train/val shards, tokenizer.json, split.json, test.txt
      champion/              the current model (a model folder: config.json, model.safetensors, tokenizer.json)
      best/                  the best epoch of `--mode train` (lowest val loss)
      checkpoints/           epoch_NNN/ every --save-every epochs; last/ (+ optimizer) for resuming training
      training_log.json      one entry per epoch
      train_run.json         progress of the current `--mode train` run (for resuming it)
      evolution_stats.json   counters and the per-cycle history
      cycle_state.json       the evolution cycle in progress (for resuming it)
      cycle/                 finished candidates of the cycle in progress
      knowledge/             self-generated text that passed the filters (self_generated.jsonl)
      lock                   held by the `--mode train` or `--mode evolve` process that changes the
                             folder (its pid and command): a second one stops with a one-line error

A model folder is replaced by writing the new one beside it and swapping folders
(``utils.io.replace_folder``); a folder is never rewritten in place, so a reader (or a
kill) sees the old model or the new one, never a mix.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import torch

from ..config import ModelConfig, TrainConfig, config_to_dict, configs_from_dict
from ..models import MiniLLM
from ..tokenizers import Tokenizer
from ..models.model_dir import CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE, write_model_folder
from ..utils.errors import FoundryError
from ..utils.io import atomic_write_json, read_json, recover_folder
from ..utils.lock import StateLock

DEFAULT_STATE_DIR = "h2q_state"
MODEL_FILES = (WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_FILE)


class StatePaths:
    """Names of everything in a state folder (see the module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.settings = self.root / "settings.json"
        self.data = self.root / "data"
        self.champion = self.root / "champion"
        self.best = self.root / "best"
        self.checkpoints = self.root / "checkpoints"
        self.last = self.checkpoints / "last"
        self.training_log = self.root / "training_log.json"
        self.train_run = self.root / "train_run.json"
        self.stats = self.root / "evolution_stats.json"
        self.cycle_state = self.root / "cycle_state.json"
        self.cycle = self.root / "cycle"
        self.knowledge = self.root / "knowledge"
        self.plot = self.root / "evolution_stats.png"

    def has_split(self) -> bool:
        return (self.data / "meta.json").is_file() and (self.data / "split.json").is_file()

    def has_champion(self) -> bool:
        return is_complete_model_dir(self.champion)

    def require_champion(self) -> Path:
        # Only a missing champion is a swap to finish here: readers (--mode demo) hold no lock, and beside
        # a whole champion the swap's folders may be a save in progress (the lock holder tidies them).
        if not self.has_champion():
            recover_model_dir(self.champion)
        if not self.has_champion():
            raise FoundryError(f"no trained model in {self.root}; run `foundry evolve --mode train` first")
        return self.champion


def lock_state(paths: StatePaths, mode: str) -> StateLock:
    """Hold the state folder for this process: ``--mode train`` and ``--mode evolve`` change it,
    and two of them at once would interleave their swaps and records.

    Raises:
        FoundryError: another process holds it (one line naming its command and pid).
    """
    paths.root.mkdir(parents=True, exist_ok=True)
    return StateLock(paths.root, command=f"foundry evolve --mode {mode}")


def is_complete_model_dir(path: Path) -> bool:
    return path.is_dir() and all((path / f).is_file() for f in MODEL_FILES)


def write_model_dir(path: str | Path, model: MiniLLM, tokenizer: Tokenizer, step: int = 0,
                    weights: dict[str, torch.Tensor] | None = None, state_bytes: bytes | None = None) -> None:
    """Replace the model folder ``path`` as a whole (:func:`~llm_foundry.models.model_dir.write_model_folder`).

    Args:
        state_bytes: a serialised training state (``training.state``) to keep beside the weights.
    """
    write_model_folder(path, model, tokenizer, step, weights, state_bytes)


def weights_digest(model_dir: Path) -> str:
    """SHA-256 of a model folder's weights file (to know whether the champion changed)."""
    return hashlib.sha256((Path(model_dir) / WEIGHTS_FILE).read_bytes()).hexdigest()


def recover_model_dir(path: str | Path) -> None:
    """Finish or roll back a folder swap that was interrupted (idempotent)."""
    # Older versions wrote .NAME.new in place, so a .NAME.new is only taken when complete.
    recover_folder(path, is_complete_model_dir)


def save_settings(paths: StatePaths, model_cfg: ModelConfig, train_cfg: TrainConfig, tokenizer: str, seed: int) -> None:
    atomic_write_json(paths.settings, {**config_to_dict(model_cfg, train_cfg), "tokenizer": tokenizer, "seed": seed})


def load_settings(paths: StatePaths) -> tuple[ModelConfig, TrainConfig, dict]:
    """The saved configs of a state folder, and the raw settings."""
    raw = read_json(paths.settings, "state settings")
    model_cfg, train_cfg = configs_from_dict(raw, strict=False)
    return model_cfg, train_cfg, raw


def model_shape_changes(old: ModelConfig, new: ModelConfig) -> list[str]:
    return [f.name for f in dataclasses.fields(old) if getattr(old, f.name) != getattr(new, f.name)]
