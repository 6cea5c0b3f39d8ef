"""The model directory: the one unit every command reads and writes.

    config.json          {"architecture": "MiniLLM", ...ModelConfig fields}
    model.safetensors    weights (a tied output head is stored once, as the embedding)
    tokenizer.json       see llm_foundry.tokenizers
    training_state.pt    optional: optimizer, EMA, RNG and loop state for --resume

Each file is written atomically. Loading checks everything before a model is
returned, so a truncated, foreign or mismatched file is a one-line error and never
a half-loaded model. The metadata of ``model.safetensors`` (strings) proves the folder
is what was saved:

    step                   the training step of the weights
    tensors_sha256         sha256 of the tensor data (every byte after the header)
    tokenizer_kind         byte, char or bpe  } the fingerprint of the tokenizer.json
    tokenizer_vocab_size   its number of ids  } saved beside these weights (absent when
    tokenizer_sha256       sha256 of the file } the weights were saved without one)

A load compares every tensor's name, shape and dtype in the header with a model built on the
meta device before anything is allocated, then reads the tensors in one sequential pass that
also hashes them (no second read), and hashes the tokenizer file. A folder written before these keys
existed loads as before, unchecked.

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
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ModelConfig
from .adapters import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, has_adapters, merge_adapters
from .minillm import MiniLLM
from ..tokenizers import Tokenizer, load_tokenizer
from ..utils.errors import FoundryError
from ..utils.io import atomic_write_bytes, atomic_write_json, read_json, recover_folder, replace_folder

ARCHITECTURE = "MiniLLM"
CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE, STATE_FILE = "config.json", "model.safetensors", "tokenizer.json", "training_state.pt"
CHECKPOINT_DIR = "checkpoint"
# A LoRA run's adapters (models/adapters.py) belong to the unit too; a run without them has none.
CHECKPOINT_FILES = (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE, STATE_FILE, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE)
# Metadata keys of model.safetensors (see the module docstring).
TENSORS_SHA256 = "tensors_sha256"
TOKENIZER_KIND, TOKENIZER_VOCAB, TOKENIZER_SHA256 = "tokenizer_kind", "tokenizer_vocab_size", "tokenizer_sha256"
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own bound on the JSON header
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")  # what weights may be stored as (loaded as the model's float32)


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
    meta = {"step": str(step), "format": "pt"}
    if tokenizer is not None:  # first, so that the weights can carry its fingerprint
        tokenizer.save(path / TOKENIZER_FILE)
        meta |= tokenizer_fingerprint(path / TOKENIZER_FILE, tokenizer)
    atomic_write_bytes(path / WEIGHTS_FILE, _with_checksum(save(tensors, metadata=meta)))
    atomic_write_json(path / CONFIG_FILE, {"architecture": ARCHITECTURE, "llm_foundry_version": __version__,
                                            **dataclasses.asdict(model.cfg)})


def tokenizer_fingerprint(file: Path, tokenizer: Tokenizer) -> dict[str, str]:
    """The tokenizer's kind, vocabulary size and the sha256 of its file, as weights metadata."""
    return {TOKENIZER_KIND: tokenizer.kind, TOKENIZER_VOCAB: str(tokenizer.vocab_size),
            TOKENIZER_SHA256: hashlib.sha256(file.read_bytes()).hexdigest()}


def _with_checksum(blob: bytes) -> bytes:
    """The safetensors file ``blob`` with the sha256 of its tensor data added to its metadata.

    The data stays as it is (its offsets count from the end of the header); only the header grows.
    """
    n = int.from_bytes(blob[:8], "little")
    header, data = json.loads(blob[8:8 + n]), memoryview(blob)[8 + n:]
    header.setdefault("__metadata__", {})[TENSORS_SHA256] = hashlib.sha256(data).hexdigest()
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # as safetensors pads it: the data stays 8-byte aligned
    return len(text).to_bytes(8, "little") + text + data


def write_model_folder(path: str | Path, model: MiniLLM, tokenizer: Tokenizer, step: int,
                       weights: dict[str, torch.Tensor] | None = None, state_bytes: bytes | None = None,
                       extra_files: dict[str, bytes] | None = None, legacy: bool = True,
                       extra_dirs: dict[str, Path] | None = None) -> Path:
    """Replace the model folder ``path`` as a whole (``utils.io.replace_folder``), Ctrl-C held back
    meanwhile: the model folder files, and optionally ``training_state.pt`` and other files.

    Args:
        weights: as in :func:`save_model_dir`.
        state_bytes: the serialised training state (``training.state``), or None for none.
        extra_files: more files of the unit, name -> content (e.g. the online learner's ``online.json``).
        extra_dirs: folders moved into the unit, name -> folder on the same file system (a
            distributed run's sharded training state, ``training/distributed.py``).
        legacy: as in ``replace_folder`` (False: the folders beside ``path`` may be someone else's).
    """
    from ..utils.signals import deferred_signals

    def fill(folder: Path) -> None:
        save_model_dir(folder, model, tokenizer, step, weights=weights)
        if state_bytes is not None:
            (folder / STATE_FILE).write_bytes(state_bytes)  # replace_folder fsyncs the folder's files
        for name, data in (extra_files or {}).items():
            (folder / name).write_bytes(data)
        for name, src in (extra_dirs or {}).items():
            Path(src).rename(folder / name)

    with deferred_signals():
        return replace_folder(path, fill, legacy=legacy)


