"""MiniLLM: token embedding -> N pre-norm blocks -> RMSNorm -> output head.

Init (documented because it matters at small scale): every linear and embedding
weight is drawn from N(0, init_std); the two projections that write into the
residual stream (attention ``wo`` and MLP ``w2``) use ``init_std / sqrt(2 n_layers)``
so the residual's variance does not grow with depth; norm weights start at 1.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .. import kernels
from ..config import ModelConfig
from ..utils.errors import FoundryError
from .components import Block, RMSNorm, rope_tables
from .kv_cache import KVCache


class MiniLLM(nn.Module):
    """A Llama-style causal language model.

    Args:
        cfg: the model shape; validated on construction.

    Attributes:
        activation_checkpointing: in training, keep only each block's input and recompute the
            block in the backward pass (``train.activation_checkpointing``): activation memory
            of one block instead of all, for about one more forward pass of compute.
    """

    activation_checkpointing = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        # The model owns a copy: resize_vocab changes it, and callers may reuse theirs.
        self.cfg = dataclasses.replace(cfg).validate()
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        # Not saved in checkpoints: they are a pure function of the config.
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        residual_std = cfg.init_std / math.sqrt(2 * cfg.n_layers)
        for layer in self.layers:
            nn.init.normal_(layer.attn.wo.weight, 0.0, residual_std)
            nn.init.normal_(layer.ffn.w2.weight, 0.0, residual_std)

    def materialize(self, weights: dict[str, torch.Tensor]) -> "MiniLLM":
        """Make a model built under ``torch.device("meta")`` real, with ``weights`` as its parameters.

        A loader builds on the meta device to compare shapes before allocating anything; the
        loaded tensors then become the parameters as they are (no random init, no second copy).
        A tied head is tied again, and the RoPE tables, which are not saved, are computed.

        Args:
            weights: name -> tensor for every parameter (a tied head's ``output.weight`` may be left out).
        """
        self.load_state_dict(weights, strict=False, assign=True)
        if self.cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        missing = [name for name, p in self.named_parameters() if p.is_meta]
        if missing:
            raise ValueError(f"no weights given for {missing[:3]}")
        cos, sin = rope_tables(self.cfg.head_dim, self.cfg.max_seq_len, self.cfg.rope_theta)
        device = self.tok_embeddings.weight.device
        self.rope_cos, self.rope_sin = cos.to(device), sin.to(device)
        return self

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, self.cfg.init_std)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None,
                last_only: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for ``idx`` (``batch, time``) and, given ``targets``, the mean cross-entropy.

        Args:
            idx: token ids.
            targets: next-token ids; ``-100`` marks positions not to train on.
            cache: a :class:`KVCache`; ``idx`` then continues the cached tokens.
            last_only: compute logits for the last position only (prefill, decoding); the
                last block then runs its query, output and MLP for that position alone.
        """
        b, t = idx.shape
        start = cache.pos if cache is not None else 0
        if start + t > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {start + t} tokens exceeds max_seq_len {self.cfg.max_seq_len}")
        cos, sin = self.rope_cos[start:start + t], self.rope_sin[start:start + t]
        x = kernels.embedding(self.tok_embeddings, idx)  # fast path: = self.tok_embeddings(idx)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            # The last block's keys and values are needed for every position (the cache), its
            # output only for the positions we return: with last_only it runs one row.
            if self.activation_checkpointing and self.training and cache is None:
                # Keep only the block's input; its backward runs the block again (torch.utils.checkpoint).
                x = checkpoint(layer, x, cos, sin, None, last_only=last_only and i == last, use_reentrant=False)
            else:
                x = layer(x, cos, sin, cache, last_only=last_only and i == last)
        if cache is not None:
            cache.advance(t)
        x = self.norm(x)
        logits = self.output(x)
        loss = None
        if targets is not None:  # in fp32 even under bf16 autocast: log-softmax needs the precision
            # fast path: = F.cross_entropy(logits.float().flatten(0, -2), targets.flatten(), ignore_index=-100)
            loss = kernels.cross_entropy(logits, targets)
        return logits, loss

    def fuse_projections(self) -> "MiniLLM":
        """Merge each layer's q/k/v and gate/up matrices, for an inference-only copy.

        Fewer, larger matrix products run faster at decode time; the model can no
        longer be saved or trained in this form (its parameter names change).
        """
        for layer in self.layers:
            layer.attn.fuse_projections()
            layer.ffn.fuse_projections()
        return self

    def new_cache(self, batch_size: int = 1, max_len: int | None = None, dtype: torch.dtype | None = None) -> KVCache:
        """An empty KV cache sized for this model."""
        cfg = self.cfg
        device = self.tok_embeddings.weight.device
        return KVCache(cfg.n_layers, batch_size, cfg.kv_heads, cfg.head_dim, max_len or cfg.max_seq_len, device, dtype)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Parameter count (a tied head is counted once)."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.tok_embeddings.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token: 6 per non-embedding weight plus attention scores.

        The attention term is ``12 * n_layers * dim * seq_len`` (forward + backward of
        QK^T and AV); as in the usual MFU convention it is not halved for causality.
        """
        t = seq_len or self.cfg.max_seq_len
        n = self.num_parameters(exclude_embeddings=True)
        if self.cfg.tie_embeddings:
            n += self.output.weight.numel()  # a tied head's matmul still runs
        return 6 * n + 12 * self.cfg.n_layers * self.cfg.dim * t

    @torch.no_grad()
    def resize_vocab(self, new_size: int) -> None:
        """Grow the vocabulary to ``new_size`` ids, keeping every existing row.

        New embedding (and, if untied, head) rows get the normal init. The parameters
        are new tensors: an optimizer built before must be told (see the online learner).
        """
        old = self.cfg.vocab_size
        if new_size == old:
            return
        if new_size < old:
            raise FoundryError(f"resize_vocab only grows ({old} -> {new_size} would drop rows)")
        w = self.tok_embeddings.weight
        emb = nn.Embedding(new_size, self.cfg.dim, device=w.device, dtype=w.dtype)
        nn.init.normal_(emb.weight, 0.0, self.cfg.init_std)
        emb.weight[:old] = w
        self.tok_embeddings = emb
        if self.cfg.tie_embeddings:
            head = nn.Linear(self.cfg.dim, new_size, bias=False, device=w.device, dtype=w.dtype)
            head.weight = emb.weight
        else:
            hw = self.output.weight
            head = nn.Linear(self.cfg.dim, new_size, bias=False, device=hw.device, dtype=hw.dtype)
            nn.init.normal_(head.weight, 0.0, self.cfg.init_std)
            head.weight[:old] = hw
        self.output = head
        self.cfg.vocab_size = new_size
