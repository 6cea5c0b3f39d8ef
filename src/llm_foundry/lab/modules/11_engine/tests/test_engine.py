"""Module 11 — the inference engine (visible tests). Run them with `foundry lab test 11`.

The model is YOUR MiniLLM of module 5 (``model.py``), with random weights. Your cached forward is
compared with your model's plain forward on the same tokens: both compute in float32 and differ only
in summation order, so the logits must agree to 1e-4. Greedy tokens must then be identical. The
sampling rules are checked on crafted distributions with many draws of a seeded generator: the set
of ids drawn is exact, the frequencies within 0.03 (four standard deviations of 4,000 draws).
"""

import inspect
import time

import torch
import torch.nn.functional as F

import llm_foundry.models as ours
from llm_foundry.config import ModelConfig
from llm_foundry.lab.testing import check_close, check_equal, learner_line

from engine import (KVCache, cached_attention, forward_cached, generate, generate_samples, generate_uncached,
                    sample_next)
from model import MiniLLM, apply_rope

W = inspect.unwrap  # your function itself, under any decorator (@torch.no_grad()): for the line numbers
CFG = ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64)


def make_model(cfg=CFG, seed=0):
    """Your MiniLLM with random weights. PyTorch's default init makes the logits so peaked that sampling
    would always draw the same id; a small final norm gain flattens them (the most likely id gets ~25 %)."""
    torch.manual_seed(seed)
    model = MiniLLM(cfg).eval()
    with torch.no_grad():
        model.norm.weight.fill_(0.1)
    return model


def new_cache(model, batch=1, max_len=None):
    cfg = model.cfg
    return KVCache(cfg.n_layers, batch, cfg.kv_heads, cfg.head_dim, max_len or cfg.max_seq_len)


def plain_logits(model, ids):
    """Your model's own forward (no cache) on the whole sequence (a tensor, or one list of ids)."""
    with torch.no_grad():
        return model(ids if torch.is_tensor(ids) else torch.tensor([list(ids)]))[0]


def diagnose_step(model, prefix, new, got):
    """A sentence naming the mistake when ``got`` (logits of ``new`` after ``prefix``) is wrong."""
    if not isinstance(got, torch.Tensor) or got.shape[:2] != (1, len(new)):
        return ""
    seq = prefix + new
    start, t = len(prefix), len(new)
    with torch.no_grad():
        # RoPE from position 0: the same as running `new` alone at positions 0.. against the cache.
        cos, sin = model.rope_cos, model.rope_sin
        variants = {}
        for name, rows, topleft in (("rope", slice(0, t), False), ("topleft", slice(start, start + t), True)):
            x = model.tok_embeddings(torch.tensor([seq]))
            for layer in model.layers:
                a = layer.attn
                h = layer.attn_norm(x)
                b = 1
                q = a.wq(h).view(b, -1, a.n_heads, a.head_dim).transpose(1, 2)
                k = a.wk(h).view(b, -1, a.n_kv_heads, a.head_dim).transpose(1, 2)
                v = a.wv(h).view(b, -1, a.n_kv_heads, a.head_dim).transpose(1, 2)
                if a.q_norm is not None:
                    q, k = a.q_norm(q), a.k_norm(k)
                qp, kp = apply_rope(q[:, :, :start], cos[:start], sin[:start]), apply_rope(k[:, :, :start], cos[:start], sin[:start])
                qn, kn = apply_rope(q[:, :, start:], cos[rows], sin[rows]), apply_rope(k[:, :, start:], cos[rows], sin[rows])
                q, k = torch.cat([qp, qn], 2), torch.cat([kp, kn], 2)
                n = len(seq)
                mask = torch.ones(n, n, dtype=torch.bool).tril()
                if topleft:
                    mask[start:, :] = torch.ones(t, n, dtype=torch.bool).tril()
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=a.n_kv_heads != a.n_heads)
                x = x + a.wo(y.transpose(1, 2).reshape(b, -1, a.n_heads * a.head_dim))
                x = x + layer.ffn(layer.ffn_norm(x))
            variants[name] = model.output(model.norm(x))[:, start:]
    if torch.allclose(got, variants["rope"], atol=1e-4):
        return ("the new tokens are rotated as if they stood at position 0: with start = cache.pos tokens cached, "
                "they sit at positions start .. start + t - 1, so take the RoPE rows rope_cos[start:start + t]")
    if torch.allclose(got, variants["topleft"], atol=1e-4):
        return ("new token i sees only keys 0 .. i: is_causal=True aligns the mask to the top left, which is right only "
                "when nothing is cached. With start tokens cached it must see keys 0 .. start + i: "
                "attn_mask = torch.ones(t, start + t, dtype=torch.bool).tril(diagonal=start)")
    return ""


