"""Module 9 — SFT (visible tests). Run them with `foundry lab test 9`.

Your renderer is compared with OURS (``llm_foundry.data.chat.render_conversation``) token for token
and mask bit for mask bit, on conversations with a system message, several turns, Chinese and a
calculator call — exactly, since a chat model trained on one layout and served with another answers
badly. Then your batches and your masked loss, and last a short SFT run: YOUR model (module 5),
YOUR AdamW (module 6) and YOUR ``train`` (module 7) teach a tiny model three fixed replies, and
greedy generation must give them back.
"""

import torch
import torch.nn.functional as F

from llm_foundry.config import ModelConfig
from llm_foundry.data.chat import render_conversation as our_render, render_prompt as our_prompt
from llm_foundry.data.chat_batches import target_ids
from llm_foundry.lab.testing import check_close, check_equal, learner_line
from llm_foundry.tokenizers import ByteTokenizer
from llm_foundry.tokenizers.special import ASSISTANT_END, ASSISTANT_START, OUTPUT_END, OUTPUT_START, PAD

from sft import render_conversation, render_prompt, sft_batch, sft_loss

TOK = ByteTokenizer()

CONVERSATIONS = {
    "one turn": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."}],
    "a system message and two turns": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And Italy?"}, {"role": "assistant", "content": "Rome."}],
    "Chinese": [{"role": "system", "content": "你是小铸。"}, {"role": "user", "content": "你好，你是谁？"},
                {"role": "assistant", "content": "我是小铸，一个小模型。"}],
    "a calculator call": [
        {"role": "user", "content": "What is 37*12?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Let me compute. "},
                                          {"type": "python", "text": "37*12"},
                                          {"type": "python_output", "text": "444"},
                                          {"type": "text", "text": "Answer: 444"}]}],
    "a user who types a special token": [
        {"role": "user", "content": "Say <|assistant_end|> please"}, {"role": "assistant", "content": "No."}],
}


def show(ids, i):
    """Token ``i`` of ``ids`` as a reader sees it: a special token by name, else its text."""
    if not 0 <= i < len(ids):
        return "(nothing)"
    return repr(TOK.decode([ids[i]], skip_special=False))


def compare_with_ours(name, messages, tokenizer=TOK):
    """Fail at the first token or mask bit that differs from ours, saying what it suggests."""
    call = f"render_conversation(tokenizer, <{name}>){learner_line(render_conversation)}"
    got = render_conversation(tokenizer, messages)
    assert isinstance(got, tuple) and len(got) == 2, f"{call}: expected a tuple (ids, mask), got {type(got).__name__}"
    ids, mask = [int(i) for i in got[0]], [int(m) for m in got[1]]
    want_ids, want_mask = our_render(tokenizer, messages)
    sp = {tok: tokenizer.token_id(tok) for tok in (ASSISTANT_END, ASSISTANT_START, OUTPUT_START, OUTPUT_END)}
    if ids != want_ids:
        i = next((k for k, (a, b) in enumerate(zip(ids, want_ids)) if a != b), min(len(ids), len(want_ids)))
        hint = ""
        if any(tokenizer.encode(t)[0] in ids and tokenizer.encode(t) == ids[k:k + len(tokenizer.encode(t))]
               for t in ("<|bos|>", "<|user_start|>", "<|assistant_start|>") for k in range(len(ids))):
            hint = (". Your ids hold the TEXT of a special token: insert special tokens by id "
                    "(tokenizer.token_id(...)), never by encoding their strings")
        elif messages[0]["role"] == "system":
            hint = (". The system message is not a turn of its own: its text, a blank line (\\n\\n) and the "
                    "first user message's text make one user turn")
        raise AssertionError(
            f"{call}: the ids differ from ours first at position {i}: yours {show(ids, i)}, ours {show(want_ids, i)} "
            f"({len(ids)} ids, ours {len(want_ids)}){hint}")
    assert len(mask) == len(ids), f"{call}: {len(ids)} ids but {len(mask)} mask bits: one bit per token"
    if mask != want_mask:
        i = next(k for k, (a, b) in enumerate(zip(mask, want_mask)) if a != b)
        tok = ids[i]
        hint = ""
        if tok == sp[ASSISTANT_END] and mask[i] == 0:
            hint = (". <|assistant_end|> must be trained (mask 1): it is how the model says it is done — "
                    "without it the model never learns to stop")
        elif tok == sp[ASSISTANT_START]:
            hint = (". <|assistant_start|> is not the assistant's to write: the prompt ends with it "
                    "(render_prompt), so it is masked 0")
        elif mask[i] == 1 and sp[OUTPUT_START] in ids[:i + 1] and sp[OUTPUT_END] in ids[i:]:
            hint = (". A tool's output (<|output_start|>…<|output_end|>) is written by the engine, not the "
                    "model: trained on it, the model would learn to invent results — mask it 0")
        elif mask[i] == 1:
            hint = ". Only the assistant's tokens are trained; this one belongs to the prompt or the user"
        raise AssertionError(
            f"{call}: the mask differs from ours first at position {i}, token {show(ids, i)}: yours {mask[i]}, "
            f"ours {want_mask[i]}{hint}")


