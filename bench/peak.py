"""The machine's measured matmul peak, fp32 and bf16, at 2048^3 and at the models' own shapes.

MFU figures elsewhere divide by the 2048^3 number measured here (or in the same run) of
the machine's faster dtype: bf16 where the CPU has native bf16 (AMX, AVX512-BF16), else
fp32. Without native bf16 a bf16 product is emulated, about 100x slower than fp32: it is
then measured at 256^3 only (a 2048^3 one would take ~20 s) and not at the model shapes.
Prints one JSON object.

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


def bf16_is_native() -> bool:
    """Whether this CPU multiplies bf16 natively (what ``precision: auto`` checks too)."""
    from llm_foundry.utils.device import bf16_supported

    return bf16_supported(torch.device("cpu"))


def peak_tflops(dtype: torch.dtype, reps: int = 5) -> float:
    """The 2048^3 figure for ``dtype``; for emulated bf16 a 256^3 one (the emulation's speed
    hardly depends on the size, and 2048^3 would take ~20 s a product)."""
    if dtype == torch.bfloat16 and not bf16_is_native():
        return matmul_tflops(256, 256, 256, dtype, reps=1, min_time=0.2)
    return matmul_tflops(2048, 2048, 2048, dtype, reps)


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
    native = bf16_is_native()
    out = {
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_native": native,
        "fp32_2048_tflops": round(peak_tflops(torch.float32, reps), 4),
        "bf16_2048_tflops": round(peak_tflops(torch.bfloat16, reps), 4),
        "shapes": {},
    }
    for preset in ("tiny", "tinygpt", "small"):
        for name, (m, k, n) in model_shapes(preset).items():
            out["shapes"][f"{preset}.{name}"] = {
                "mkn": [m, k, n],
                "fp32_tflops": round(matmul_tflops(m, k, n, torch.float32, reps=3, min_time=0.15), 3),
                "bf16_tflops": round(matmul_tflops(m, k, n, torch.bfloat16, reps=3, min_time=0.15), 3) if native else None,
            }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5, help="repetitions (median is reported)")
    args = p.parse_args()
    print(json.dumps({"benchmark": "peak", **measure(args.reps)}))


if __name__ == "__main__":
    main()
