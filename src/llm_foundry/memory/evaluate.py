"""``foundry memory eval``: the core rows of the evaluation protocol, on memory-only entities.

Every question is about an entity of the fact world's ``memory_only`` split: its facts never
reached a trainable parameter, so the backbone alone is at chance and only what is read from
the store can answer. The store is filled with those facts plus distractors (other made-up
entities' facts) up to ``eval.store_size`` entries; it is built for the evaluation, in
memory, and never touches the memory folder's own store. Answers are judged by exact match
of the generated answer (cut at its end) with the fact's value.

Rows:

* ``backbone alone``: no memory;
* ``memory (dense)`` / ``memory (hybrid)``: the gate's top-k (hybrid: mixed with BM25);
* ``oracle``: the gold entry given to the fusion (the reader's ceiling);
* ``in-context RAG``: the same retriever's top-k texts put in the prompt, the backbone alone
  reading them (the honest baseline the memory must beat to be worth it; a prompt longer than
  the backbone's context keeps its last tokens, the question whole);
* ``held-out phrasings`` and ``unseen relations``: dense memory on questions of a phrasing or
  relations training never used;
* ``edit: new value`` / ``edit: old value``: after replacing ``eval.edits`` facts (at most half
  of the questions asked) by a counterfactual (same subject and relation, another value), the share answering each;
* ``delete``: after deleting those entries, the share still answering the original value (and,
  for chance, the backbone alone's share on the same questions);
* ``locality``: questions about untouched facts, before the edits and after them;
* ``counterfactual``: questions about *train* entities (facts the backbone's own training text
  held) asked with a store whose entries give each of them another value: the share answering
  the memory's value (with memory, and the backbone alone for comparison) and the trained value.
  The sensitivity is the first minus the second of the memory's-value rows.

Two measures beside the table (their own functions, also in the report):

* :func:`perplexity`: perplexity of memory-free text (the train entities' statements) read with
  the memory off and on (each text retrieving its top-k from the evaluation store, as in use);
  the target is a change under 2%;
* :func:`scaling` (``eval --scales``): dense-memory exact match and retrieval latency per query
  (query encoding included) at several store sizes, the smaller stores prefixes of the larger.

With a user's own facts and questions (:func:`evaluate_user`) only the rows that need no
knowledge of the gold entry remain: backbone alone, memory (dense, hybrid), in-context RAG.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..utils.errors import FoundryError
from ..utils.io import atomic_write_text
from .ask import Answerer, prompt_of
from .facts import Fact, Question
from .gate import ExactIndex
from .model import Bank, MemoryModel
from .pipeline import Memory, _text_batch, fact_world

REPORT_FILE = "eval.md"


@dataclass
class Row:
    """One row of the table: a name, how many questions, exact match, and (where retrieval ran) recall@1."""

    name: str
    questions: int
    exact_match: float
    retrieval_at_1: float | None = None

    def to_dict(self) -> dict:
        return {"row": self.name, "questions": self.questions, "exact_match": round(self.exact_match, 4),
                "retrieval_at_1": None if self.retrieval_at_1 is None else round(self.retrieval_at_1, 4)}


def _em(answers: Sequence[str], golds: Sequence[str]) -> float:
    return sum(a.strip() == g.strip() for a, g in zip(answers, golds, strict=True)) / max(len(golds), 1)


def _sample(questions: list[Question], n: int, seed: int) -> list[Question]:
    if n and len(questions) > n:
        rng = random.Random(f"{seed}:eval-questions")
        questions = sorted(rng.sample(questions, n), key=lambda q: q.fact)
    return questions


class EvalStore:
    """The evaluation's entries: facts first (row = fact index), then distractors; edits replace a
    row's text and vector, deletes mask it.

    Args:
        vectors: the distractors' entry vectors if already encoded (e.g. another store's).
    """

    def __init__(self, model: MemoryModel, facts: list[Fact], distractors: list[str],
                 vectors: torch.Tensor | None = None):
        self.model = model
        self.n_facts = len(facts)
        self.texts = [f.text for f in facts] + distractors
        if vectors is None:
            self.vectors = model.gate.encode_entries(self.texts).cpu()
        else:
            fresh = [model.gate.encode_entries(self.texts[:self.n_facts]).cpu()] if facts else []
            self.vectors = torch.cat(fresh + [vectors[:len(distractors)]])
        self.deleted: list[int] = []

    @classmethod
    def build(cls, memory: Memory, store_size: int) -> "EvalStore":
        """The memory-only facts, then distractors up to ``store_size`` entries (encoded once; every
        measure may share it: :func:`evaluate` works on a copy)."""
        world = fact_world(memory.cfg)
        facts = world.facts("memory_only")
        if store_size < len(facts):
            raise FoundryError(f"the evaluation store needs room for the {len(facts)} memory-only facts "
                               f"(store size {store_size})")
        with torch.no_grad():
            return cls(memory.model, facts, world.distractors(store_size - len(facts), seed=2))

    @property
    def distractors(self) -> tuple[list[str], torch.Tensor]:
        """The distractors' texts and vectors (never edited)."""
        return self.texts[self.n_facts:], self.vectors[self.n_facts:]

    def copy(self) -> "EvalStore":
        other = object.__new__(EvalStore)
        other.model, other.n_facts, other.texts = self.model, self.n_facts, list(self.texts)
        other.vectors, other.deleted = self.vectors.clone(), list(self.deleted)
        return other

    def bank(self) -> Bank:
        bank = self.model.bank(range(len(self.texts)), self.texts, self.vectors)
        if self.deleted:
            bank.delete(self.deleted)
        return bank

    def update(self, rows: Sequence[int], texts: Sequence[str]) -> None:
        for r, t in zip(rows, texts, strict=True):
            self.texts[r] = t
        if rows:
            self.vectors[list(rows)] = self.model.gate.encode_entries(list(texts)).cpu()


