"""Module 5 — the model skeleton (hidden tests: other shapes, the loss, causality, RoPE's promise)."""

import torch
import torch.nn.functional as F

import llm_foundry.models as ours
from llm_foundry.config import ModelConfig
from llm_foundry.lab.testing import check_close, check_equal

from model import Attention, MiniLLM, SwiGLU, apply_rope, rope_tables


def loaded(mine, theirs):
    try:
        mine.load_state_dict(theirs.state_dict())
    except RuntimeError as e:
        lines = str(e).splitlines()
        raise AssertionError(f"our weights do not load into your {type(mine).__name__}: "
                             f"{lines[1].strip() if len(lines) > 1 else e}") from None
    return mine


def test_swiglu_matches_ours():
    torch.manual_seed(4)
    theirs = ours.SwiGLU(24, 40)
    mine = loaded(SwiGLU(24, 40), theirs)
    x = torch.randn(3, 7, 24)
    got = mine(x)
    hint = ""
    if isinstance(got, torch.Tensor) and got.shape == x.shape:
        swapped = theirs.w2(F.silu(theirs.w3(x)) * theirs.w1(x))
        if torch.allclose(got, swapped, atol=1e-5):
            hint = "gate and up are swapped: w1 is the gate (through silu), w3 the up projection"
    check_close("SwiGLU(24, 40)(x) with our weights", got, theirs(x), where=SwiGLU.forward, hint=hint)


def test_attention_with_gqa_and_qk_norm_matches_ours():
    torch.manual_seed(5)
    cfg = ModelConfig(vocab_size=50, dim=48, n_layers=1, n_heads=6, n_kv_heads=2, max_seq_len=12, qk_norm=True)
    theirs = ours.Attention(cfg, 0)
    mine = loaded(Attention(cfg), theirs)
    x = torch.randn(2, 12, 48)
    cos, sin = ours.rope_tables(cfg.head_dim, 12)
    with torch.no_grad():
        check_close("Attention(6 query heads, 2 kv heads, qk_norm)(x, cos, sin)", mine(x, cos, sin),
                    theirs(x, cos, sin), where=Attention.forward)


def test_untied_deeper_model_and_its_loss():
    torch.manual_seed(6)
    cfg = ModelConfig(vocab_size=80, dim=32, n_layers=3, n_heads=2, max_seq_len=20, tie_embeddings=False,
                      rope_theta=500.0)
    theirs = ours.MiniLLM(cfg).eval()
    mine = loaded(MiniLLM(cfg), theirs).eval()
    idx = torch.randint(0, 80, (3, 20))
    targets = torch.randint(0, 80, (3, 20))
    targets[:, :4] = -100
    with torch.no_grad():
        logits, loss = mine(idx, targets)
        want_logits, want_loss = theirs(idx, targets)
    check_close("MiniLLM(untied, 3 layers, rope_theta=500)(idx)[0]", logits, want_logits, atol=1e-4, rtol=1e-4,
                where=MiniLLM.forward)
    check_close("MiniLLM(...)(idx, targets)[1] (the loss, -100 targets not counted)", loss, want_loss, atol=1e-5,
                where=MiniLLM.forward, hint="F.cross_entropy(logits.flatten(0, -2), targets.flatten(), ignore_index=-100)")
    check_equal("MiniLLM(...)(idx)[1] without targets", mine(idx)[1], None, where=MiniLLM.forward)


def test_the_past_does_not_see_the_future():
    torch.manual_seed(7)
    cfg = ModelConfig(vocab_size=40, dim=32, n_layers=2, n_heads=4, max_seq_len=16)
    model = MiniLLM(cfg).eval()
    a = torch.randint(0, 40, (1, 16))
    b = a.clone()
    b[0, 9:] = (b[0, 9:] + 1) % 40
    with torch.no_grad():
        la, lb = model(a)[0], model(b)[0]
    moved = float((la[0, :9] - lb[0, :9]).abs().max())
    assert moved < 1e-5, (f"changing tokens 9..15 changed the logits at positions 0..8 by up to {moved:.3g}: "
                          f"the model sees the future (causal attention: is_causal=True)")
    assert float((la[0, 9:] - lb[0, 9:]).abs().max()) > 1e-4, "changing tokens 9..15 did not change their own logits"


def test_rope_makes_scores_depend_on_distance_only():
    torch.manual_seed(8)
    cos, sin = rope_tables(16, 32)
    q, k = torch.randn(16), torch.randn(16)

    def score(i, j):
        qi = apply_rope(q.expand(32, 16), cos, sin)[i]
        kj = apply_rope(k.expand(32, 16), cos, sin)[j]
        return (qi * kj).sum()

    check_close("score(q at 7, k at 3) vs score(q at 20, k at 16) after apply_rope", score(20, 16), score(7, 3),
                atol=1e-4, where=apply_rope, hint="a rotation by position makes q·k depend on i − j only")
    check_close("apply_rope keeps the length of every vector", apply_rope(q.expand(32, 16), cos, sin).norm(dim=-1),
                q.norm().expand(32), atol=1e-4, where=apply_rope)
