"""The two config dataclasses and their validation.

Every field has a default, so ``ModelConfig()`` is a small working model. ``validate``
raises :class:`FoundryError` with one line naming the bad field, so the CLI can
report it without a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..utils.errors import FoundryError
from .sampling import MAX_SEED, _is_int, _is_real, show_value

# Generous but finite bounds (docs/*/configuration.md lists them): an absurd value such as
# max_seq_len=1e10 or dim=10**18 is one line here, before anything is allocated from it.
MAX_VOCAB = 2**21            # 2,097,152 ids
MAX_DIM = 2**16              # 65,536: width of the residual stream (and the most multiple_of)
MAX_HIDDEN = 2**18           # 262,144: SwiGLU hidden width
MAX_LAYERS = MAX_HEADS = 1024
MAX_HEAD_DIM = 1024          # the RoPE tables are max_seq_len x head_dim
MAX_SEQ_LEN = 2**20          # 1,048,576 tokens of context
MAX_ROPE = 2**27             # max_seq_len x head_dim: the RoPE tables (cos and sin) stay within 512 MB
MAX_STEPS = 10**12           # steps, intervals; `--time-budget` alone sets max_steps to 10**9
MAX_BATCH = 2**20


def require(cond: bool, msg: str) -> None:
    """Raise the one-line ``invalid config: MSG`` error of every settings dataclass unless ``cond``."""
    if not cond:
        raise FoundryError(f"invalid config: {msg}")


def require_int(value: object, name: str, lo: int, hi: int, optional: bool = False) -> None:
    """Require an integer (not a bool, not 12.0) in ``[lo, hi]``; ``None`` too where ``optional``."""
    if optional and value is None:
        return
    require(_is_int(value) and lo <= value <= hi, f"{name} must be an integer from {lo:,} to {hi:,}, got {show_value(value)}")


def require_real(value: object, name: str, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False,
                 optional: bool = False) -> None:
    """Require a finite number in the interval from ``lo`` to ``hi`` (each end open or closed).

    NaN fails every comparison and infinity lies past every finite bound, so both are refused here.
    """
    if optional and value is None:
        return
    ok = _is_real(value) and (lo < value if lo_open else lo <= value) and (value < hi if hi_open else value <= hi)
    interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    require(ok, f"{name} must be a number in {interval}, got {show_value(value)}")


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
        for name, hi in (("vocab_size", MAX_VOCAB), ("dim", MAX_DIM), ("n_layers", MAX_LAYERS), ("n_heads", MAX_HEADS),
                         ("max_seq_len", MAX_SEQ_LEN), ("multiple_of", MAX_DIM)):
            require_int(getattr(self, name), f"model.{name}", 1, hi)
        require_int(self.n_kv_heads, "model.n_kv_heads", 1, MAX_HEADS, optional=True)
        require_int(self.ffn_hidden_dim, "model.ffn_hidden_dim", 1, MAX_HIDDEN, optional=True)
        require(self.dim % self.n_heads == 0, f"model.dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        require(self.head_dim % 2 == 0, f"head size dim/n_heads ({self.head_dim}) must be even for RoPE")
        require(self.head_dim <= MAX_HEAD_DIM, f"head size dim/n_heads ({self.head_dim}) must be at most {MAX_HEAD_DIM}")
        require(self.max_seq_len * self.head_dim <= MAX_ROPE,
                f"model.max_seq_len x head size ({self.max_seq_len} x {self.head_dim}) must be at most {MAX_ROPE:,} "
                "(the rotary tables are that big)")
        require(self.n_heads % self.kv_heads == 0,
                f"model.n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.kv_heads})")
        require(isinstance(self.qk_norm, bool) and isinstance(self.tie_embeddings, bool),
                "model.qk_norm and model.tie_embeddings must be true or false")
        require_real(self.dropout, "model.dropout", 0, 1, hi_open=True)
        require_real(self.norm_eps, "model.norm_eps", 0, 1, lo_open=True)
        require_real(self.rope_theta, "model.rope_theta", 0, 1e12, lo_open=True)
        require_real(self.init_std, "model.init_std", 0, 10, lo_open=True)
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
        parallel: how the processes of a ``torchrun`` launch share the model: ddp (each holds
            all of it; gradients are averaged) or fsdp (FSDP2 ``fully_shard``: parameters,
            gradients and optimizer state sharded). A single process ignores it.
        activation_checkpointing: recompute each block's activations in the backward pass
            instead of keeping them (less memory, one more forward's worth of compute).
        tensorboard: also write TensorBoard event files to ``RUN/tensorboard/`` (needs the
            ``track`` extra).
        lora_rank: train LoRA adapters of this rank (through ``peft``; the ``lora`` extra) instead of
            every weight; 0 = full fine-tuning.
        lora_alpha: the adapters' scale is ``lora_alpha / lora_rank``.
        lora_dropout: dropout on the adapters' input.
        lora_targets: comma-separated layer names that get adapters (the attention and MLP projections).
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
    parallel: str = "ddp"
    activation_checkpointing: bool = False
    tensorboard: bool = False
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: str = "wq,wk,wv,wo,w1,w2,w3"

    def validate(self) -> "TrainConfig":
        require_int(self.seed, "train.seed", 0, MAX_SEED)
        for name, lo, hi in (("batch_size", 1, MAX_BATCH), ("grad_accum", 1, MAX_BATCH), ("max_steps", 1, MAX_STEPS),
                             ("eval_batches", 1, MAX_BATCH), ("log_interval", 1, MAX_STEPS), ("warmup_steps", 0, MAX_STEPS),
                             ("eval_interval", 0, MAX_STEPS), ("checkpoint_interval", 0, MAX_STEPS)):
            require_int(getattr(self, name), f"train.{name}", lo, hi)
        require_int(self.seq_len, "train.seq_len", 1, MAX_SEQ_LEN, optional=True)
        require_real(self.time_budget, "train.time_budget", 0, 1e9, lo_open=True, optional=True)  # seconds
        require(isinstance(self.compile, bool), "train.compile must be true or false")
        require(self.parallel in ("ddp", "fsdp"), f"train.parallel must be ddp or fsdp, not '{self.parallel}'")
        for name in ("activation_checkpointing", "tensorboard"):
            require(isinstance(getattr(self, name), bool), f"train.{name} must be true or false")
        require(self.optimizer in ("adamw", "muon"), f"train.optimizer must be adamw or muon, not '{self.optimizer}'")
        require(self.schedule in ("cosine", "wsd", "constant"), f"train.schedule must be cosine, wsd or constant, not '{self.schedule}'")
        require(self.precision in ("auto", "bf16", "fp16", "fp32"), f"train.precision must be auto, bf16, fp16 or fp32, not '{self.precision}'")
        require_real(self.lr, "train.lr", 0, 10, lo_open=True)
        require_real(self.muon_lr, "train.muon_lr", 0, 10, lo_open=True)
        require_real(self.weight_decay, "train.weight_decay", 0, 100)
        require_real(self.grad_clip, "train.grad_clip", 0, 1e6)
        require_real(self.beta1, "train.beta1", 0, 1, hi_open=True)
        require_real(self.beta2, "train.beta2", 0, 1, hi_open=True)
        require_real(self.eps, "train.eps", 0, 1, lo_open=True)
        require_real(self.min_lr_ratio, "train.min_lr_ratio", 0, 1)
        require_real(self.decay_fraction, "train.decay_fraction", 0, 1, lo_open=True)
        require_real(self.ema_decay, "train.ema_decay", 0, 1, hi_open=True)
        require_int(self.lora_rank, "train.lora_rank", 0, MAX_DIM)
        require_real(self.lora_alpha, "train.lora_alpha", 0, 1e6, lo_open=True)
        require_real(self.lora_dropout, "train.lora_dropout", 0, 1, hi_open=True)
        require(isinstance(self.lora_targets, str) and all(t.strip() for t in self.lora_targets.split(",")),
                f"train.lora_targets must be layer names separated by commas, e.g. wq,wv, got {show_value(self.lora_targets)}")
        require(not (self.lora_rank and self.ema_decay), "train.lora_rank and train.ema_decay exclude each other")
        return self