def save_checkpoint_dir(path: str | Path, model: MiniLLM, tokenizer: Tokenizer, step: int,
                        weights: dict[str, torch.Tensor] | None = None, state_bytes: bytes | None = None,
                        extra_dirs: dict[str, Path] | None = None, extra_files: dict[str, bytes] | None = None) -> None:
    """Write a run folder's checkpoint (the model folder files and ``training_state.pt``) as one unit.

    Args:
        path: the run folder.
        weights: as in :func:`save_model_dir`.
        state_bytes: the serialised training state (``training.state``), or None for none.
        extra_dirs: as in :func:`write_model_folder`.
        extra_files: as in :func:`write_model_folder` (a LoRA run's adapter files).
    """
    from ..utils.signals import deferred_signals

    path = Path(path)
    with deferred_signals():  # a second Ctrl-C waits for the swap and the links
        _adopt_plain_files(path)
        write_model_folder(path / CHECKPOINT_DIR, model, tokenizer, step, weights, state_bytes, extra_files=extra_files,
                           extra_dirs=extra_dirs)
        _link_checkpoint(path)


def recover_checkpoint_dir(path: str | Path) -> None:
    """Finish a checkpoint save of the run folder ``path`` that a kill interrupted (idempotent):
    the swap of ``checkpoint/``, and the links of a first save. Cheap when there is nothing to do."""
    path = Path(path)
    if not (path / CHECKPOINT_DIR).exists() and not _swap_pending(path):
        return  # a plain model folder, or a run folder of plain files written before checkpoints were units
    recover_folder(path / CHECKPOINT_DIR)
    missing = [name for name in CHECKPOINT_FILES if not (path / name).exists() and not (path / name).is_symlink()]
    if missing:
        _link_checkpoint(path, only=missing)
    for name in CHECKPOINT_FILES:
        (path / f".{name}.link").unlink(missing_ok=True)