def check_pos(cache, before, t, call):
    """``cache.pos`` must have moved from ``before`` by the ``t`` tokens of one forward."""
    got, layers = getattr(cache, "pos", None), len(cache.k)
    hint = ""
    if got == before:
        hint = "the cache did not move on: call cache.advance(t) once per forward, after every layer wrote its keys"
    elif isinstance(got, int) and layers > 1 and got == before + layers * t:
        hint = "cache.pos grew once per layer: advance once per forward (after all the layers), not in the layer loop"
    check_equal(f"cache.pos after {call}", got, before + t, where=W(forward_cached), hint=hint)


def test_cache_update_stores_and_returns_the_history():
    cache = KVCache(n_layers=2, batch_size=2, n_kv_heads=2, head_dim=4, max_len=8)
    torch.manual_seed(0)
    k1, v1 = torch.randn(2, 2, 3, 4), torch.randn(2, 2, 3, 4)
    k, v = cache.update(1, k1, v1)
    check_close("cache.update(1, k of 3 positions, v) on an empty cache: the keys returned", k, k1, where=KVCache.update)
    check_close("... the values returned", v, v1, where=KVCache.update)
    cache.advance(3)
    k2, v2 = torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4)
    k, v = cache.update(1, k2, v2)
    check_close("then cache.advance(3); cache.update(1, k of 1 position, v): the keys of positions 0..3", k,
                torch.cat([k1, k2], 2), where=KVCache.update,
                hint="write the new keys at positions pos .. pos + t - 1 and return positions 0 .. pos + t - 1")
    check_close("... the values of positions 0..3", v, torch.cat([v1, v2], 2), where=KVCache.update)
    check_close("the buffer cache.k[1] itself holds them (written in place)", cache.k[1][:, :, :4], torch.cat([k1, k2], 2),
                where=KVCache.update)
    check_close("layer 0 was not touched", cache.k[0], torch.zeros(2, 2, 8, 4), where=KVCache.update)
    cache.advance(1)
    try:
        cache.update(0, torch.randn(2, 2, 5, 4), torch.randn(2, 2, 5, 4))
    except ValueError:
        pass
    else:
        raise AssertionError(f"cache.update{learner_line(KVCache.update)}: 4 + 5 tokens in a cache of 8 must raise "
                             "ValueError (a full cache), not write past its end")


def test_prefill_logits_match_your_model():
    model = make_model()
    torch.manual_seed(1)
    idx = torch.randint(0, 64, (2, 12))
    cache = new_cache(model, batch=2)
    with torch.no_grad():
        got = forward_cached(model, idx, cache)
    want = plain_logits(model, idx)
    hint = ""
    if isinstance(got, torch.Tensor) and got.shape == want.shape and not torch.allclose(got, want, atol=1e-4):
        early = torch.allclose(got[:, -1], want[:, -1], atol=1e-4)
        hint = ("only the last position agrees: the prefill sees the future. With nothing cached the mask is the causal "
                "one (torch.ones(t, t).tril())" if early else "")
    check_close("forward_cached(model, idx of 2 × 12 tokens, an empty cache) vs model(idx)[0]", got, want,
                atol=1e-4, rtol=1e-4, where=W(forward_cached), hint=hint)
    check_pos(cache, 0, 12, "forward_cached of 12 tokens on an empty cache")


