"""Answering questions from a memory folder: retrieve from the store's live entries, decode greedily.

    question --retrieve (gate over the store's live entries, cached vectors)--> top-k entries
             --Engine (the one decode loop), the memory attached to the backbone--> answer

**Entry vectors** are a cache (``store.save_cache`` under the memory model's fingerprint): on
every :func:`live_bank` the store's live entries are read, vectors of entries unchanged since
the cache's version are reused, and only entries added or updated since
(``store.changed_since``) are encoded; so an edit is visible to the very next query.

**Answers** follow the layout the backbone learned (``pipeline.qa_line``): the prompt is the
question and a space, decoding is greedy and stops at the end of the line; the answer is the
text up to there.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..inference.engine import Engine
from ..utils.errors import FoundryError
from .fusion import MemoryBatch
from .model import Bank, MemoryModel
from .store import MemoryStore


def live_bank(model: MemoryModel, store: MemoryStore, hybrid: bool = False) -> Bank:
    """A :class:`Bank` of the store's live entries, their vectors from the cache where still valid.

    The cache is refreshed (written at the store's version) when anything was encoded.
    """
    fp = model.fingerprint()
    ids, texts, version = store.live()
    cached = store.load_cache(fp)
    known: dict[int, torch.Tensor] = {}
    if cached is not None:
        tensors, at = cached
        changed = {i for i, _ in store.changed_since(at)}
        old_ids, old_vecs = tensors.get("ids"), tensors.get("vectors")
        if old_ids is not None and old_vecs is not None and old_vecs.shape[-1] == model.gate.dim:
            known = {int(i): v for i, v in zip(old_ids.tolist(), old_vecs) if int(i) not in changed}
    missing = [r for r, i in enumerate(ids) if i not in known]
    fresh = model.gate.encode_entries([texts[r] for r in missing]).cpu() if missing else None
    vectors = torch.zeros(len(ids), model.gate.dim)
    for r, i in enumerate(ids):
        if i in known:
            vectors[r] = known[i]
    if missing:
        vectors[missing] = fresh
    if missing or cached is None or len(known) != len(ids):
        store.save_cache(fp, {"ids": torch.tensor(ids, dtype=torch.long), "vectors": vectors}, version)
    return model.bank(ids, texts, vectors)


def refresh_bank(model: MemoryModel, bank: Bank, store: MemoryStore, version: int) -> tuple[Bank, int]:
    """Bring ``bank``, current as of store ``version``, up to the store's present: entries added or
    updated since are encoded and set in place, deleted ones masked. Cheap for a few edits at any
    store size (what ``chat --memory`` does before each turn, and ``bench/memory.py`` times).

    Returns:
        The bank (the same object, updated in place) and the version it is now current as of.
    """
    now = store.version  # read first: an edit landing meanwhile is then seen twice, never missed
    changes = store.changed_since(version)
    if not changes:
        return bank, now
    live = [(i, t) for i, t in changes if t is not None]
    if live:
        bank.upsert([i for i, _ in live], [t for _, t in live], model.gate.encode_entries([t for _, t in live]))
    bank.delete([i for i, t in changes if t is None and i in bank.row_of])
    return bank, now


@dataclass
class Answer:
    """One question's answer.

    Attributes:
        question: the question asked.
        answer: the generated text, cut at its end (the end of the line).
        retrieved: store ids of the entries read, best first (empty without memory).
        texts: their texts.
        scores: their ranking scores.
    """

    question: str
    answer: str
    retrieved: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        """What ``ask --json`` prints."""
        return {"question": self.question, "answer": self.answer, "retrieved": self.retrieved}


class Answerer:
    """Greedy answers of a memory model, through the :class:`~llm_foundry.inference.Engine` decode loop.

    Args:
        model: the memory model.
        max_tokens: longest answer.
    """

    def __init__(self, model: MemoryModel, max_tokens: int = 32):
        self.model = model
        self.max_tokens = max_tokens
        backbone = model.backbone
        if backbone.is_hf:
            self.engine = None
        else:  # the live (frozen-weight) model: the memory's hooks sit on its blocks
            self.engine = Engine(backbone.model, backbone.tokenizer, precision="fp32", tools=False, frozen=False,
                                 mode="text")
        newline = backbone.tokenizer.encode("\n")
        self.stop = newline[:1] if len(newline) == 1 else []

    def generate(self, prompt: str, memory: MemoryBatch | None, fit: bool = False) -> str:
        """The greedy continuation of ``prompt`` reading ``memory`` (None: the backbone alone), cut at the line's end.

        Args:
            fit: keep only the prompt's last tokens that leave room for the answer in the backbone's
                context (an in-context prompt whose retrieved texts overflow it; the question stays whole).
        """
        tok = self.model.backbone.tokenizer
        ids = tok.encode(prompt)
        if not ids:
            raise FoundryError("an empty question has no tokens")
        room = self.model.backbone.context - self.max_tokens
        if fit and len(ids) > room > 0:
            ids = ids[-room:]
        with self.model.attached(memory):
            if self.engine is not None:
                tokens, _ = self.engine.generate(ids, max_tokens=self.max_tokens, temperature=0.0, stop_ids=self.stop)
                out = tokens[0]
            else:
                out = self._hf_generate(ids)
        return tok.decode(out).split("\n", 1)[0].strip()

    def _hf_generate(self, ids: list[int]) -> list[int]:
        """Greedy decoding of a Hugging Face backbone (its own ``generate``; the hooks apply to every step)."""
        model = self.model.backbone.model
        x = torch.tensor([ids], device=self.model.backbone.device)
        with torch.no_grad():
            y = model.generate(x, max_new_tokens=self.max_tokens, do_sample=False,
                               eos_token_id=self.stop or None, pad_token_id=0)
        return y[0, len(ids):].tolist()

    def ask(self, questions: Sequence[str], bank: Bank | None, k: int, hybrid: float = 0.0) -> list[Answer]:
        """Answer each question, reading its ``k`` best entries of ``bank`` (None: no memory)."""
        out = []
        for q in questions:
            if bank is None or len(bank) == 0:
                out.append(Answer(q, self.generate(prompt_of(q), None)))
                continue
            found = self.model.retrieve(q, k, bank, hybrid=hybrid)
            with torch.no_grad():
                memory = self.model.read_retrieved(found)
            out.append(Answer(q, self.generate(prompt_of(q), memory), found.ids[0], found.texts[0],
                              [round(float(s), 4) for s in found.scores[0]]))
        return out


class LiveAnswers:
    """Answers that read the store as it is at each question: what ``chat --memory`` and
    ``serve --memory`` answer with (one home).

    Before every question the bank takes in the store's edits since the previous one
    (:func:`refresh_bank`), so an entry added, updated or deleted meanwhile (``foundry memory
    update`` in another process) is read, or never read again, by the next question. One
    question at a time (a lock): the memory is attached to the backbone's model while it decodes.

    Args:
        model: the memory model.
        store: its store.
        k: entries read per question.
        max_tokens: longest answer, unless a question gives its own.
    """

    def __init__(self, model: MemoryModel, store: MemoryStore, k: int, max_tokens: int = 32, hybrid: float = 0.0):
        self.model, self.store, self.k, self.max_tokens, self.hybrid = model, store, k, max_tokens, hybrid
        self.answerer = Answerer(model, max_tokens)
        self.lock = threading.Lock()
        self.version = store.version  # read before the bank: an edit in between is taken in twice, never missed
        self.bank = live_bank(model, store)

    def ask(self, question: str, memory: bool = True, max_tokens: int | None = None) -> Answer:
        """The answer to ``question`` reading the store's live entries now (``memory=False``: the backbone alone)."""
        with self.lock:
            self.answerer.max_tokens = max_tokens or self.max_tokens
            if not memory:
                return self.answerer.ask([question], None, self.k)[0]
            self.bank, self.version = refresh_bank(self.model, self.bank, self.store, self.version)
            return self.answerer.ask([question], self.bank, self.k, self.hybrid)[0]


def prompt_of(question: str, context: Sequence[str] = ()) -> str:
    """The prompt of a question (the layout the backbone learned); ``context``: entry texts put
    before it, one a line (in-context retrieval, the baseline the memory is compared with)."""
    head = "".join(t.strip() + "\n" for t in context)
    return f"{head}{question.strip()} "
