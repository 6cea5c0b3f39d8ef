"""Module 16 — the capstone (visible tests). Run them with `foundry lab test 16`.

The quick tests come first: your SUMMARY.md's sections, the SFT rows and their mask, the chat
prompt, the chat function and the server on a Unix socket (the sandbox allows no network, so the
real openai client talks to your server through a socket file). Then the whole pipeline runs once
— tokenizer, pretraining, identity SFT, report, on your earlier files — and the persona must
answer "Who are you?" with its name, greedily, directly and through the served endpoint.
"""

import re
import tempfile
from pathlib import Path

import httpx
import openai
import torch

from llm_foundry.config import ModelConfig
from llm_foundry.data.chat import render_prompt
from llm_foundry.lab.testing import check_equal, learner_line
from llm_foundry.tokenizers.special import ASSISTANT_END, BOS, EOS, PAD, USER_START

from capstone import (IGNORE, PERSONA, ask, build_tokenizer, chat_prompt, fact_conversations, init_weights,
                      make_chat, persona_conversations, run_pipeline, serve, sft_rows)
from engine import generate
from model import MiniLLM
from server import create_app
from sft import render_conversation

SECTIONS = ("The persona", "The pipeline", "Results", "Design decisions", "What I would do next")


def conversations():
    return persona_conversations(PERSONA)[:2] + fact_conversations()[:2]


def tokenizer():
    return build_tokenizer([m["content"] for c in persona_conversations(PERSONA) + fact_conversations() for m in c])


def tiny_model(tok, seed=0):
    torch.manual_seed(seed)
    model = MiniLLM(ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=2, max_seq_len=96))
    init_weights(model, 1)
    return model.eval()


def client(socket_path):
    """The real openai client, over a Unix socket (no retries: a failure shows at once)."""
    http = httpx.Client(transport=httpx.HTTPTransport(uds=str(socket_path)), timeout=60)
    return openai.OpenAI(base_url="http://capstone/v1", api_key="none", http_client=http, max_retries=0)


def test_summary_has_its_sections():
    path = Path("SUMMARY.md")
    assert path.is_file(), "SUMMARY.md is missing: `foundry lab start 16` writes its template"
    text = path.read_text(encoding="utf-8")
    parts = re.split(r"^## +(.+?)\s*$", text, flags=re.M)
    found = {parts[i].strip(): parts[i + 1] for i in range(1, len(parts) - 1, 2)}
    for section in SECTIONS:
        assert section in found, f"SUMMARY.md has no section '## {section}' (its sections: {list(found)})"
        body = found[section]
        assert "(write here" not in body, f"SUMMARY.md: the section '## {section}' still holds the template's placeholder"
        words = len(re.findall(r"[A-Za-z0-9_'-]+", body)) + len(re.findall(r"[\u4e00-\u9fff]", body)) // 2
        assert words >= 25, (f"SUMMARY.md: the section '## {section}' has {words} words; write at least 25 "
                             "(two Chinese characters count as one word)")
    assert re.search(r"\d", found["Results"]), "SUMMARY.md: the Results section holds no number: give your run's losses and time"
    assert PERSONA["name"] in found["The persona"], (
        f"SUMMARY.md: the section '## The persona' does not name your persona ({PERSONA['name']!r})")


def test_sft_rows_train_only_the_assistant():
    tok, convs = tokenizer(), conversations()
    got = sft_rows(tok, convs, 96)
    where = learner_line(sft_rows)
    assert isinstance(got, tuple) and len(got) == 2 and all(isinstance(t, torch.Tensor) for t in got), (
        f"sft_rows(tokenizer, conversations, 96){where}: expected a tuple (x, y) of two tensors, got {type(got).__name__}")
    x, y = got
    check_equal("sft_rows(4 conversations, seq_len=96): the shapes of x and y", (tuple(x.shape), tuple(y.shape)),
                ((4, 96), (4, 96)), where=sft_rows)
    pad = tok.token_id(PAD)
    for row, messages in enumerate(convs):
        ids, mask = render_conversation(tok, messages)
        n = len(ids) - 1
        want_x = ids[:-1] + [pad] * (96 - n)
        want_y = [t if m else IGNORE for t, m in zip(ids[1:], mask[1:])] + [IGNORE] * (96 - n)
        got_y = y[row].tolist()
        hint = ""
        if got_y[:n] == ids[1:]:
            hint = ("every token is a target, so the model also trains on the user's tokens and on <|assistant_start|>: "
                    "keep ids[t + 1] only where mask[t + 1] is 1, IGNORE elsewhere")
        elif got_y[:n] == want_y[:n] and got_y[n:] != want_y[n:]:
            hint = "the padding is a target: pad the targets with IGNORE (-100), the inputs with <|pad|>"
        check_equal(f"sft_rows: x of conversation {row}", x[row].tolist(), want_x, where=sft_rows)
        check_equal(f"sft_rows: y of conversation {row} ({messages[0]['content']!r})", got_y, want_y, where=sft_rows,
                    hint=hint)