def test_one_token_at_a_time_matches_your_model():
    model = make_model()
    torch.manual_seed(2)
    seq = torch.randint(0, 64, (1, 20)).tolist()[0]
    cache = new_cache(model)
    with torch.no_grad():
        forward_cached(model, torch.tensor([seq[:8]]), cache)
        check_pos(cache, 0, 8, "a prefill of 8 tokens")
        for n in range(8, 20):
            got = forward_cached(model, torch.tensor([[seq[n]]]), cache)
            want = plain_logits(model, seq[:n + 1])[:, n:]
            check_pos(cache, n, 1, f"one more token after {n} cached ones")
            check_close(f"forward_cached(model, token {n} alone) after {n} cached tokens vs model(tokens 0..{n})[0][:, {n}]",
                        got, want, atol=1e-4, rtol=1e-4, where=W(forward_cached),
                        hint=diagnose_step(model, seq[:n], [seq[n]], got))


def test_several_new_tokens_after_a_prefill():
    # A prompt that continues after a first call (a chat's next turn; the tool output of module 12).
    model = make_model()
    torch.manual_seed(3)
    seq = torch.randint(0, 64, (1, 9)).tolist()[0]
    cache = new_cache(model)
    with torch.no_grad():
        forward_cached(model, torch.tensor([seq[:5]]), cache)
        got = forward_cached(model, torch.tensor([seq[5:]]), cache)
    want = plain_logits(model, seq)[:, 5:]
    check_close("forward_cached(model, 4 new tokens) after 5 cached ones vs model(all 9)[0][:, 5:]", got, want,
                atol=1e-4, rtol=1e-4, where=W(cached_attention), hint=diagnose_step(model, seq[:5], seq[5:], got))


def test_greedy_generation_equals_uncached_and_ours():
    model = make_model()
    theirs = ours.MiniLLM(CFG).eval()
    theirs.load_state_dict(model.state_dict())
    for prompt in ([1, 2, 3], list(range(40, 60))):
        got = generate(model, prompt, 30)
        want = generate_uncached(model, prompt, 30)
        check_equal(f"generate(model, {prompt if len(prompt) < 8 else f'{len(prompt)} tokens'}, 30) (greedy) vs the "
                    "uncached greedy tokens", got, want, where=W(generate))
        # ours: llm_foundry's MiniLLM with its own KVCache, the same weights
        cache, ids, mine = theirs.new_cache(1, len(prompt) + 30), torch.tensor([prompt]), []
        with torch.no_grad():
            for _ in range(30):
                tok = int(theirs(ids, cache=cache, last_only=True)[0][0, -1].argmax())
                mine.append(tok)
                ids = torch.tensor([[tok]])
        check_equal("... vs our MiniLLM with the same weights and our KVCache", got, mine, where=W(generate))


def test_samples_share_one_prefill_and_follow_the_model():
    model = make_model()
    prompt = [3, 1, 4, 1, 5]
    greedy = generate(model, prompt, 12)
    got = generate_samples(model, prompt, 3, 12, temperature=0.0)
    check_equal("generate_samples(model, prompt, 3, 12, temperature=0.0)", got, [greedy] * 3, where=W(generate_samples))
    fed = []
    hook = model.tok_embeddings.register_forward_pre_hook(lambda m, args: fed.append(args[0].shape))
    try:
        samples = generate_samples(model, prompt, 4, 10, temperature=1.0, top_k=3, seed=1)
    finally:
        hook.remove()
    check_equal("the first call's input shape in generate_samples(..., 4 samples): one prefill of the prompt",
                tuple(fed[0]), (1, 5), where=W(generate_samples),
                hint="prefill the prompt once (batch 1), then cache.expand(num_samples) and the logits to num_samples rows")
    assert len({tuple(s) for s in samples}) > 1, (
        f"generate_samples(..., 4 samples, temperature=1.0){learner_line(W(generate_samples))}: all 4 samples are the same")
    # every sampled token must be among the top 3 of the model's logits after ITS OWN prefix
    for i, s in enumerate(samples):
        for n, tok in enumerate(s):
            top3 = plain_logits(model, prompt + s[:n])[0, -1].topk(3).indices.tolist()
            assert tok in top3, (
                f"generate_samples(..., top_k=3){learner_line(W(generate_samples))}: sample {i}, token {n} is {tok}, not one "
                f"of the 3 most likely after its own prefix ({top3}): is each row fed its own token, with its own cache row?")


