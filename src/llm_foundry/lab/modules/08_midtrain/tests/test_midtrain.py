"""Module 8 — mid-training (visible tests). Run them with `foundry lab test 8`.

Your mixture is compared with OURS exactly: the counts and the order of
``llm_foundry.data.synthetic.make_mixture`` for the same weights and seed, and your schedule with
``llm_foundry.training.schedule.lr_factor`` to 1e-12. Draws with replacement are random by design,
so they are checked by their frequencies (20 000 draws: each share within 0.02 of its weight) and
by being the same for the same seed.

The last test is the stage itself, tiny: a base model pretrained on the built-in tasks as plain text,
then mid-trained on a mixture of chat conversations in YOUR order with YOUR schedule and YOUR
``train`` (module 7) — and both are measured on held-out conversations.
"""

import math
from collections import Counter

import torch

from llm_foundry.config import ModelConfig
from llm_foundry.data.chat import render_conversation
from llm_foundry.data.synthetic import make_examples, make_mixture
from llm_foundry.lab.testing import check_close, check_equal, learner_line
from llm_foundry.tokenizers import ByteTokenizer
from llm_foundry.tokenizers.special import ASSISTANT_END, PAD
from llm_foundry.training.schedule import lr_factor as our_lr_factor

from midtrain import draw_sources, lr_factor, mixture_counts, mixture_order

WEIGHTS = {"arithmetic": 4.0, "count_letters": 3.0, "spelling": 2.0, "identity": 0.5, "facts": 1.0}


def ours_counts(weights, n):
    return dict(Counter(ex.task for ex in make_mixture(weights, n, lang="en")))


def test_counts_match_ours():
    light_first = {"facts": 1.0, "copy": 2.0, "identity": 3.0}  # the heaviest last: the remainder goes to it first
    for weights, n in [(WEIGHTS, 1), (WEIGHTS, 3), (WEIGHTS, 7), (WEIGHTS, 100), (WEIGHTS, 1001), (light_first, 2),
                       (light_first, 10)]:
        got = mixture_counts(weights, n)
        want = {name: ours_counts(weights, n).get(name, 0) for name in weights}
        hint = ""
        if isinstance(got, dict) and sum(got.values()) != n:
            hint = (f"your counts add up to {sum(got.values())}, not {n}: the rounding down leaves a remainder, "
                    "handed out one at a time")
        elif isinstance(got, dict) and got != want:
            hint = "the remainder goes to the largest weights first (ties in the order given), not to the first names"
        check_equal(f"mixture_counts({weights}, {n})", got, want, where=mixture_counts, hint=hint)


def test_order_matches_ours():
    for n, seed in ((40, 0), (40, 1), (23, 7)):
        got = mixture_order(WEIGHTS, n, seed)
        want = [ex.task for ex in make_mixture(WEIGHTS, n, seed=seed, lang="en")]
        hint = ""
        if isinstance(got, list) and got == sorted(got, key=list(WEIGHTS).index):
            hint = ("your order is source after source: shuffle it with random.Random(f\"mixture:train:{seed}\"), "
                    "or the model sees 16 arithmetic problems in a row, then 12 letter counts, …")
        check_equal(f"mixture_order(WEIGHTS, {n}, seed={seed})", got, want, where=mixture_order, hint=hint)


def test_draws_with_replacement():
    call = f"draw_sources(WEIGHTS, 20000, seed=3){learner_line(draw_sources)}"
    got = draw_sources(WEIGHTS, 20000, 3)
    assert isinstance(got, list) and len(got) == 20000, f"{call}: expected a list of 20000 names"
    counts = Counter(got)
    assert counts != Counter(mixture_counts(WEIGHTS, 20000)), (
        f"{call}: your counts are exactly mixture_counts' — that is drawing without replacement. Here every draw "
        "is independent (np.random.default_rng(seed).choice with p = weights / total), so the counts vary")
    total = sum(WEIGHTS.values())
    for name, w in WEIGHTS.items():
        share = counts.get(name, 0) / 20000
        assert abs(share - w / total) < 0.02, (
            f"{call}: {name} came {share:.3f} of the time, its weight is {w / total:.3f} of the total")
    assert draw_sources(WEIGHTS, 50, 3) == got[:50], f"{call}: the same seed must give the same draws"
    assert draw_sources(WEIGHTS, 50, 4) != got[:50], f"{call}: another seed should give other draws"


def test_lr_factor_matches_ours():
    cases = [("cosine", 10, 0.1, 0.2), ("wsd", 10, 0.0, 0.2), ("wsd", 5, 0.1, 0.5), ("constant", 10, 0.0, 0.2),
             ("cosine", 0, 0.0, 0.2)]
    for schedule, warmup, floor, decay in cases:
        for step in range(0, 121, 3):
            progress = step / 100  # the run is 100 steps; past them progress is clamped to 1
            want = our_lr_factor(step, progress, schedule, warmup, floor, decay)
            got = lr_factor(step, progress, schedule, warmup, floor, decay)
            call = f"lr_factor(step={step}, progress={progress:.2f}, {schedule!r}, warmup_steps={warmup}, " \
                   f"min_lr_ratio={floor}, decay_fraction={decay})"
            hint = ""
            if isinstance(got, (int, float)):
                if step < warmup and abs(got - step / warmup) < 1e-12:
                    hint = ("the warm-up starts at 0: (step + 1) / warmup_steps, so the first step already "
                            "learns at 1/warmup of the peak")
                elif schedule == "cosine" and abs(got - 0.5 * (1 + math.cos(math.pi * min(progress, 1)))) < 1e-12:
                    hint = "the cosine ends at min_lr_ratio, not at 0: min + (1 − min) · ½(1 + cos(π·progress))"
                elif schedule == "wsd" and progress < 1 - decay and got < 1:
                    hint = ("wsd keeps the peak for a stable phase and decays only over the last decay_fraction of "
                            "the run")
            check_close(call, torch.tensor(float(got) if isinstance(got, (int, float)) else math.nan),
                        torch.tensor(want), atol=1e-12, rtol=0, where=lr_factor, hint=hint)