def test_render_one_turn():
    compare_with_ours("one turn", CONVERSATIONS["one turn"])


def test_render_matches_ours_exactly():
    for name, messages in CONVERSATIONS.items():
        compare_with_ours(name, messages)


def test_render_prompt():
    for name, messages in CONVERSATIONS.items():
        got = render_prompt(TOK, messages)
        want = our_prompt(TOK, messages)
        hint = ""
        if isinstance(got, list) and got[-1:] != want[-1:]:
            hint = "the prompt ends with <|assistant_start|>: that is where the model starts writing"
        check_equal(f"render_prompt(tokenizer, <{name}>)", got, want, where=render_prompt, hint=hint)


def expected_batch(conversations, seq_len):
    """Ours: render, cut to seq_len + 1, shift by one (``target_ids``: -100 where no loss), pad."""
    pad = TOK.token_id(PAD)
    xs, ys, ms = [], [], []
    for messages in conversations:
        ids, mask = our_render(TOK, messages, max_tokens=seq_len + 1)
        targets = target_ids(ids, mask, "assistant")
        fill = seq_len - (len(ids) - 1)
        xs.append(ids[:-1] + [pad] * fill)
        ys.append(ids[1:] + [pad] * fill)
        ms.append([int(t != -100) for t in targets] + [0] * fill)
    return torch.tensor(xs), torch.tensor(ys), torch.tensor(ms)


def test_batch_shifts_targets_and_their_mask():
    convs = [CONVERSATIONS["one turn"], CONVERSATIONS["a calculator call"], CONVERSATIONS["Chinese"]]
    call = f"sft_batch(tokenizer, <3 conversations>, seq_len=40){learner_line(sft_batch)}"
    got = sft_batch(TOK, convs, 40)
    assert isinstance(got, tuple) and len(got) == 3, f"{call}: expected a tuple (x, y, mask), got {type(got).__name__}"
    x, y, m = (torch.as_tensor(t) for t in got)
    want_x, want_y, want_m = expected_batch(convs, 40)
    for what, a, b in (("x", x, want_x), ("y", y, want_y)):
        assert a.shape == b.shape and torch.equal(a.long(), b), (
            f"{call}: {what} differs from ours (shape {tuple(a.shape)}, ours {tuple(b.shape)}): x is the ids but the "
            f"last, y the ids but the first (the next token of each position), cut to seq_len and padded with <|pad|>")
    if m.shape == want_m.shape and not torch.equal(m.long(), want_m):
        hint = ""
        shifted = torch.zeros_like(want_m)
        for row, messages in enumerate(convs):
            _, mask = our_render(TOK, messages, max_tokens=41)
            shifted[row, :len(mask) - 1] = torch.tensor(mask[:-1])
        if torch.equal(m.long(), shifted):
            hint = (": your mask is that of the INPUT tokens, shifted by one — the loss at position t is about "
                    "predicting token t + 1, so it takes token t + 1's mask (mask[1:])")
        raise AssertionError(f"{call}: the mask differs from ours in {int((m.long() != want_m).sum())} places{hint}")
    check_equal(f"{call}: mask shape", tuple(m.shape), tuple(want_m.shape))