def test_top_k_of_one_is_greedy():
    torch.manual_seed(4)
    logits = torch.randn(16, 50) * 3
    got = sample_next(logits, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(0))
    check_equal("sample_next(16 rows, temperature=1.0, top_k=1).tolist() vs argmax", 
                got.tolist() if isinstance(got, torch.Tensor) else got, logits.argmax(-1).tolist(), where=W(sample_next))
    got = sample_next(logits, temperature=0.0, generator=torch.Generator().manual_seed(0))
    check_equal("sample_next(16 rows, temperature=0.0).tolist() vs argmax",
                got.tolist() if isinstance(got, torch.Tensor) else got, logits.argmax(-1).tolist(), where=W(sample_next))


PROBS = torch.tensor([0.5, 0.25, 0.15, 0.1])


def draws(n=4000, seed=0, **rules):
    """``n`` draws from the crafted distribution PROBS (logits = log PROBS) in one call."""
    logits = PROBS.log().expand(n, -1)
    got = sample_next(logits, generator=torch.Generator().manual_seed(seed), **rules)
    assert isinstance(got, torch.Tensor) and got.shape == (n,), (
        f"sample_next(logits of shape ({n}, 4)){learner_line(W(sample_next))}: expected a tensor of {n} ids, got "
        f"{getattr(got, 'shape', type(got).__name__)}")
    return torch.bincount(got, minlength=4).float() / n


def check_freq(call, freq, want, hint=""):
    seen, allowed = set(torch.nonzero(freq).flatten().tolist()), set(torch.nonzero(want).flatten().tolist())
    if seen != allowed:
        raise AssertionError(f"{call}{learner_line(W(sample_next))}: drew the ids {sorted(seen)}, expected exactly "
                             f"{sorted(allowed)} (probabilities {[round(float(p), 3) for p in PROBS]})"
                             + (f". {hint}" if hint else ""))
    check_close(f"{call}: frequencies of 4,000 draws", freq, want, atol=0.03, rtol=0.0, where=W(sample_next), hint=hint)


def test_top_p_keeps_the_smallest_set_that_reaches_p():
    # cumulative 0.5, 0.75, 0.9, 1.0: top_p 0.7 keeps {0, 1} (0.5 alone is short of 0.7; id 1 crosses it)
    hint = ("the id whose probability crosses top_p stays: drop an id when the ids BEFORE it already reach top_p, "
            "(cumsum - probs) >= top_p — the id that crosses top_p stays")
    check_freq("sample_next(log [0.5, 0.25, 0.15, 0.1], top_p=0.7)", draws(top_p=0.7),
               torch.tensor([0.5, 0.25, 0, 0]) / 0.75, hint)
    check_freq("sample_next(log [0.5, 0.25, 0.15, 0.1], top_p=0.8)", draws(top_p=0.8),
               torch.tensor([0.5, 0.25, 0.15, 0]) / 0.9, hint)
    check_freq("sample_next(..., top_p=1.0) (off)", draws(top_p=1.0), PROBS)


def test_top_k_and_temperature():
    check_freq("sample_next(log [0.5, 0.25, 0.15, 0.1], top_k=2)", draws(top_k=2), torch.tensor([0.5, 0.25, 0, 0]) / 0.75)
    tempered = PROBS ** 2 / (PROBS ** 2).sum()  # temperature 0.5: logits / 0.5 = probabilities squared
    check_freq("sample_next(log [0.5, 0.25, 0.15, 0.1], temperature=0.5)", draws(temperature=0.5), tempered,
               "divide the logits by the temperature (a low temperature sharpens the distribution)")
    # the temperature comes first: top_p cuts the tempered distribution (0.725, 0.181, 0.065, 0.029)
    keep = tempered * torch.tensor([1, 1, 0, 0])
    check_freq("sample_next(..., temperature=0.5, top_p=0.8)", draws(temperature=0.5, top_p=0.8), keep / keep.sum(),
               "apply the temperature first, then top_k and top_p to the tempered logits, as our sample_next does "
               "(the temperature changes which ids make up top_p)")


