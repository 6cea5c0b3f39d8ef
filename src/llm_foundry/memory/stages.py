"""The memory's training losses, stepped by the one training core (``training.step``).

The ``router`` stage (contrastive retrieval), and the pieces the later stages
(``fusion``, ``joint``, ``memory``) are made of — the answer loss, gold-first batches with a
share of missing golds, the retrieval loss over routed entries, and the KL to the backbone on
memory-free text. Their drivers (batches, resume, checkpoints) are in ``pipeline.py``.

**Router** (InfoNCE): each question in a batch should score its gold entry above every
other entry in the batch (in-batch negatives) and above the *hard* negatives, the entries
the current gate confuses with the gold one (mined by exact search over all entries).
Only the gate trains; its features come from the frozen backbone and are read once, so
a router step is a few small matrix products.

**Answer loss**: cross-entropy of the answer's tokens after the question, with the memory
attached; with ``route`` entries are weighted by the gate's routing softmax, so this loss
also trains the gate (the source design's stages 2–4 did not).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .. import kernels
from ..config import TrainConfig
from ..training.optim import build_optimizers
from ..training.step import StepParts, train_step
from ..utils.errors import FoundryError
from .gate import Tokens, TokenFeatures, exact_topk
from .fusion import MemoryBatch
from .model import Bank, MemoryModel, Retrieval


def memory_step_parts(model: MemoryModel, lr: float = 3e-3, weight_decay: float = 0.0,
                      grad_clip: float = 1.0) -> StepParts:
    """The training core's :class:`StepParts` over the memory modules only (AdamW, fp32):
    the backbone is not in it, so no optimizer can ever hold a backbone weight."""
    cfg = TrainConfig(lr=lr, weight_decay=weight_decay, grad_clip=grad_clip, optimizer="adamw")
    return StepParts(model.memory, build_optimizers(model.memory, cfg), grad_clip=grad_clip)


# ------------------------------------------------------------------ router
@dataclass
class RouterData:
    """Token features for router training, read once from the frozen backbone.

    Attributes:
        questions: every question's token features.
        entries: every entry's (golds and distractors).
        gold: ``(q,)`` the row in ``entries`` of each question's gold entry.
    """

    questions: TokenFeatures
    entries: TokenFeatures
    gold: torch.Tensor

    @classmethod
    def read(cls, model: MemoryModel, questions: Sequence[str], gold: Sequence[int], entries: Sequence[str],
             batch_size: int = 64) -> "RouterData":
        """Token features of ``questions`` and ``entries``; ``gold[i]`` is question ``i``'s entry row."""
        if len(questions) != len(gold) or not questions:
            raise FoundryError(f"router data needs one gold entry per question ({len(questions)} vs {len(gold)})")
        if not all(0 <= g < len(entries) for g in gold):
            raise FoundryError("a gold entry row is outside the entries")
        q = TokenFeatures.read(model.gate, list(questions), batch_size)
        return cls(q, TokenFeatures.read(model.gate, list(entries), batch_size),
                   torch.as_tensor(list(gold), dtype=torch.long, device=q.mask.device))


@dataclass
class EntryTokens:
    """Every bank entry's token features, read once from the frozen backbone: the fusion stages
    take a batch's entries from here instead of running the backbone over them again at every
    step, and the gate's entry tower encodes the bank from here.

    Attributes:
        features: the bank's token features, in row order.
        row_of: an entry text's row (equal texts have equal features: any of their rows).
    """

    features: TokenFeatures
    row_of: dict[str, int]

    @classmethod
    def read(cls, model: MemoryModel, texts: Sequence[str], batch_size: int = 64) -> "EntryTokens":
        """Read ``texts`` (the bank, in row order) at the gate's block."""
        return cls(TokenFeatures.read(model.gate, texts, batch_size),
                   {t: r for r, t in reversed(list(enumerate(texts)))})

    def take(self, texts: Sequence[str]) -> Tokens:
        """``MemoryGate.read(texts)`` of entries of the bank, from the cache."""
        return self.features.rows(torch.tensor([self.row_of[t] for t in texts]))


def hard_negatives(model: MemoryModel, data: RouterData, rows: torch.Tensor, n: int,
                   entry_vecs: torch.Tensor | None = None) -> torch.Tensor:
    """``(len(rows), n)`` entry rows the gate ranks highest for questions ``rows``, gold excluded.

    ``entry_vecs``: the entries' vectors, where the caller has them already (training re-encodes
    its bank every few steps, not at every one); default: computed here under the current weights.
    """
    with torch.no_grad():
        q = model.gate.embed_queries(data.questions.rows(rows))
        e = model.gate.embed_all(data.entries) if entry_vecs is None else entry_vecs
        _, top = exact_topk(q, e, n + 1)
    gold = data.gold[rows].unsqueeze(1)
    # Drop the gold where it appears; otherwise the last candidate (n + 1 were fetched).
    keep = torch.where((top == gold).any(1, keepdim=True), top != gold,
                       torch.arange(top.shape[1], device=top.device).unsqueeze(0) < n)
    return top[keep].view(len(rows), n)


def router_loss(model: MemoryModel, data: RouterData, rows: torch.Tensor, negatives: torch.Tensor | None = None
                ) -> torch.Tensor:
    """InfoNCE of questions ``rows`` against their gold entries, the batch's other golds and
    ``negatives`` (``(len(rows), n)`` entry rows, e.g. :func:`hard_negatives`)."""
    gate = model.gate
    q = gate.embed_queries(data.questions.rows(rows))
    candidates = data.gold[rows]
    if negatives is not None:
        candidates = torch.cat([candidates, negatives.reshape(-1)])
    # One row may be a gold of one question and a negative of another: score unique rows once,
    # and let a question's target be the column of its own gold.
    unique, inverse = torch.unique(candidates, return_inverse=True)
    e = gate.embed_entries(data.entries.rows(unique))
    logits = gate.scale * q @ e.T
    return F.cross_entropy(logits, inverse[: len(rows)])


