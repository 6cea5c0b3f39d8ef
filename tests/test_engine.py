"""The Engine: cache == no cache, shared prefill, batches, tool forcing, streaming, chat events, `foundry chat`."""

from __future__ import annotations

import pytest
import torch

from helpers import one_line_error, overfit_on, run_cli
from llm_foundry import MiniLLM
from llm_foundry.config import load_config
from llm_foundry.data.chat import chat_token_ids, render_conversation, render_prompt
from llm_foundry.inference.engine import Engine
from llm_foundry.tokenizers import ByteTokenizer
from llm_foundry.models import save_model_dir
from llm_foundry.utils.errors import FoundryError

TOK = ByteTokenizer()
SP = chat_token_ids(TOK)


def tiny_model(seed: int = 0, max_seq_len: int = 128) -> MiniLLM:
    # Untied, wide init: a random model with tied embeddings just repeats its last token,
    # which would make "same tokens with and without the cache" a weak check.
    cfg, _ = load_config("tiny", ["model.dim=64", "model.n_layers=2", "model.n_heads=4", f"model.max_seq_len={max_seq_len}",
                                  "model.tie_embeddings=false", "model.init_std=0.1"])
    cfg.vocab_size = TOK.vocab_size
    torch.manual_seed(seed)
    return MiniLLM(cfg)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(tiny_model(), TOK, precision="fp32")


def prompt(text: str) -> list[int]:
    return render_prompt(TOK, [{"role": "user", "content": text}])


def test_cache_and_no_cache_give_identical_greedy_output(engine):
    for text in ("hello", "What is 2+2? 你好"):
        p = prompt(text)
        with_cache, _ = engine.generate(p, max_tokens=48, temperature=0)
        without, _ = engine.generate(p, max_tokens=48, temperature=0, use_cache=False)
        assert with_cache == without and len(set(with_cache[0])) > 5, with_cache
    prompts = [prompt(t) for t in ("a", "a longer question here", "mid length")]
    assert engine.generate_batch(prompts, max_tokens=32, temperature=0) == \
        engine.generate_batch(prompts, max_tokens=32, temperature=0, use_cache=False)


def test_frozen_engine_decodes_like_the_live_model(engine):
    # frozen=True decodes with inference copies (fused projections); in fp32 the tokens are the same.
    frozen = Engine(engine.model, TOK, precision="fp32", frozen=True)
    prompts = [prompt(t) for t in ("hi", "what is 12*7?")]
    assert frozen.generate_batch(prompts, max_tokens=24, temperature=0) == \
        engine.generate_batch(prompts, max_tokens=24, temperature=0)
    # Training the live model after building a non-frozen engine is seen by it at once.
    live = Engine(tiny_model(seed=3), TOK, precision="fp32")
    before = live.generate(prompts[0], max_tokens=8, temperature=0)[0]
    live.model.load_state_dict(tiny_model(seed=4).state_dict())  # "a training step"
    assert live.generate(prompts[0], max_tokens=8, temperature=0)[0] != before


def test_batch_of_different_prompts_equals_one_by_one(engine):
    prompts = [prompt(t) for t in ("hi", "what is the capital of France?", "数一数", "x" * 40)]
    batch = engine.generate_batch(prompts, max_tokens=24, temperature=0)
    assert batch == [engine.generate(p, max_tokens=24, temperature=0)[0][0] for p in prompts]
    seen: dict[int, list[int]] = {}
    tokens, masks = engine.generate_batch(prompts, max_tokens=24, temperature=0, with_masks=True,
                                          on_token=lambda row, tok, mask: seen.setdefault(row, []).append(tok))
    assert tokens == batch and [len(m) for m in masks] == [len(t) for t in tokens]
    assert [seen.get(i, []) for i in range(len(prompts))] == batch  # the callback streamed every token
    # num_samples with greedy decoding: every copy equals the single sample.
    assert engine.generate_batch(prompts[:2], max_tokens=8, temperature=0, num_samples=2) == \
        [batch[0][:8], batch[0][:8], batch[1][:8], batch[1][:8]]


