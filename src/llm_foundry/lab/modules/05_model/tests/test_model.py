"""Module 5 — the model skeleton (visible tests). Run them with `foundry lab test 5`.

Your model is compared with ours (``llm_foundry.models``) carrying the same weights. Tolerance:
1e-5 for a single layer, 1e-4 for the whole model's logits — both compute in float32 and differ only
in rounding (our RMSNorm and attention may run fused kernels that add in another order).
"""

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F

import llm_foundry.models as ours
from llm_foundry.config import ModelConfig
from llm_foundry.lab.testing import check_close, check_equal

import model as learner
from model import Attention, Block, MiniLLM, RMSNorm, SwiGLU, apply_rope, rope_tables

CFG = ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16)


def loaded(mine, theirs):
    """Our weights into your module (strict: every name and shape must agree)."""
    try:
        mine.load_state_dict(theirs.state_dict())
    except RuntimeError as e:
        raise AssertionError(f"our weights do not load into your {type(mine).__name__}: "
                             f"{str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e}") from None
    return mine


def test_rmsnorm():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 32) * 3 + 1  # a mean far from 0 shows a LayerNorm at once
    norm = RMSNorm(32)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(32) + 0.5)
    got = norm(x)
    want = F.rms_norm(x, (32,), norm.weight, 1e-5)
    hint = ""
    if isinstance(got, torch.Tensor) and got.shape == want.shape:
        if torch.allclose(got, F.layer_norm(x, (32,), norm.weight, None, 1e-5), atol=1e-4):
            hint = "you subtract the mean: that is LayerNorm; RMSNorm only divides by the root mean square"
        elif torch.allclose(got, F.rms_norm(x, (32,), None, 1e-5), atol=1e-4):
            hint = "the learned gain self.weight is not applied"
    check_close("RMSNorm(32)(x)", got, want, where=RMSNorm.forward, hint=hint)


def test_rope_tables_and_rotation():
    cos, sin = rope_tables(8, 12)
    want_cos, want_sin = ours.rope_tables(8, 12)
    check_close("rope_tables(8, 12)[0] (cos)", cos, want_cos, where=rope_tables)
    check_close("rope_tables(8, 12)[1] (sin)", sin, want_sin, where=rope_tables)
    torch.manual_seed(1)
    x = torch.randn(2, 3, 12, 8)
    got = apply_rope(x, want_cos, want_sin)
    hint = ""
    if isinstance(got, torch.Tensor) and got.shape == x.shape:
        pairs = x.unflatten(-1, (4, 2))
        c, s = want_cos[:, :, None], want_sin[:, :, None]
        interleaved = torch.stack((pairs[..., 0] * c[..., 0] - pairs[..., 1] * s[..., 0],
                                   pairs[..., 1] * c[..., 0] + pairs[..., 0] * s[..., 0]), -1).flatten(-2)
        if torch.allclose(got, interleaved, atol=1e-5):
            hint = ("you rotate neighbouring pairs (x0, x1), (x2, x3)…; ours is rotate-half: the first half of each "
                    "head against the second half, as Hugging Face Llama")
        elif torch.allclose(got, ours.apply_rope(x, want_cos, -want_sin), atol=1e-5):
            hint = "you rotate in the wrong direction: x1·cos − x2·sin, then x2·cos + x1·sin"
    check_close("apply_rope(x, cos, sin)", got, ours.apply_rope(x, want_cos, want_sin), where=apply_rope, hint=hint)


def test_parameter_names_and_shapes():
    mine = {k: tuple(v.shape) for k, v in MiniLLM(CFG).state_dict().items()}
    want = {k: tuple(v.shape) for k, v in ours.MiniLLM(CFG).state_dict().items()}
    check_equal("names missing from your MiniLLM(CFG).state_dict()", sorted(set(want) - set(mine)), [],
                where=MiniLLM)
    check_equal("names in your state_dict that ours does not have", sorted(set(mine) - set(want)), [], where=MiniLLM,
                hint="buffers that are not weights (the RoPE tables) are registered with persistent=False")
    for name, shape in want.items():
        check_equal(f"shape of {name}", mine[name], shape, where=MiniLLM)


def test_parameter_count():
    for tie in (True, False):
        cfg = ModelConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16, tie_embeddings=tie)
        mine = sum(p.numel() for p in MiniLLM(cfg).parameters())
        want = ours.MiniLLM(cfg).num_parameters()
        hint = ""
        if mine - want == cfg.vocab_size * cfg.dim:
            hint = "the output head has its own matrix although tie_embeddings is True: share tok_embeddings.weight"
        check_equal(f"parameters of MiniLLM(tie_embeddings={tie})", mine, want, where=MiniLLM, hint=hint)


