"""Helpers shared by the test modules (import as `from helpers import ...`)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def shared_file(rel: str) -> Path:
    """A real corpus from ``../shared/data``, for a test that reports a quality figure on it; skips without it."""
    path = SHARED_DATA / rel
    if not path.is_file():
        pytest.skip(f"shared corpus not available: {path}")
    return path


# ------------------------------------------------------------------ generated corpora
# The tests make their own text, so a fresh clone with nothing beside it runs them all.
# English: Python's own reference documentation, which every Python carries (the speedrun's
# built-in corpus). Chinese: a seeded generator, below.

def english_text(n_chars: int | None = None) -> str:
    """Python's reference documentation (``builtin_corpus``, ~460 KB), or its first ``n_chars`` characters."""
    from llm_foundry.data import builtin_corpus

    return "\n\n".join(d.text for d in builtin_corpus())[:n_chars]


# Sentences from a small grammar (who, when, where, how, does what) give a model patterns to
# learn; verse lines of five or seven characters give the vocabulary of a real Chinese text
# (tang300.txt has ~2,600 distinct characters). The verse is built from a lexicon of one- and
# two-character words with Zipf frequencies, as real text is, so it is learnable, not noise.
# No 小明: test_online teaches "我的名字叫小明。" and checks that unrelated text leaves it alone.
_WHO = "我 你 他 她 我们 他们 老师 学生 小王 小李 妈妈 爸爸 朋友 医生 农民 孩子们 同学 邻居".split()
_WHEN = "今天 明天 昨天 早上 晚上 每天 周末 春天 秋天 下午 有时候 去年".split()
_WHERE = "在学校 在家里 在公园 在图书馆 在山上 在河边 在城里 在村子里 在花园里 在车站".split()
_HOW = "很高兴地 慢慢地 认真地 一起 安静地 常常 又".split()
_DOES = ("看书 写字 吃饭 喝茶 唱歌 跑步 学习数学 画画 种花 做饭 听音乐 打球 读诗 写信 "
         "买菜 洗衣服 看月亮 等朋友 说故事 学中文").split()


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(_WHO)]
    for part, p in ((_WHEN, 0.5), (_WHERE, 0.6), (_HOW, 0.3)):
        if rng.random() < p:
            words.append(rng.choice(part))
    return "".join(words) + rng.choice(_DOES) + rng.choice("。。。！？")


def _verse_half(rng: random.Random, lexicon: list[str], weights: list[float], k: int) -> str:
    text = ""
    while len(text) < k:
        text += rng.choices(lexicon, weights)[0]
    return text[:k]


def chinese_lines(n: int, seed: int = 0) -> list[str]:
    """``n`` lines of generated Chinese, deterministic for a ``seed``: grammar sentences and verse lines."""
    rng = random.Random(seed)
    chars = [chr(c) for c in rng.sample(range(0x4E00, 0x9FA6), 3000)]
    lexicon = chars[:1000] + ["".join(rng.choices(chars, k=2)) for _ in range(3000)]
    weights = [1 / (rank + 1) for rank in range(len(lexicon))]  # Zipf: a few words are everywhere
    lines = []
    for _ in range(n):
        if rng.random() < 0.4:
            lines.append(_sentence(rng))
        else:
            k = rng.choice((5, 7))
            lines.append(f"{_verse_half(rng, lexicon, weights, k)}，{_verse_half(rng, lexicon, weights, k)}。")
    return lines


def chinese_text(n_chars: int, seed: int = 0) -> str:
    """``n_chars`` characters of :func:`chinese_lines`, one line after another."""
    lines = chinese_lines(n_chars // 4 + 1, seed)  # the shortest line, 我看书。, has 4 characters
    return "\n".join(lines)[:n_chars]


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m llm_foundry ARGS` as a user would; returns the finished process."""
    return subprocess.run([sys.executable, "-m", "llm_foundry", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


TINY_MODEL = ["model.dim=64", "model.n_layers=2", "model.n_heads=4", "model.max_seq_len=64"]


def one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """Assert a CLI run failed with one `error:` line on stderr, no traceback, naming ``fragments``."""
    assert proc.returncode != 0, proc.stdout
    err = proc.stderr.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err, err
    for f in fragments:
        assert f in err, err


def overfit_on(model, tokenizer, messages: list[dict], steps: int = 150) -> float:
    """Train ``model`` (masked loss, AdamW 1e-2) on one conversation until it replays it; returns the last loss.

    A few seconds on a tiny model: greedy decoding then reproduces the reply, tool call
    included, through the real engine.
    """
    import torch

    from llm_foundry.data.chat import render_conversation

    ids, mask = render_conversation(tokenizer, messages)
    x = torch.tensor([ids[:-1]])
    y = torch.tensor([[t if m else -100 for t, m in zip(ids[1:], mask[1:])]])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def run_main(capsys, *args) -> subprocess.CompletedProcess:
    """The CLI in this process (a subprocess pays seconds of imports per call); same result shape as run_cli."""
    from llm_foundry.cli.main import main

    capsys.readouterr()
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:  # argparse's own errors and --help
        rc = e.code
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, rc, out.out, out.err)


def interrupt_at(step: int):
    """An on_step callback that presses Ctrl-C (a real SIGINT) after ``step``."""
    import signal

    def hook(s: int, _p: float) -> None:
        if s == step:
            os.kill(os.getpid(), signal.SIGINT)
    return hook


def weights(folder):
    """A model folder's weights (name -> tensor)."""
    from llm_foundry.models.model_dir import read_weights

    return read_weights(folder)[0]


def wait_until(condition, timeout: float = 60.0) -> None:
    """Poll ``condition()`` until it holds; fail after ``timeout`` seconds (a hang, not a slow machine)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(0.01)
