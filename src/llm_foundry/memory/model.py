"""MemoryModel: a frozen backbone, a MemoryGate that retrieves, a Fusion that injects.

    question --gate--> top-k entries (Bank: ids, texts, cached entry vectors, lexical index)
    tokens ----backbone blocks 0..L---- + fusion(entries' token features) ---- upper blocks --> logits

With no memory (``memory=None``), an empty one, or memory switched off, ``forward`` is the
backbone's own forward with no hook attached, so the logits are the backbone's exactly.
At initialisation the fusion adds an exact zero (its output projection starts at zero),
so even with entries attached the logits equal the backbone's.

The gradient of the language-model loss reaches the gate: the retrieved entries are
weighted, inside the fusion's attention, by their routing probability (a softmax of the
gate's scores, recomputed with autograd for the k chosen entries), see ``fusion.py``.

Only the memory modules are saved (``memory_modules.safetensors``, one atomic file, its
config and the backbone's fingerprint in the metadata); the backbone stays where it is.
"""

from __future__ import annotations

import hashlib
import json
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
import torch.nn as nn

from ..utils.errors import FoundryError
from ..utils.io import atomic_write_bytes
from .backbone import Backbone
from .fusion import Fusion, MemoryBatch, default_fusion_layers
from .gate import APPROXIMATE_FROM, BM25, GATE_VERSION, ExactIndex, FaissIndex, MemoryGate, faiss_available

MODULES_FILE = "memory_modules.safetensors"
MODULES_FORMAT = 1  # the layout of MODULES_FILE


@dataclass
class Retrieval:
    """What :meth:`MemoryModel.retrieve` found, per question, best first.

    Attributes:
        ids: store ids of the chosen entries.
        texts: their texts.
        scores: ``(questions, k)`` the ranking score: the dense cosine, or with ``hybrid`` the mix.
        dense: ``(questions, k)`` the gate's cosine of each chosen entry.
        lexical: ``(questions, k)`` its BM25 score in [0, 1] (None without ``hybrid``).
        route: ``(questions, k)`` the routing logits the fusion weighs entries by (the gate's
            scaled cosines); with ``route=True`` with autograd into both towers.
        memory: with ``route``, the fusion's input already read (the entries' tokens were read
            once, for the routing and for the fusion); else read when the model needs it.
    """

    ids: list[list[int]]
    texts: list[list[str]]
    scores: torch.Tensor
    dense: torch.Tensor
    lexical: torch.Tensor | None = None
    route: torch.Tensor | None = None
    memory: MemoryBatch | None = None


class Bank:
    """The live entries as the model searches them: store ids, texts and unit entry vectors.

    Build it from what the store hands out (``ids, texts``) and, when the store has a cache
    under the model's :meth:`~MemoryModel.fingerprint`, its vectors.

    Args:
        ids: store ids, one per row.
        texts: entry texts, same order.
        vectors: ``(rows, gate.dim)`` unit entry vectors.
        approximate: search through :class:`~llm_foundry.memory.gate.FaissIndex` (needs faiss);
            None: from :data:`~llm_foundry.memory.gate.APPROXIMATE_FROM` entries where faiss is
            installed, else exactly.
    """

    def __init__(self, ids: Sequence[int], texts: Sequence[str], vectors: torch.Tensor,
                 approximate: bool | None = None):
        if not (len(ids) == len(texts) == len(vectors)):
            raise FoundryError(f"bank of {len(ids)} ids, {len(texts)} texts and {len(vectors)} vectors")
        self.ids = torch.as_tensor(list(ids), dtype=torch.long)
        self.texts = list(texts)
        self.row_of = {int(i): r for r, i in enumerate(self.ids.tolist())}
        if approximate is None:
            approximate = len(vectors) >= APPROXIMATE_FROM and faiss_available()
        self.index = (FaissIndex if approximate else ExactIndex)(vectors)
        self._bm25: BM25 | None = None

    def __len__(self) -> int:
        return int(self.index.valid.sum())

    @property
    def bm25(self) -> BM25:
        if self._bm25 is None:  # built on first hybrid use: dense-only search never pays for it
            self._bm25 = BM25(self.texts)
        return self._bm25

    def delete(self, ids: Sequence[int]) -> None:
        """Mask entries: the next search never returns them (a tombstone, no rebuild)."""
        for i in ids:
            if int(i) not in self.row_of:
                raise FoundryError(f"no entry with id {i} in this bank")
            self.index.valid[self.row_of[int(i)]] = False

    def upsert(self, ids: Sequence[int], texts: Sequence[str], vectors: torch.Tensor) -> None:
        """Set entries in place: a known id gets its new text and vector (and is live again), an
        unknown one is appended. Either index is updated in place, cheap for a few ids."""
        known, new = [], []
        for j, (i, text) in enumerate(zip(ids, texts, strict=True)):
            row = self.row_of.get(int(i))
            if row is None:
                new.append(j)
            else:
                self.texts[row] = text
                known.append((row, j))
        if known:
            self.index.set_rows([r for r, _ in known], vectors[[j for _, j in known]])
        if new:
            start = len(self.texts)
            self.ids = torch.cat([self.ids, torch.tensor([int(ids[j]) for j in new], dtype=torch.long)])
            self.texts += [texts[j] for j in new]
            self.row_of.update({int(ids[j]): start + n for n, j in enumerate(new)})
            self.index.append(vectors[new])
        self._bm25 = None  # rebuilt on the next hybrid search


