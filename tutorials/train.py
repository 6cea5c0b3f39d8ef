"""Train a small Llama-style language model on characters: the whole pipeline on one page.

A teaching copy of the core of ``llm_foundry``. It imports only torch, numpy,
safetensors and the standard library, so everything that happens is on this page:

  1. tokenizer   text <-> ids, one id per character
  2. model       RMSNorm, rotary positions (RoPE), grouped-query attention, SwiGLU
  3. data        random windows of the token stream, and a fixed validation set
  4. optimiser   AdamW, warmup then cosine decay of the learning rate
  5. saving      a model folder in the package's format (``foundry generate`` reads it)
  6. the loop    forward, loss, backward, step; now and then a validation loss

    python tutorials/train.py                                # Python's bundled docs
    python tutorials/train.py --data my.txt --time-budget 120
    python tutorials/generate.py runs/tutorial --prompt "The "
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
import tempfile
import time
from typing import Callable, ContextManager

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save as safetensors_bytes

# ----------------------------------------------------------------------------- 1. tokenizer
# Ids 0 and 1 are reserved for padding and for "a character never seen in training".
# The package's char tokenizer uses the same layout, so its tools read our file.
PAD, UNK = "<|pad|>", "<|unk|>"


class CharTokenizer:
    """One id per distinct character of the training text, after the two specials."""

    def __init__(self, text: str):
        self.itos: list[str] = [PAD, UNK] + sorted(set(text))
        self.stoi: dict[str, int] = {ch: i for i, ch in enumerate(self.itos)}

    def encode(self, text: str) -> list[int]:
        return [self.stoi.get(ch, 1) for ch in text]  # 1 = <|unk|>

    def to_dict(self) -> dict:
        """The package's ``tokenizer.json`` layout for a char tokenizer."""
        return {"llm_foundry_tokenizer": "char", "version": 1, "special_tokens": [PAD, UNK], "tokens": self.itos}


