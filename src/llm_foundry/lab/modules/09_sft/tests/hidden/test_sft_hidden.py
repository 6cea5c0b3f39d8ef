"""Module 9 — SFT (hidden tests: a BPE tokenizer, an empty system message, cut conversations, the
loss's corner cases)."""

import torch
import torch.nn.functional as F

from llm_foundry.lab.testing import check_close, learner_line
from llm_foundry.tokenizers import BPETokenizer

from sft import sft_batch, sft_loss
from test_sft import CONVERSATIONS, TOK, compare_with_ours, expected_batch


def test_render_with_a_bpe_tokenizer():
    """BPE merges across a boundary: the system text and the user's must be encoded as ONE string."""
    texts = [m["content"] for conv in CONVERSATIONS.values() for m in conv if isinstance(m["content"], str)] * 20
    bpe = BPETokenizer.train(texts, vocab_size=300)
    for name, messages in CONVERSATIONS.items():
        compare_with_ours(name, messages, tokenizer=bpe)


def test_render_an_empty_system_message():
    compare_with_ours("an empty system message", [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"},
                                                  {"role": "assistant", "content": "Hey"}])


def test_batch_cuts_long_conversations():
    convs = [CONVERSATIONS["a system message and two turns"], CONVERSATIONS["one turn"]]
    x, y, m = (torch.as_tensor(t).long() for t in sft_batch(TOK, convs, 16))
    want = expected_batch(convs, 16)
    for what, a, b in zip(("x", "y", "mask"), (x, y, m), want):
        assert a.shape == b.shape and torch.equal(a, b), (
            f"sft_batch(tokenizer, <a conversation of {len(want[0][0])}+ tokens>, seq_len=16){learner_line(sft_batch)}: "
            f"{what} differs from ours: cut each conversation to seq_len + 1 tokens before shifting")


def test_sft_loss_corner_cases():
    torch.manual_seed(1)
    logits, targets = torch.randn(1, 5, 7), torch.randint(0, 7, (1, 5))
    zero = sft_loss(logits, targets, torch.zeros(1, 5, dtype=torch.long))
    assert torch.isfinite(torch.as_tensor(zero)).all() and float(zero) == 0.0, (
        f"sft_loss with a mask of zeros{learner_line(sft_loss)} gave {float(zero)}: a batch with nothing to learn "
        "must give 0, not nan (clamp the count: mask.sum().clamp(min=1))")
    for mask in (torch.tensor([[True, False, True, True, False]]), torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0]])):
        want = F.cross_entropy(logits[0][mask[0].bool()], targets[0][mask[0].bool()])
        check_close(f"sft_loss(..., mask of dtype {mask.dtype})", sft_loss(logits, targets, mask), want, atol=1e-5,
                    rtol=1e-5, where=sft_loss)
    logits.requires_grad_()
    loss = sft_loss(logits, targets, torch.tensor([[0, 0, 1, 0, 0]]))
    loss.backward()
    assert logits.grad[0, [0, 1, 3, 4]].abs().sum() == 0, (
        f"sft_loss{learner_line(sft_loss)}: the positions with mask 0 got a gradient: they must not be trained")
