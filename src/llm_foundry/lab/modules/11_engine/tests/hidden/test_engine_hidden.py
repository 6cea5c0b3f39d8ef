"""Module 11 — the inference engine (hidden tests: grouped-query attention with QK-norm, stop ids, a
full context, batches of different sequences, and sampling rules applied per row)."""

import inspect

import torch

from llm_foundry.config import ModelConfig
from llm_foundry.lab.testing import check_close, check_equal, learner_line

from engine import KVCache, forward_cached, generate, generate_samples, generate_uncached, sample_next
from model import MiniLLM

W = inspect.unwrap


def make_model(cfg, seed=0):
    torch.manual_seed(seed)
    model = MiniLLM(cfg).eval()
    with torch.no_grad():
        model.norm.weight.fill_(0.1)
    return model


def test_gqa_qk_norm_untied_model_step_by_step():
    cfg = ModelConfig(vocab_size=48, dim=48, n_layers=3, n_heads=6, n_kv_heads=2, max_seq_len=32, qk_norm=True,
                      tie_embeddings=False, rope_theta=500.0)
    model = make_model(cfg, seed=11)
    torch.manual_seed(12)
    seq = torch.randint(0, 48, (2, 16))
    cache = KVCache(cfg.n_layers, 2, cfg.kv_heads, cfg.head_dim, 32)
    with torch.no_grad():
        want = model(seq)[0]
        got = [forward_cached(model, seq[:, :6], cache)]
        got += [forward_cached(model, seq[:, n:n + 1], cache) for n in range(6, 10)]
        got.append(forward_cached(model, seq[:, 10:], cache))
    check_close("forward_cached on 2 rows (6 QK-normed heads sharing 2 key/value heads): prefill 6, four single "
                "tokens, then 6 at once, vs model(seq)[0]", torch.cat(got, 1), want, atol=1e-4, rtol=1e-4,
                where=W(forward_cached))


def test_stop_ids_end_the_reply_and_are_not_returned():
    cfg = ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, max_seq_len=64)
    model = make_model(cfg, seed=13)
    free = generate(model, [7, 8, 9], 20, temperature=1.0, seed=4)
    assert len(free) == 20, f"generate(..., 20 new tokens){learner_line(W(generate))} returned {len(free)} tokens"
    stop = free[5]
    first = free.index(stop)
    got = generate(model, [7, 8, 9], 20, temperature=1.0, seed=4, stop_ids=(stop,))
    check_equal(f"generate(..., seed=4, stop_ids=({stop},))", got, free[:first], where=W(generate),
                hint="the reply ends at the first stop id, and the stop token is not part of the reply")
    rows = generate_samples(model, [7, 8, 9], 3, 15, temperature=0.0, stop_ids=(free[0],))
    greedy = generate(model, [7, 8, 9], 15, temperature=0.0, stop_ids=(free[0],))
    check_equal(f"generate_samples(..., 3 samples, greedy, stop_ids=({free[0]},))", rows, [greedy] * 3,
                where=W(generate_samples))


def test_the_context_is_never_overrun():
    cfg = ModelConfig(vocab_size=64, dim=32, n_layers=1, n_heads=2, max_seq_len=24)
    model = make_model(cfg, seed=14)
    prompt = list(range(1, 21))
    got = generate(model, prompt, 10)
    check_equal("len(generate(model, 20 tokens, 10 new)) with a context of 24", len(got), 4, where=W(generate),
                hint="prompt and reply together never exceed model.cfg.max_seq_len")
    check_equal("... the tokens", got, generate_uncached(model, prompt, 10), where=W(generate))
    check_equal("generate(model, 3 tokens, 5 new): max_new_tokens", len(generate(model, [1, 2, 3], 5)), 5,
                where=W(generate))


def test_rules_apply_to_each_row_in_its_own_order():
    # Row 0 in order, row 1 the same probabilities shuffled: the cut must follow each row's own ranking.
    probs = torch.tensor([[0.5, 0.25, 0.15, 0.1], [0.1, 0.5, 0.15, 0.25]])
    logits = probs.log().repeat(2000, 1)
    got = sample_next(logits, top_p=0.7, generator=torch.Generator().manual_seed(5))
    assert isinstance(got, torch.Tensor) and got.shape == (4000,), (
        f"sample_next{learner_line(W(sample_next))}: expected 4000 ids, got {getattr(got, 'shape', type(got).__name__)}")
    for row, keep in ((0, [0, 1]), (1, [1, 3])):
        seen = sorted(set(got[row::2].tolist()))
        check_equal(f"ids drawn by sample_next(top_p=0.7) for probabilities {probs[row].tolist()}", seen, keep,
                    where=W(sample_next), hint="the cut is made in sorted order and must be scattered back to the ids "
                                             "of each row (drop_sorted.scatter(-1, order, drop_sorted))")
    got = sample_next(probs.log().repeat(1000, 1), top_k=1, top_p=0.3, temperature=1.5,
                      generator=torch.Generator().manual_seed(6))
    check_equal("sample_next(top_k=1, top_p=0.3, temperature=1.5): one id left per row", sorted(set(got[1::2].tolist())),
                [1], where=W(sample_next))


def test_a_full_cache_refuses_more():
    cache = KVCache(1, 1, 1, 2, 4)
    cache.update(0, torch.ones(1, 1, 4, 2), torch.ones(1, 1, 4, 2))
    cache.advance(4)
    try:
        cache.update(0, torch.ones(1, 1, 1, 2), torch.ones(1, 1, 1, 2))
    except ValueError:
        return
    raise AssertionError(f"KVCache.update{learner_line(KVCache.update)}: a fifth token in a cache of 4 must raise "
                         "ValueError")