def _swap_pending(path: Path) -> bool:
    """Whether folders of a swap of ``checkpoint/`` lie beside it: ``.checkpoint.foundry-new-<tag>`` and the
    like of ``utils.io.replace_folder``, or the fixed ``.checkpoint.new/.old`` of older versions."""
    return any(path.glob(f".{CHECKPOINT_DIR}.*"))


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
    not as links to nothing (a missing name is left missing: that is damage to report, not a save to finish).

    Only a missing ``checkpoint/`` is finished here: beside a present one, the swap's folders may be a
    save still being written by the training process, which a reader must leave alone (that process,
    or its ``--resume``, tidies them)."""
    if (path / CHECKPOINT_DIR).exists() or not _swap_pending(path):
        return
    try:
        recover_checkpoint_dir(path)
    except OSError as e:
        raise FoundryError(f"{path} holds an interrupted checkpoint save that cannot be finished here "
                           f"({e.strerror}); resume the training command with --resume") from None


def read_weights_header(path: str | Path) -> tuple[dict[str, dict], dict[str, str], int]:
    """The tensor entries (name -> dtype, shape, data_offsets) and metadata in the header of a model
    folder's ``model.safetensors``, and where its tensor data starts. Reads the header only.

    The entries are checked to tile the tensor data exactly (each one's size is its shape times
    its dtype's, one after another, up to the end of the file), so reading them is safe.

    Raises:
        FoundryError: the file is missing, or its header is damaged or does not describe the file.
    """
    file = Path(path) / WEIGHTS_FILE
    if not file.is_file():
        raise FoundryError(f"weights not found: {file}")

    def corrupt(why: str) -> FoundryError:
        return FoundryError(f"weights file is corrupt or truncated: {file} ({why})")

    size = file.stat().st_size
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if size < 8 or n > min(size - 8, MAX_HEADER_BYTES):
            raise corrupt("its header runs past the end of the file")
        try:
            header = json.loads(f.read(n))
            meta = header.pop("__metadata__", None) or {}
            spans = sorted((int(e["data_offsets"][0]), int(e["data_offsets"][1]), _nbytes(e)) for e in header.values())
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            raise corrupt("its header is not a safetensors header") from None
    if not all(isinstance(v, str) for v in meta.values()) or not meta.get("step", "0").isdigit():
        raise corrupt("its header is not a safetensors header of llm-foundry weights")
    end = 0
    for begin, stop, nbytes in spans:
        if begin != end or stop - begin != nbytes:
            raise corrupt("its header's tensors do not tile the data")
        end = stop
    if end != size - 8 - n:
        raise corrupt(f"the header describes {end} bytes of tensor data, the file holds {size - 8 - n}")
    return header, meta, 8 + n


# safetensors dtype -> torch dtype (all little-endian, as every platform torch runs on).
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}


def _nbytes(entry: dict) -> int:
    """Bytes of a header entry's tensor; ValueError/KeyError/TypeError if the entry is malformed."""
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError("bad shape")
    numel = 1
    for d in shape:
        numel *= d
    return numel * DTYPES[entry["dtype"]].itemsize


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of ``model.safetensors``, or a one-line error if it is damaged.

    One sequential pass reads each tensor straight into its own memory and hashes the bytes on
    the way; the sum is compared with the saved one before anything is returned (files saved
    before checksums existed are read unchecked). Own memory, not a view of a mapped file: a
    file rewritten in place cannot change a running model, and Windows can replace the file.
    """
    file = Path(path) / WEIGHTS_FILE
    entries, meta, start = read_weights_header(path)
    tensors, digest = {}, hashlib.sha256()
    with open(file, "rb", buffering=0) as f:
        f.seek(start)
        for name, entry in sorted(entries.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            tensor = torch.empty(entry["shape"], dtype=DTYPES[entry["dtype"]])
            view = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
            done = 0
            while done < len(view):  # a read may return less than asked (e.g. past 2 GB on Linux)
                got = f.readinto(view[done:])
                if not got:
                    raise FoundryError(f"weights file is corrupt or truncated: {file} (it ends inside {name})")
                done += got
            digest.update(view)
            tensors[name] = tensor
    if TENSORS_SHA256 in meta and digest.hexdigest() != meta[TENSORS_SHA256]:
        raise FoundryError(f"{file} is damaged (checksum mismatch): its tensor data changed after it was saved; "
                           "restore the folder from a copy")
    return tensors, meta


def load_model_dir(path: str | Path, device: torch.device | str = "cpu", with_tokenizer: bool = True,
                   adapters: bool = True) -> ModelBundle:
    """Load a model folder, checking that config, weights and tokenizer agree and are as saved.

    The model is first built on the meta device (no memory) and every tensor's name, shape
    and dtype compared with the weights file's header; only a file that fits is read.

    Args:
        adapters: merge the folder's LoRA adapters (``models/adapters.py``) into the weights, so
            every reader gets the adapted model; False gives the base weights (a LoRA run's resume).
    """
    path = Path(path)
    cfg = load_model_config(path)
    entries, _, _ = read_weights_header(path)
    with torch.device("meta"):
        model = MiniLLM(cfg)
    expected = {k: v.shape for k, v in model.state_dict().items() if not (cfg.tie_embeddings and k == "output.weight")}
    missing = sorted(set(expected) - set(entries))
    extra = sorted(set(entries) - set(expected))
    bad_shape = [k for k in expected if k in entries and tuple(entries[k]["shape"]) != tuple(expected[k])]
    bad_dtype = [k for k in expected if k in entries and entries[k]["dtype"] not in FLOAT_DTYPES]
    if missing or extra or bad_shape or bad_dtype:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}" if extra
                  else f"shape of {bad_shape[0]} is {tuple(entries[bad_shape[0]]['shape'])}, config wants {tuple(expected[bad_shape[0]])}"
                  if bad_shape else f"{bad_dtype[0]} is stored as {entries[bad_dtype[0]]['dtype']}, not floating point")
        raise FoundryError(f"weights in {path} do not match its config.json (another architecture?): {detail}")
    tensors, meta = read_weights(path)
    tensors = {k: t.float() for k, t in tensors.items()}
    if adapters and has_adapters(path):
        tensors = merge_adapters(tensors, path)
    model.materialize(tensors)
    model.to(device)
    tokenizer = None
    if with_tokenizer:
        tokenizer = load_model_tokenizer(path, meta)
        if tokenizer.vocab_size > cfg.vocab_size:
            raise FoundryError(f"tokenizer in {path} has {tokenizer.vocab_size} ids but the model only {cfg.vocab_size}")
    return ModelBundle(model=model, tokenizer=tokenizer, step=int(meta.get("step", 0)))


def load_model_tokenizer(path: str | Path, meta: dict[str, str] | None = None) -> Tokenizer:
    """The tokenizer of the model folder ``path``, refused if it is not the one its weights were saved with.

    Args:
        meta: the weights' metadata when the caller has read it already (else the header is read).

    Raises:
        FoundryError: no or a damaged tokenizer file, or one whose fingerprint differs from the
            one in the weights' metadata (weights saved without a fingerprint accept any).
    """
    path = Path(path)
    file = path / TOKENIZER_FILE
    tokenizer = load_tokenizer(file)
    if meta is None:
        meta = read_weights_header(path)[1] if (path / WEIGHTS_FILE).is_file() else {}
    if TOKENIZER_SHA256 not in meta:
        return tokenizer  # saved without a tokenizer, or before fingerprints
    found = tokenizer_fingerprint(file, tokenizer)
    if found[TOKENIZER_SHA256] != meta[TOKENIZER_SHA256]:
        saved = f"{meta.get(TOKENIZER_KIND, '?')}, {meta.get(TOKENIZER_VOCAB, '?')} ids"
        now = f"{tokenizer.kind}, {tokenizer.vocab_size} ids"
        detail = f"saved with {saved}, found {now}" if saved != now else f"{now} as saved, but a different file"
        raise FoundryError(f"{file}: tokenizer does not match the model it was saved with ({detail})")
    return tokenizer
