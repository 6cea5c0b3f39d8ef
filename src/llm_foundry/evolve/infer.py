"""Inference with the champion: fixed demo prompts, and an interactive prompt loop."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, TextIO

from ..inference.generator import Generator
from .state import StatePaths

DEMO_PROMPTS = ("人工智能", "今天天气", "床前明月光，", "The future of", "Once upon a time")


def load_generator(state_dir: str | Path, device: str = "auto", precision: str = "auto") -> Generator:
    """A :class:`Generator` on the state's champion."""
    return Generator.from_pretrained(StatePaths(state_dir).require_champion(), device=device, precision=precision)


def demo(gen: Generator, prompts=DEMO_PROMPTS, max_tokens: int = 100, temperature: float = 0.8,
         seed: int | None = 0, say: Callable[[str], None] = print) -> list[str]:
    """Continue each fixed prompt once and print prompt and continuation."""
    outs = []
    for i, p in enumerate(prompts):
        text = gen.generate(p, max_new_tokens=max_tokens, temperature=temperature, top_k=50,
                            seed=None if seed is None else seed + i)
        outs.append(text)
        say(f"prompt: {p}\noutput: {p}{text}\n")
    return outs


def interactive(gen: Generator, max_tokens: int = 100, temperature: float = 0.8, stdin: TextIO | None = None,
                stdout: TextIO | None = None) -> int:
    """Read prompts line by line and stream continuations; ``quit``/``exit``/EOF ends."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    tty = stdin.isatty()
    if tty:
        print(f"temperature {temperature}; type a prompt (quit or Ctrl-D to leave)", file=stdout)
    n = 0
    while True:
        if tty:
            stdout.write("> ")
            stdout.flush()
        line = stdin.readline()
        if not line:
            break
        prompt = line.rstrip("\n")
        if prompt.strip() in ("quit", "exit", "/quit"):
            break
        if not prompt.strip():
            continue
        stdout.write(prompt)
        for piece in gen.stream(prompt, max_new_tokens=max_tokens, temperature=temperature, top_k=50):
            stdout.write(piece)
            stdout.flush()
        stdout.write("\n")
        n += 1
    return n
