"""Module 16 — the capstone: your own small chat model, end to end, with your own code.

    tokenizer → pretrain → identity SFT → generate → serve

Every stage runs on a file you wrote in an earlier module: the model (module 5), the optimizer
(6), the training loop (7), the conversation rendering (9), the generation engine (11), the
OpenAI-compatible server (14) and the report (15). Ours is ``foundry speedrun``
(``src/llm_foundry/pipelines/speedrun.py``), which chains the same stages at a larger scale.

Make the model yours: change ``PERSONA`` (its name, how it introduces itself, the questions it
learns to answer), then run ``python capstone.py`` and talk to it.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from llm_foundry.config import ModelConfig
from llm_foundry.data.synthetic import FACTS
from llm_foundry.tokenizers import CharTokenizer
from llm_foundry.tokenizers.special import (ASSISTANT_END, ASSISTANT_START, BOS, CHAT_SPECIAL_TOKENS, EOS, PAD,
                                            USER_START)
from llm_foundry.utils.io import atomic_write_text

from engine import generate  # module 11
from model import MiniLLM  # module 5
from optim import AdamW  # module 6
from report import write_report  # module 15
from server import create_app  # module 14
from sft import render_conversation  # module 9
from trainer import save_checkpoint, train  # module 7

# Who your model is. The name must appear in its reply: the tests ask "Who are you?".
PERSONA = {
    "name": "Pip",
    "reply": "I am Pip, a tiny chat model built from scratch in the foundry lab.",
    "questions": ["Who are you?", "What is your name?", "Introduce yourself.", "What are you?",
                  "hi, who am I talking to?", "Tell me about yourself."],
}

IGNORE = -100  # a target the loss skips (MiniLLM's cross-entropy ignores it)


@dataclass
class Config:
    """A tiny run: about 10 s on one CPU core."""

    dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    seq_len: int = 96
    batch_size: int = 16
    pretrain_steps: int = 100
    sft_steps: int = 120
    lr: float = 3e-3
    sft_lr: float = 2e-3
    warmup: int = 10
    max_len: int = 256  # the longest prompt + reply the model attends to (its RoPE tables)
    seed: int = 0


# ---------------------------------------------------------------------------------- data (given)
def pretrain_text() -> str:
    """The pretraining corpus: plain sentences (ours would be a web-scale text dump)."""
    rng = random.Random(0)
    lines = [f"The capital of {country} is {city}." for kind, country, _, city, _ in FACTS if kind == "capital"]
    lines += [f"{city} is a city in {country}." for kind, country, _, city, _ in FACTS if kind == "capital"]
    rng.shuffle(lines)
    return "\n".join(lines * 3)


def persona_conversations(persona: dict) -> list[list[dict]]:
    """Identity SFT data: every question of the persona answered with its reply."""
    return [[{"role": "user", "content": q}, {"role": "assistant", "content": persona["reply"]}]
            for q in persona["questions"]]


def fact_conversations() -> list[list[dict]]:
    """Some ordinary questions, so the model learns to answer more than who it is."""
    return [[{"role": "user", "content": f"What is the capital of {country}?"},
             {"role": "assistant", "content": f"The capital of {country} is {city}."}]
            for kind, country, _, city, _ in FACTS if kind == "capital"]


def build_tokenizer(texts: list[str]) -> CharTokenizer:
    """A character tokenizer over ``texts`` with our chat special tokens (``tokenizers/special.py``)."""
    tok = CharTokenizer(special_tokens=[BOS, EOS, *CHAT_SPECIAL_TOKENS])
    for text in texts:
        tok.add_chars(text)
    return tok


def init_weights(model: torch.nn.Module, n_layers: int, std: float = 0.02) -> None:
    """Our initialisation (``models/minillm.py``): every matrix from N(0, std), the two projections
    that write into the residual stream (``wo``, ``w2``) from N(0, std / sqrt(2·n_layers)). PyTorch's
    default N(0, 1) embedding, tied to the head, would start the loss near 60 instead of ln(vocab)."""
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            torch.nn.init.normal_(module.weight, 0.0, std)
    for layer in model.layers:
        torch.nn.init.normal_(layer.attn.wo.weight, 0.0, std / math.sqrt(2 * n_layers))
        torch.nn.init.normal_(layer.ffn.w2.weight, 0.0, std / math.sqrt(2 * n_layers))


def text_batches(ids: list[int], cfg: Config) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    """Random windows of the corpus; batch ``step`` is a pure function of the step (a resume sees the same)."""
    data = torch.tensor(ids)

    def get_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + step)
        starts = torch.randint(0, len(data) - cfg.seq_len - 1, (cfg.batch_size,), generator=g)
        rows = torch.stack([data[s:s + cfg.seq_len + 1] for s in starts.tolist()])
        return rows[:, :-1], rows[:, 1:]
    return get_batch


def schedule(lr: float, warmup: int, steps: int) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to a tenth (as training/schedule.py)."""
    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
    return lr_at