def test_chat_prompt_ends_with_assistant_start():
    tok = tokenizer()
    messages = [{"role": "user", "content": "Who are you?"}]
    got = chat_prompt(tok, messages)
    want = render_prompt(tok, messages)
    hint = ""
    if isinstance(got, list) and got == want[:-1]:
        hint = ("the prompt stops after the user's turn, so the model goes on writing the user's text: end it with "
                "<|assistant_start|>, the token after which the assistant speaks")
    check_equal('chat_prompt(tokenizer, [{"role": "user", "content": "Who are you?"}])', got, want,
                where=chat_prompt, hint=hint)


def test_make_chat_streams_the_engines_reply():
    tok = tokenizer()
    model = tiny_model(tok)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    chat = make_chat(model, tok)
    assert callable(chat), f"make_chat(model, tokenizer){learner_line(make_chat)}: expected a function chat(messages, max_tokens, temperature), got {chat!r}"
    pieces = list(chat(messages, 12, 0.0))
    assert pieces and all(isinstance(p, str) for p in pieces), (
        f"chat(messages, 12, 0.0){learner_line(make_chat)}: expected the reply as text pieces (str), got {pieces!r}")
    stops = tuple(tok.token_id(t) for t in (ASSISTANT_END, BOS, EOS, USER_START))
    want = tok.decode(generate(model, render_prompt(tok, messages), 12, temperature=0.0, stop_ids=stops))
    check_equal("''.join(chat(messages, 12, temperature=0.0)) (an untrained model, greedy)", "".join(pieces), want,
                where=make_chat)


def test_serve_answers_the_openai_client_on_a_unix_socket():
    def chat(messages, max_tokens, temperature):
        yield from ["Hello", " from", " a socket"]

    folder = Path(tempfile.mkdtemp())
    server = serve(create_app(chat), folder / "s.sock")
    where = learner_line(serve)
    try:
        assert hasattr(server, "should_exit"), f"serve(app, socket){where}: expected the uvicorn.Server, got {server!r}"
        reply = client(folder / "s.sock").chat.completions.create(
            model="mini", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
        check_equal("the openai client's reply through your served app", reply.choices[0].message.content,
                    "Hello from a socket", where=serve)
    finally:
        if hasattr(server, "should_exit"):
            server.should_exit = True


_RUN: dict = {}


def pipeline() -> dict:
    """The result of run_pipeline, run once for every test that needs it (an error is kept and raised again)."""
    if not _RUN:
        try:
            _RUN["result"] = run_pipeline(Path(tempfile.mkdtemp()) / "run")
        except Exception as e:  # every test that needs the run fails the same way, without running it again
            _RUN["error"] = e
    if "error" in _RUN:
        raise _RUN["error"]
    return _RUN["result"]


def test_the_pipeline_trains_and_the_persona_answers():
    result = pipeline()
    where = learner_line(run_pipeline)
    assert isinstance(result, dict) and {"tokenizer", "model", "pretrain_losses", "sft_losses", "answer"} <= set(result), (
        f"run_pipeline(out){where}: expected a dict with tokenizer, model, pretrain_losses, sft_losses and answer, "
        f"got {result if not isinstance(result, dict) else sorted(result)!r}")
    pre, sft = result["pretrain_losses"], result["sft_losses"]
    assert len(pre) > 10 and pre[-1] < 0.5 * pre[0], (
        f"run_pipeline{where}: the pretraining loss went from {pre[0] if pre else None} to {pre[-1] if pre else None}; "
        "expected it to fall below half")
    assert len(sft) > 10 and sft[-1] < 0.3 * sft[0], (
        f"run_pipeline{where}: the SFT loss went from {sft[0] if sft else None} to {sft[-1] if sft else None}; "
        "expected it to fall below a third")
    name, reply, answer = PERSONA["name"], PERSONA["reply"], result["answer"]
    if isinstance(answer, str) and answer.startswith(reply) and len(answer) > len(reply):
        raise AssertionError(f"the reply to 'Who are you?'{learner_line(make_chat)} did not stop at <|assistant_end|>: "
                             f"{answer!r}. Pass the stop tokens to your generate (stop_ids)")
    assert isinstance(answer, str) and name in answer, (
        f"run_pipeline{where}: asked 'Who are you?', the model answered {answer!r}, which does not contain its "
        f"name {name!r} (PERSONA['name']); is the persona in the SFT data, and does PERSONA['reply'] say the name?")
    for question in PERSONA["questions"][1:3]:
        got = ask(result["model"], result["tokenizer"], question)
        assert name in got, f"asked {question!r}, the model answered {got!r}, without its name {name!r}"


def test_the_served_persona_answers_the_openai_client():
    result = pipeline()
    folder = Path(tempfile.mkdtemp())
    server = serve(create_app(make_chat(result["model"], result["tokenizer"])), folder / "s.sock")
    try:
        api = client(folder / "s.sock")
        messages = [{"role": "user", "content": "Who are you?"}]
        reply = api.chat.completions.create(model="mini", messages=messages, max_tokens=100, temperature=0)
        text = reply.choices[0].message.content
        assert PERSONA["name"] in text, f"POST /v1/chat/completions 'Who are you?' answered {text!r}, without {PERSONA['name']!r}"
        stream = api.chat.completions.create(model="mini", messages=messages, max_tokens=100, temperature=0, stream=True)
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        check_equal("the streamed reply (stream=True) joined", streamed, text, where=make_chat)
    finally:
        server.should_exit = True