def evaluate(memory: Memory, store_size: int | None = None, questions: int | None = None,
             quiet: bool = True, store: EvalStore | None = None) -> list[Row]:
    """The core rows (see the module docstring) for an opened memory folder.

    Args:
        store: the evaluation store if already built (:meth:`EvalStore.build`; left unchanged).
    """
    cfg, model = memory.cfg, memory.model
    e = cfg.eval
    store_size = e.store_size if store_size is None else store_size
    n_questions = e.questions if questions is None else questions
    world = fact_world(cfg)
    facts = world.facts("memory_only")
    k, answerer = cfg.modules.k, Answerer(model, e.max_tokens)
    with torch.no_grad():
        store = (store or EvalStore.build(memory, store_size)).copy()  # the edit rows change the copy
        asked = _sample(world.questions("memory_only"), n_questions, cfg.seed)
        qs, golds = [q.question for q in asked], [q.answer for q in asked]
        gold_rows = [q.fact for q in asked]
        rows: list[Row] = []

        def scored(name: str, items: list[Question], got: list) -> Row:
            hit = sum(a.retrieved[:1] == [q.fact] for a, q in zip(got, items)) / max(len(items), 1)
            return Row(name, len(items), _em([a.answer for a in got], [q.answer for q in items]), hit)

        def memory_row(name: str, items: list[Question], bank: Bank, hybrid: float = 0.0) -> Row:
            return scored(name, items, answerer.ask([q.question for q in items], bank, k, hybrid))

        bank = store.bank()
        alone = answerer.ask(qs, None, k)
        rows.append(Row("backbone alone", len(qs), _em([a.answer for a in alone], golds)))
        before = answerer.ask(qs, bank, k)  # kept: the untouched questions' answers before the edits
        rows.append(scored("memory (dense)", asked, before))
        rows.append(memory_row(f"memory (hybrid {e.hybrid:g})", asked, bank, e.hybrid))
        oracle = [answerer.generate(prompt_of(q.question), model.read([[store.texts[q.fact]]])) for q in asked]
        rows.append(Row("oracle (gold entry given)", len(qs), _em(oracle, golds), 1.0))
        found = model.retrieve(qs, k, bank) if qs else None
        rag = [answerer.generate(prompt_of(q, found.texts[i]), None, fit=True) for i, q in enumerate(qs)]
        rows.append(Row("in-context RAG (same retriever)", len(qs), _em(rag, golds),
                        sum(found.ids[i][:1] == [r] for i, r in enumerate(gold_rows)) / max(len(qs), 1) if qs else None))
        held = _sample(world.questions("memory_only", phrasing="heldout"), n_questions, cfg.seed)
        rows.append(memory_row("held-out phrasings", held, bank))
        rows.append(memory_row(f"held-out phrasings (hybrid {e.hybrid:g})", held, bank, e.hybrid))
        unseen = _sample(world.questions("memory_only", relations="unseen"), n_questions, cfg.seed)
        rows.append(memory_row("unseen relations", unseen, bank))
        rows.append(memory_row(f"unseen relations (hybrid {e.hybrid:g})", unseen, bank, e.hybrid))
        # Edits: counterfactual values for the first `edits` questions' facts (at most half of them:
        # the other half measures locality).
        edited = asked[:min(e.edits, len(asked) // 2)]
        untouched = asked[len(edited):]
        if edited:
            new = [world.counterfactual(facts[q.fact]) for q in edited]
            store.update([q.fact for q in edited], [f.text for f in new])
            bank = store.bank()
            got = answerer.ask([q.question for q in edited], bank, k)
            rows.append(Row("edit: new value", len(edited), _em([a.answer for a in got], [f.object for f in new])))
            rows.append(Row("edit: old value", len(edited), _em([a.answer for a in got], [q.answer for q in edited])))
            if untouched:
                rows.append(scored("locality (untouched, before edits)", untouched, before[len(edited):]))
                rows.append(memory_row("locality (untouched, after edits)", untouched, bank))
            store.deleted = [q.fact for q in edited]
            got = answerer.ask([q.question for q in edited], store.bank(), k)
            rows.append(Row("delete: original value", len(edited), _em([a.answer for a in got],
                                                                        [q.answer for q in edited])))
            rows.append(Row("delete: original value, backbone alone", len(edited),
                            _em([a.answer for a in alone[:len(edited)]], [q.answer for q in edited])))
        rows += counterfactual_rows(memory, store, n_questions, answerer)
    return rows


def counterfactual_rows(memory: Memory, base: EvalStore, n_questions: int, answerer: Answerer) -> list[Row]:
    """The counterfactual rows: train-entity facts (the backbone read them in training) stored with
    another value, then asked; answers must follow the memory, not what the backbone learned.

    The store: every train fact's counterfactual (row = fact index, so no entry tells the trained
    value), then ``base``'s distractors (vectors reused) up to ``base``'s size.
    """
    cfg, model, k = memory.cfg, memory.model, memory.cfg.modules.k
    world = fact_world(cfg)
    flipped = [world.counterfactual(f) for f in world.facts("train")]
    texts, vectors = base.distractors
    keep = max(0, len(base.texts) - len(flipped))
    store = EvalStore(model, flipped, texts[:keep], vectors)
    asked = _sample(world.questions("train"), n_questions, cfg.seed)
    if not asked:
        return []
    qs = [q.question for q in asked]
    new, old = [flipped[q.fact].object for q in asked], [q.answer for q in asked]
    got = answerer.ask(qs, store.bank(), k)
    hit = sum(a.retrieved[:1] == [q.fact] for a, q in zip(got, asked)) / len(asked)
    alone = [a.answer for a in answerer.ask(qs, None, k)]
    return [Row("counterfactual: memory's value", len(qs), _em([a.answer for a in got], new), hit),
            Row("counterfactual: memory's value, backbone alone", len(qs), _em(alone, new)),
            Row("counterfactual: trained value", len(qs), _em([a.answer for a in got], old))]


@dataclass
class Perplexity:
    """Perplexity of memory-free text with the memory off and on (:func:`perplexity`)."""

    texts: int
    off: float
    on: float

    @property
    def change(self) -> float:
        """Relative change, ``on / off - 1`` (the target: under 2% in size)."""
        return self.on / self.off - 1

    def to_dict(self) -> dict:
        return {"texts": self.texts, "off": round(self.off, 4), "on": round(self.on, 4),
                "change": round(self.change, 6)}


def perplexity(memory: Memory, store_size: int | None = None, texts: int | None = None,
               batch_size: int = 32, store: EvalStore | None = None) -> Perplexity:
    """Perplexity of the train entities' statements (text that needs no memory) read without memory
    and with each text's own top-k entries retrieved from the evaluation store (memory-only facts
    and distractors, as in :func:`evaluate`).

    Args:
        store_size: entries in the store (default: ``eval.store_size``).
        texts: statements read (default: ``eval.questions``; 0: all).
        store: the evaluation store if already built (:meth:`EvalStore.build`).
    """
    cfg, model = memory.cfg, memory.model
    world = fact_world(cfg)
    store_size = cfg.eval.store_size if store_size is None else store_size
    n = cfg.eval.questions if texts is None else texts
    statements = [f.text for f in world.facts("train")]
    if n and len(statements) > n:
        statements = random.Random(f"{cfg.seed}:eval-perplexity").sample(statements, n)
    nll = {"off": 0.0, "on": 0.0}
    tokens = 0
    with torch.no_grad():
        bank = (store or EvalStore.build(memory, store_size)).bank()
        for start in range(0, len(statements), batch_size):
            chunk = statements[start:start + batch_size]
            ids, targets = _text_batch(model, chunk)
            found = model.read_retrieved(model.retrieve(chunk, cfg.modules.k, bank))
            for name, mem in (("off", None), ("on", found)):
                logits = model(ids, mem)
                nll[name] += float(torch.nn.functional.cross_entropy(
                    logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum"))
            tokens += int((targets != -100).sum())
    if not tokens:
        raise FoundryError("no text to measure perplexity on")
    return Perplexity(len(statements), math.exp(nll["off"] / tokens), math.exp(nll["on"] / tokens))


@dataclass
class Scale:
    """One store size of :func:`scaling`: dense-memory exact match, recall@1 and retrieval latency."""

    entries: int
    questions: int
    exact_match: float
    retrieval_at_1: float
    retrieval_ms: float
    index: str = "exact"

    def to_dict(self) -> dict:
        return {"entries": self.entries, "questions": self.questions, "exact_match": round(self.exact_match, 4),
                "retrieval_at_1": round(self.retrieval_at_1, 4), "retrieval_ms": round(self.retrieval_ms, 3),
                "index": self.index}


def parse_scales(text: str) -> list[int]:
    """``"1000,10000"`` -> ``[1000, 10000]`` (sorted, positive; a bad list is one line)."""
    try:
        sizes = sorted({int(x.replace("_", "")) for x in text.split(",") if x.strip()})
    except ValueError:
        raise FoundryError(f"--scales takes store sizes separated by commas, e.g. 1000,10000 (got {text!r})") from None
    if not sizes or sizes[0] < 1:
        raise FoundryError(f"--scales takes positive store sizes, e.g. 1000,10000 (got {text!r})")
    return sizes


def scaling(memory: Memory, sizes: Sequence[int], questions: int | None = None) -> list[Scale]:
    """Dense-memory exact match and retrieval latency per query (median, query encoding
    included) at each store size: memory-only facts, then distractors; every store is a prefix
    of the largest, whose entries are encoded once.

    Each size is searched as ``ask`` would search it: exactly, or from
    :data:`~llm_foundry.memory.gate.APPROXIMATE_FROM` entries with faiss's inverted file where
    faiss is installed; there the exact search is measured too, as a second row.

    Every store holds the same memory-only facts — all of them, or as many as the smallest
    store has room for (1,000 of the ``cpu`` world's 1,960 at 1k entries) — and the questions,
    the same at every size, are about those.
    """
    cfg, model, k = memory.cfg, memory.model, memory.cfg.modules.k
    world = fact_world(cfg)
    sizes = sorted(sizes)
    if not sizes or sizes[0] < 1:
        raise FoundryError("store sizes must be positive")
    facts = world.facts("memory_only")[:sizes[0]]
    answerer = Answerer(model, cfg.eval.max_tokens)
    asked = _sample([q for q in world.questions("memory_only") if q.fact < len(facts)],
                    cfg.eval.questions if questions is None else questions, cfg.seed)
    out = []
    with torch.no_grad():
        store = EvalStore(model, facts, world.distractors(sizes[-1] - len(facts), seed=2))
        for size in sizes:
            banks = [model.bank(range(size), store.texts[:size], store.vectors[:size])]
            if type(banks[0].index) is not ExactIndex:
                banks.append(model.bank(range(size), store.texts[:size], store.vectors[:size], approximate=False))
            for bank in banks:
                times = []
                for q in asked:
                    t0 = time.perf_counter()
                    model.retrieve(q.question, k, bank)
                    times.append(time.perf_counter() - t0)
                got = answerer.ask([q.question for q in asked], bank, k)
                hit = sum(a.retrieved[:1] == [q.fact] for a, q in zip(got, asked)) / max(len(asked), 1)
                out.append(Scale(size, len(asked), _em([a.answer for a in got], [q.answer for q in asked]), hit,
                                 1000 * statistics.median(times) if times else 0.0, bank.index.name))
    return out


def evaluate_user(memory: Memory, facts: Sequence[str], questions: Sequence[Question],
                  store_size: int | None = None) -> list[Row]:
    """The rows that need no built-in fact world, for a user's facts and questions
    (``eval --facts F --questions Q``): backbone alone, memory (dense, hybrid) and in-context RAG.

    The store holds the facts, then distractors up to ``store_size`` entries (None: the facts alone).
    """
    cfg, model = memory.cfg, memory.model
    e, k = cfg.eval, cfg.modules.k
    answerer = Answerer(model, e.max_tokens)
    extra = max(0, (store_size or 0) - len(facts))
    texts = list(facts) + fact_world(cfg).distractors(extra, seed=2)
    qs, golds = [q.question for q in questions], [q.answer for q in questions]
    with torch.no_grad():
        bank = model.bank(range(len(texts)), texts)
        found = model.retrieve(qs, k, bank)
        rag = [answerer.generate(prompt_of(q, found.texts[i]), None, fit=True) for i, q in enumerate(qs)]
        return [Row("backbone alone", len(qs), _em([a.answer for a in answerer.ask(qs, None, k)], golds)),
                Row("memory (dense)", len(qs), _em([a.answer for a in answerer.ask(qs, bank, k)], golds)),
                Row(f"memory (hybrid {e.hybrid:g})", len(qs),
                    _em([a.answer for a in answerer.ask(qs, bank, k, e.hybrid)], golds)),
                Row("in-context RAG (same retriever)", len(qs), _em(rag, golds))]


def report(rows: Sequence[Row], store_size: int, backbone: str, what: str = "Memory-only entities",
           ppl: Perplexity | None = None, scales: Sequence[Scale] = ()) -> str:
    """The table as markdown (what ``MEM/eval.md`` holds); ``what`` names the questions asked;
    ``ppl`` and ``scales`` add their sections."""
    lines = ["# Memory evaluation", "",
             f"Backbone: `{backbone}`. {what}; {store_size:,} entries in the store "
             f"(distractors included); exact match of the generated answer.", "",
             "| row | questions | exact match | retrieval@1 |", "|---|---:|---:|---:|"]
    for r in rows:
        hit = "" if r.retrieval_at_1 is None else f"{100 * r.retrieval_at_1:.1f}%"
        lines.append(f"| {r.name} | {r.questions} | {100 * r.exact_match:.1f}% | {hit} |")
    if ppl is not None:
        lines += ["", f"Perplexity of memory-free text ({ppl.texts} train-entity statements): "
                      f"{ppl.off:.4f} with the memory off, {ppl.on:.4f} on ({100 * ppl.change:+.2f}%)."]
    if scales:
        lines += ["", "| store entries | index | questions | exact match | retrieval@1 | retrieval ms/query |",
                  "|---:|---|---:|---:|---:|---:|"]
        lines += [f"| {s.entries:,} | {s.index} | {s.questions} | {100 * s.exact_match:.1f}% "
                  f"| {100 * s.retrieval_at_1:.1f}% | {s.retrieval_ms:.2f} |" for s in scales]
    return "\n".join(lines) + "\n"


def write_report(memory: Memory, rows: Sequence[Row], store_size: int, what: str = "Memory-only entities",
                 ppl: Perplexity | None = None, scales: Sequence[Scale] = ()) -> Path:
    """Write ``MEM/eval.md`` (atomically)."""
    path = memory.path / REPORT_FILE
    atomic_write_text(path, report(rows, store_size, memory.model.backbone.source, what, ppl, scales))
    return path
