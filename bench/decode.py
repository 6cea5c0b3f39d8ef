"""Decoding speed: KV cache vs full recompute vs Hugging Face ``transformers``, same weights.

A randomly initialised model of a preset (speed does not depend on training) is saved
as a model folder, exported with ``foundry export --format hf``, and both are timed in
this one process:

* decode tokens/s at batch 1 and 8, greedy, ``--new-tokens`` after a ``--context``-token
  prompt: ours with the KV cache (eager, and compiled: ``decode_models(..., compile=True)``,
  whose compile wait is not timed), ours recomputing the whole context every token, and
  ``transformers`` ``generate()`` (its own KV cache; fp32 and bf16, the faster is compared);
* time to first token for a ``--prompt-len``-token prompt: our prefill + first token vs
  one ``transformers`` forward pass over the same prompt.

Medians of ``--reps`` repetitions. Prints one JSON object.

    python bench/decode.py [--preset small] [--context 448] [--new-tokens 64] [--prompt-len 256]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from common import median_time, random_byte_model


@torch.no_grad()
def ours_cached(models, prompt: torch.Tensor, new: int) -> torch.Tensor:
    """Greedy decoding with the KV cache, as Generator does it: one prefill, then one position per token."""
    from llm_foundry.utils.device import autocast_context

    cache = models.new_cache(prompt.shape[0], prompt.shape[1] + new)
    out = []
    with autocast_context(prompt.device, models.amp_dtype):
        logits, _ = models.prefill(prompt, cache=cache, last_only=True)
        for i in range(new):
            token = logits[:, -1].float().argmax(-1, keepdim=True)
            out.append(token)
            if i < new - 1:
                logits, _ = models.step(token, cache=cache)
    return torch.cat(out, 1)


@torch.no_grad()
def ours_recompute(models, prompt: torch.Tensor, new: int) -> torch.Tensor:
    """Greedy decoding that re-reads the whole context for every token (no cache; the prefill model)."""
    from llm_foundry.utils.device import autocast_context

    ids = prompt
    with autocast_context(prompt.device, models.amp_dtype):
        for _ in range(new):
            logits, _ = models.prefill(ids, last_only=True)
            ids = torch.cat([ids, logits[:, -1].float().argmax(-1, keepdim=True)], 1)
    return ids[:, prompt.shape[1]:]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--context", type=int, default=448, help="prompt tokens before decoding (default 448: decode at ~512)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=256, help="prompt length for time to first token")
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args()

    from transformers import AutoModelForCausalLM

    from llm_foundry.export import export_hf
    from llm_foundry.models import save_model_dir
    from llm_foundry.inference import decode_models

    model, tok = random_byte_model(args.preset)
    work = Path(tempfile.mkdtemp(prefix="bench_decode_"))
    save_model_dir(work / "model", model, tok)
    export_hf(work / "model", work / "hf")
    # Ours exactly as Generator decodes (bf16 prefill and fp32 steps on CPUs with fast bf16).
    models = decode_models(model, "auto")
    hf = {"fp32": AutoModelForCausalLM.from_pretrained(work / "hf", dtype=torch.float32).eval(),
          "bf16": AutoModelForCausalLM.from_pretrained(work / "hf", dtype=torch.bfloat16).eval()}

    g = torch.Generator().manual_seed(0)
    result: dict = {"benchmark": "decode", "preset": args.preset, "parameters": model.num_parameters(),
                    "our_precision": {"prefill": str(next(models.prefill.parameters()).dtype), "step": str(next(models.step.parameters()).dtype),
                                      "autocast": str(models.amp_dtype)}, "context": args.context, "new_tokens": args.new_tokens,
                    "threads": torch.get_num_threads()}
    for batch in (1, 8):
        models = decode_models(model, "auto", batch)
        compiled = decode_models(model, "auto", batch, compile=True)
        prompt = torch.randint(3, 256, (batch, args.context), generator=g)
        n = args.new_tokens
        row = {}
        t = median_time(lambda: ours_cached(models, prompt, n), args.reps)
        row["ours_kv_tok_s"] = batch * n / t
        t = median_time(lambda: ours_cached(compiled, prompt, n), args.reps)
        row["ours_compiled_tok_s"] = batch * n / t
        if batch == 1:
            t = median_time(lambda: ours_recompute(models, prompt, n), max(1, args.reps - 1))
            row["ours_recompute_tok_s"] = batch * n / t
        for name, m in hf.items():
            kwargs = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
            t = median_time(lambda: m.generate(prompt, attention_mask=torch.ones_like(prompt), **kwargs), args.reps)
            row[f"hf_{name}_tok_s"] = batch * n / t
        best_hf = max(row["hf_fp32_tok_s"], row["hf_bf16_tok_s"])
        row["speedup_vs_hf"] = row["ours_compiled_tok_s"] / best_hf
        row["speedup_vs_hf_eager"] = row["ours_kv_tok_s"] / best_hf
        if batch == 1:
            row["speedup_vs_recompute"] = row["ours_kv_tok_s"] / row["ours_recompute_tok_s"]
        result[f"batch{batch}"] = {k: round(v, 2) for k, v in row.items()}
        # Same weights, same greedy tokens: a check that we compare like with like.
        if batch == 1:
            ours = ours_cached(decode_models(model, "fp32"), prompt[:, :64], 16)
            theirs = hf["fp32"].generate(prompt[:, :64], attention_mask=torch.ones_like(prompt[:, :64]), max_new_tokens=16,
                                         min_new_tokens=16, do_sample=False, pad_token_id=0)[:, 64:]
            result["greedy_tokens_match_hf_fp32"] = bool(torch.equal(ours, theirs))
            result["compiled_tokens_match_eager"] = bool(torch.equal(ours_cached(models, prompt, n), ours_cached(compiled, prompt, n)))

    prompt = torch.randint(3, 256, (1, args.prompt_len), generator=g)
    models = decode_models(model, "auto", 1)
    ttft = median_time(lambda: ours_cached(models, prompt, 1), args.reps)
    hf_fwd = {name: median_time(lambda m=m: m(prompt), args.reps) for name, m in hf.items()}
    compiled = decode_models(model, "auto", 1, compile=True)
    ttft_compiled = median_time(lambda: ours_cached(compiled, prompt, 1), args.reps)
    best = min(hf_fwd.values())
    result["ttft"] = {"prompt_len": args.prompt_len, "ours_ms": round(1000 * ttft, 2),
                      "ours_compiled_ms": round(1000 * ttft_compiled, 2),
                      "ratio_compiled_to_best_hf_forward": round(ttft_compiled / best, 3),
                      "hf_forward_fp32_ms": round(1000 * hf_fwd["fp32"], 2), "hf_forward_bf16_ms": round(1000 * hf_fwd["bf16"], 2),
                      "ratio_to_best_hf_forward": round(ttft / best, 3)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
