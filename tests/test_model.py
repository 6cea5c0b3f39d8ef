import math

import pytest
import torch

from llm_foundry import MiniLLM, ModelConfig
from llm_foundry.utils.errors import FoundryError


def small_cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=97, dim=64, n_layers=2, n_heads=4, max_seq_len=48)
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("kw", [{}, {"n_kv_heads": 2, "qk_norm": True}, {"n_kv_heads": 1, "tie_embeddings": False}])
def test_kv_cache_decoding_matches_full_forward(kw):
    torch.manual_seed(0)
    model = MiniLLM(small_cfg(**kw)).eval()
    x = torch.randint(0, 97, (3, 40))
    with torch.no_grad():
        full, _ = model(x)
        cache = model.new_cache(batch_size=3)
        pieces = [model(x[:, :11], cache=cache)[0], model(x[:, 11:17], cache=cache)[0]]  # prefill, then a chunk
        for i in range(17, 40):
            pieces.append(model(x[:, i:i + 1], cache=cache)[0])  # one token at a time
    assert cache.pos == 40
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=2e-5, rtol=1e-4)


def test_last_only_and_cache_overflow():
    model = MiniLLM(small_cfg()).eval()
    x = torch.randint(0, 97, (1, 10))
    with torch.no_grad():
        full, _ = model(x)
        last, _ = model(x, last_only=True)
    torch.testing.assert_close(last[:, 0], full[:, -1])
    # With a cache, continuing after cached tokens: the last query still sees every key.
    with torch.no_grad():
        cache = model.new_cache(1)
        model(x[:, :4], cache=cache)
        cont, _ = model(x[:, 4:], cache=cache, last_only=True)
    torch.testing.assert_close(cont[:, 0], full[:, -1], atol=2e-5, rtol=1e-4)
    assert cache.pos == 10
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 49, dtype=torch.long))


def test_causality():
    # Changing a later token must not change earlier logits.
    model = MiniLLM(small_cfg()).eval()
    x = torch.randint(0, 97, (1, 20))
    y = x.clone()
    y[0, 15] = (y[0, 15] + 1) % 97
    with torch.no_grad():
        a, b = model(x)[0], model(y)[0]
    torch.testing.assert_close(a[:, :15], b[:, :15])
    assert not torch.allclose(a[:, 15:], b[:, 15:])


def test_loss_ignores_masked_targets():
    model = MiniLLM(small_cfg()).eval()
    x = torch.randint(0, 97, (2, 8))
    t = torch.randint(0, 97, (2, 8))
    _, loss_all = model(x, t)
    masked = t.clone()
    masked[:, :4] = -100
    logits, loss_half = model(x, masked)
    expected = torch.nn.functional.cross_entropy(logits[:, 4:].reshape(-1, 97), t[:, 4:].reshape(-1))
    torch.testing.assert_close(loss_half, expected)
    assert not torch.isclose(loss_all, loss_half)


def test_resize_vocab_keeps_rows_and_tying():
    torch.manual_seed(0)
    for tie in (True, False):
        model = MiniLLM(small_cfg(tie_embeddings=tie))
        old_emb = model.tok_embeddings.weight.detach().clone()
        old_head = model.output.weight.detach().clone()
        model.resize_vocab(130)
        assert model.cfg.vocab_size == 130 and model.tok_embeddings.weight.shape == (130, 64)
        torch.testing.assert_close(model.tok_embeddings.weight[:97], old_emb)
        torch.testing.assert_close(model.output.weight[:97], old_head)
        assert (model.output.weight is model.tok_embeddings.weight) == tie
        assert model.tok_embeddings.weight[97:].std() > 0
        logits, _ = model(torch.tensor([[129, 5]]))
        assert logits.shape == (1, 2, 130)
    with pytest.raises(FoundryError, match="only grows"):
        model.resize_vocab(10)


def test_parameter_count_and_init():
    cfg = small_cfg()
    model = MiniLLM(cfg)
    d, h, v, L = cfg.dim, cfg.hidden_dim, cfg.vocab_size, cfg.n_layers
    per_layer = 4 * d * d + 3 * d * h + 2 * d
    assert model.num_parameters() == v * d + L * per_layer + d  # tied head counted once
    assert model.num_parameters(exclude_embeddings=True) == L * per_layer + d
    std = model.layers[0].attn.wo.weight.std().item()
    assert std == pytest.approx(cfg.init_std / math.sqrt(2 * L), rel=0.15)
    assert model.layers[0].attn.wq.weight.std().item() == pytest.approx(cfg.init_std, rel=0.15)
    assert model.flops_per_token(48) > 6 * model.num_parameters(exclude_embeddings=True)
