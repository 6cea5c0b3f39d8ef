"""How to decode with a model: the prefill and step models that one decoding runs.

:func:`decode_models` picks them for a device and batch size (inference copies with
fused projections, bf16 or fp32 weights, optionally compiled); the :class:`Engine`
runs them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from ..kernels import CompiledStep
from ..models import MiniLLM
from ..utils.device import resolve_dtype


@dataclass
class DecodeModels:
    """The models one decoding runs: ``prefill`` reads the prompt, ``step`` adds one token at a time.

    Both share one KV cache made by :meth:`new_cache`; run them under
    ``autocast_context(device, amp_dtype)``.
    """

    prefill: MiniLLM
    step: MiniLLM | CompiledStep
    amp_dtype: torch.dtype | None
    cache_dtype: torch.dtype | None = None
    compiled: bool = False

    def new_cache(self, batch_size: int = 1, max_len: int | None = None):
        # A compiled step is compiled for one cache capacity: always the model's whole context.
        return self.prefill.new_cache(batch_size, None if self.compiled else max_len, self.cache_dtype)


def decode_models(model: MiniLLM, precision: str = "auto", batch_size: int = 1, compile: bool = False) -> DecodeModels:
    """Choose how to decode with ``model`` on its device (the model itself is left untouched).

    On a CPU (the measurements behind each choice are in docs/*/performance.md, from ``bench/decode.py``):

    * the prompt is a large matrix product: bf16 weights (no autocast, whose per-call
      weight casts cost more than they save) run it fastest;
    * one new token of one sequence is a matrix-*vector* product, bound by reading the
      weights, and there PyTorch's fp32 kernel beats its bf16 one: at ``batch_size`` 1–2
      the step model stays fp32 (the cache is then fp32, so both can share it); from
      batch 3 on, bf16 wins again and everything stays bf16;
    * q/k/v and gate/up are merged into single matrices: fewer, larger products;
    * where bf16 products are not fast (AVX2-only CPUs emulate them), everything is fp32,
      except that a compiled step at batch 1–2 still reads bf16 weights (see below).

    Elsewhere (CUDA, MPS) the model runs under autocast as in training.

    ``compile=True`` compiles the prefill model with ``torch.compile`` and, on a CPU,
    makes the step one compiled graph per token (:class:`CompiledStep`; it reads bf16
    weights itself, at any batch size where bf16 is fast, at batch 1–2 elsewhere with
    ``precision="auto"``). The first prompt then waits for the compiler (and again when the
    batch size first changes); after that prompts and tokens run faster: worth it for a long
    generation or a chat session, not for one short ``foundry generate``.
    """
    device = next(model.parameters()).device
    amp = resolve_dtype(precision, device, model.cfg.dim)
    if device.type != "cpu":
        models = DecodeModels(model.eval(), model.eval(), amp)
    elif amp != torch.bfloat16:
        fp32 = copy.deepcopy(model).float().fuse_projections().eval()
        models = DecodeModels(fp32, fp32, None)
        if compile and precision == "auto" and batch_size <= 2:
            # No fast bf16 products here (or a model too narrow for bf16 training), but the
            # compiled step's multiply-and-sum reads bf16 weights with plain vector code: half
            # the bytes of fp32 for the same fp32 sums.
            # The prompt stays fp32 (bf16 products are emulated there, far slower); one fp32 cache.
            bf16_weights = copy.deepcopy(model).to(torch.bfloat16).fuse_projections().eval()
            models = DecodeModels(fp32, bf16_weights, None, torch.float32)
    else:
        bf16 = copy.deepcopy(model).to(torch.bfloat16).fuse_projections().eval()
        if batch_size > 2 or compile:  # (a compiled step reads bf16 weights fast at any batch size)
            models = DecodeModels(bf16, bf16, None)
        else:
            models = DecodeModels(bf16, copy.deepcopy(model).float().fuse_projections().eval(), None, torch.float32)
    if compile:
        if device.type == "cpu":
            models.step = CompiledStep(models.step).eval()  # eval once: the engine then never toggles it
            models.compiled = True
        models.prefill = torch.compile(models.prefill).eval()
    return models