def test_block_matches_ours():
    torch.manual_seed(2)
    theirs = ours.Block(CFG, 0)
    mine = loaded(Block(CFG), theirs)
    x = torch.randn(2, 10, 32)
    cos, sin = ours.rope_tables(CFG.head_dim, 10)
    with torch.no_grad():
        check_close("Block(CFG)(x, cos, sin) with our weights", mine(x, cos, sin), theirs(x, cos, sin), where=Block.forward)


def test_logits_match_our_minillm():
    torch.manual_seed(3)
    theirs = ours.MiniLLM(CFG).eval()
    mine = loaded(MiniLLM(CFG), theirs).eval()
    idx = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        got = mine(idx)[0]
        want = theirs(idx)[0]
    check_close("MiniLLM(CFG)(idx)[0] (the logits) with our weights", got, want, atol=1e-4, rtol=1e-4,
                where=MiniLLM.forward)


def traced(tracer, module):
    """``module``'s graph; a forward torch.fx cannot follow fails with the reason."""
    try:
        return tracer.trace(module)
    except NotImplementedError:
        raise
    except Exception as e:
        raise AssertionError(f"torch.fx could not trace your {type(module).__name__}.forward "
                             f"({type(e).__name__}: {e}); keep it free of Python branches on tensor values") from None


def ancestors(node):
    seen, todo = set(), [node]
    while todo:
        n = todo.pop()
        for a in n.all_input_nodes:
            if a not in seen:
                seen.add(a)
                todo.append(a)
    return seen


def test_graph_attention_is_causal_with_rope_before_the_product():
    attn = Attention(CFG)
    graph = traced(fx.Tracer(autowrap_functions=(learner.apply_rope,)), attn)
    ropes = [n for n in graph.nodes if n.op == "call_function" and n.target is learner.apply_rope]
    assert len(ropes) >= 2, (f"Attention.forward calls apply_rope {len(ropes)} times: rotate both the queries and the keys")
    sdpa = [n for n in graph.nodes if n.op == "call_function" and getattr(n.target, "__name__", "") == "scaled_dot_product_attention"]
    assert sdpa, "Attention.forward does not call F.scaled_dot_product_attention"
    node = sdpa[0]
    q, k, v = (list(node.args) + [node.kwargs.get(n) for n in ("query", "key", "value")])[:3]
    for name, arg in (("queries", q), ("keys", k)):
        assert any(r in ancestors(arg) | {arg} for r in ropes), f"the {name} reach the attention product without RoPE"
    assert not any(r in ancestors(v) | {v} for r in ropes), (
        "RoPE is applied to the values too: it rotates only queries and keys, whose dot product then depends "
        "on the distance between positions")
    causal = node.kwargs.get("is_causal", node.args[5] if len(node.args) > 5 else False)
    mask = node.kwargs.get("attn_mask", node.args[3] if len(node.args) > 3 else None)
    assert causal is True or mask is not None, (
        "the attention is not causal: each position sees the future (pass is_causal=True)")


class Leaves(fx.Tracer):
    """Keeps your RMSNorm, Attention and SwiGLU as single nodes, so the block's wiring shows."""

    def is_leaf_module(self, m, qualname):
        return isinstance(m, (learner.RMSNorm, learner.Attention, learner.SwiGLU)) or super().is_leaf_module(m, qualname)


def is_add(n):
    return (n.op == "call_function" and n.target in (operator.add, torch.add, operator.iadd)) or (
        n.op == "call_method" and n.target in ("add", "add_", "__add__"))


def test_graph_block_is_pre_norm_with_two_residual_adds():
    graph = traced(Leaves(), Block(CFG))
    nodes = list(graph.nodes)
    x = nodes[0]
    calls = {n.target: n for n in nodes if n.op == "call_module"}
    for name in ("attn_norm", "attn", "ffn_norm", "ffn"):
        assert name in calls, f"Block.forward never calls self.{name}"
    attn, ffn = calls["attn"], calls["ffn"]
    assert attn.args[0] is calls["attn_norm"] and calls["attn_norm"].args[0] is x, (
        "the attention's input is not attn_norm(x): a pre-norm block normalises the input of each sublayer "
        "and adds the sublayer's output to the un-normalised x")
    h = [n for n in attn.users if is_add(n)]
    assert h and x in h[0].args, "the attention's output is not added to x: h = x + attn(attn_norm(x), cos, sin)"
    h = h[0]
    assert ffn.args[0] is calls["ffn_norm"] and calls["ffn_norm"].args[0] is h, (
        "the MLP's input is not ffn_norm(h) with h = x + attention: pre-norm again, on the first residual sum")
    out = [n for n in nodes if n.op == "output"][0].args[0]
    assert is_add(out) and set(out.args) == {h, ffn}, "the block must return h + ffn(ffn_norm(h))"