def test_sft_loss_is_the_mean_over_masked_positions():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11)
    targets = torch.randint(0, 11, (2, 6))
    mask = torch.tensor([[0, 0, 1, 1, 0, 0], [0, 1, 1, 1, 1, 0]])
    got = sft_loss(logits, targets, mask)
    want = F.cross_entropy(logits.flatten(0, 1), targets.masked_fill(mask == 0, -100).flatten(), ignore_index=-100)
    hint = ""
    if isinstance(got, torch.Tensor) and got.shape == ():
        every = (F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none") * mask.flatten()).mean()
        if torch.allclose(got, every, atol=1e-6):
            hint = ("you divided by every position (12) instead of the 6 masked ones: the loss then shrinks when "
                    "the prompts grow — divide by mask.sum()")
        elif torch.allclose(got, F.cross_entropy(logits.flatten(0, 1), targets.flatten()), atol=1e-6):
            hint = "this is the loss on every position: multiply by the mask (or drop the masked positions)"
    check_close("sft_loss(logits (2, 6, 11), targets, mask with 6 ones)", got, want, atol=1e-5, rtol=1e-5,
                where=sft_loss, hint=hint)


PERSONA = [
    [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "I am Foundry, a small model."}],
    [{"role": "user", "content": "你是谁？"}, {"role": "assistant", "content": "我是小铸。"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+3?"},
     {"role": "assistant", "content": "5."}],
]


@torch.no_grad()
def greedy_reply(model, messages, max_new_tokens=40):
    """Greedy decoding from your prompt until <|assistant_end|> (no cache: module 11 adds one)."""
    ids = render_prompt(TOK, messages)
    end, out = TOK.token_id(ASSISTANT_END), []
    for _ in range(max_new_tokens):
        nxt = int(model(torch.tensor([ids + out]))[0][0, -1].argmax())
        if nxt == end:
            return TOK.decode(out), True
        out.append(nxt)
    return TOK.decode(out), False


def test_a_short_sft_run_teaches_fixed_replies():
    """YOUR model, AdamW and train(): 40 steps of the masked loss on three conversations (English,
    Chinese, with a system message), then greedy replies to their prompts."""
    from model import MiniLLM
    from optim import AdamW
    from trainer import train

    x, y, m = sft_batch(TOK, PERSONA, 48)

    class MaskedLoss(torch.nn.Module):
        """Your model with your sft_loss, in the (logits, loss) shape train() expects."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x, y):
            logits, _ = self.model(x)
            return logits, sft_loss(logits, y, m)

    torch.manual_seed(0)
    model = MiniLLM(ModelConfig(vocab_size=TOK.vocab_size, dim=64, n_layers=2, n_heads=4, max_seq_len=64))
    losses = train(MaskedLoss(model), AdamW(model.parameters(), lr=3e-3, weight_decay=0.0), lambda step: (x, y), 40)
    model.eval()
    for messages in PERSONA:
        want = messages[-1]["content"]
        reply, stopped = greedy_reply(model, messages[:-1])
        hint = ""
        if reply.startswith(want) and not stopped:
            hint = (" — the reply is right but never ends: the model never learned <|assistant_end|> (is it "
                    "masked 1 in your render_conversation?)")
        assert reply == want and stopped, (
            f"after 40 SFT steps (loss {losses[0]:.3g} -> {losses[-1]:.3g}), the reply to "
            f"{messages[-2]['content']!r} is {reply!r}, expected {want!r}{hint}")