def test_samples_share_one_prefill_and_seed_reproduces(engine):
    p = prompt("tell me a story")
    greedy, _ = engine.generate(p, num_samples=3, max_tokens=16, temperature=0)
    assert greedy[0] == greedy[1] == greedy[2]
    a, _ = engine.generate(p, num_samples=4, max_tokens=16, temperature=1.0, seed=7)
    b, _ = engine.generate(p, num_samples=4, max_tokens=16, temperature=1.0, seed=7)
    assert a == b and len({tuple(s) for s in a}) > 1  # the samples differ from each other
    c, _ = engine.generate(p, num_samples=4, max_tokens=16, temperature=1.0, top_k=5, top_p=0.9, seed=8)
    assert c != a


def test_stream_steps_masks_and_padding(engine):
    p = prompt("hello")
    steps = list(engine.stream(p, num_samples=2, max_tokens=10, temperature=0))
    assert 1 <= len(steps) <= 10
    for tokens, masks in steps:
        assert len(tokens) == len(masks) == 2
    # Stop at a token the model would produce: the row ends there and then yields padding.
    first = steps[0][0][0]
    tokens, _ = engine.generate(p, max_tokens=10, temperature=0, stop_ids=[first])
    assert tokens == [[]]
    streamed = list(engine.stream(p, num_samples=1, max_tokens=10, temperature=0, stop_ids=[first]))
    assert streamed == [([first], [1])]


def test_tool_output_is_forced_with_mask_zero(engine):
    # The prompt ends with a closed python block: the engine must force the calculator's result next.
    p = prompt("add") + [SP["python_start"], *TOK.encode("2+3*4"), SP["python_end"]]
    tokens, masks = engine.generate(p, max_tokens=8, temperature=0)
    assert tokens[0][:4] == [SP["output_start"], *TOK.encode("14"), SP["output_end"]]
    assert masks[0][:4] == [0, 0, 0, 0] and all(m == 1 for m in masks[0][4:])
    # A refused expression is reported to the model as an error, never run.
    p = prompt("x") + [SP["python_start"], *TOK.encode("__import__('os')"), SP["python_end"]]
    tokens, _ = engine.generate(p, max_tokens=80, temperature=0)
    text = TOK.decode(tokens[0], skip_special=False)
    assert text.startswith("<|output_start|>error: calling '__import__' is not allowed")
    # With tools off nothing is forced: the model writes the next token itself.
    off = Engine(engine.model, TOK, precision="fp32", tools=False)
    p = prompt("add") + [SP["python_start"], *TOK.encode("2+3*4"), SP["python_end"]]
    tokens, masks = off.generate(p, max_tokens=8, temperature=0)
    assert all(m == 1 for m in masks[0])


def test_terminators_and_text_mode():
    # One terminator set each: a chat reply ends where the server's does; plain text at the end of
    # its document (BOS, which would start the next one, is never sampled in text mode).
    from llm_foundry.tokenizers.special import BOS, CHAT_TERMINATORS, TEXT_TERMINATORS, token_ids

    model = tiny_model(max_seq_len=32)
    chat, text = Engine(model, TOK, precision="fp32"), Engine(model, TOK, precision="fp32", mode="text")
    assert chat.terminators == token_ids(TOK, CHAT_TERMINATORS) and text.terminators == token_ids(TOK, TEXT_TERMINATORS)
    assert TOK.token_id(BOS) in text.suppress and TOK.token_id(BOS) not in chat.suppress
    # Text mode goes past the context (the newest half is prefilled again), with or without the cache.
    p = TOK.encode("abc")
    long, _ = text.generate(p, max_tokens=80, temperature=0)
    assert len(long[0]) == 80 and long == text.generate(p, max_tokens=80, temperature=0, use_cache=False)[0]
    assert len(chat.generate(p, max_tokens=80, temperature=0)[0][0]) <= 32 - len(p)
    with pytest.raises(FoundryError, match="mode"):
        Engine(model, TOK, mode="poem")


