"""The two config dataclasses and their validation.

Every field has a default, so ``ModelConfig()`` is a small working model. ``validate``
raises :class:`FoundryError` with one line naming the bad field, so the CLI can
report it without a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..utils.errors import FoundryError


def require(cond: bool, msg: str) -> None:
    """Raise the one-line ``invalid config: MSG`` error of every settings dataclass unless ``cond``."""
    if not cond:
        raise FoundryError(f"invalid config: {msg}")


@dataclass
class ModelConfig:
    """Shape of a MiniLLM (Llama-style decoder).

    Attributes:
        vocab_size: number of token ids (set from the tokenizer when training).
        dim: width of the residual stream.
        n_layers: number of transformer blocks.
        n_heads: query heads; ``dim`` must divide evenly.
        n_kv_heads: key/value heads for grouped-query attention (None = n_heads).
        max_seq_len: longest context; RoPE tables and the KV cache are sized by it.
        ffn_hidden_dim: SwiGLU hidden width (None = 8/3·dim rounded up to ``multiple_of``).
        multiple_of: rounding for the SwiGLU width (friendly to matmul kernels).
        norm_eps: RMSNorm epsilon.
        rope_theta: RoPE base frequency.
        qk_norm: RMS-normalise queries and keys per head before attention.
        tie_embeddings: share the input embedding and output head matrices.
        dropout: dropout on attention output and MLP output (0 for small-data speed).
        init_std: std of the normal init of every matrix (residual projections get
            ``init_std / sqrt(2 * n_layers)``).
    """

    vocab_size: int = 256
    dim: int = 256
    n_layers: int = 4
    n_heads: int = 8
    n_kv_heads: int | None = None
    max_seq_len: int = 256
    ffn_hidden_dim: int | None = None
    multiple_of: int = 32
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    qk_norm: bool = False
    tie_embeddings: bool = True
    dropout: float = 0.0
    init_std: float = 0.02

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        if self.ffn_hidden_dim:
            return self.ffn_hidden_dim
        hidden = int(8 * self.dim / 3)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    def validate(self) -> "ModelConfig":
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "max_seq_len", "multiple_of"):
            require(isinstance(getattr(self, name), int) and getattr(self, name) > 0, f"model.{name} must be a positive integer")
        require(self.dim % self.n_heads == 0, f"model.dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        require(self.head_dim % 2 == 0, f"head size dim/n_heads ({self.head_dim}) must be even for RoPE")
        require(self.kv_heads > 0 and self.n_heads % self.kv_heads == 0,
               f"model.n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.kv_heads})")
        require(self.ffn_hidden_dim is None or self.ffn_hidden_dim > 0, "model.ffn_hidden_dim must be positive")
        require(0.0 <= self.dropout < 1.0, "model.dropout must be in [0, 1)")
        require(self.norm_eps > 0 and self.rope_theta > 0 and self.init_std > 0,
               "model.norm_eps, rope_theta and init_std must be positive")
        return self


@dataclass
class TrainConfig:
    """How to train: optimisation, schedule, precision, logging and checkpoints.

    Attributes:
        seed: seeds the init, the data windows and dropout; same seed, same run.
        device: auto, cpu, cuda, cuda:N or mps.
        precision: auto (bf16 autocast where the hardware is fast at it), bf16, fp16, fp32.
        compile: wrap the model in ``torch.compile``; the first (compiling) step is start-up,
            outside the time budget.
        batch_size: sequences per micro-batch.
        seq_len: tokens per sequence (None = the model's max_seq_len).
        grad_accum: micro-batches per optimizer step.
        max_steps: optimizer steps (the schedule is laid out over these).
        time_budget: stop after this many seconds of training (None = no limit); the
            schedule then follows whichever of steps or time runs out first.
        optimizer: adamw, or muon (Muon for hidden matrices, AdamW for the rest).
        lr: AdamW learning rate (peak).
        muon_lr: Muon learning rate (peak), used with optimizer=muon.
        weight_decay: decoupled weight decay for matrices (norms and biases get none).
        beta1, beta2, eps: AdamW moments.
        grad_clip: clip the global grad norm to this (0 = off).
        schedule: cosine (warmup then cosine to min_lr_ratio), wsd (warmup, stable,
            linear decay over the last decay_fraction), or constant (after warmup).
        warmup_steps: linear warmup length.
        min_lr_ratio: final lr as a fraction of the peak.
        decay_fraction: share of the run spent decaying, for wsd.
        ema_decay: keep an exponential moving average of the weights (0 = off).
        eval_interval: steps between validation passes (0 = only at the end).
        eval_batches: validation batches per pass.
        log_interval: steps between metric lines in metrics.jsonl.
        checkpoint_interval: steps between checkpoints (0 = only at the end).
    """

    seed: int = 1337
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    batch_size: int = 16
    seq_len: int | None = None
    grad_accum: int = 1
    max_steps: int = 1000
    time_budget: float | None = None
    optimizer: str = "adamw"
    lr: float = 1e-3
    muon_lr: float = 0.02
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    schedule: str = "cosine"
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    decay_fraction: float = 0.2
    ema_decay: float = 0.0
    eval_interval: int = 200
    eval_batches: int = 20
    log_interval: int = 10
    checkpoint_interval: int = 500

    def validate(self) -> "TrainConfig":
        for name in ("batch_size", "grad_accum", "max_steps", "eval_batches", "log_interval"):
            require(isinstance(getattr(self, name), int) and getattr(self, name) > 0, f"train.{name} must be a positive integer")
        for name in ("warmup_steps", "eval_interval", "checkpoint_interval"):
            require(isinstance(getattr(self, name), int) and getattr(self, name) >= 0, f"train.{name} must be a non-negative integer")
        require(self.seq_len is None or self.seq_len > 0, "train.seq_len must be positive")
        require(self.time_budget is None or self.time_budget > 0, "train.time_budget must be positive seconds")
        require(self.optimizer in ("adamw", "muon"), f"train.optimizer must be adamw or muon, not '{self.optimizer}'")
        require(self.schedule in ("cosine", "wsd", "constant"), f"train.schedule must be cosine, wsd or constant, not '{self.schedule}'")
        require(self.precision in ("auto", "bf16", "fp16", "fp32"), f"train.precision must be auto, bf16, fp16 or fp32, not '{self.precision}'")
        require(self.lr > 0 and self.muon_lr > 0, "train.lr and train.muon_lr must be positive")
        require(self.weight_decay >= 0 and self.grad_clip >= 0, "train.weight_decay and train.grad_clip must be >= 0")
        require(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "train.beta1 and train.beta2 must be in [0, 1)")
        require(self.eps > 0, "train.eps must be positive")
        require(0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio must be in [0, 1]")
        require(0 < self.decay_fraction <= 1, "train.decay_fraction must be in (0, 1]")
        require(0 <= self.ema_decay < 1, "train.ema_decay must be in [0, 1)")
        return self