# ----------------------------------------------------------------------------- 2. model
@dataclasses.dataclass
class ModelConfig:
    """The model's shape. Exactly the fields of the package's ModelConfig, because
    ``config.json`` is this dataclass written out."""

    vocab_size: int = 256
    dim: int = 256                     # width of the residual stream
    n_layers: int = 4
    n_heads: int = 8                   # query heads
    n_kv_heads: int | None = None      # key/value heads (None = n_heads); fewer = GQA
    max_seq_len: int = 256             # the RoPE tables are this long
    ffn_hidden_dim: int | None = None  # None = 8/3 * dim (3 matrices ~ the size of a 4x MLP's 2)
    multiple_of: int = 32              # ...rounded up to this, which matmul kernels like
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    qk_norm: bool = False              # package option; this copy trains without it
    tie_embeddings: bool = True        # the output head reuses the embedding matrix
    dropout: float = 0.0               # package option; small data, few steps: we underfit
    init_std: float = 0.02

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        return self.ffn_hidden_dim or self.multiple_of * -(-int(8 * self.dim / 3) // self.multiple_of)


class RMSNorm(nn.Module):
    """Scale each vector to unit root-mean-square, then by a learned gain. Unlike
    LayerNorm there is no mean subtraction and no bias: cheaper, and as good."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rope_tables(head_dim: int, max_len: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Cos/sin tables ``(max_len, head_dim // 2)``: pair ``i`` turns ``position * theta^(-2i/head_dim)``
    radians, fast for the first pairs (near positions differ), slow for the last (far ones)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys (``..., time, head_dim``) by position, pairing dimension ``j``
    of the first half with ``j`` of the second ("rotate half", as in Hugging Face Llama).
    With q and k both rotated, their dot product depends only on the tokens' distance."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class Attention(nn.Module):
    """Causal self-attention in which groups of query heads share a key/value head
    (grouped-query attention: a smaller KV cache when generating, at little cost)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        # (batch, time, heads * head_dim) -> (batch, heads, time, head_dim): heads work in parallel.
        q = self.wq(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # One fused kernel computes softmax(q k^T / sqrt(head_dim) + causal mask) v;
        # enable_gqa lets each k/v head serve its group of query heads without a copy.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.n_kv_heads != self.n_heads)
        return self.wo(y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))


class SwiGLU(nn.Module):
    """The MLP, ``w2(silu(w1 x) * w3 x)``: the gate ``silu(w1 x)`` decides how much of
    each hidden unit ``w3 x`` passes; this trains better than a plain ReLU MLP."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)  # gate
        self.w3 = nn.Linear(dim, hidden, bias=False)  # up
        self.w2 = nn.Linear(hidden, dim, bias=False)  # down, back into the residual stream

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """Pre-norm block: each sublayer reads a normalised copy of the residual stream and
    adds its result back, so the stream is never squashed and gradients flow straight down."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(cfg.dim, cfg.norm_eps), Attention(cfg)
        self.ffn_norm, self.ffn = RMSNorm(cfg.dim, cfg.norm_eps), SwiGLU(cfg.dim, cfg.hidden_dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.ffn(self.ffn_norm(x))


class MiniLLM(nn.Module):
    """Embedding -> ``n_layers`` blocks -> RMSNorm -> output head (a logit per vocab id).

    Attribute names match the package's MiniLLM, so the two state dicts are interchangeable.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:  # one matrix both reads ids in and scores them out: fewer parameters
            self.output.weight = self.tok_embeddings.weight
        cos, sin = rope_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)  # a function of the config: not saved
        self.register_buffer("rope_sin", sin, persistent=False)
        # Init: every matrix ~ N(0, init_std), norm gains 1. The two projections that write
        # into the residual stream (wo, w2) get init_std / sqrt(2 * n_layers), so the
        # stream's variance does not grow with the number of layers.
        for name, p in self.named_parameters():
            if p.ndim == 2:
                deep = name.endswith(("attn.wo.weight", "ffn.w2.weight"))
                nn.init.normal_(p, 0.0, cfg.init_std / math.sqrt(2 * cfg.n_layers) if deep else cfg.init_std)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits ``(batch, time, vocab)`` for ids ``idx``; given ``targets``, also the mean cross-entropy."""
        t = idx.shape[1]
        x = self.tok_embeddings(idx)
        for layer in self.layers:
            x = layer(x, self.rope_cos[:t], self.rope_sin[:t])
        logits = self.output(self.norm(x))
        loss = None
        if targets is not None:  # in fp32 even under bf16 autocast: log-softmax needs the precision
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss


# ----------------------------------------------------------------------------- 3. data
# The text is one long stream of ids. A batch is ``batch_size`` windows at random
# offsets; the target at each position is simply the id that comes next.
def get_batch(data: np.ndarray, batch_size: int, seq_len: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows ``x`` and the same windows shifted one to the left, ``y``."""
    starts = rng.integers(0, len(data) - seq_len, size=batch_size)
    windows = torch.from_numpy(np.stack([data[s:s + seq_len + 1] for s in starts]))
    return windows[:, :-1], windows[:, 1:]


@torch.no_grad()
def val_loss(model: MiniLLM, data: np.ndarray, batch_size: int, seq_len: int,
             autocast: Callable[[], ContextManager], n_batches: int = 10) -> float:
    """Mean loss on fixed, evenly spaced windows of held-out text: comparable over time."""
    model.eval()
    starts = np.linspace(0, len(data) - seq_len - 1, num=batch_size * n_batches).astype(np.int64)
    losses, device = [], model.tok_embeddings.weight.device
    for i in range(0, len(starts), batch_size):
        w = torch.from_numpy(np.stack([data[s:s + seq_len + 1] for s in starts[i:i + batch_size]])).to(device)
        with autocast():
            losses.append(model(w[:, :-1], w[:, 1:])[1].item())
    model.train()
    return sum(losses) / len(losses)


# ----------------------------------------------------------------------------- 4. optimiser
def build_optimizer(model: MiniLLM, lr: float, weight_decay: float = 0.1) -> torch.optim.AdamW:
    """AdamW, decaying matrices only: pulling norm gains toward 0 would only hurt."""
    params = list(model.parameters())  # a tied matrix appears once
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8)


def lr_factor(step: int, progress: float, warmup: int, min_ratio: float = 0.1) -> float:
    """Multiplier on the peak lr: a linear warmup (Adam's moment estimates start out
    noisy), then a cosine from 1 down to ``min_ratio`` as ``progress`` goes 0 -> 1."""
    if step < warmup:
        return (step + 1) / warmup
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


# ----------------------------------------------------------------------------- 5. saving
def atomic_write(path: str, data: bytes) -> None:
    """Write a temp file beside ``path``, then rename it over ``path``: a reader, or a
    crash, sees the old file or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path), suffix=".tmp", dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def save_model_dir(out: str, model: MiniLLM, tok: CharTokenizer, step: int) -> None:
    """Write ``config.json``, ``model.safetensors`` and ``tokenizer.json``: the package's model folder."""
    os.makedirs(out, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
             if not (model.cfg.tie_embeddings and k == "output.weight")}  # a tied head is stored once
    atomic_write(os.path.join(out, "model.safetensors"), safetensors_bytes(state, metadata={"step": str(step), "format": "pt"}))
    config = {"architecture": "MiniLLM", "llm_foundry_version": "0.1.0", **dataclasses.asdict(model.cfg)}
    for name, obj in (("config.json", config), ("tokenizer.json", tok.to_dict())):
        atomic_write(os.path.join(out, name), (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode())


# ----------------------------------------------------------------------------- 6. the loop
def main() -> None:
    p = argparse.ArgumentParser(description="Train a small character-level Llama-style model (teaching copy).")
    p.add_argument("--data", metavar="FILE", help="UTF-8 text file (default: Python's bundled docs)")
    p.add_argument("--out", default="runs/tutorial", help="model folder to write (default: runs/tutorial)")
    for flag, kind, default, note in (
            ("--steps", int, 1000, "optimizer steps"), ("--batch-size", int, 32, "windows per step"),
            ("--dim", int, 128, "model width"), ("--n-layers", int, 4, "blocks"), ("--n-heads", int, 4, "query heads"),
            ("--n-kv-heads", int, None, "key/value heads, fewer for GQA (default: n-heads)"),
            ("--seq-len", int, 128, "context length"), ("--lr", float, 2e-3, "peak learning rate"),
            ("--seed", int, 1337, "seed for init and batches"),
            ("--time-budget", float, None, "seconds; stop early when they are spent (default: none)")):
        p.add_argument(flag, type=kind, default=default, help=note if default is None else f"{note} (default: {default})")
    args = p.parse_args()
    if args.dim % args.n_heads or (args.dim // args.n_heads) % 2 or args.n_heads % (args.n_kv_heads or args.n_heads):
        sys.exit("error: dim must split into n-heads heads of even size, and n-heads be a multiple of n-kv-heads")

    if args.data is None:  # Python's bundled reference docs: ~460 KB of English in every install
        from pydoc_data.topics import topics
        text = "\n\n".join(t for _, t in sorted(topics.items()))
    else:
        try:
            with open(args.data, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            sys.exit(f"error: cannot read {args.data}: {e}")
    # Tokenize once, and hold out the last 10% of the stream to measure generalisation.
    tok = CharTokenizer(text)
    data = np.array(tok.encode(text), dtype=np.int64)
    n_val = len(data) // 10
    train_data, val_data = data[:len(data) - n_val], data[len(data) - n_val:]
    if min(len(train_data), len(val_data)) <= args.seq_len + 1:
        sys.exit(f"error: {len(data)} characters are too few for --seq-len {args.seq_len}; add text or shorten it")

    torch.manual_seed(args.seed)  # same seed: same init, same batches, same run
    rng = np.random.default_rng(args.seed)
    cfg = ModelConfig(vocab_size=len(tok.itos), dim=args.dim, n_layers=args.n_layers, n_heads=args.n_heads,
                      n_kv_heads=args.n_kv_heads, max_seq_len=args.seq_len)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = MiniLLM(cfg).to(device)
    # bf16 autocast: matrix products run in bfloat16 (several times faster on CPUs with
    # AMX/AVX512-BF16, and on recent GPUs) while weights and optimiser state stay fp32.
    # Where bf16 is only emulated it is slower than fp32, so there we stay in fp32.
    try:
        bf16 = torch.cuda.is_bf16_supported() if device.type == "cuda" else bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        bf16 = False
    autocast = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=bf16)
    optimizer = build_optimizer(model, args.lr)
    warmup = max(1, min(50, args.steps // 10))
    print(f"{len(text):,} characters, vocab {len(tok.itos)}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M"
          f" parameters, {'bf16 autocast' if bf16 else 'fp32'} on {device}", flush=True)

    def report_val(step: int) -> None:
        loss = val_loss(model, val_data, args.batch_size, args.seq_len, autocast)
        print(f"step {step:>5} | val loss {loss:.4f}", flush=True)

    eval_every, log_every = max(1, args.steps // 5), max(1, args.steps // 20)
    report_val(0)  # untrained, every id is about equally likely: loss ~ ln(vocab size)
    step, t0, window_loss, window_start = 0, time.perf_counter(), 0.0, time.perf_counter()
    while step < args.steps:
        elapsed = time.perf_counter() - t0
        if args.time_budget and elapsed >= args.time_budget:
            break
        # Progress is steps or time, whichever is further along, so a time-budgeted
        # run still decays its lr to the floor just as the time runs out.
        progress = max(step / args.steps, elapsed / args.time_budget if args.time_budget else 0.0)
        for group in optimizer.param_groups:
            group["lr"] = args.lr * lr_factor(step, progress, warmup)
        x, y = (t.to(device) for t in get_batch(train_data, args.batch_size, args.seq_len, rng))
        with autocast():
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # one odd batch cannot throw the weights far
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        window_loss += loss.item()
        if step % log_every == 0:
            now = time.perf_counter()
            print(f"step {step:>5} | loss {window_loss / log_every:.4f} | lr {optimizer.param_groups[0]['lr']:.2e}"
                  f" | {log_every * args.batch_size * args.seq_len / (now - window_start):,.0f} tok/s", flush=True)
            window_loss, window_start = 0.0, now
        if step % eval_every == 0 or step == args.steps:
            report_val(step)
            window_start = time.perf_counter()  # evaluation time is not training throughput
    if step % eval_every and step != args.steps:  # stopped early by the time budget
        report_val(step)

    save_model_dir(args.out, model, tok, step)
    print(f"saved {args.out} after {step} steps ({time.perf_counter() - t0:.0f} s). Try:\n"
          f"  python tutorials/generate.py {args.out} --prompt \"The \"\n"
          f"  foundry generate {args.out} --prompt \"The \"")


if __name__ == "__main__":
    main()
