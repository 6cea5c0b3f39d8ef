"""The model directory: the one unit every command reads and writes.

    config.json          {"architecture": "MiniLLM", ...ModelConfig fields}
    model.safetensors    weights (a tied output head is stored once, as the embedding)
    tokenizer.json       see llm_foundry.tokenizers
    training_state.pt    optional: optimizer, EMA, RNG and loop state for --resume

Each file is written atomically. Loading checks everything before a model is
returned, so a truncated, foreign or mismatched file is a one-line error and never
a half-loaded model.

A training run rewrites its folder many times, so there the four files are one
unit (:func:`save_checkpoint_dir`): they live in ``checkpoint/``, which is replaced as
a whole (``utils.io.replace_folder``), and the names at the top are links into it:

    RUN/config.json -> checkpoint/config.json   (and the other three)
    RUN/checkpoint/   config.json, model.safetensors, tokenizer.json, training_state.pt

A kill at any instant leaves the old checkpoint or the new one, never weights of one
step beside the training state of another; readers see a plain model folder. Where links
cannot be made (Windows without the right to make them), the names at the top are hard
links or copies, refreshed after every swap: ``checkpoint/`` stays the source of truth,
and every reader finishes an interrupted save before it reads (:func:`recover_checkpoint_dir`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ModelConfig
from .minillm import MiniLLM
from ..tokenizers import Tokenizer, load_tokenizer
from ..utils.errors import FoundryError
from ..utils.io import atomic_write_bytes, atomic_write_json, read_json, recover_folder, replace_folder

ARCHITECTURE = "MiniLLM"
CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE, STATE_FILE = "config.json", "model.safetensors", "tokenizer.json", "training_state.pt"
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILES = (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE, STATE_FILE)


@dataclass
class ModelBundle:
    """What :func:`load_model_dir` returns."""

    model: MiniLLM
    tokenizer: Tokenizer
    step: int


def save_model_dir(path: str | Path, model: MiniLLM, tokenizer: Tokenizer | None = None, step: int = 0,
                   weights: dict[str, torch.Tensor] | None = None) -> None:
    """Write config, weights (``weights`` overrides the model's own, e.g. EMA) and tokenizer.

    Raises:
        FoundryError: ``path`` is a training run folder (its checkpoint is written by
            :func:`save_checkpoint_dir` only, as one unit).
    """
    from safetensors.torch import save

    from .. import __version__

    path = Path(path)
    if (path / CHECKPOINT_DIR).is_dir():
        raise FoundryError(f"{path} is a training run folder; save the model to another folder")
    path.mkdir(parents=True, exist_ok=True)
    state = weights if weights is not None else model.state_dict()
    if model.cfg.tie_embeddings:
        state = {k: v for k, v in state.items() if k != "output.weight"}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    atomic_write_bytes(path / WEIGHTS_FILE, save(tensors, metadata={"step": str(step), "format": "pt"}))
    atomic_write_json(path / CONFIG_FILE, {"architecture": ARCHITECTURE, "llm_foundry_version": __version__,
                                            **dataclasses.asdict(model.cfg)})
    if tokenizer is not None:
        tokenizer.save(path / TOKENIZER_FILE)


def write_model_folder(path: str | Path, model: MiniLLM, tokenizer: Tokenizer, step: int,
                       weights: dict[str, torch.Tensor] | None = None, state_bytes: bytes | None = None,
                       extra_files: dict[str, bytes] | None = None, legacy: bool = True) -> Path:
    """Replace the model folder ``path`` as a whole (``utils.io.replace_folder``), Ctrl-C held back
    meanwhile: the model folder files, and optionally ``training_state.pt`` and other files.

    Args:
        weights: as in :func:`save_model_dir`.
        state_bytes: the serialised training state (``training.state``), or None for none.
        extra_files: more files of the unit, name -> content (e.g. the online learner's ``online.json``).
        legacy: as in ``replace_folder`` (False: the folders beside ``path`` may be someone else's).
    """
    from ..utils.signals import deferred_signals

    def fill(folder: Path) -> None:
        save_model_dir(folder, model, tokenizer, step, weights=weights)
        if state_bytes is not None:
            (folder / STATE_FILE).write_bytes(state_bytes)  # replace_folder fsyncs the folder's files
        for name, data in (extra_files or {}).items():
            (folder / name).write_bytes(data)

    with deferred_signals():
        return replace_folder(path, fill, legacy=legacy)


def save_checkpoint_dir(path: str | Path, model: MiniLLM, tokenizer: Tokenizer, step: int,
                        weights: dict[str, torch.Tensor] | None = None, state_bytes: bytes | None = None) -> None:
    """Write a run folder's checkpoint (the model folder files and ``training_state.pt``) as one unit.

    Args:
        path: the run folder.
        weights: as in :func:`save_model_dir`.
        state_bytes: the serialised training state (``training.state``), or None for none.
    """
    from ..utils.signals import deferred_signals

    path = Path(path)
    with deferred_signals():  # a second Ctrl-C waits for the swap and the links
        _adopt_plain_files(path)
        write_model_folder(path / CHECKPOINT_DIR, model, tokenizer, step, weights, state_bytes)
        _link_checkpoint(path)


def recover_checkpoint_dir(path: str | Path) -> None:
    """Finish a checkpoint save of the run folder ``path`` that a kill interrupted (idempotent):
    the swap of ``checkpoint/``, and the links of a first save. Cheap when there is nothing to do."""
    path = Path(path)
    if not (path / CHECKPOINT_DIR).exists() and not any(
            (path / f".{CHECKPOINT_DIR}.{tag}").exists() for tag in ("new", "old")):
        return  # a plain model folder, or a run folder of plain files written before checkpoints were units
    recover_folder(path / CHECKPOINT_DIR)
    missing = [name for name in CHECKPOINT_FILES if not (path / name).exists() and not (path / name).is_symlink()]
    if missing:
        _link_checkpoint(path, only=missing)
    for name in CHECKPOINT_FILES:
        (path / f".{name}.link").unlink(missing_ok=True)


def _adopt_plain_files(path: Path) -> None:
    """Move a run folder of plain files (written before checkpoints were units) to the linked layout.

    The plain files are first hard-linked into a ``checkpoint/`` of their own, then each is
    replaced by a link to its copy: the content under every name is the same all along,
    so a kill during this step changes nothing a reader sees.
    """
    plain = [name for name in CHECKPOINT_FILES if (path / name).is_file() and not (path / name).is_symlink()]
    if not plain:
        return

    def fill(folder: Path) -> None:
        import os
        import shutil

        for name in plain:
            try:
                os.link(path / name, folder / name)
            except OSError:  # a file system without hard links
                shutil.copy2(path / name, folder / name)

    replace_folder(path / CHECKPOINT_DIR, fill)
    _link_checkpoint(path)


def _link_checkpoint(path: Path, only: list[str] | None = None) -> None:
    """Make each top-level checkpoint name (or those in ``only``) show the file in ``checkpoint/``
    (each name replaced atomically): a relative symbolic link, else a hard link, else a copy."""
    import os
    import shutil

    for name in only or CHECKPOINT_FILES:
        link, target = path / name, path / CHECKPOINT_DIR / name
        if not target.is_file():
            continue
        relative = f"{CHECKPOINT_DIR}/{name}"
        if link.is_symlink() and os.readlink(link) == relative:
            continue  # a link follows every swap by itself
        tmp = path / f".{name}.link"
        tmp.unlink(missing_ok=True)
        try:
            os.symlink(relative, tmp)
        except (OSError, NotImplementedError):  # e.g. Windows without the right to make links
            try:
                os.link(target, tmp)
            except OSError:
                shutil.copy2(target, tmp)
        os.replace(tmp, link)


def load_model_config(path: str | Path) -> ModelConfig:
    """Read and validate ``config.json`` of a model folder (finishing a run folder's interrupted save first)."""
    path = Path(path)
    if not path.is_dir():
        raise FoundryError(f"model folder not found: {path}")
    _finish_interrupted_save(path)
    data = read_json(path / CONFIG_FILE, "model config")
    if not isinstance(data, dict) or data.get("architecture") != ARCHITECTURE:
        found = data.get("architecture") or data.get("architectures") if isinstance(data, dict) else None
        raise FoundryError(f"{path / CONFIG_FILE} is not a MiniLLM config (architecture: {found!r})")
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    values = {k: v for k, v in data.items() if k not in ("architecture", "llm_foundry_version")}
    unknown = set(values) - known
    if unknown:
        raise FoundryError(f"{path / CONFIG_FILE} has fields this version does not know: {', '.join(sorted(unknown))}")
    try:
        return ModelConfig(**values).validate()
    except TypeError as e:
        raise FoundryError(f"{path / CONFIG_FILE} is malformed: {e}") from None


def _finish_interrupted_save(path: Path) -> None:
    """A run folder whose swap of ``checkpoint/`` a kill interrupted reads as its old or new checkpoint,
    not as links to nothing (a missing name is left missing: that is damage to report, not a save to finish)."""
    if not any((path / f".{CHECKPOINT_DIR}.{tag}").exists() for tag in ("new", "old")):
        return
    try:
        recover_checkpoint_dir(path)
    except OSError as e:
        raise FoundryError(f"{path} holds an interrupted checkpoint save that cannot be finished here "
                           f"({e.strerror}); resume the training command with --resume") from None


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of ``model.safetensors``, or a one-line error if it is damaged."""
    from safetensors import safe_open

    file = Path(path) / WEIGHTS_FILE
    if not file.is_file():
        raise FoundryError(f"weights not found: {file}")
    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for every kind of damage
        raise FoundryError(f"weights file is corrupt or truncated: {file} ({str(e).splitlines()[0][:120]})") from None
    return tensors, meta


def load_model_dir(path: str | Path, device: torch.device | str = "cpu", with_tokenizer: bool = True) -> ModelBundle:
    """Load a model folder, checking that config, weights and tokenizer agree."""
    path = Path(path)
    cfg = load_model_config(path)
    tensors, meta = read_weights(path)
    model = MiniLLM(cfg)
    expected = {k: v.shape for k, v in model.state_dict().items() if not (cfg.tie_embeddings and k == "output.weight")}
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    bad_shape = [k for k in expected if k in tensors and tuple(tensors[k].shape) != tuple(expected[k])]
    if missing or extra or bad_shape:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}" if extra
                  else f"shape of {bad_shape[0]} is {tuple(tensors[bad_shape[0]].shape)}, config wants {tuple(expected[bad_shape[0]])}")
        raise FoundryError(f"weights in {path} do not match its config.json (another architecture?): {detail}")
    model.load_state_dict(tensors, strict=False)
    model.to(device)
    tokenizer = None
    if with_tokenizer:
        tokenizer = load_tokenizer(path / TOKENIZER_FILE)
        if tokenizer.vocab_size > cfg.vocab_size:
            raise FoundryError(f"tokenizer in {path} has {tokenizer.vocab_size} ids but the model only {cfg.vocab_size}")
    return ModelBundle(model=model, tokenizer=tokenizer, step=int(meta.get("step", 0)))