def test_a_seed_makes_sampling_repeatable():
    model = make_model()
    a = generate(model, [1, 2, 3], 25, temperature=1.0, seed=7)
    b = generate(model, [1, 2, 3], 25, temperature=1.0, seed=7)
    check_equal("generate(..., temperature=1.0, seed=7) twice", a, b, where=W(generate),
                hint="make one torch.Generator per call, seeded with `seed`, and pass it to every sample_next")
    c = generate(model, [1, 2, 3], 25, temperature=1.0, seed=8)
    assert a != c, (f"generate(..., seed=7) and generate(..., seed=8){learner_line(W(generate))} gave the same 25 sampled "
                    "tokens: is the seed used?")
    state = torch.get_rng_state()
    generate(model, [1, 2, 3], 5, temperature=1.0, seed=3)
    assert torch.equal(state, torch.get_rng_state()), (
        f"generate(..., seed=3){learner_line(W(generate))} changed torch's global random state: draw from a "
        "torch.Generator of your own, so a seeded call disturbs no other code")


def test_the_cache_reads_each_token_once():
    # Counted at your model's embedding: how many token positions went into the model.
    model = make_model()
    fed = []
    hook = model.tok_embeddings.register_forward_pre_hook(lambda m, args: fed.append(args[0].numel()))
    try:
        out = generate(model, list(range(10)), 20)
    finally:
        hook.remove()
    n = len(out) if isinstance(out, list) else 20
    assert sum(fed) <= 10 + n, (
        f"generate(model, 10 tokens, 20){learner_line(W(generate))} fed {sum(fed)} token positions to the model in "
        f"{len(fed)} calls; with a KV cache the prompt goes in once and each new token once: at most {10 + n}")
    assert fed and fed[0] == 10, (
        f"generate{learner_line(W(generate))}: the first call fed {fed[0] if fed else 0} tokens; prefill the whole prompt "
        "(10 tokens) in one call")


def test_speed_cached_uncached_and_ours():
    """Latency (the prefill) and throughput (new tokens per second). Printed for you; asserted only
    loosely, because timings on a shared machine vary: the cache must not make generation slower."""
    cfg = ModelConfig(vocab_size=64, dim=64, n_layers=2, n_heads=4, max_seq_len=160)
    model = make_model(cfg)
    theirs = ours.MiniLLM(cfg).eval()
    theirs.load_state_dict(model.state_dict())
    prompt, n = torch.randint(0, 64, (96,), generator=torch.Generator().manual_seed(0)).tolist(), 64

    def ours_generate():
        cache, ids = theirs.new_cache(1, len(prompt) + n), torch.tensor([prompt])
        with torch.no_grad():
            for _ in range(n):
                ids = theirs(ids, cache=cache, last_only=True)[0][:, -1].argmax(-1, keepdim=True)

    def best_of(fn, runs=2):
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    t_cached = best_of(lambda: generate(model, prompt, n))
    t_plain = best_of(lambda: generate_uncached(model, prompt, n))
    t_ours = best_of(ours_generate)
    t_prefill = best_of(lambda: forward_cached(model, torch.tensor([prompt]), new_cache(model, 1, 160)))
    print(f"prompt {len(prompt)} tokens, {n} new tokens, dim {cfg.dim}, {cfg.n_layers} layers (best of 2)")
    print(f"  prefill (latency to the first token): {t_prefill * 1e3:7.1f} ms")
    for name, t in (("yours, cached", t_cached), ("yours, uncached", t_plain), ("ours (llm_foundry), cached", t_ours)):
        print(f"  {name:28s} {n / t:8.0f} tokens/s")
    assert t_cached <= 3 * t_plain, (
        f"generate{learner_line(W(generate))} took {t_cached:.3f} s for {n} tokens, the uncached loop {t_plain:.3f} s: "
        "the cache makes it slower. Is something copied or recomputed every step (torch.cat of the whole history, "
        "the prompt fed again)?")
