"""MemoryGate: which entries a question needs, as two towers scored by cosine.

    entry    -> features(entry tokens)    -> MemoryNorm -> Linear -> unit vector  \
                                                                                   > cosine
    question -> features(question tokens) -> MemoryNorm -> Linear -> unit vector  /

**Features** of a text are two means over its tokens, concatenated: of the backbone's
states after a *middle* block, and of its token embeddings. The middle layer carries
context (which entity a word belongs to, which relation is asked); the last layers do
not serve: there the states have turned into a prediction of the *next* token, which for
a question is the answer it does not contain, and for a fact is whatever follows its end.
The embedding mean keeps the plain lexical identity of rare names that the middle layer
may mix with their neighbours. Only the projections and norms learn; the features come
from the frozen backbone, without autograd, and can be computed once per text.

The two towers start equal (the query projection is a copy of the entry projection), so an
untrained gate already ranks entries by the similarity of their features; training then
pulls each question towards its own entry (``stages.py``).

Search is exact (:func:`exact_topk`, a chunked matrix product: 1M entries × 256 dims is
1 GB of fp32 vectors and never more than one chunk of scores at once); deleted entries
are masked, never returned. A lexical signal (:class:`BM25`) can be mixed into the dense
score (``MemoryModel.retrieve(..., hybrid=w)``), and :class:`FaissIndex` offers an approximate search behind the same
``search`` interface where ``faiss`` is installed.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter, defaultdict
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..utils.errors import FoundryError
from .backbone import Backbone
from .fusion import MemoryNorm

GATE_VERSION = 1  # bump when features or towers change meaning: cached entry vectors are then rebuilt


class MemoryGate(nn.Module):
    """Two towers over backbone features, scored by cosine.

    Args:
        backbone: the frozen backbone the features are read from (not a submodule: the gate's
            parameters and state dict are its own).
        layer: the block whose states are averaged (default: the middle one).
        dim: width of the entry and query vectors.
        max_len: tokens read per text.
    """

    def __init__(self, backbone: Backbone, layer: int | None = None, dim: int = 256, max_len: int = 64):
        super().__init__()
        self.__dict__["backbone"] = backbone  # a plain attribute: nn.Module would adopt it
        self.layer = (backbone.n_layers - 1) // 2 if layer is None else int(layer)
        backbone.check_layer(self.layer)
        self.dim, self.max_len = dim, max_len
        feat = 2 * backbone.dim
        self.entry_norm, self.query_norm = MemoryNorm(feat), MemoryNorm(feat)
        self.entry_proj = nn.Linear(feat, dim, bias=False)
        self.query_proj = nn.Linear(feat, dim, bias=False)
        nn.init.normal_(self.entry_proj.weight, 0.0, feat ** -0.5)
        with torch.no_grad():
            self.query_proj.weight.copy_(self.entry_proj.weight)
        # Temperature of the routing softmax and of the contrastive loss, learned (CLIP's init, 1/0.07).
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def config(self) -> dict:
        """What rebuilds this gate's shape (saved beside its weights)."""
        return {"layer": self.layer, "dim": self.dim, "max_len": self.max_len}

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=100.0)

    # ------------------------------------------------------------------ towers
    def features(self, texts: Sequence[str]) -> torch.Tensor:
        """``(n, 2 * backbone.dim)`` features of ``texts`` (no autograd: the backbone is frozen)."""
        return self.pool(*self.backbone.read(texts, self.layer, self.max_len))

    @staticmethod
    def pool(states: torch.Tensor, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Features from :meth:`Backbone.read`'s output: the means over real tokens, side by side."""
        w = mask.unsqueeze(-1).to(states.dtype) / mask.sum(1, keepdim=True).unsqueeze(-1)
        return torch.cat([(states * w).sum(1), (embeds * w).sum(1)], dim=-1).float()

    def embed_entries(self, features: torch.Tensor) -> torch.Tensor:
        """Unit entry vectors from entry features (with autograd into the entry tower)."""
        return F.normalize(self.entry_proj(self.entry_norm(features)), dim=-1)

    def embed_queries(self, features: torch.Tensor) -> torch.Tensor:
        """Unit query vectors from question features (with autograd into the query tower)."""
        return F.normalize(self.query_proj(self.query_norm(features)), dim=-1)

    @torch.no_grad()
    def encode_entries(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """``(n, dim)`` unit vectors of entries, in batches, without autograd (the cache)."""
        out = [self.embed_entries(self.features(texts[i:i + batch_size])) for i in range(0, len(texts), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.dim, device=self.backbone.device)

    def encode_queries(self, texts: Sequence[str]) -> torch.Tensor:
        """``(n, dim)`` unit vectors of questions (with autograd into the query tower)."""
        return self.embed_queries(self.features(texts))

    @staticmethod
    def scores(query_vecs: torch.Tensor, entry_vecs: torch.Tensor) -> torch.Tensor:
        """Cosine scores ``(queries, entries)`` of unit vectors."""
        return query_vecs @ entry_vecs.T

    def fingerprint(self) -> str:
        """Identity of the cached entry vectors: the backbone's fingerprint, the gate's version and
        shape, and the entry tower's weights (they change when the gate trains)."""
        h = hashlib.sha256(f"{self.backbone.fingerprint()}|gate{GATE_VERSION}|{sorted(self.config().items())}".encode())
        for t in (self.entry_norm.weight, self.entry_proj.weight):
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


# ------------------------------------------------------------------ exact search
def exact_topk(query: torch.Tensor, entries: torch.Tensor, k: int, valid: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best entries for each query, exactly: ``(scores, rows)``, each ``(queries, k')``.

    Scores are ``query @ entries.T`` (+ ``bias``); the matrix product runs over chunks of
    ``chunk`` entries, keeping a running top-k, so memory stays ``queries × chunk``.

    Args:
        valid: ``(entries,)`` bool; False rows (deleted entries) are never returned.
        bias: ``(queries, entries)`` added to the scores (e.g. the weighted lexical score).
        chunk: entries per matrix product.

    Returns:
        ``k' = min(k, number of valid entries)`` columns, best first.
    """
    n = entries.shape[0]
    alive = n if valid is None else int(valid.sum())
    k = min(k, alive)
    best_s = query.new_full((query.shape[0], 0), float("-inf"))
    best_r = torch.zeros(query.shape[0], 0, dtype=torch.long, device=query.device)
    if k <= 0:
        return best_s, best_r
    for start in range(0, n, chunk):
        s = query @ entries[start:start + chunk].T.to(query.dtype)
        if bias is not None:
            s = s + bias[:, start:start + chunk].to(s.dtype)
        if valid is not None:
            s = s.masked_fill(~valid[start:start + chunk], float("-inf"))
        top_s, top_r = s.topk(min(k, s.shape[1]), dim=1)
        best_s, order = torch.cat([best_s, top_s], 1).topk(min(k, best_s.shape[1] + top_s.shape[1]), dim=1)
        best_r = torch.cat([best_r, top_r + start], 1).gather(1, order)
    return best_s, best_r


class ExactIndex:
    """Exact search over unit entry vectors (the default; see :func:`exact_topk`).

    Args:
        vectors: ``(entries, dim)``.
        valid: ``(entries,)`` bool mask of live entries (None: all live).
    """

    def __init__(self, vectors: torch.Tensor, valid: torch.Tensor | None = None):
        self.vectors = vectors
        self.valid = torch.ones(len(vectors), dtype=torch.bool, device=vectors.device) if valid is None else valid

    def search(self, query: torch.Tensor, k: int, bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores, rows)`` of the ``k`` best live entries per query (scores include ``bias``)."""
        return exact_topk(query, self.vectors, k, self.valid, bias)


class FaissIndex(ExactIndex):
    """Approximate search through ``faiss`` (HNSW over inner products) for stores beyond ~1M entries.

    Same interface as :class:`ExactIndex`. Candidates are over-fetched (``4k``) and then
    filtered (deleted rows) and re-ranked exactly with ``bias``, so a mask or a lexical
    signal costs no index rebuild.

    Raises:
        FoundryError: ``faiss`` is not installed (``pip install faiss-cpu``).
    """

    def __init__(self, vectors: torch.Tensor, valid: torch.Tensor | None = None, neighbours: int = 32):
        try:
            import faiss
        except ImportError:
            raise FoundryError("the approximate index needs faiss: pip install faiss-cpu") from None
        super().__init__(vectors, valid)
        self.index = faiss.IndexHNSWFlat(vectors.shape[1], neighbours, faiss.METRIC_INNER_PRODUCT)
        self.index.add(vectors.detach().float().cpu().contiguous().numpy())

    def search(self, query: torch.Tensor, k: int, bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        fetch = min(len(self.vectors), 4 * k)
        _, rows = self.index.search(query.detach().float().cpu().contiguous().numpy(), fetch)
        rows = torch.from_numpy(rows).to(query.device)
        missing = rows < 0  # fewer neighbours found than asked
        rows = rows.clamp(min=0)
        s = (query.unsqueeze(1) * self.vectors[rows].to(query.dtype)).sum(-1)
        if bias is not None:
            s = s + bias.gather(1, rows).to(s.dtype)
        s = s.masked_fill(missing | ~self.valid[rows], float("-inf"))
        k = min(k, int(self.valid.sum()), fetch)
        top_s, order = s.topk(k, dim=1)
        return top_s, rows.gather(1, order)


# ------------------------------------------------------------------ lexical signal
_WORD = re.compile(r"[\u3400-\u9fff]+|[^\W\u3400-\u9fff]+")  # runs of CJK characters; runs of letters/digits


def words(text: str) -> list[str]:
    """Lower-cased words of ``text``; a run of Chinese characters gives each character and each
    pair of neighbours (Chinese has no spaces, and single characters are too common to tell one
    two-character name from another: the pairs are what make a name rare)."""
    out = []
    for w in _WORD.findall(text.lower()):
        if "\u3400" <= w[0] <= "\u9fff":
            out += list(w) + [w[i:i + 2] for i in range(len(w) - 1)]
        else:
            out.append(w)
    return out


class BM25:
    """Okapi BM25 over the entry texts, scored for all entries at once.

    A small numpy implementation rather than a dependency: no maintained BM25 library is a
    dependency of this project, and an inverted index (word -> rows, term frequencies) makes
    scoring one question a few array additions over the postings of its words, fast enough
    at 1M entries. Scores are divided by the question's best score, so they lie in [0, 1],
    the scale of a cosine, and the hybrid weight means the same for every question.

    Args:
        texts: the entries, in row order.
        k1, b: the usual BM25 constants (term-frequency saturation, length normalisation).
    """

    def __init__(self, texts: Sequence[str], k1: float = 1.2, b: float = 0.75):
        self.n = len(texts)
        postings: dict[str, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
        lengths = np.zeros(self.n, dtype=np.float32)
        for row, text in enumerate(texts):
            counts = Counter(words(text))
            lengths[row] = sum(counts.values())
            for w, c in counts.items():
                postings[w][0].append(row)
                postings[w][1].append(c)
        norm = k1 * (1 - b + b * lengths / max(float(lengths.mean()) if self.n else 1.0, 1e-9))
        self.index: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for w, (rows, tfs) in postings.items():
            rows_a, tf = np.asarray(rows, dtype=np.int64), np.asarray(tfs, dtype=np.float32)
            idf = math.log(1 + (self.n - len(rows) + 0.5) / (len(rows) + 0.5))
            self.index[w] = (rows_a, (idf * tf * (k1 + 1) / (tf + norm[rows_a])).astype(np.float32))

    def scores(self, questions: Sequence[str]) -> torch.Tensor:
        """``(questions, entries)`` scores in [0, 1] (1: the best entry for that question)."""
        out = np.zeros((len(questions), self.n), dtype=np.float32)
        for q, text in enumerate(questions):
            for w in set(words(text)):
                if w in self.index:
                    rows, contrib = self.index[w]
                    out[q, rows] += contrib
            top = out[q].max() if self.n else 0.0
            if top > 0:
                out[q] /= top
        return torch.from_numpy(out)
