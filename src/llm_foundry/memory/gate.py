"""MemoryGate: which entries a question needs, as two towers scored by cosine.

    entry    -> token features -> attention pool -> MemoryNorm -> Linear -> unit vector  \
                                                                                         > cosine
    question -> token features -> attention pool -> MemoryNorm -> Linear -> unit vector  /

**Features** of a text are its tokens' features at two depths, side by side: the backbone's
states after a *middle* block, and its token embeddings. The middle layer carries context
(which entity a word belongs to, which relation is asked); the last layers do not serve:
there the states have turned into a prediction of the *next* token, which for a question is
the answer it does not contain, and for a fact is whatever follows its end. The embeddings
keep the plain lexical identity of rare names that the middle layer may mix with their
neighbours. Each tower **pools** its tokens with a learned attention (one score per token,
softmax over the text): it learns to weigh a name's tokens over a phrasing's, which a mean
cannot, which helps most on question phrasings never trained on (the scorer starts at
zero, so an untrained tower pools by the plain mean). Only the scorers,
projections and norms learn; the token features come from the frozen backbone, without
autograd, and can be read once per text (:class:`TokenFeatures`).

The two towers start equal (the query projection is a copy of the entry projection), so an
untrained gate already ranks entries by the similarity of their features; training then
pulls each question towards its own entry (``stages.py``).

Search is exact (:func:`exact_topk`, a chunked matrix product: 1M entries × 256 dims is
1 GB of fp32 vectors and never more than one chunk of scores at once); deleted entries
are masked, never returned. A lexical signal (:class:`BM25`) can be mixed into the dense
score (``MemoryModel.retrieve(..., hybrid=w)``), and :class:`FaissIndex` offers an approximate
search behind the same interface where ``faiss`` is installed (a bank uses it from
:data:`APPROXIMATE_FROM` live entries).
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..utils.errors import FoundryError
from .backbone import Backbone
from .fusion import MemoryNorm

GATE_VERSION = 2  # bump when features or towers change meaning: cached entry vectors are then rebuilt

Tokens = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""``Backbone.read``'s output for a batch of texts: ``(states, embeds, mask)``, right-padded."""


@dataclass
class TokenFeatures:
    """Many texts' token features, read once from the frozen backbone and kept padded to the
    longest text (training reads its questions and bank once; a step takes rows from here).

    Attributes:
        states, embeds: ``(n, longest, dim)`` features at the gate's block and token embeddings.
        mask: ``(n, longest)`` True on real tokens.
    """

    states: torch.Tensor
    embeds: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def read(cls, gate: "MemoryGate", texts: Sequence[str], batch_size: int = 64,
             dtype: torch.dtype | None = None) -> "TokenFeatures":
        """Read ``texts`` at ``gate``'s block; ``dtype`` (e.g. bfloat16) halves what a large set keeps."""
        parts = []
        for i in range(0, len(texts), batch_size):
            t = gate.read(texts[i:i + batch_size])
            parts.append(t if dtype is None else (t[0].to(dtype), t[1].to(dtype), t[2]))
        if not parts:
            raise FoundryError("no texts to read")
        width = max(p[0].shape[1] for p in parts)
        pad = lambda x: F.pad(x, (0, 0, 0, width - x.shape[1]) if x.dim() == 3 else (0, width - x.shape[1]))  # noqa: E731
        return cls(*(torch.cat([pad(p[j]) for p in parts]) for j in range(3)))

    def __len__(self) -> int:
        return len(self.mask)

    def rows(self, rows: torch.Tensor) -> Tokens:
        """The :data:`Tokens` of rows ``rows``, cut to the longest of them."""
        rows = rows.to(self.mask.device)
        width = max(int(self.mask[rows].sum(1).max()), 1) if len(rows) else 1
        return self.states[rows, :width], self.embeds[rows, :width], self.mask[rows, :width]

    def chunks(self, size: int = 1024):
        """:data:`Tokens` of consecutive rows, ``size`` at a time, each cut to its longest text."""
        for start in range(0, len(self), size):
            yield self.rows(torch.arange(start, min(start + size, len(self))))