# ---------------------------------------------------------------- base vs mid
TOK = ByteTokenizer()
SEQ, BATCH = 100, 8  # every conversation of these tasks fits in 100 byte tokens
CFG = ModelConfig(vocab_size=TOK.vocab_size, dim=64, n_layers=2, n_heads=4, max_seq_len=SEQ)
TASKS = ["spelling", "facts", "count_letters"]


def as_text(example) -> str:
    """A conversation as plain text, no special tokens: what a base model read in pretraining."""
    reply = example.messages[-1]["content"]
    reply = "".join(p["text"] for p in reply) if isinstance(reply, list) else reply
    return f"{example.messages[0]['content']} {reply}\n"


def chat_rows(examples, loss_on_all: bool):
    """One rendered conversation per row (ours), padded; targets -100 on padding (and, for the
    held-out loss, wherever the assistant did not write)."""
    pad = TOK.token_id(PAD)
    xs, ys = [], []
    for ex in examples:
        ids, mask = render_conversation(TOK, ex.messages, max_tokens=SEQ + 1)
        x, y = ids[:-1], [t if (loss_on_all or m) else -100 for t, m in zip(ids[1:], mask[1:])]
        xs.append(x + [pad] * (SEQ - len(x)))
        ys.append(y + [-100] * (SEQ - len(y)))
    return torch.tensor(xs), torch.tensor(ys)


@torch.no_grad()
def heldout(model, task):
    """On 16 held-out conversations of ``task``: the mean loss on the assistant's tokens, and the share
    whose reply the model would end right there (``<|assistant_end|>`` the likeliest next token after
    the reply's last token)."""
    x, y = chat_rows(make_examples(task, 16, split="heldout", seed=5, lang="en"), loss_on_all=False)
    logits, loss = model(x, y)
    end = TOK.token_id(ASSISTANT_END)
    at_end = y == end
    stops = (logits.argmax(-1)[at_end] == end).float().mean()
    return float(loss), float(stops)


def test_midtraining_beats_the_base_model_on_held_out_chats():
    from model import MiniLLM
    from optim import AdamW
    from trainer import train

    pools = {task: make_examples(task, 200, seed=1, lang="en") for task in TASKS}
    # the base model: 40 steps on the same kind of content as plain text — it knows the words, not the layout
    text = "".join(as_text(ex) for task in TASKS for ex in pools[task])
    stream = torch.tensor(TOK.encode(text))

    def text_batch(step):
        g = torch.Generator().manual_seed(step)
        starts = torch.randint(0, len(stream) - SEQ - 1, (BATCH,), generator=g).tolist()
        rows = torch.stack([stream[s:s + SEQ + 1] for s in starts])
        return rows[:, :-1], rows[:, 1:]

    torch.manual_seed(0)
    model = MiniLLM(CFG)
    train(model, AdamW(model.parameters(), lr=3e-3, weight_decay=0.0), text_batch, 40)
    base = {task: heldout(model, task) for task in TASKS}

    # mid-training: 100 steps of chat conversations, in YOUR mixture order, at YOUR schedule's lr
    steps, weights = 100, {"spelling": 2.0, "facts": 1.0, "count_letters": 2.0}
    order = mixture_order(weights, steps * BATCH, seed=0)
    taken = Counter()
    examples = []
    for name in order:
        examples.append(pools[name][taken[name] % len(pools[name])])
        taken[name] += 1

    def chat_batch(step):
        return chat_rows(examples[step * BATCH:(step + 1) * BATCH], loss_on_all=True)

    opt = AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    train(model, opt, chat_batch, steps, lr_at=lambda s: 1e-2 * lr_factor(s, s / steps, "cosine", 10, 0.1))
    mid = {task: heldout(model, task) for task in TASKS}
    table = "; ".join(f"{t}: loss {base[t][0]:.2f} -> {mid[t][0]:.2f}, stops {base[t][1]:.0%} -> {mid[t][1]:.0%}"
                      for t in TASKS)
    print("held-out chats, base -> mid:", table)
    stops = sum(mid[t][1] for t in TASKS) / len(TASKS)
    for task in TASKS:
        assert mid[task][0] < 0.7 * base[task][0], (
            f"after mid-training the held-out chats of {task} should have a clearly lower loss on the assistant's "
            f"tokens (below 0.7× the base model's): {table}. Does your mixture order give each task its share, "
            f"and your lr_factor a warm-up then a decay?")
    # The base model never saw <|assistant_end|>: it ends no reply. A short mid-training teaches the stop
    # only partly (a spelled-out word has no natural end), so the bar is low; the loss is the real measure.
    assert stops >= 0.25, (
        f"after mid-training the model should end some held-out replies with <|assistant_end|> (on average "
        f"{stops:.0%} of them, expected ≥ 25 %; the base model: 0 %): {table}")
