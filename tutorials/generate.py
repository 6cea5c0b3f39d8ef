"""Continue a prompt with a trained model, one token at a time with a KV cache: inference on one page.

A teaching copy of the package's generator, importing only torch, safetensors and the standard
library. It reads a model folder written by ``tutorials/train.py`` or by the package (char
tokenizers only), repeats train.py's model plus a KV cache, and streams only the continuation.

    python tutorials/generate.py runs/tutorial --prompt "The " --max-new-tokens 300
    python tutorials/generate.py runs/tutorial --prompt "def " --temperature 0   # greedy
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import types
from typing import Iterator, NoReturn

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file


def fail(message: str) -> NoReturn:
    """Stop with one line on stderr and exit status 1: a user's mistake deserves no traceback."""
    sys.exit(f"error: {message}")


# ----------------------------------------------------------------------------- the model (as in train.py)
# Every field of the package's ModelConfig and its default (train.py explains each one).
# dropout only matters when training; generation never drops anything.
DEFAULTS = dict(vocab_size=256, dim=256, n_layers=4, n_heads=8, n_kv_heads=None, max_seq_len=256, ffn_hidden_dim=None,
                multiple_of=32, norm_eps=1e-5, rope_theta=10000.0, qk_norm=False, tie_embeddings=True, dropout=0.0,
                init_std=0.02)
ModelConfig = types.SimpleNamespace


class RMSNorm(nn.Module):
    """Scale to unit root-mean-square, then by a learned gain."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate q or k by position ("rotate half": dimension j pairs with j + head_dim/2)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class KVCache:
    """Keys and values of every layer for the tokens seen so far. They never change (a token
    only looks back), so each new token needs one position of compute, not the whole context.
    The buffers are allocated once: concatenating would copy the whole history every token."""

    def __init__(self, cfg: ModelConfig, device: torch.device):
        head_dim, kv_heads = cfg.dim // cfg.n_heads, cfg.n_kv_heads or cfg.n_heads
        shape = (cfg.n_layers, 1, kv_heads, cfg.max_seq_len, head_dim)
        self.k, self.v = torch.zeros(shape, device=device), torch.zeros(shape, device=device)
        self.pos = 0  # tokens cached so far

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new ``k, v`` of ``layer`` after the cached ones; return all of them."""
        end = self.pos + k.shape[2]
        self.k[layer, :, :, self.pos:end], self.v[layer, :, :, self.pos:end] = k, v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class Attention(nn.Module):
    """Causal grouped-query attention that reads and extends the KV cache."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer, self.n_heads, self.n_kv_heads = layer, cfg.n_heads, cfg.n_kv_heads or cfg.n_heads
        self.head_dim = cfg.dim // cfg.n_heads
        self.wq = nn.Linear(cfg.dim, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_heads * self.head_dim, cfg.dim, bias=False)
        # Package models may normalise q and k per head (QK-norm); train.py's never do.
        self.q_norm = RMSNorm(self.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, cfg.norm_eps) if cfg.qk_norm else None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.wq(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # Two cases only: the prompt on an empty cache (the usual causal mask), or one new
        # token, which may look at every cached key (no mask at all).
        prefill = cache.pos == 0
        assert prefill or t == 1, "this copy feeds either a whole prompt or one token"
        k, v = cache.update(self.layer, k, v)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=prefill and t > 1, enable_gqa=self.n_kv_heads != self.n_heads)
        return self.wo(y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))


class SwiGLU(nn.Module):
    """The gated MLP, ``w2(silu(w1 x) * w3 x)``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1, self.w3 = nn.Linear(dim, hidden, bias=False), nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """Pre-norm block: ``x + attn(norm(x))``, then ``x + ffn(norm(x))``."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        hidden = cfg.ffn_hidden_dim or cfg.multiple_of * -(-int(8 * cfg.dim / 3) // cfg.multiple_of)
        self.attn_norm, self.attn = RMSNorm(cfg.dim, cfg.norm_eps), Attention(cfg, layer)
        self.ffn_norm, self.ffn = RMSNorm(cfg.dim, cfg.norm_eps), SwiGLU(cfg.dim, hidden)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, cache)
        return x + self.ffn(self.ffn_norm(x))


class MiniLLM(nn.Module):
    """Embedding -> blocks -> RMSNorm -> head; the names match the saved weights."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        head_dim = cfg.dim // cfg.n_heads
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        angles = torch.outer(torch.arange(cfg.max_seq_len, dtype=torch.float32), inv_freq)
        self.register_buffer("rope_cos", angles.cos(), persistent=False)
        self.register_buffer("rope_sin", angles.sin(), persistent=False)

    def forward(self, idx: torch.Tensor, cache: KVCache, last_only: bool = False) -> torch.Tensor:
        """Logits for ``idx``, which continues the ``cache.pos`` tokens already cached."""
        start, t = cache.pos, idx.shape[1]
        cos, sin = self.rope_cos[start:start + t], self.rope_sin[start:start + t]  # positions go on from the cache
        x = self.tok_embeddings(idx)
        for layer in self.layers:
            x = layer(x, cos, sin, cache)
        cache.pos += t
        x = self.norm(x)
        return self.output(x[:, -1:] if last_only else x)  # while generating, only the last position matters


