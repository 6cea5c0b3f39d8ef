"""Module 11: an inference engine for your MiniLLM — a KV cache, the sampling rules, generation.

Your ``model.py`` (module 5) computes every position of the sequence on every call. To generate
``n`` tokens that way the model reads the prompt again ``n`` times. This file runs the *same*
submodules of your model (``tok_embeddings``, each block's ``attn_norm``, ``attn.wq``/``wk``/``wv``/
``wo``, ``ffn_norm``, ``ffn``, then ``norm`` and ``output``) but keeps every layer's keys and values
in a :class:`KVCache`, so each new token costs one position's work. Ours is
``src/llm_foundry/models/kv_cache.py`` (the cache), ``models/components.py: Attention.forward``
(attention over the cache), ``inference/sampling.py: sample_next`` (the rules) and
``inference/engine.py: Engine`` (the loop).

Shapes: a layer's cache is ``(batch, kv_heads, max_len, head_dim)``; ``pos`` counts the tokens
already cached; a call with ``t`` new tokens writes positions ``pos .. pos + t - 1``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from model import MiniLLM, apply_rope

# As llm_foundry.config.sampling: below this temperature sampling is greedy (dividing the logits by
# a tinier number overflows to inf / nan).
GREEDY_TEMPERATURE = 1e-5


class KVCache:
    """The keys and values of every layer, preallocated for ``max_len`` positions.

    Args:
        n_layers: transformer blocks (one key and one value buffer each).
        batch_size: sequences decoded together.
        n_kv_heads, head_dim: the attention's key/value heads and their size.
        max_len: capacity in tokens.
    """

    def __init__(self, n_layers: int, batch_size: int, n_kv_heads: int, head_dim: int, max_len: int,
                 dtype: torch.dtype = torch.float32):
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        # Preallocated: a step writes in place instead of concatenating (which copies the history).
        self.k = [torch.zeros(shape, dtype=dtype) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype) for _ in range(n_layers)]
        self.pos = 0

    @classmethod
    def for_model(cls, model: MiniLLM, batch_size: int = 1, max_len: int | None = None) -> "KVCache":
        """An empty cache sized for ``model`` (``max_len`` defaults to its context)."""
        cfg = model.cfg
        return cls(cfg.n_layers, batch_size, cfg.kv_heads, cfg.head_dim, max_len or cfg.max_seq_len)

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k, v`` (``batch, kv_heads, t, head_dim``) at positions ``pos .. pos + t - 1`` of
        ``layer`` and return that layer's keys and values of positions ``0 .. pos + t - 1``.

        Raises:
            ValueError: the cache would hold more than ``max_len`` tokens.
        """
        # BEGIN SOLUTION cache_update
        t = k.shape[2]
        end = self.pos + t
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} tokens > capacity {self.max_len}")
        self.k[layer][:, :, self.pos:end] = k
        self.v[layer][:, :, self.pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]
        # END SOLUTION

    def advance(self, t: int) -> None:
        """Count ``t`` more cached tokens: once per forward, after every layer wrote them."""
        self.pos += t

    def expand(self, n: int) -> "KVCache":
        """A cache of ``n`` copies of this batch-1 cache: ``n`` samples share one prefill
        (ours: ``KVCache.expand_batch``)."""
        if self.k[0].shape[0] != 1:
            raise ValueError("expand needs a batch-1 cache")
        other = KVCache.__new__(KVCache)
        other.k = [k.expand(n, -1, -1, -1).clone() for k in self.k]
        other.v = [v.expand(n, -1, -1, -1).clone() for v in self.v]
        other.pos = self.pos
        return other


