"""Training batches from conversations: task mixtures, packing and the loss mask.

Mid-training and SFT both train on rendered conversations (see ``data/chat.py``). A
*mixture* names its sources with weights::

    {"arithmetic": 4, "count_letters": 3, "text": 1, "my_chats.jsonl": 2}

* a built-in synthetic task (``data/synthetic.TASKS``): a pool of seeded examples;
* ``text``: windows of plain pretraining text from a prepared data folder, trained on
  every token, so mid-training does not forget the base model's language;
* a ``.jsonl`` file of conversations: ``{"messages": [...]}``, ShareGPT/minimind
  ``{"conversations": [...]}`` or Alpaca ``{"instruction", "input", "output"}`` per line
  (``chat_formats.py``).

Rows of ``seq_len + 1`` tokens are *packed*: whole conversations, picked by weight,
are laid end to end (each starts with ``<|bos|>``) until the next one would not fit,
and the rest is padding. Packing matters on a CPU: chat examples are 30-100 tokens
long, and one per row would spend most of the compute on padding.

Targets are ``-100`` wherever no loss is taken: padding always, and with
``loss_on="assistant"`` every token the assistant did not write (bos, user turns,
``<|assistant_start|>``, tool outputs) — the mask of ``render_conversation``.

Batch ``k`` is a pure function of ``(seed, k)`` (like ``data/loader.WindowLoader``),
so a resumed stage sees exactly the batches an uninterrupted one would have.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from ..config.stages import parse_mixture
from ..tokenizers import Tokenizer
from ..tokenizers.special import PAD
from ..utils.errors import FoundryError

TEXT_SOURCE = "text"
LOSS_ON = ("assistant", "all")
IGNORE = -100


def target_ids(ids: Sequence[int], mask: Sequence[int], loss_on: str) -> list[int]:
    """Next-token targets for ``ids``: ``ids[t+1]`` where it is trained, else -100.

    Args:
        ids: a rendered conversation.
        mask: its assistant mask (1 on tokens the assistant writes).
        loss_on: ``assistant`` (masked loss, SFT) or ``all`` (every token).
    """
    if loss_on == "all":
        return list(ids[1:])
    return [t if m else IGNORE for t, m in zip(ids[1:], mask[1:])]


@dataclass
class _Source:
    name: str
    weight: float
    items: list[tuple[list[int], list[int]]]  # (input ids, targets) per conversation; empty for text


class ChatMixture:
    """Packed, masked batches from a weighted mixture of conversation sources.

    Args:
        tokenizer: the model's tokenizer (with the chat special tokens).
        mixture: source name -> weight (see the module docstring).
        seq_len: tokens per row.
        examples_per_task: pool size of each synthetic task.
        split: ``train`` or ``heldout`` (held-out templates and number ranges).
        seed: seeds the pools and every batch.
        lang: ``en``, ``zh`` or ``mixed`` for the synthetic tasks.
        loss_on: ``assistant`` or ``all`` for conversations (text is always ``all``).
        text_data: a prepared data folder, needed when the mixture has ``text``.
        text_len: tokens per text window (at most the free space of a row).
    """

    def __init__(self, tokenizer: Tokenizer, mixture: Mapping[str, float], *, seq_len: int,
                 examples_per_task: int = 2000, split: str = "train", seed: int = 0, lang: str = "mixed",
                 loss_on: str = "assistant", text_data: str | Path | None = None, text_len: int = 128):
        if loss_on not in LOSS_ON:
            raise FoundryError(f"loss_on must be one of {', '.join(LOSS_ON)}, not '{loss_on}'")
        mixture = parse_mixture(mixture)
        if not mixture:
            raise FoundryError("the task mixture is empty; name at least one source (e.g. arithmetic=1)")
        self.tokenizer, self.seq_len, self.seed = tokenizer, seq_len, seed
        self.loss_on, self.text_len = loss_on, text_len
        self.pad_id = tokenizer.token_id(PAD) or 0
        self.text = None
        self.sources: list[_Source] = []
        for k, (name, weight) in enumerate(mixture.items()):
            if name == TEXT_SOURCE:
                self.text = self._text_split(text_data, split)
                self.sources.append(_Source(name, weight, []))
                continue
            convs = self._conversations(name, examples_per_task, split, seed + 1000 * k, lang)
            items = []
            for messages in convs:
                ids, mask = self._render(messages)
                if len(ids) >= 2:
                    items.append((ids[:-1], target_ids(ids, mask, loss_on)))
            if not items:
                raise FoundryError(f"mixture source '{name}' produced no conversations")
            self.sources.append(_Source(name, weight, items))
        w = np.array([s.weight for s in self.sources], dtype=np.float64)
        self.probs = w / w.sum()

    # ------------------------------------------------------------ sources
    def _render(self, messages: list[dict]) -> tuple[list[int], list[int]]:
        from .chat import render_conversation

        # One extra token: a row holds seq_len inputs and seq_len targets.
        return render_conversation(self.tokenizer, messages, max_tokens=self.seq_len + 1)

    @staticmethod
    def _conversations(name: str, n: int, split: str, seed: int, lang: str) -> list[list[dict]]:
        from .synthetic import TASKS, make_examples

        if name in TASKS:
            return [ex.messages for ex in make_examples(name, n, split=split, seed=seed, lang=lang)]
        path = Path(name)
        if path.suffix.lower() == ".jsonl" or path.exists():
            from .chat_formats import read_chat_records

            return read_chat_records(path)[0]  # messages, ShareGPT/minimind or Alpaca records
        raise FoundryError(f"unknown mixture source '{name}' (built-in tasks: {', '.join(TASKS)}, "
                           f"'{TEXT_SOURCE}', or a .jsonl file of conversations)")

    def _text_split(self, text_data: str | Path | None, split: str) -> np.ndarray:
        from . import TokenDataset

        if text_data is None:
            raise FoundryError(f"the mixture has '{TEXT_SOURCE}' but no data folder was given (--data DATA_DIR)")
        ds = TokenDataset(text_data)
        if ds.tokenizer.vocab_size != self.tokenizer.vocab_size or ds.tokenizer.kind != self.tokenizer.kind:
            raise FoundryError(f"the data folder's tokenizer differs from the model's: {text_data}")
        name = "val" if split != "train" and ds.has_split("val") else "train"
        shards = ds.split(name)
        # One shard (128M tokens) stays memory-mapped; only several are joined in memory.
        arr = shards[0] if len(shards) == 1 else np.concatenate([np.asarray(s) for s in shards])
        if len(arr) < 2:
            raise FoundryError(f"data folder {text_data} has no text in its '{name}' split")
        return arr

    # ------------------------------------------------------------ batches
    def _row(self, rng: np.random.Generator) -> tuple[list[int], list[int]]:
        t = self.seq_len
        xs: list[int] = []
        ys: list[int] = []
        misses = 0
        while len(xs) < t and misses < 4:
            src = self.sources[int(rng.choice(len(self.sources), p=self.probs))]
            free = t - len(xs)
            if src.name == TEXT_SOURCE:
                n = min(self.text_len, free, len(self.text) - 1)
                off = int(rng.integers(0, len(self.text) - n))
                window = self.text[off:off + n + 1].astype(np.int64).tolist()
                xs += window[:-1]
                ys += window[1:]
                continue
            x, y = src.items[int(rng.integers(len(src.items)))]
            if len(x) <= free:
                xs += x
                ys += y
            elif not xs:  # longer than a row: keep its start (render already cut it to seq_len + 1)
                xs, ys = x[:t], y[:t]
            else:
                misses += 1
        pad = t - len(xs)
        return xs + [self.pad_id] * pad, ys + [IGNORE] * pad

    def _batch(self, rng: np.random.Generator, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self._row(rng) for _ in range(batch_size)]
        x = torch.tensor([r[0] for r in rows], dtype=torch.long)
        y = torch.tensor([r[1] for r in rows], dtype=torch.long)
        return x.to(device), y.to(device)

    def batch(self, index: int, batch_size: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """The ``index``-th ``(x, y)`` batch; same seed and index, same batch."""
        return self._batch(np.random.default_rng([self.seed, 0, index]), batch_size, device)

    def fixed_batches(self, n_batches: int, batch_size: int, device: torch.device | str = "cpu") -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``n_batches`` batches from a stream of their own (the same on every call), for validation."""
        return [self._batch(np.random.default_rng([self.seed, 1, i]), batch_size, device) for i in range(n_batches)]

    def describe(self) -> dict[str, dict]:
        """Per-source weight share and pool size (for logs and the report)."""
        return {s.name: {"weight": round(float(p), 4), "examples": len(s.items) if s.name != TEXT_SOURCE else None}
                for s, p in zip(self.sources, self.probs)}