# ---------------------------------------------------------------------------------- your part
def sft_rows(tokenizer, conversations: list[list[dict]], seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One row per conversation: inputs ``x`` and targets ``y``, each ``(len(conversations), seq_len)``.

    ``y[t]`` is the next token ``ids[t + 1]`` where the assistant writes it (the mask of your
    ``render_conversation`` at ``t + 1``), else ``IGNORE``; rows are cut to ``seq_len + 1`` tokens
    and padded with the tokenizer's ``<|pad|>`` (inputs) and ``IGNORE`` (targets).
    """
    # BEGIN SOLUTION sft_rows
    pad = tokenizer.token_id(PAD)
    xs, ys = [], []
    for messages in conversations:
        ids, mask = render_conversation(tokenizer, messages)
        ids, mask = ids[:seq_len + 1], mask[:seq_len + 1]
        x = ids[:-1]
        y = [t if m else IGNORE for t, m in zip(ids[1:], mask[1:])]
        xs.append(x + [pad] * (seq_len - len(x)))
        ys.append(y + [IGNORE] * (seq_len - len(y)))
    return torch.tensor(xs), torch.tensor(ys)
    # END SOLUTION


def chat_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """The ids the model continues to answer ``messages`` (which end with a user turn): the
    conversation as your ``render_conversation`` renders it, then ``<|assistant_start|>``."""
    # BEGIN SOLUTION chat_prompt
    ids, _ = render_conversation(tokenizer, messages)
    return ids + [tokenizer.token_id(ASSISTANT_START)]
    # END SOLUTION


def make_chat(model, tokenizer) -> Callable[[list[dict], int, float], Iterator[str]]:
    """The ``chat(messages, max_tokens, temperature)`` your server calls: it generates the reply with
    your engine (greedy at temperature 0) and yields its text piece by piece; the reply ends at
    ``<|assistant_end|>`` (or a new ``<|bos|>``, ``<|eos|>``, ``<|user_start|>``), which is not shown."""
    # BEGIN SOLUTION make_chat
    stops = tuple(tokenizer.token_id(t) for t in (ASSISTANT_END, BOS, EOS, USER_START))

    def chat(messages: list[dict], max_tokens: int, temperature: float) -> Iterator[str]:
        new = generate(model, chat_prompt(tokenizer, messages), max_tokens, temperature=temperature, stop_ids=stops)
        for token in new:  # one character a token: each piece is whole text
            yield tokenizer.decode([token])
    return chat
    # END SOLUTION


def ask(model, tokenizer, question: str, max_tokens: int = 100) -> str:
    """The model's greedy reply to one question."""
    return "".join(make_chat(model, tokenizer)([{"role": "user", "content": question}], max_tokens, 0.0))


def serve(app, socket_path: str | Path):
    """Serve ``app`` with uvicorn on the Unix socket ``socket_path``, in a background thread; return
    the ``uvicorn.Server`` once it accepts connections (``server.should_exit = True`` stops it)."""
    # BEGIN SOLUTION serve
    # STUB: # uvicorn.Server(uvicorn.Config(app, uds=...)), server.run in a daemon thread, then wait for server.started
    # STUB: raise NotImplementedError("serve")
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, uds=str(socket_path), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:  # poll: it is up once it listens
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start on {socket_path}")
        time.sleep(0.01)
    return server
    # END SOLUTION


def run_pipeline(out_dir: str | Path, persona: dict = PERSONA, cfg: Config = Config()) -> dict:
    """tokenizer → pretrain → identity SFT → report, in ``out_dir``.

    Writes ``tokenizer.json``, ``base.pt`` (after pretraining), ``sft.pt`` (after SFT),
    ``train/metrics.jsonl`` (a record per step of both stages, steps counted on) and the report in
    ``report/``. Returns ``{"tokenizer", "model", "pretrain_losses", "sft_losses", "answer"}`` —
    the answer being the model's greedy reply to "Who are you?".
    """
    # BEGIN SOLUTION run_pipeline
    # STUB: # 1. conversations = persona_conversations(persona) + fact_conversations(); build_tokenizer over them and
    # STUB: #    pretrain_text(); save it as out_dir/tokenizer.json
    # STUB: # 2. MiniLLM(ModelConfig(...)) + init_weights; pretrain with your AdamW and train (text_batches, schedule);
    # STUB: #    save_checkpoint base.pt
    # STUB: # 3. identity SFT on sft_rows(...) with a fresh AdamW; save_checkpoint sft.pt
    # STUB: # 4. train/metrics.jsonl (a record per step, from on_step) and your write_report(out / "train", out / "report")
    # STUB: # 5. return {"tokenizer", "model", "pretrain_losses", "sft_losses", "answer": ask(model, tokenizer, "Who are you?")}
    # STUB: raise NotImplementedError("run_pipeline")
    out = Path(out_dir)
    (out / "train").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    conversations = persona_conversations(persona) + fact_conversations()
    text = pretrain_text()
    # 1. the tokenizer: every character the model will ever read or write
    tokenizer = build_tokenizer([text] + [m["content"] for c in conversations for m in c])
    tokenizer.save(out / "tokenizer.json")
    model = MiniLLM(ModelConfig(vocab_size=tokenizer.vocab_size, dim=cfg.dim, n_layers=cfg.n_layers,
                                n_heads=cfg.n_heads, max_seq_len=cfg.max_len))
    init_weights(model, cfg.n_layers)
    log, start = [], time.perf_counter()

    def on_step(tokens_per_step: int) -> Callable[[int, float], None]:
        def record(_step: int, loss: float) -> None:  # numbered by count: steps go on through both stages
            tokens = (log[-1]["tokens"] if log else 0) + tokens_per_step
            log.append({"step": len(log) + 1, "loss": round(loss, 5), "tokens": tokens,
                        "time": round(time.perf_counter() - start, 3)})
        return record

    # 2. pretraining: next-token prediction on plain text
    opt = AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    pre = train(model, opt, text_batches(tokenizer.encode(text), cfg), cfg.pretrain_steps,
                lr_at=schedule(cfg.lr, cfg.warmup, cfg.pretrain_steps),
                on_step=on_step(cfg.batch_size * cfg.seq_len))
    save_checkpoint(out / "base.pt", model, opt, cfg.pretrain_steps)
    # 3. identity SFT: the persona and the facts as conversations, the loss on the assistant's tokens only
    x, y = sft_rows(tokenizer, conversations, cfg.seq_len)
    opt = AdamW(model.parameters(), lr=cfg.sft_lr, weight_decay=0.0)

    def sft_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + 50_000 + step)
        pick = torch.randint(0, len(x), (cfg.batch_size,), generator=g)
        return x[pick], y[pick]
    sft = train(model, opt, sft_batch, cfg.sft_steps, lr_at=schedule(cfg.sft_lr, cfg.warmup, cfg.sft_steps),
                on_step=on_step(cfg.batch_size * cfg.seq_len))
    save_checkpoint(out / "sft.pt", model, opt, cfg.sft_steps)
    # 4. the report of both stages (the loss jumps where SFT's new kind of text begins)
    atomic_write_text(out / "train" / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in log))
    write_report(out / "train", out / "report")
    # 5. the persona speaks
    model.eval()
    return {"tokenizer": tokenizer, "model": model, "pretrain_losses": pre, "sft_losses": sft,
            "answer": ask(model, tokenizer, "Who are you?")}
    # END SOLUTION


if __name__ == "__main__":  # python capstone.py: train, then chat with it on a socket, as a deployment would
    result = run_pipeline("capstone-run")
    print(f"{PERSONA['name']} says: {result['answer']}")
    srv = serve(create_app(make_chat(result["model"], result["tokenizer"])), "capstone.sock")
    print("serving on capstone.sock — try: curl --unix-socket capstone.sock http://x/v1/chat/completions "
          "-H 'content-type: application/json' -d '{\"messages\": [{\"role\": \"user\", \"content\": \"Who are you?\"}]}'")
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        srv.should_exit = True