# ----------------------------------------------------------------------------- loading a model folder
def load_model_dir(folder: str, device: torch.device) -> tuple[MiniLLM, list[str], dict[str, int]]:
    """The model, the tokenizer's id -> string table, and its special tokens (string -> id)."""
    if not os.path.isdir(folder):
        fail(f"model folder not found: {folder}")
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
        with open(os.path.join(folder, "tokenizer.json"), encoding="utf-8") as f:
            tokenizer = json.load(f)
        state = load_file(os.path.join(folder, "model.safetensors"))
    except Exception as e:  # missing, not JSON, truncated weights: all one line
        fail(f"cannot read the model folder {folder}: {' '.join(str(e).split())[:200]}")
    if not isinstance(config, dict) or config.get("architecture") != "MiniLLM":
        fail(f"{folder}/config.json is not a MiniLLM config")
    if not isinstance(tokenizer, dict) or tokenizer.get("llm_foundry_tokenizer") != "char":
        fail(f"this teaching copy reads char tokenizers only; use `foundry generate {folder}` for this model")
    itos, specials = tokenizer.get("tokens"), tokenizer.get("special_tokens")
    if not isinstance(itos, list) or not isinstance(specials, list) or not {"<|pad|>", "<|unk|>"} <= set(specials):
        fail(f"{folder}/tokenizer.json is malformed (needs 'tokens' and 'special_tokens' with <|pad|> and <|unk|>)")
    values = {k: v for k, v in config.items() if k not in ("architecture", "llm_foundry_version")}
    if values.keys() - DEFAULTS.keys():
        fail(f"{folder}/config.json has fields this copy does not know: {sorted(values.keys() - DEFAULTS.keys())}")
    try:
        cfg = ModelConfig(**{**DEFAULTS, **values})
        model = MiniLLM(cfg)
        if cfg.tie_embeddings:
            state["output.weight"] = state["tok_embeddings.weight"]  # stored once, used twice
        model.load_state_dict(state)  # strict: every name and shape must match
    except (TypeError, KeyError, RuntimeError) as e:
        fail(f"the weights in {folder} do not fit its config.json: {' '.join(str(e).split())[:200]}")
    if len(itos) > cfg.vocab_size:
        fail(f"the tokenizer in {folder} has {len(itos)} ids but the model only {cfg.vocab_size}")
    return model.to(device).eval(), itos, {t: i for i, t in enumerate(itos) if t in set(specials)}


