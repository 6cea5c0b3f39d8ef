"""Device and precision choice.

The CPU path is first-class: on CPUs with AMX or AVX512-BF16 (Sapphire Rapids and
later), bf16 matrix products run several times faster than fp32, so ``precision:
auto`` picks bf16 autocast there, exactly as it does on a CUDA GPU that supports it.
"""

from __future__ import annotations

import contextlib
from functools import lru_cache

import torch

from .errors import FoundryError


def resolve_device(name: str = "auto") -> torch.device:
    """Turn ``auto``/``cpu``/``cuda``/``cuda:1``/``mps`` into a usable device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise FoundryError(f"unknown device '{name}' (use auto, cpu, cuda or mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FoundryError("device 'cuda' requested but no CUDA GPU is available")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise FoundryError("device 'mps' requested but MPS is not available")
    return dev


@lru_cache(maxsize=None)
def _cpu_bf16_fast() -> bool:
    # oneDNN reports bf16 support only where the ISA has native bf16 (AVX512-BF16/AMX);
    # elsewhere bf16 is emulated and slower than fp32, so we stay in fp32.
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # pragma: no cover - very old or unusual builds
        return False


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast is both supported and fast on ``device``."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return _cpu_bf16_fast()
    return False


# Below this width the casts autocast adds cost more than bf16 products save on small
# matrices (the measurement is in docs/*/performance.md).
CPU_BF16_MIN_DIM = 256


def resolve_dtype(precision: str, device: torch.device, model_dim: int | None = None) -> torch.dtype | None:
    """Map ``auto``/``bf16``/``fp16``/``fp32`` to an autocast dtype (None = plain fp32).

    ``auto`` picks bf16 where the hardware is fast at it; on a CPU only for models at
    least ``CPU_BF16_MIN_DIM`` wide when ``model_dim`` is given.
    """
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type == "cpu" and model_dim is not None and model_dim < CPU_BF16_MIN_DIM:
            return None
        return torch.bfloat16 if bf16_supported(device) else None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type != "cuda":
            raise FoundryError("precision fp16 needs a CUDA device; use bf16 or fp32")
        return torch.float16
    raise FoundryError(f"unknown precision '{precision}' (use auto, bf16, fp16 or fp32)")


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """An autocast context for ``dtype``, or a no-op context for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@lru_cache(maxsize=None)
def keep_freed_memory() -> bool:
    """Ask glibc to keep freed activation buffers instead of returning them to the OS.

    A training step allocates and frees the same multi-megabyte activations every
    step. By default glibc serves blocks above a (dynamic) threshold with ``mmap`` and
    unmaps them on free, so every step pays thousands of page faults and the kernel
    zeroes the pages again. Raising the mmap threshold to its maximum (32 MiB) and the
    trim threshold keeps them in the heap (docs/*/performance.md has the figures).
    No-op where the C library is not glibc.
    """
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        return False
