"""Native CPU kernels for bf16 training: builds, loads and calls ``cpu_kernels.cpp``.

Causal attention on AMX tiles, and the cross-entropy of bf16 logits. The C++ source
(see its header for the algorithms) is compiled on first use with the
system's C++ compiler, about a second, into ``$XDG_CACHE_HOME/llm-foundry/kernels``
(``~/.cache/...``), keyed by a hash of the source and flags, and loaded with ``ctypes``:
no PyTorch headers, so no minute-long extension build. Calls release the GIL and split
the heads over ``torch.get_num_threads()`` OpenMP threads, PyTorch's own pool where
PyTorch uses libgomp (the Linux builds do).

:func:`available` is False, with :func:`unavailable_reason` saying why, on machines
without AMX (or AVX512-BF16), without a compiler, or with ``FOUNDRY_NO_CPU_KERNELS=1``;
callers then use PyTorch's kernels. Only this package calls them (see its façade, ``__init__``),
and the optimizer's one-pass step (``training/optim.py``).
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from . import switch

_SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
_FLAGS = ["-O2", "-shared", "-fPIC", "-fopenmp", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq",
          "-mavx512bf16", "-mamx-tile", "-mamx-bf16", "-mfma"]
_CPU_FLAGS = ("amx_tile", "amx_bf16", "avx512_bf16", "avx512bw")
_BLOCK = 32  # sequence length and head size are padded to multiples of this

_library: ctypes.CDLL | None = None
_reason: str | None = None  # why the kernels are unavailable, once known


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "llm-foundry" / "kernels"


def _cpu_supports_amx() -> bool:
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return False
    present = set(flags.split(":", 1)[1].split())
    return all(flag in present for flag in _CPU_FLAGS)


def _build(compiler: str) -> Path:
    """Compile the kernel once per source/flags/compiler; an atomic rename publishes it."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(_SOURCE.read_bytes() + " ".join(_FLAGS).encode() + version.encode()).hexdigest()[:16]
    target = _cache_dir() / f"cpu_kernels-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([compiler, *_FLAGS, "-o", tmp, str(_SOURCE)], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {done.stderr.strip().splitlines()[-1:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _load() -> ctypes.CDLL | None:
    global _library, _reason
    if _library is not None or _reason is not None:
        return _library
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not switch.ENABLED:
        _reason = "disabled by FOUNDRY_NO_CPU_KERNELS"
    elif not _cpu_supports_amx():
        _reason = "this CPU has no AMX-BF16"
    elif not compiler:
        _reason = "no C++ compiler (g++) found"
    else:
        try:
            library = ctypes.CDLL(str(_build(compiler)))
            if library.foundry_amx_init() != 0:
                raise RuntimeError("the kernel refused AMX (arch_prctl)")
            pointer, integer, real = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
            library.foundry_attention_forward.argtypes = [pointer] * 5 + [integer] * 3 + [real, integer]
            library.foundry_attention_backward.argtypes = [pointer] * 9 + [integer] * 3 + [real, integer]
            long = ctypes.c_long
            library.foundry_cross_entropy_forward.argtypes = [pointer, long, pointer, integer, integer, pointer,
                                                              pointer, integer]
            library.foundry_cross_entropy_backward.argtypes = [pointer, long, pointer, pointer, pointer, pointer, long,
                                                               integer, integer, integer]
            library.foundry_swiglu_forward.argtypes = [pointer, pointer] + [integer] * 3
            library.foundry_swiglu_backward.argtypes = [pointer] * 3 + [integer] * 3
            library.foundry_sum_squares.argtypes = [pointer, pointer, integer, integer]
            library.foundry_sum_squares.restype = ctypes.c_double
            library.foundry_adamw_ema_step.argtypes = [pointer] * 7 + [integer, real, real, integer]
            _library = library
        except (OSError, RuntimeError) as e:
            _reason = f"could not build the kernel: {e}"
    return _library


def available() -> bool:
    """True where the native kernels can run in this process (builds them on first call)."""
    return _load() is not None


# A constant to torch.compile, so tracing never reaches the build: what
# `torch.compiler.assume_constant_result` sets, without importing the compiler at start-up
# (seconds on a slow CPU, for commands that never compile). A test checks it matches.
available._dynamo_marked_constant = True


def unavailable_reason() -> str | None:
    """Why :func:`available` is False (None while it is True or not yet checked)."""
    _load()
    return _reason


def _padded(x: torch.Tensor, t: int, d: int) -> torch.Tensor:
    """``x`` zero-padded to ``t`` positions and ``d`` channels, contiguous.

    Exact for causal attention: padded keys come after every real query, padded channels
    add zero to every score, padded query rows are dropped.
    """
    pad_t, pad_d = t - x.shape[-2], d - x.shape[-1]
    return F.pad(x, (0, pad_d, 0, pad_t)).contiguous() if pad_t or pad_d else x.contiguous()