# ----------------------------------------------------------------------------- sampling
def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                gen: torch.Generator) -> int:
    """Pick the next id from ``logits`` (``1, vocab``).

    Args:
        temperature: 0 = greedy (always the most likely id); below 1 sharpens, above 1 flattens.
        top_k: sample only among the ``k`` most likely ids (cuts off the long, noisy tail).
        top_p: sample only from the smallest set of ids whose probabilities add up to ``p``.
        gen: a seeded random generator, so the same seed gives the same text.
    """
    if temperature <= 0:
        return int(logits.argmax(dim=-1))
    logits = logits / temperature
    if top_k is not None and 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(dim=-1)
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p  # ids before it already cover top_p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return int(torch.multinomial(logits.softmax(dim=-1), 1, generator=gen))


@torch.no_grad()
def generate(model: MiniLLM, ids: list[int], max_new_tokens: int, temperature: float, top_k: int | None,
             top_p: float | None, gen: torch.Generator, suppress: list[int], eos: int | None) -> Iterator[int]:
    """Yield new ids one at a time: one pass over the prompt (prefill), then one token per step."""
    device, max_len = model.rope_cos.device, model.cfg.max_seq_len
    context = ids[-max_len:]
    cache = KVCache(model.cfg, device)
    logits = model(torch.tensor([context], device=device), cache, last_only=True)
    for _ in range(max_new_tokens):
        logits = logits[:, -1, :].float()
        logits[:, suppress] = float("-inf")  # never emit padding or the "unknown" marker
        token = sample_next(logits, temperature, top_k, top_p, gen)
        if token == eos:
            return
        yield token
        context.append(token)
        if cache.pos >= max_len:  # context full: keep the newest half and prefill it again
            context, cache = context[-(max_len // 2):], KVCache(model.cfg, device)
            logits = model(torch.tensor([context], device=device), cache, last_only=True)
        else:
            logits = model(torch.tensor([[token]], device=device), cache)


def main() -> None:
    p = argparse.ArgumentParser(description="Continue a prompt with a char-level model folder (teaching copy).")
    p.add_argument("model", metavar="MODEL", help="model folder (config.json, model.safetensors, tokenizer.json)")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--max-new-tokens", type=int, default=200, metavar="N")
    p.add_argument("--temperature", type=float, default=0.8, metavar="T", help="0 = greedy (default: 0.8)")
    p.add_argument("--top-k", type=int, metavar="K")
    p.add_argument("--top-p", type=float, metavar="P")
    p.add_argument("--seed", type=int, help="same seed, same text")
    args = p.parse_args()
    if args.max_new_tokens < 0 or args.temperature < 0 or (args.top_k is not None and args.top_k < 1) \
            or (args.top_p is not None and not 0 < args.top_p <= 1):
        fail("--max-new-tokens and --temperature must be >= 0, --top-k >= 1, --top-p in (0, 1]")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, itos, specials = load_model_dir(args.model, device)

    stoi, unk = {s: i for i, s in enumerate(itos) if s not in specials}, specials["<|unk|>"]
    ids = [stoi.get(ch, unk) for ch in args.prompt]
    if unk in ids:
        print(f"warning: {ids.count(unk)} prompt character(s) unknown to the model became <|unk|>", file=sys.stderr)
    if not ids and "<|bos|>" not in specials:
        fail("the prompt is empty; give at least one character")
    ids = ids or [specials["<|bos|>"]]
    gen = torch.Generator(device=device)  # no --seed: a random one, so a different text every run
    gen.manual_seed(args.seed if args.seed is not None else torch.seed() % 2**63)
    suppress = [specials[t] for t in ("<|pad|>", "<|unk|>", "<|bos|>") if t in specials]
    for token in generate(model, ids, args.max_new_tokens, args.temperature, args.top_k, args.top_p, gen,
                          suppress, specials.get("<|eos|>")):
        if token < len(itos) and token not in specials.values():  # other specials print as nothing
            sys.stdout.write(itos[token])
            sys.stdout.flush()
    sys.stdout.write("\n")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
