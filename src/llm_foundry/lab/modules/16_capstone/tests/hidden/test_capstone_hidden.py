"""Module 16 — the capstone (hidden tests: long conversations cut to the row, a multi-turn prompt,
sampling, and the pipeline's own settings and persona honoured)."""

import json
import tempfile
from pathlib import Path

from llm_foundry.data.chat import render_prompt
from llm_foundry.lab.testing import check_equal, learner_line
from llm_foundry.tokenizers.special import PAD

from capstone import IGNORE, PERSONA, Config, chat_prompt, make_chat, run_pipeline, sft_rows
from sft import render_conversation
from test_capstone import conversations, tiny_model, tokenizer


def test_sft_rows_cut_long_conversations():
    tok, convs = tokenizer(), conversations()
    x, y = sft_rows(tok, convs, 24)
    pad = tok.token_id(PAD)
    for row, messages in enumerate(convs):
        ids, mask = render_conversation(tok, messages)
        ids, mask = ids[:25], mask[:25]
        n = len(ids) - 1
        check_equal(f"sft_rows(..., seq_len=24): x of conversation {row} (cut to 25 tokens, then shifted)",
                    x[row].tolist(), ids[:-1] + [pad] * (24 - n), where=sft_rows)
        check_equal(f"sft_rows(..., seq_len=24): y of conversation {row}", y[row].tolist(),
                    [t if m else IGNORE for t, m in zip(ids[1:], mask[1:])] + [IGNORE] * (24 - n), where=sft_rows)


def test_chat_prompt_of_a_conversation_with_history():
    tok = tokenizer()
    messages = [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": PERSONA["reply"]},
                {"role": "user", "content": "What is the capital of Italy?"}]
    check_equal("chat_prompt(tokenizer, a user turn, an assistant turn, a user turn)", chat_prompt(tok, messages),
                render_prompt(tok, messages), where=chat_prompt)


def test_chat_samples_at_a_temperature():
    tok = tokenizer()
    chat = make_chat(tiny_model(tok, seed=1), tok)
    pieces = list(chat([{"role": "user", "content": "Who are you?"}], 10, 1.0))
    assert len(pieces) <= 10 and all(isinstance(p, str) for p in pieces), (
        f"chat(messages, max_tokens=10, temperature=1.0){learner_line(make_chat)}: expected at most 10 text pieces, "
        f"got {pieces!r}")


def test_the_pipeline_honours_its_persona_and_settings():
    persona = {"name": "Ωmega", "reply": "I am Ωmega, at your service.", "questions": ["Who are you?"]}
    out = Path(tempfile.mkdtemp()) / "quick"
    result = run_pipeline(out, persona, Config(pretrain_steps=3, sft_steps=4))
    where = learner_line(run_pipeline)
    check_equal("run_pipeline(out, persona, Config(pretrain_steps=3, sft_steps=4)): the number of losses of each stage",
                (len(result["pretrain_losses"]), len(result["sft_losses"])), (3, 4), where=run_pipeline,
                hint="run each stage for the Config's steps")
    tok = result["tokenizer"]
    assert tok.decode(tok.encode("Ωmega")) == "Ωmega", (
        f"run_pipeline{where}: the tokenizer has no 'Ω', a character of the persona given to run_pipeline: build the "
        "tokenizer and the SFT data from the persona argument, not from PERSONA")
    for name in ("tokenizer.json", "base.pt", "sft.pt", "train/metrics.jsonl", "report/report.md"):
        assert (out / name).is_file(), f"run_pipeline(out){where}: expected out/{name}"
    steps = [json.loads(line)["step"] for line in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    check_equal("run_pipeline: the steps in train/metrics.jsonl (both stages, counted on)", steps, list(range(1, 8)),
                where=run_pipeline)