def _round_up(n: int) -> int:
    return -(-n // _BLOCK) * _BLOCK


def _sizes(q: torch.Tensor) -> tuple[int, int, int, int, float]:
    b, h, t, d = q.shape
    return b * h, _round_up(t), _round_up(d), torch.get_num_threads(), 1.0 / math.sqrt(d)


def lse_shape(q: torch.Tensor) -> tuple[int, ...]:
    """Shape of the ``lse`` that :func:`forward` returns: positions padded to a multiple of 32."""
    return (*q.shape[:-2], _round_up(q.shape[-2]))


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention of ``(batch, heads, time, head_dim)`` bf16 tensors: ``(out, lse)``.

    ``lse`` (fp32, padded to a multiple of 32 positions) is what :func:`backward` needs.
    """
    heads, t, d, threads, scale = _sizes(q)
    qp, kp, vp = (_padded(x, t, d) for x in (q, k, v))
    out = torch.empty_like(qp)
    lse = torch.empty(qp.shape[:-1], dtype=torch.float32)
    _library.foundry_attention_forward(qp.data_ptr(), kp.data_ptr(), vp.data_ptr(), out.data_ptr(), lse.data_ptr(),
                                       heads, t, d, scale, threads)
    if out.shape != q.shape:
        out = out[..., : q.shape[-2], : q.shape[-1]].contiguous()
    return out, lse


def backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
             grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of :func:`forward` with respect to ``q``, ``k``, ``v``."""
    heads, t, d, threads, scale = _sizes(q)
    qp, kp, vp, outp, grad_outp = (_padded(x, t, d) for x in (q, k, v, out, grad_out))
    grads = [torch.empty_like(qp) for _ in range(3)]
    _library.foundry_attention_backward(qp.data_ptr(), kp.data_ptr(), vp.data_ptr(), outp.data_ptr(), lse.data_ptr(),
                                        grad_outp.data_ptr(), *(g.data_ptr() for g in grads), heads, t, d, scale,
                                        threads)
    if qp.shape != q.shape:
        grads = [g[..., : q.shape[-2], : q.shape[-1]].contiguous() for g in grads]
    return tuple(grads)


def cross_entropy_forward(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of bf16 ``logits`` (``rows, vocab``): the log-sum-exp, and ``lse - logit[target]``
    (0 where the target is outside ``[0, vocab)``, e.g. an ignored ``-100``). Both fp32."""
    rows, vocab = logits.shape
    targets = targets.long().contiguous()
    lse, terms = (torch.empty(rows, dtype=torch.float32) for _ in range(2))
    _library.foundry_cross_entropy_forward(logits.data_ptr(), logits.stride(0), targets.data_ptr(), rows, vocab,
                                           lse.data_ptr(), terms.data_ptr(), torch.get_num_threads())
    return lse, terms


def cross_entropy_backward(logits: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor,
                           scale: torch.Tensor) -> torch.Tensor:
    """``(softmax(logits) - onehot(targets)) * scale`` per row, as a bf16 tensor like ``logits``."""
    rows, vocab = logits.shape
    grad = torch.empty(rows, vocab, dtype=logits.dtype)
    targets, scale = targets.long().contiguous(), scale.float().contiguous()
    _library.foundry_cross_entropy_backward(logits.data_ptr(), logits.stride(0), targets.data_ptr(), lse.data_ptr(),
                                            scale.data_ptr(), grad.data_ptr(), grad.stride(0), rows, vocab,
                                            torch.get_num_threads())
    return grad


def swiglu_forward(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` for bf16 ``gate_up`` (``..., 2F``) holding gate then up: ``(..., F)``."""
    gate_up = gate_up.contiguous()
    hidden = gate_up.shape[-1] // 2
    out = gate_up.new_empty(*gate_up.shape[:-1], hidden)
    _library.foundry_swiglu_forward(gate_up.data_ptr(), out.data_ptr(), gate_up.numel() // (2 * hidden), hidden,
                                    torch.get_num_threads())
    return out


def swiglu_backward(gate_up: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """Gradient of :func:`swiglu_forward` with respect to ``gate_up``, given that of its output."""
    gate_up, grad_out = gate_up.contiguous(), grad_out.contiguous()
    hidden = gate_up.shape[-1] // 2
    grad = torch.empty_like(gate_up)
    _library.foundry_swiglu_backward(gate_up.data_ptr(), grad_out.data_ptr(), grad.data_ptr(),
                                     gate_up.numel() // (2 * hidden), hidden, torch.get_num_threads())
    return grad



def _pointers(tensors: list[torch.Tensor]) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*(t.data_ptr() for t in tensors))


def _sizes_array(tensors: list[torch.Tensor]) -> ctypes.Array:
    return (ctypes.c_long * len(tensors))(*(t.numel() for t in tensors))


def sum_squares(tensors: list[torch.Tensor]) -> float:
    """Sum of the squares of contiguous fp32 CPU ``tensors``, accumulated in fp64."""
    return _library.foundry_sum_squares(_pointers(tensors), _sizes_array(tensors), len(tensors),
                                        torch.get_num_threads())


def adamw_ema_step(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
                   exp_avg_sqs: list[torch.Tensor], emas: list[torch.Tensor] | None, hyper: torch.Tensor,
                   grad_scale: float, ema_weight: float) -> None:
    """One AdamW step of contiguous fp32 CPU tensors in place, gradients times ``grad_scale``,
    then ``ema += ema_weight * (param - ema)`` (see ``cpu_kernels.cpp``).

    ``hyper`` is fp32 ``(len(params), 6)``: lr * weight_decay, beta1, beta2, eps,
    lr / (1 - beta1^step), 1 / sqrt(1 - beta2^step).
    """
    _library.foundry_adamw_ema_step(_pointers(params), _pointers(grads), _pointers(exp_avgs), _pointers(exp_avg_sqs),
                                    _pointers(emas) if emas is not None else None, _sizes_array(params),
                                    hyper.data_ptr(), len(params), grad_scale, ema_weight, torch.get_num_threads())