class MemoryModel(nn.Module):
    """A frozen backbone with a trainable gate and fusion.

    Args:
        backbone: the frozen language model.
        gate: the retrieval gate (default: a fresh one on the middle block).
        fusion: the injection (default: fresh, on up to three blocks above the gate's).
    """

    def __init__(self, backbone: Backbone, gate: MemoryGate | None = None, fusion: Fusion | None = None):
        super().__init__()
        self.backbone = backbone
        gate = gate or MemoryGate(backbone)
        fusion = fusion or Fusion(backbone.dim, default_fusion_layers(backbone.n_layers, gate.layer),
                                  default_fusion_heads(backbone.dim))
        # One module holds everything that trains: optimizers, EMA and save see only it.
        self.memory = nn.ModuleDict({"gate": gate, "fusion": fusion}).to(backbone.device)

    @property
    def gate(self) -> MemoryGate:
        return self.memory["gate"]

    @property
    def fusion(self) -> Fusion:
        return self.memory["fusion"]

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The gate's, the fusion's and their norms' parameters: nothing of the backbone."""
        return list(self.memory.parameters())

    def fingerprint(self) -> str:
        """Under which name the store caches entry vectors (see :meth:`MemoryGate.fingerprint`)."""
        return self.gate.fingerprint()

    # ------------------------------------------------------------------ retrieval
    def bank(self, ids: Sequence[int], texts: Sequence[str], vectors: torch.Tensor | None = None,
             approximate: bool | None = None) -> Bank:
        """A :class:`Bank` of the store's live entries; ``vectors`` (a cache) or encoded now."""
        if vectors is None:
            vectors = self.gate.encode_entries(list(texts))
        elif vectors.shape[-1] != self.gate.dim:
            raise FoundryError(f"cached entry vectors have width {vectors.shape[-1]}, the gate {self.gate.dim}; "
                               "rebuild the cache")
        return Bank(ids, texts, vectors.to(self.backbone.device), approximate)

    def retrieve(self, questions: str | Sequence[str] | Sequence[Sequence[int]], k: int, bank: Bank,
                 hybrid: float = 0.0, route: bool = False, query_vecs: torch.Tensor | None = None) -> Retrieval:
        """The ``k`` best live entries for each question.

        Args:
            questions: a text, texts, or token-id lists (decoded for the lexical signal).
            hybrid: weight of the BM25 score in the ranking (0: dense only; the score is
                ``(1 - hybrid) * cosine + hybrid * bm25``).
            route: compute the routing logits with autograd (training the gate through the LM loss).
            query_vecs: the questions' unit vectors if already encoded (training has their features).
        """
        if not 0.0 <= hybrid <= 1.0:
            raise FoundryError(f"hybrid weight must be in [0, 1], got {hybrid}")
        if k < 1:
            raise FoundryError(f"k must be >= 1, got {k}")
        texts = _question_texts(questions, self.backbone)
        with torch.set_grad_enabled(route and torch.is_grad_enabled()):
            q = self.gate.encode_queries(texts) if query_vecs is None else query_vecs
        lexical_all = bank.bm25.scores(texts) if hybrid > 0 else None
        bias = None if lexical_all is None else hybrid * lexical_all.to(q.device)
        with torch.no_grad():
            query = q.detach() * (1 - hybrid)
            scores, rows = bank.index.search(query, k, bias)
            dense = (q.detach().unsqueeze(1) * bank.index.vectors[rows].to(q.dtype)).sum(-1)
        chosen = [[bank.texts[r] for r in row] for row in rows.tolist()]
        # The routing logits: the gate's scaled cosines. With ``route`` recomputed with autograd (the
        # same values), else from the bank's vectors, so the fusion weighs entries alike in both cases.
        routed, memory = dense * self.gate.scale.detach(), None
        if route and rows.shape[1]:
            routed, memory = self.route(q, chosen)
        return Retrieval(ids=bank.ids[rows.cpu()].tolist(), texts=chosen, scores=scores, dense=dense,
                         lexical=None if lexical_all is None else lexical_all.gather(1, rows.cpu()), route=routed,
                         memory=memory)

    def route(self, query_vecs: torch.Tensor, entries: Sequence[Sequence[str]],
              tokens: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
              ) -> tuple[torch.Tensor, MemoryBatch]:
        """Routing logits ``(rows, k)`` of each row's ``entries`` (same count per row) for its query
        vector, with autograd into both towers, and the fusion's input weighted by them.

        The entries' tokens are read once, for their entry vectors and for the fusion.

        Args:
            tokens: :meth:`Backbone.read` of the entries, row after row, if already read (training
                reads its bank once: the backbone is frozen, so an entry's features never change).
        """
        k = len(entries[0])
        if any(len(row) != k for row in entries) or not k:
            raise FoundryError("routing needs the same number (>= 1) of entries in every row")
        if tokens is None:
            tokens = self.gate.read([t for row in entries for t in row])
        e = self.gate.embed_entries(tokens).view(len(entries), k, -1)
        routed = (query_vecs.unsqueeze(1) * e).sum(-1) * self.gate.scale
        return routed, self.read(entries, routed, tokens)

    # ------------------------------------------------------------------ reading memory
    def read(self, texts: Sequence[Sequence[str]], route: torch.Tensor | None = None,
             tokens: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> MemoryBatch:
        """The fusion's input for a batch: per row, the token features of its entries ``texts[row]``,
        read at the gate's block; ``route`` ``(rows, k)`` weights entries by ``softmax(route)``
        (None: equal weights, e.g. entries given rather than retrieved).

        Args:
            tokens: :meth:`Backbone.read` of all the entries, row after row, if already read.
        """
        flat = [t for row in texts for t in row]
        b, d = len(texts), self.backbone.dim
        if not flat:
            device = self.backbone.device
            return MemoryBatch(torch.zeros(b, 0, d, device=device), torch.zeros(b, 0, dtype=torch.bool, device=device))
        states, _, mask = tokens or self.gate.read(flat)
        length = states.shape[1]
        width = max(len(row) for row in texts) * length
        out = states.new_zeros(b, width, d)
        out_mask = torch.zeros(b, width, dtype=torch.bool, device=states.device)
        bias = states.new_zeros(b, width)
        start = 0
        for r, row in enumerate(texts):
            n = len(row)
            if not n:
                continue
            out[r, :n * length] = states[start:start + n].reshape(n * length, d)
            out_mask[r, :n * length] = mask[start:start + n].reshape(-1)
            # Each entry's tokens get the log of its routing weight (equal weights without a route),
            # so entries weigh the same against the null slot in training and in use.
            weights = (torch.log_softmax(route[r, :n], dim=-1) if route is not None
                       else torch.full((n,), -math.log(n), device=states.device))
            bias[r, :n * length] = weights.repeat_interleave(length)  # autograd follows the copy
            start += n
        return MemoryBatch(out, out_mask, bias)

    def read_retrieved(self, found: Retrieval) -> MemoryBatch:
        """The fusion's input for what :meth:`retrieve` found, weighted by its routing logits."""
        return found.memory if found.memory is not None else self.read(found.texts, found.route)

    def forward(self, ids: torch.Tensor, memory: Retrieval | MemoryBatch | None = None) -> torch.Tensor:
        """Logits ``(batch, time, vocab)`` of ``ids``, reading ``memory`` (None: the backbone alone)."""
        if isinstance(memory, Retrieval):
            memory = self.read_retrieved(memory)
        if memory is None or memory.empty:
            return self.backbone.logits(ids)
        return self.backbone.logits(ids, self.fusion.injections(memory))

    @contextmanager
    def attached(self, memory: MemoryBatch | None, *models: nn.Module) -> Iterator[None]:
        """Inject ``memory`` into every forward of the backbone's own model while inside, e.g. an
        :class:`~llm_foundry.inference.Engine` decoding ``self.backbone.model`` (``frozen=False``),
        or into ``models``, copies of it such as an Engine's inference copies (``decode_models``;
        not compiled ones: a compiled graph does not see hooks added later)."""
        if memory is None or memory.empty:
            yield
            return
        with self.backbone.injecting(self.fusion.injections(memory), *models):
            yield

    # ------------------------------------------------------------------ files
    def save(self, folder: str | Path) -> Path:
        """Write the memory modules' weights to ``folder/memory_modules.safetensors`` (atomic)."""
        from safetensors.torch import save

        config = {"format": MODULES_FORMAT, "gate_version": GATE_VERSION, "gate": self.gate.config(),
                  "fusion": {"layers": self.fusion.layers, "heads": _fusion_heads(self.fusion)}}
        meta = {"config": json.dumps(config), "backbone": self.backbone.fingerprint(),
                "tensors_sha256": ""}
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.memory.state_dict().items()}
        meta["tensors_sha256"] = _tensors_digest(tensors)
        file = Path(folder) / MODULES_FILE
        atomic_write_bytes(file, save(tensors, metadata=meta))
        return file

    @classmethod
    def load(cls, folder: str | Path, backbone: Backbone) -> "MemoryModel":
        """The memory modules saved in ``folder``, on ``backbone``.

        Raises:
            FoundryError: no or a damaged file, or one saved for another backbone.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load

        file = Path(folder) / MODULES_FILE
        if not file.is_file():
            raise FoundryError(f"no memory modules in {folder} (missing {MODULES_FILE})")
        blob = file.read_bytes()
        try:
            tensors = load(blob)
            n = int.from_bytes(blob[:8], "little")
            meta = json.loads(blob[8:8 + n]).get("__metadata__", {})
            config = json.loads(meta["config"])
        except (SafetensorError, ValueError, KeyError, UnicodeDecodeError) as e:
            raise FoundryError(f"{file} is damaged ({type(e).__name__}); train the memory again") from None
        if meta.get("tensors_sha256") != _tensors_digest(tensors):
            raise FoundryError(f"{file} is damaged (checksum mismatch); train the memory again")
        if config.get("format") != MODULES_FORMAT or config.get("gate_version") != GATE_VERSION:
            raise FoundryError(f"{file} was written by another version of the memory modules; train them again")
        if meta.get("backbone") != backbone.fingerprint():
            raise FoundryError(f"{folder} was built for another backbone (fingerprint {meta.get('backbone')}, "
                               f"this one is {backbone.fingerprint()})")
        gate = MemoryGate(backbone, **config["gate"])
        fusion = Fusion(backbone.dim, config["fusion"]["layers"], config["fusion"]["heads"])
        model = cls(backbone, gate, fusion)
        model.memory.load_state_dict({k: t.to(backbone.device) for k, t in tensors.items()})
        return model


def default_fusion_heads(dim: int) -> int:
    """Fusion heads for a backbone of width ``dim``: 64-wide heads where the width allows, else 4, 2 or 1."""
    return next(h for h in (dim // 64, 4, 2, 1) if h >= 1 and dim % h == 0)


def _fusion_heads(fusion: Fusion) -> int:
    return next(iter(fusion.blocks.values())).n_heads


def _tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].float().numpy().tobytes())
    return h.hexdigest()


def _question_texts(questions, backbone: Backbone) -> list[str]:
    if isinstance(questions, str):
        return [questions]
    questions = list(questions)
    if not questions:
        raise FoundryError("no questions to retrieve for")
    if all(isinstance(q, int) for q in questions):  # one question as token ids
        return [backbone.tokenizer.decode(questions)]
    if all(isinstance(q, str) for q in questions):
        return questions
    if all(isinstance(q, (list, tuple)) and all(isinstance(i, int) for i in q) for q in questions):
        return [backbone.tokenizer.decode(q) for q in questions]
    raise FoundryError("questions must be texts or lists of token ids")