class MemoryGate(nn.Module):
    """Two towers over backbone features, scored by cosine.

    Args:
        backbone: the frozen backbone the features are read from (not a submodule: the gate's
            parameters and state dict are its own).
        layer: the block whose states are read (default: the middle one).
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
        # One score per token and tower; zero, so each tower starts by pooling with the mean.
        self.entry_attn = nn.Linear(feat, 1, bias=False)
        self.query_attn = nn.Linear(feat, 1, bias=False)
        nn.init.zeros_(self.entry_attn.weight)
        nn.init.zeros_(self.query_attn.weight)
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
    def read(self, texts: Sequence[str]) -> Tokens:
        """The token features of ``texts`` the towers pool (no autograd: the backbone is frozen)."""
        return self.backbone.read(texts, self.layer, self.max_len)

    @staticmethod
    def pool(tokens: Tokens, scorer: nn.Linear) -> torch.Tensor:
        """``(n, 2 * backbone.dim)``: each text's tokens (states and embeddings side by side),
        averaged with the softmax of ``scorer``'s score over its real tokens."""
        states, embeds, mask = tokens
        x = torch.cat([states, embeds], dim=-1).float()
        w = scorer(x).squeeze(-1).masked_fill(~mask, float("-inf")).softmax(-1)
        return (x * w.unsqueeze(-1)).sum(1)

    def embed_entries(self, tokens: Tokens) -> torch.Tensor:
        """Unit entry vectors from entry tokens (with autograd into the entry tower)."""
        return F.normalize(self.entry_proj(self.entry_norm(self.pool(tokens, self.entry_attn))), dim=-1)

    def embed_queries(self, tokens: Tokens) -> torch.Tensor:
        """Unit query vectors from question tokens (with autograd into the query tower)."""
        return F.normalize(self.query_proj(self.query_norm(self.pool(tokens, self.query_attn))), dim=-1)

    @torch.no_grad()
    def embed_all(self, features: TokenFeatures, queries: bool = False, chunk: int = 1024) -> torch.Tensor:
        """``(n, dim)`` unit vectors of every text in ``features`` (entries, or ``queries``), in chunks."""
        embed = self.embed_queries if queries else self.embed_entries
        out = [embed(t) for t in features.chunks(chunk)]
        return torch.cat(out) if out else torch.zeros(0, self.dim, device=self.backbone.device)

    @torch.no_grad()
    def encode_entries(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """``(n, dim)`` unit vectors of entries, in batches, without autograd (the cache)."""
        out = [self.embed_entries(self.read(texts[i:i + batch_size])) for i in range(0, len(texts), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.dim, device=self.backbone.device)

    def encode_queries(self, texts: Sequence[str]) -> torch.Tensor:
        """``(n, dim)`` unit vectors of questions (with autograd into the query tower)."""
        return self.embed_queries(self.read(texts))

    @staticmethod
    def scores(query_vecs: torch.Tensor, entry_vecs: torch.Tensor) -> torch.Tensor:
        """Cosine scores ``(queries, entries)`` of unit vectors."""
        return query_vecs @ entry_vecs.T

    def fingerprint(self) -> str:
        """Identity of the cached entry vectors: the backbone's fingerprint, the gate's version and
        shape, and the entry tower's weights (they change when the gate trains)."""
        h = hashlib.sha256(f"{self.backbone.fingerprint()}|gate{GATE_VERSION}|{sorted(self.config().items())}".encode())
        for t in (self.entry_attn.weight, self.entry_norm.weight, self.entry_proj.weight):
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

    @property
    def name(self) -> str:
        """How this index searches, for reports."""
        return "exact"

    def search(self, query: torch.Tensor, k: int, bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scores, rows)`` of the ``k`` best live entries per query (scores include ``bias``)."""
        return exact_topk(query, self.vectors, k, self.valid, bias)

    def set_rows(self, rows: Sequence[int], vectors: torch.Tensor) -> None:
        """Give existing ``rows`` new vectors (and make them live)."""
        self.vectors[list(rows)] = vectors.to(self.vectors.device, self.vectors.dtype)
        self.valid[list(rows)] = True

    def append(self, vectors: torch.Tensor) -> None:
        """Add live rows at the end (a copy of the vectors: cheap for a few, not for a bulk load)."""
        self.vectors = torch.cat([self.vectors, vectors.to(self.vectors.device, self.vectors.dtype)])
        self.valid = torch.cat([self.valid, self.valid.new_ones(len(vectors))])


APPROXIMATE_FROM = 200_000
"""Live entries from which a bank searches approximately where ``faiss`` is installed: exact
search reads every vector for every question, the inverted file a few dozen lists of them
(latencies per size: ``docs/*/performance.md``, from ``bench/memory.py``)."""


def faiss_available() -> bool:
    """Whether ``faiss`` can be imported (the ``faiss`` extra)."""
    return importlib.util.find_spec("faiss") is not None


class FaissIndex(ExactIndex):
    """Approximate search through ``faiss``: an inverted file over inner products (IVF-Flat).

    The entries are clustered into about ``sqrt(n)`` lists (k-means on a sample); a query
    scans the ``nprobe`` lists whose centres are nearest. An inverted file, not a graph such as
    HNSW: it is built in seconds at 1M entries on 2 cores, and an edit is a removal and an
    insertion in place (row numbers are its ids), so an edit stays cheap at any size.
    Candidates are over-fetched (``4k``), then filtered (deleted rows) and re-ranked exactly with
    ``bias`` against the current vectors, so a mask or a lexical signal costs no rebuild.

    Args:
        nprobe: lists scanned per query (more: closer to exact, slower).

    Raises:
        FoundryError: ``faiss`` is not installed (``pip install faiss-cpu``).
    """

    def __init__(self, vectors: torch.Tensor, valid: torch.Tensor | None = None, nprobe: int = 32):
        try:
            import faiss
        except ImportError:
            raise FoundryError("the approximate index needs faiss: pip install faiss-cpu") from None
        super().__init__(vectors, valid)
        n, dim = vectors.shape
        x = vectors.detach().float().cpu().contiguous().numpy()
        lists = max(1, min(int(math.sqrt(n)), n // 39))  # faiss wants >= 39 training points per list
        self.index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(0).choice(n, min(n, 64 * lists), replace=False) if n else []
        self.index.train(x[np.sort(sample)] if n else np.zeros((1, dim), dtype=np.float32))
        self.index.set_direct_map_type(faiss.DirectMap.Hashtable)  # remove_ids by id in O(1)
        self.index.add_with_ids(x, np.arange(n, dtype=np.int64))
        self.index.nprobe = min(nprobe, lists)

    @property
    def name(self) -> str:
        return f"faiss IVF, {self.index.nlist} lists, nprobe {self.index.nprobe}"

    def search(self, query: torch.Tensor, k: int, bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        fetch = min(len(self.vectors), 4 * k)
        if fetch <= 0:
            return exact_topk(query, self.vectors, k, self.valid, bias)
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

    def set_rows(self, rows: Sequence[int], vectors: torch.Tensor) -> None:
        super().set_rows(rows, vectors)
        ids = np.asarray(list(rows), dtype=np.int64)
        self.index.remove_ids(ids)
        self.index.add_with_ids(self.vectors[list(rows)].detach().float().cpu().contiguous().numpy(), ids)

    def append(self, vectors: torch.Tensor) -> None:
        start = len(self.vectors)
        super().append(vectors)
        self.index.add_with_ids(self.vectors[start:].detach().float().cpu().contiguous().numpy(),
                                np.arange(start, len(self.vectors), dtype=np.int64))


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