def test_limits_and_errors(engine):
    p = prompt("q" * 100)
    tokens, _ = engine.generate(p, max_tokens=500, temperature=0)  # the context (128) ends it, no error
    assert len(p) + len(tokens[0]) <= 128
    with pytest.raises(FoundryError, match="context"):
        engine.generate(prompt("q" * 200), max_tokens=5)
    with pytest.raises(FoundryError, match="num_samples"):
        engine.generate(p, num_samples=0)
    with pytest.raises(FoundryError, match="max_tokens must be an integer >= 1"):
        engine.generate(p, max_tokens=0)


# ----------------------------------------------------------- a model that uses the tool
LESSON = [{"role": "user", "content": "What is 2+3?"},
          {"role": "assistant", "content": [{"type": "python", "text": "2+3"}, {"type": "python_output", "text": "5"},
                                            {"type": "text", "text": "Answer: 5"}]}]


@pytest.fixture(scope="module")
def tool_model(tmp_path_factory):
    """A tiny model trained (masked loss) until it replays one tool-using conversation."""
    model = tiny_model(seed=1)
    assert overfit_on(model, TOK, LESSON) < 0.05
    folder = tmp_path_factory.mktemp("tool_model")
    save_model_dir(folder, model, TOK)
    return folder


def test_chat_events_show_the_tool_call(tool_model):
    engine = Engine.from_pretrained(tool_model, device="cpu", precision="fp32")
    events = list(engine.chat(LESSON[:1], temperature=0, max_tokens=40))
    assert events[0] == {"type": "tool_call", "text": "2+3"}
    assert events[1] == {"type": "tool_result", "text": "5"}
    assert "".join(e["text"] for e in events if e["type"] == "text") == "Answer: 5"
    done = events[-1]
    assert done["type"] == "done" and done["finish_reason"] == "stop"
    assert done["prompt_tokens"] == len(render_prompt(TOK, LESSON[:1]))
    assert done["completion_tokens"] == len(render_conversation(TOK, LESSON)[0]) - done["prompt_tokens"] - 1
    # max_tokens cuts the reply: finish_reason "length".
    assert list(engine.chat(LESSON[:1], temperature=0, max_tokens=3))[-1]["finish_reason"] == "length"
    # A stop string ends the text before it; tool blocks are never cut by one.
    events = list(engine.chat(LESSON[:1], temperature=0, max_tokens=40, stop=["5"]))
    assert events[:2] == [{"type": "tool_call", "text": "2+3"}, {"type": "tool_result", "text": "5"}]
    assert "".join(e["text"] for e in events if e["type"] == "text") == "Answer: "
    assert events[-1]["finish_reason"] == "stop"
    # Without tools the engine forces nothing; the model never learned to write outputs itself.
    off = Engine.from_pretrained(tool_model, device="cpu", precision="fp32", tools=False)
    tokens, masks = off.generate(render_prompt(TOK, LESSON[:1]), temperature=0, max_tokens=20)
    assert all(m == 1 for m in masks[0])


def test_foundry_chat_reads_stdin_lines(tool_model, tmp_path):
    import subprocess
    import sys

    script = "What is 2+3?\n/temp=0\n/clear\n" + "x" * 300 + "\nWhat is 2+3?\n/bogus\n/quit\nnever read\n"
    proc = subprocess.run([sys.executable, "-m", "llm_foundry", "chat", str(tool_model), "--temperature", "0",
                           "--max-tokens", "40"], input=script, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines == ["[calculator: 2+3][= 5]Answer: 5"] * 2
    assert "(temperature 0.0)" in proc.stderr and "(conversation cleared)" in proc.stderr
    assert "unknown command /bogus" in proc.stderr
    assert "error: the message is too long for the model's context of 128 tokens" in proc.stderr  # and the chat went on
    one = run_cli("chat", tool_model, "--prompt", "What is 2+3?", "--temperature", "0", "--no-tools", "--max-tokens", "12")
    assert one.returncode == 0 and "[calculator: 2+3]" in one.stdout and "[= 5]" not in one.stdout
    one_line_error(run_cli("chat", tmp_path / "missing"), "model folder not found")
    one_line_error(run_cli("chat", tool_model, "--top-p", "2"), "--top-p")