def retrieval_accuracy(model: MemoryModel, data: RouterData, k: int = 1) -> float:
    """Share of questions whose gold entry is among the gate's top ``k`` over all entries."""
    _, top = exact_topk(model.gate.embed_all(data.questions, queries=True), model.gate.embed_all(data.entries), k)
    return float((top == data.gold.unsqueeze(1)).any(1).float().mean())


def train_router(model: MemoryModel, data: RouterData, steps: int, batch_size: int = 32, hard: int = 4,
                 lr: float = 3e-3, seed: int = 0, parts: StepParts | None = None) -> list[float]:
    """``steps`` router steps through :func:`~llm_foundry.training.step.train_step`; returns the losses.

    Args:
        hard: hard negatives per question (0: in-batch negatives only).
        parts: the step parts to continue with (default: fresh ones from :func:`memory_step_parts`).
    """
    parts = parts or memory_step_parts(model, lr)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        rows = torch.randperm(len(data.gold), generator=gen)[:batch_size].to(data.gold.device)
        negatives = hard_negatives(model, data, rows, hard) if hard else None
        losses.append(float(train_step(parts, 1.0, 1, lambda _: router_loss(model, data, rows, negatives))))
    return losses


# ------------------------------------------------------------------ answers
def answer_batch(model: MemoryModel, questions: Sequence[str], answers: Sequence[str]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of ``question + " " + answer`` (right-padded) and targets that count only the answer."""
    tok = model.backbone.tokenizer
    rows = [(tok.encode(q + " "), tok.encode(a)) for q, a in zip(questions, answers, strict=True)]
    longest = max(len(q) + len(a) for q, a in rows)
    ids = torch.zeros(len(rows), longest, dtype=torch.long)
    targets = torch.full((len(rows), longest), -100, dtype=torch.long)
    for r, (q, a) in enumerate(rows):
        ids[r, :len(q) + len(a)] = torch.tensor(q + a)
        targets[r, len(q) - 1:len(q) + len(a) - 1] = torch.tensor(a)  # position t predicts token t + 1
    return ids.to(model.backbone.device), targets.to(model.backbone.device)


def answer_loss(model: MemoryModel, questions: Sequence[str], answers: Sequence[str],
                memory: Retrieval | None) -> torch.Tensor:
    """Mean cross-entropy of the answers' tokens after the questions, reading ``memory``."""
    ids, targets = answer_batch(model, questions, answers)
    return kernels.cross_entropy(model(ids, memory), targets)


# ------------------------------------------------------------------ pieces of the fusion, joint and memory stages
def gold_first(model: MemoryModel, questions: Sequence[str], gold_ids: Sequence[int], bank: Bank, k: int,
               missing: float = 0.0, generator: torch.Generator | None = None,
               query_vecs: torch.Tensor | None = None) -> tuple[list[list[str]], torch.Tensor]:
    """Each question's ``k`` entries for training the fusion: its gold entry first, then what the
    gate retrieves besides it; for a share ``missing`` of the questions the gold is left out (only
    retrieved entries), so that the model learns to fall back when memory lacks the answer.

    Args:
        query_vecs: the questions' unit vectors if already encoded.

    Returns:
        the entry texts per question, and ``(questions,)`` the gold's column (0) or -1 where left out.
    """
    if k < 1 or len(bank) < k + 1:
        raise FoundryError(f"gold-first batches need k >= 1 and at least k + 1 live entries (k={k}, {len(bank)} live)")
    if len(gold_ids) != len(questions):
        raise FoundryError(f"{len(questions)} questions but {len(gold_ids)} gold ids")
    found = model.retrieve(list(questions), k + 1, bank, query_vecs=query_vecs)
    drop = torch.rand(len(questions), generator=generator) < missing
    rows, cols = [], []
    for r, gold in enumerate(gold_ids):
        if int(gold) not in bank.row_of:
            raise FoundryError(f"gold entry {gold} is not a live entry of the bank")
        others = [t for i, t in zip(found.ids[r], found.texts[r]) if i != gold]
        if drop[r]:
            rows.append(others[:k])
            cols.append(-1)
        else:
            rows.append([bank.texts[bank.row_of[int(gold)]]] + others[:k - 1])
            cols.append(0)
    return rows, torch.tensor(cols)


def retrieval_loss(route: torch.Tensor, gold_col: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the routing logits ``(questions, k)`` against the gold's column, over the
    questions whose gold is present (``gold_col`` >= 0); 0 when none is. The joint stage adds it
    to the answer loss: the retrieved entries are the hard negatives."""
    present = gold_col >= 0
    if not bool(present.any()):
        return route.sum() * 0.0
    return F.cross_entropy(route[present], gold_col[present].to(route.device))


def kl_to_backbone(model: MemoryModel, ids: torch.Tensor, memory: Retrieval | MemoryBatch) -> torch.Tensor:
    """Mean per-token KL(backbone ‖ model reading ``memory``) on ``ids``: the memory stage's term that
    keeps text unrelated to the memory as the backbone predicts it."""
    with torch.no_grad():
        target = torch.log_softmax(model(ids).float(), dim=-1).flatten(0, -2)
    pred = torch.log_softmax(model(ids, memory).float(), dim=-1).flatten(0, -2)
    return F.kl_div(pred, target, log_target=True, reduction="batchmean")
