"""The machine's measured matmul peak, fp32 and bf16, at 2048^3 and at the models' own shapes.

MFU figures elsewhere divide by the bf16 2048^3 number measured here (or in the same
run). Prints one JSON object.

    python bench/peak.py [--reps 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def matmul_tflops(m: int, k: int, n: int, dtype: torch.dtype, reps: int = 5, min_time: float = 0.3) -> float:
    """Median TFLOP/s of an ``(m, k) @ (k, n)`` product in ``dtype``."""
    a = torch.randn(m, k).to(dtype)
    b = torch.randn(k, n).to(dtype)
    for _ in range(3):
        a @ b  # warm up oneDNN's kernel choice
    results = []
    for _ in range(reps):
        iters, start = 0, time.perf_counter()
        while True:
            a @ b
            iters += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                break
        results.append(2 * m * k * n * iters / elapsed / 1e12)
    return statistics.median(results)


def model_shapes(preset: str, batch: int = 16) -> dict[str, tuple[int, int, int]]:
    """The three matmul shapes that dominate one of our presets' training step."""
    from llm_foundry.config import load_config

    cfg, _ = load_config(preset)
    tokens = batch * cfg.max_seq_len
    return {
        "qkvo": (tokens, cfg.dim, cfg.dim),
        "mlp_up": (tokens, cfg.dim, cfg.hidden_dim),
        "mlp_down": (tokens, cfg.hidden_dim, cfg.dim),
    }


def measure(reps: int = 5) -> dict:
    """All peak figures as one dict."""
    out = {
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "fp32_2048_tflops": round(matmul_tflops(2048, 2048, 2048, torch.float32, reps), 3),
        "bf16_2048_tflops": round(matmul_tflops(2048, 2048, 2048, torch.bfloat16, reps), 3),
        "shapes": {},
    }
    for preset in ("tiny", "tinygpt", "small"):
        for name, (m, k, n) in model_shapes(preset).items():
            out["shapes"][f"{preset}.{name}"] = {
                "mkn": [m, k, n],
                "fp32_tflops": round(matmul_tflops(m, k, n, torch.float32, reps=3, min_time=0.15), 3),
                "bf16_tflops": round(matmul_tflops(m, k, n, torch.bfloat16, reps=3, min_time=0.15), 3),
            }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5, help="repetitions (median is reported)")
    args = p.parse_args()
    print(json.dumps({"benchmark": "peak", **measure(args.reps)}))


if __name__ == "__main__":
    main()
