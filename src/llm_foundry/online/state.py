"""The online learner's state folder on disk: its lock, its saves, recovery after a crash.

Layout (one learner per folder)::

    STATE/
      replay/            the durable replay store (see replay.py): every input, forever
      model/             the last save, a normal model folder -- `foundry generate STATE/model` works:
        config.json, model.safetensors (the EMA weights), tokenizer.json (the grown char vocabulary),
        training_state.pt  raw weights, optimizer moments, EMA shadow, RNG, step
        online.json        schedule position, train config, sampling settings, recent losses,
                           how many stored records the model has seen; written last
      history            the REPL's line history
      lock               held while a learner has the folder open (holds its pid)

A save writes ``model.new/`` completely, then :func:`swap_in` puts it in place with two
renames; a kill at any moment leaves either the old or the new folder whole, and
:func:`recover_model_dir` finds it. This module knows files, not training: the learner
hands it tensors and settings and gets them back (:func:`write_save`, :func:`read_save`).
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ModelConfig, TrainConfig
from ..config.presets import configs_from_dict
from ..models import MiniLLM
from ..models.model_dir import STATE_FILE, load_model_config, load_model_dir, save_model_dir
from ..tokenizers import CharTokenizer
from ..training.ema import EMA
from ..training.optim import build_optimizers
from ..utils.errors import FoundryError
from ..utils.io import _fsync_dir, atomic_torch_save, atomic_write_json, read_json

ONLINE_FILE = "online.json"
LOCK_FILE = "lock"
MODEL_DIR = "model"
# The save and the leftovers a crash mid-save can leave beside it (see swap_in).
MODEL_DIRS = (MODEL_DIR, MODEL_DIR + ".new", MODEL_DIR + ".old")


# -------------------------------------------------------------------- the lock
class StateLock:
    """Keeps a second process out of a state folder until :meth:`release` (or exit).

    The lock is the OS's where it has one, so it dies with its process: ``fcntl.flock``
    (Linux, macOS), else ``msvcrt.locking`` (Windows). Elsewhere a lock file created
    with ``O_EXCL`` holds the owner's pid; a lock left by a process that no longer runs
    is taken over. (That fallback cannot tell a reused pid from its owner; the error
    names the file to delete in that case.)

    Args:
        state: the state folder (it must exist).
        kind: ``"fcntl"``, ``"msvcrt"`` or ``"pidfile"``; default the first available.

    Raises:
        FoundryError: another process holds the folder (one line).
    """

    def __init__(self, state: Path, kind: str | None = None):
        self.path = Path(state) / LOCK_FILE
        self.kind = kind or _lock_kind()
        self._fd: int | None = None
        acquire = {"fcntl": self._acquire_fcntl, "msvcrt": self._acquire_msvcrt, "pidfile": self._acquire_pidfile}
        if self.kind not in acquire:
            raise ValueError(f"unknown lock kind {self.kind!r}")
        acquire[self.kind]()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Let the next process in (the OS does this too when the process ends)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if self.kind == "pidfile":
            os.close(fd)
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            return
        if self.kind == "msvcrt":
            import msvcrt

            try:
                os.lseek(fd, 0, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
            except OSError:
                pass  # closing the file unlocks it as well
        os.close(fd)  # closing drops an flock

    def _in_use(self) -> FoundryError:
        pid = _read_pid(self.path)
        owner = f" (pid {pid})" if pid is not None else ""
        hint = f"; if it is not running, delete {self.path}" if self.kind == "pidfile" else ""
        return FoundryError(f"{self.path.parent} is in use by another `foundry online`{owner}{hint}")

    def _acquire_fcntl(self) -> None:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise self._in_use() from None
        self._fd = fd
        _write_pid(fd)

    def _acquire_msvcrt(self) -> None:
        import msvcrt

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # Windows locks are mandatory: nobody else can read a locked byte, so no pid is written.
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            os.close(fd)
            raise self._in_use() from None
        self._fd = fd

    def _acquire_pidfile(self) -> None:
        for _ in range(3):  # take over a stale lock, then try again
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                pid = _read_pid(self.path)
                # No pid: a lock file of another kind left behind (or, for an instant, one
                # being written: a race this fallback accepts).
                if pid is not None and _pid_alive(pid):
                    raise self._in_use() from None
                try:
                    os.unlink(self.path)  # its owner is gone
                except FileNotFoundError:
                    pass
                continue
            self._fd = fd
            _write_pid(fd)
            return
        raise self._in_use()


def _lock_kind() -> str:
    try:
        import fcntl  # noqa: F401
        return "fcntl"
    except ImportError:
        pass
    try:
        import msvcrt  # noqa: F401
        return "msvcrt"
    except ImportError:
        return "pidfile"


def _write_pid(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, f"{os.getpid()}\n".encode())


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return None  # no file, a locked one, or one being written: no pid to name


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":
        return True  # os.kill would end the process there; Windows uses msvcrt anyway
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, run by someone else
    return True


# ------------------------------------------------------------- save / recovery
def swap_in(new: Path, target: Path) -> None:
    """Put the complete folder ``new`` in place of ``target``: the one step a crash cannot tear.

    ``target`` -> ``target.old``, ``new`` -> ``target``, drop ``target.old``. At every
    instant either ``target`` is whole, or (between the renames) ``target.old`` and a
    whole ``new`` are; :func:`recover_model_dir` picks the right one on the next open.
    """
    old = target.with_name(target.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    _fsync_dir(target.parent)
    if old.exists():
        shutil.rmtree(old)


def recover_model_dir(state: Path) -> Path | None:
    """The state's complete save after a possible crash mid-save, tidying leftovers.

    A save writes ``model.new`` (``online.json`` last), renames ``model`` to ``model.old``,
    then ``model.new`` to ``model``. So: ``model`` present = it is whole; otherwise a
    whole ``model.new`` (one with ``online.json``) is newer than ``model.old``.
    """
    cur, new, old = (state / name for name in MODEL_DIRS)
    if not cur.is_dir():
        if new.is_dir() and (new / ONLINE_FILE).is_file():
            os.replace(new, cur)
        elif old.is_dir():
            os.replace(old, cur)
    for leftover in (new, old):
        if leftover.exists() and cur.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
    return cur if (cur / ONLINE_FILE).is_file() else None


def check_save_target(target: Path, snapshot: bool) -> None:
    """One-line errors for a save folder that is a file, or (a snapshot) holds something else."""
    if target.exists() and not target.is_dir():
        raise FoundryError(f"cannot save to {target}: it is a file (give a folder name)")
    if snapshot and target.is_dir() and any(target.iterdir()) and not (target / ONLINE_FILE).is_file():
        raise FoundryError(f"cannot save to {target}: it is a folder holding something else")


def write_save(target: Path, model: MiniLLM, tokenizer: CharTokenizer, step: int,
               optimizers: list[torch.optim.Optimizer], ema: EMA | None, rng: random.Random,
               online: dict) -> Path:
    """Write a whole save to ``target.new``, then swap it in (see :func:`swap_in`).

    ``model.safetensors`` holds the EMA weights (what generation uses); the raw weights
    go to ``training_state.pt`` with the optimizers, EMA shadow and RNG. ``online`` (the
    learner's schedule position, settings, ...) becomes ``online.json``, written last:
    a folder with it is complete.
    """
    tmp = target.with_name(target.name + ".new")
    if tmp.exists():
        shutil.rmtree(tmp)
    raw = model.state_dict()
    state = {
        "step": step,
        "optimizers": [opt.state_dict() for opt in optimizers],
        "ema": ema.state_dict() if ema is not None else None,
        "raw_weights": raw if ema is not None else None,
        "rng": {"torch": torch.get_rng_state(), "python": list(rng.getstate()[1]),
                "python_version": rng.getstate()[0]},
    }
    atomic_torch_save(tmp / STATE_FILE, state)
    weights = {k: ema.shadow.get(k, v) for k, v in raw.items()} if ema is not None else None
    save_model_dir(tmp, model, tokenizer, step, weights=weights)
    atomic_write_json(tmp / ONLINE_FILE, {"format": "llm_foundry.online", "version": 1, "step": step, **online})
    swap_in(tmp, target)
    return target


@dataclass
class Save:
    """A save read back, checked whole, nothing of the learner changed yet."""

    model: MiniLLM
    tokenizer: CharTokenizer
    optimizers: list[torch.optim.Optimizer]
    ema: EMA | None
    step: int
    meta: dict  # online.json
    rng: dict  # {"torch": ByteTensor, "python": [...], "python_version": 3}, or {}


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
    try:
        state = torch.load(src / STATE_FILE, map_location=device, weights_only=True)
    except Exception as e:
        raise FoundryError(f"training state is corrupt: {src / STATE_FILE} ({str(e).splitlines()[0][:100]})") from None
    if state.get("step") != bundle.step or meta.get("step") != bundle.step:
        raise FoundryError(f"{src} holds parts of different saves (weights of step {bundle.step}, "
                           f"training state of step {state.get('step')})")
    model = bundle.model
    if state.get("raw_weights") is not None:
        model.load_state_dict(state["raw_weights"])
    model.train()
    optimizers = build_optimizers(model, train_cfg)
    if len(state["optimizers"]) != len(optimizers):
        raise FoundryError(f"{src} was trained with another optimizer; keep train.optimizer as it was")
    for opt, sd in zip(optimizers, state["optimizers"]):
        opt.load_state_dict(sd)
        for g in opt.param_groups:  # base_lr follows the current config
            g["base_lr"] = train_cfg.muon_lr if isinstance(opt, torch.optim.Muon) else train_cfg.lr
    ema = None
    if train_cfg.ema_decay > 0:
        ema = EMA(model, train_cfg.ema_decay)  # from the loaded raw weights ...
        if state.get("ema") is not None:
            ema.load_state_dict(state["ema"])  # ... then the saved average
            ema.decay = train_cfg.ema_decay
    return Save(model, bundle.tokenizer, optimizers, ema, bundle.step, meta, state.get("rng") or {})


def restore_rng(saved: dict, rng: random.Random) -> None:
    """Put back the torch and Python random states a save recorded (see :func:`write_save`)."""
    if "torch" in saved:
        torch.set_rng_state(saved["torch"].cpu())
    if "python" in saved:
        rng.setstate((saved.get("python_version", 3), tuple(int(v) for v in saved["python"]), None))


def erase(state: Path) -> None:
    """Delete the replay store and every save of ``state`` (the lock and history stay)."""
    for name in ("replay", *MODEL_DIRS):
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
