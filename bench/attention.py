"""Causal attention forward + backward for bf16 training on a CPU: ours vs PyTorch's flash kernel.

Same inputs, same run: PyTorch's ``scaled_dot_product_attention`` (flash forward and
backward) against ``llm_foundry.kernels.cpu_attention`` (our AMX kernel where the CPU has
AMX, else the same flash forward and our chunked, compiled backward), at the ``tinygpt``
training shape by default. Also checks that the gradients agree. Prints one JSON object;
medians of ``--reps`` runs.

    python bench/attention.py [--batch 16] [--heads 8] [--seq 256] [--head-dim 32] [--reps 20]
"""

from __future__ import annotations

import argparse
import json

import torch
from common import median_time


def median_ms(fn, reps: int) -> float:
    return 1000 * median_time(fn, reps, warmup=3)  # the first call of ours compiles


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args()

    from llm_foundry.kernels import cpu_kernels
    from llm_foundry.kernels.cpu_attention import causal_attention, reference_attention
    from llm_foundry.utils.device import keep_freed_memory

    keep_freed_memory()
    torch.manual_seed(0)
    shape = (args.batch, args.heads, args.seq, args.head_dim)
    q, k, v = (torch.randn(shape, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    grad = torch.randn(shape, dtype=torch.bfloat16)

    def fwd_bwd(attention):
        return lambda: torch.autograd.grad(attention(q, k, v), (q, k, v), grad)

    def fwd(attention):  # with grad enabled: what training runs (and what saves for the backward)
        return lambda: attention(q, k, v)

    stock = fwd_bwd(reference_attention)()
    ours = fwd_bwd(causal_attention)()
    max_diff = max((a.float() - b.float()).abs().max().item() for a, b in zip(ours, stock))
    stock_ms = median_ms(fwd_bwd(reference_attention), args.reps)
    ours_ms = median_ms(fwd_bwd(causal_attention), args.reps)
    stock_fwd_ms = median_ms(fwd(reference_attention), args.reps)
    ours_fwd_ms = median_ms(fwd(causal_attention), args.reps)
    print(json.dumps({
        "benchmark": "attention", "shape": list(shape), "dtype": "bfloat16", "threads": torch.get_num_threads(),
        "ours": "amx kernel" if cpu_kernels.available() else
                f"flash forward + our backward ({cpu_kernels.unavailable_reason()})",
        "stock_forward_ms": round(stock_fwd_ms, 2), "ours_forward_ms": round(ours_fwd_ms, 2),
        "stock_forward_backward_ms": round(stock_ms, 2), "ours_forward_backward_ms": round(ours_ms, 2),
        "stock_backward_ms": round(stock_ms - stock_fwd_ms, 2), "ours_backward_ms": round(ours_ms - ours_fwd_ms, 2),
        "forward_backward_speedup": round(stock_ms / ours_ms, 2),
        "max_grad_diff_vs_stock": max_diff,
    }))


if __name__ == "__main__":
    main()