def cached_attention(attn, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache,
                     layer: int) -> torch.Tensor:
    """Your ``Attention`` module ``attn`` on ``t`` new positions ``x`` (``batch, t, dim``), with the
    earlier positions' keys and values read from ``cache``. ``cos``/``sin`` are the RoPE rows of
    the new positions (``t, head_dim // 2``). Returns ``(batch, t, dim)``."""
    # BEGIN SOLUTION cached_attention
    # STUB: # as your Attention.forward (q, k, v, the optional q_norm/k_norm, RoPE), then k, v = cache.update(layer, k, v)
    # STUB: # and a mask for t new tokens after start = cache.pos cached ones (is_causal=True is wrong here: why?)
    # STUB: raise NotImplementedError("cached_attention")
    b, t, _ = x.shape
    q = attn.wq(x).view(b, t, attn.n_heads, attn.head_dim).transpose(1, 2)
    k = attn.wk(x).view(b, t, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
    v = attn.wv(x).view(b, t, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
    if attn.q_norm is not None:
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    start = cache.pos
    k, v = cache.update(layer, k, v)
    # New token i sits at position start + i and sees keys 0 .. start + i. is_causal would align the
    # mask to the top left (token i sees keys 0 .. i), which is only right when nothing is cached.
    mask = torch.ones(t, start + t, dtype=torch.bool).tril(diagonal=start)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=attn.n_kv_heads != attn.n_heads)
    return attn.wo(y.transpose(1, 2).reshape(b, t, attn.n_heads * attn.head_dim))
    # END SOLUTION


def forward_cached(model: MiniLLM, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Logits ``(batch, t, vocab)`` of the ``t`` new tokens ``idx`` (``batch, t``) that continue the
    ``cache.pos`` tokens already in ``cache``; afterwards the cache holds them too."""
    # BEGIN SOLUTION forward_cached
    # STUB: # as your MiniLLM.forward, with the RoPE rows of positions cache.pos .. cache.pos + t - 1,
    # STUB: # cached_attention in each block, and cache.advance(t) once at the end
    # STUB: raise NotImplementedError("forward_cached")
    t = idx.shape[1]
    start = cache.pos
    if start + t > model.cfg.max_seq_len:
        raise ValueError(f"sequence of {start + t} tokens exceeds max_seq_len {model.cfg.max_seq_len}")
    cos, sin = model.rope_cos[start:start + t], model.rope_sin[start:start + t]
    x = model.tok_embeddings(idx)
    for i, layer in enumerate(model.layers):
        x = x + cached_attention(layer.attn, layer.attn_norm(x), cos, sin, cache, i)
        x = x + layer.ffn(layer.ffn_norm(x))
    cache.advance(t)
    return model.output(model.norm(x))
    # END SOLUTION


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One id per row of ``logits`` (``batch, vocab``), by our rules: greedy (argmax) below
    ``GREEDY_TEMPERATURE``; otherwise the logits are divided by ``temperature``, then only the
    ``top_k`` most likely ids are kept (None or 0: all), then only the smallest set of ids, most
    likely first, whose probability reaches ``top_p`` (None or 1: all; the first id always stays),
    and one id is drawn from what is left with ``generator``."""
    # BEGIN SOLUTION sample_next
    logits = logits.float()
    if temperature < GREEDY_TEMPERATURE:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(dim=-1)
        # Drop an id once the ids before it already cover top_p: the id that crosses it stays.
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)
    # END SOLUTION


def _generator(seed: int | None) -> torch.Generator:
    """A generator of its own for one call: a seed makes the call repeatable, and the global RNG is
    left alone either way."""
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen


@torch.no_grad()  # (inference only: no graph is kept for a backward pass)
def generate(model: MiniLLM, prompt_ids: Sequence[int], max_new_tokens: int, *, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
             stop_ids: Sequence[int] = ()) -> list[int]:
    """The new tokens after ``prompt_ids``: one prefill of the prompt, then one cached step per token.

    Ends after ``max_new_tokens`` tokens, at a token of ``stop_ids`` (which is not returned), or when
    the model's context is full. Greedy at temperature 0.
    """
    model.eval()
    # BEGIN SOLUTION generate
    # STUB: # prefill the whole prompt once, then sample a token, feed it alone, sample the next ...
    # STUB: raise NotImplementedError("generate")
    prompt = list(prompt_ids)
    # Prompt and reply never exceed the context, so every token can be fed back.
    capacity = min(model.cfg.max_seq_len, len(prompt) + max_new_tokens)
    cache = KVCache.for_model(model, 1, capacity)
    gen = _generator(seed)
    logits = forward_cached(model, torch.tensor([prompt]), cache)[:, -1]  # the prefill: the whole prompt at once
    out: list[int] = []
    while len(prompt) + len(out) < capacity:
        tok = int(sample_next(logits, temperature, top_k, top_p, gen)[0])
        if tok in stop_ids:
            break
        out.append(tok)
        if len(prompt) + len(out) < capacity:  # (the last token need not be fed)
            logits = forward_cached(model, torch.tensor([[tok]]), cache)[:, -1]
    return out
    # END SOLUTION


@torch.no_grad()
def generate_samples(model: MiniLLM, prompt_ids: Sequence[int], num_samples: int, max_new_tokens: int, *,
                     temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                     seed: int | None = None, stop_ids: Sequence[int] = ()) -> list[list[int]]:
    """``num_samples`` completions of one prompt, decoded together as one batch: the prompt is
    prefilled once and its cache copied into every row (:meth:`KVCache.expand`); a row that ended
    stops growing while the others go on. Each completion as :func:`generate` returns it."""
    model.eval()
    # BEGIN SOLUTION generate_samples
    prompt = list(prompt_ids)
    capacity = min(model.cfg.max_seq_len, len(prompt) + max_new_tokens)
    cache = KVCache.for_model(model, 1, capacity)
    gen = _generator(seed)
    logits = forward_cached(model, torch.tensor([prompt]), cache)[:, -1]  # one prefill for every sample
    cache, logits = cache.expand(num_samples), logits.expand(num_samples, -1)
    outs: list[list[int]] = [[] for _ in range(num_samples)]
    done = [False] * num_samples
    while len(prompt) + max(len(o) for o in outs) < capacity and not all(done):
        toks = sample_next(logits, temperature, top_k, top_p, gen).tolist()
        for i, tok in enumerate(toks):
            if not done[i]:
                if tok in stop_ids:
                    done[i] = True
                else:
                    outs[i].append(tok)
        if len(prompt) + max(len(o) for o in outs) < capacity and not all(done):
            # Every row is fed, ended or not (the rows of one cache keep one length); an ended row's
            # tokens are just not kept.
            logits = forward_cached(model, torch.tensor(toks).unsqueeze(1), cache)[:, -1]
    return outs
    # END SOLUTION


@torch.no_grad()
def generate_uncached(model: MiniLLM, prompt_ids: Sequence[int], max_new_tokens: int, *, temperature: float = 0.0,
                      top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                      stop_ids: Sequence[int] = ()) -> list[int]:
    """As :func:`generate`, without a cache: the whole sequence goes through ``model`` for every
    token. Slow on long sequences; the tests check your cache against it."""
    model.eval()
    ids = list(prompt_ids)
    capacity = min(model.cfg.max_seq_len, len(ids) + max_new_tokens)
    gen = _generator(seed)
    out: list[int] = []
    while len(ids) < capacity:
        logits = model(torch.tensor([ids]))[0][:, -1]
        tok = int(sample_next(logits, temperature, top_k, top_p, gen)[0])
        if tok in stop_ids:
            break
        out.append(tok)
        ids.append(tok)
        if len(out) >= max_new_tokens:
            break
    return out
