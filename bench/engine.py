"""Engine throughput: decode tokens/s for 1, 8 and 32 concurrent sequences.

A randomly initialised model of a preset (speed does not depend on training) with the
byte tokenizer, decoded by a frozen ``Engine`` (as ``Engine.from_pretrained`` builds it).
For each concurrency N two workloads are timed, both greedy,
``--new-tokens`` per sequence, the end-of-turn tokens suppressed so every sequence runs
to the limit:

* ``batch``: N *different* chat prompts through ``Engine.generate_batch`` (what a
  server or an evaluation does);
* ``samples``: N samples of *one* prompt through ``Engine.generate(num_samples=N)``,
  which share one prefill (what RL does).

As a baseline measured in the same run, N sequences decoded one after another with the
same engine (``sequential``, N = 1 timing times N). Medians of ``--reps`` repetitions.
Prints one JSON object.

    python bench/engine.py [--preset tiny] [--prompt-len 64] [--new-tokens 64] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import random

import torch
from common import median_time, random_byte_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--prompt-len", type=int, default=64, help="prompt tokens (default 64; batch prompts vary +-25%%)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated sequence counts (default 1,8,32)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    args = p.parse_args()

    from llm_foundry.data.chat import chat_token_ids
    from llm_foundry.inference.engine import Engine
    from llm_foundry.tokenizers.special import CHAT_TERMINATORS, token_ids

    model, tok = random_byte_model(args.preset)
    # frozen=True: the inference copies `foundry chat`, eval-chat and the server decode with.
    engine = Engine(model, tok, precision=args.precision, frozen=True)
    # A random model ends a turn now and then; suppress the enders so lengths are exact.
    sp = chat_token_ids(tok)
    engine.suppress += sorted(token_ids(tok, CHAT_TERMINATORS))
    rng = random.Random(0)

    def make_prompt(n: int) -> list[int]:
        return [sp["bos"], sp["user_start"], *[rng.randrange(32, 127) for _ in range(n - 4)], sp["user_end"],
                sp["assistant_start"]]

    new = args.new_tokens
    opts = dict(max_tokens=new, temperature=0)
    result: dict = {"benchmark": "engine", "preset": args.preset, "parameters": model.num_parameters(),
                    "precision": str(engine.amp_dtype or "fp32"), "prompt_len": args.prompt_len, "new_tokens": new,
                    "threads": torch.get_num_threads()}
    single = make_prompt(args.prompt_len)
    t1 = median_time(lambda: engine.generate(single, **opts), args.reps)
    for n in (int(c) for c in args.concurrency.split(",")):
        lo, hi = int(args.prompt_len * 0.75), int(args.prompt_len * 1.25)
        prompts = [make_prompt(rng.randint(lo, hi)) for _ in range(n)]
        count = sum(len(c) for c in engine.generate_batch(prompts, **opts))
        t_batch = median_time(lambda: engine.generate_batch(prompts, **opts), args.reps)
        t_samples = median_time(lambda: engine.generate(single, num_samples=n, **opts), args.reps)
        result[f"n{n}"] = {
            "batch_tok_s": round(count / t_batch, 1),
            "samples_tok_s": round(n * new / t_samples, 1),
            "sequential_tok_s": round(new / t1, 1),
            "speedup_batch_vs_sequential": round((count / t_batch) / (new / t1), 2),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
