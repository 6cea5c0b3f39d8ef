"""Generator: prompt in, text out (whole or streamed), decoding with the KV cache.

The prompt is run once (prefill) to fill the cache; after that each new token costs
one position of compute instead of re-reading the whole context. When the context
would overflow ``max_seq_len``, the cache is rebuilt from the most recent half.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from ..models import MiniLLM
from ..tokenizers import Tokenizer
from ..tokenizers.special import BOS, PAD, UNK
from ..utils.device import autocast_context, resolve_device, resolve_dtype
from ..utils.errors import FoundryError
from ..kernels import CompiledStep
from .sampling import sample_next


@dataclass
class DecodeModels:
    """The models one decoding runs: ``prefill`` reads the prompt, ``step`` adds one token at a time.

    Both share one KV cache made by :meth:`new_cache`; run them under
    ``autocast_context(device, amp_dtype)``.
    """

    prefill: MiniLLM
    step: MiniLLM | CompiledStep
    amp_dtype: torch.dtype | None
    cache_dtype: torch.dtype | None = None
    compiled: bool = False

    def new_cache(self, batch_size: int = 1, max_len: int | None = None):
        # A compiled step is compiled for one cache capacity: always the model's whole context.
        return self.prefill.new_cache(batch_size, None if self.compiled else max_len, self.cache_dtype)


def decode_models(model: MiniLLM, precision: str = "auto", batch_size: int = 1, compile: bool = False) -> DecodeModels:
    """Choose how to decode with ``model`` on its device (the model itself is left untouched).

    On a CPU (measured on a 2-core Sapphire Rapids, ``small`` preset, ``bench/decode.py``):

    * the prompt is a large matrix product: bf16 weights (no autocast, whose per-call
      weight casts cost more than they save) run it fastest;
    * one new token of one sequence is a matrix-*vector* product, bound by reading the
      weights, and there PyTorch's fp32 kernel beats its bf16 one: at ``batch_size`` 1–2
      the step model stays fp32 (the cache is then fp32, so both can share it); from
      batch 3 on, bf16 wins again and everything stays bf16;
    * q/k/v and gate/up are merged into single matrices: fewer, larger products;
    * where bf16 products are not fast (AVX2-only CPUs emulate them), everything is fp32,
      except that a compiled step at batch 1–2 still reads bf16 weights (see below).

    Elsewhere (CUDA, MPS) the model runs under autocast as in training.

    ``compile=True`` compiles the prefill model with ``torch.compile`` and, on a CPU,
    makes the step one compiled graph per token (:class:`CompiledStep`; it reads bf16
    weights itself, at any batch size where bf16 is fast, at batch 1–2 elsewhere with
    ``precision="auto"``: 2.4x the tokens/s of fp32 weights on an AVX2 CPU). The first prompt then
    waits for the compiler (about 20 s on 2 cores, and again when the batch size first
    changes); after that prompts run about 1.5x and tokens about 2x faster: worth it
    for a long generation or a chat session, not for one short ``foundry generate``.
    """
    device = next(model.parameters()).device
    amp = resolve_dtype(precision, device, model.cfg.dim)
    if device.type != "cpu":
        models = DecodeModels(model.eval(), model.eval(), amp)
    elif amp != torch.bfloat16:
        fp32 = copy.deepcopy(model).float().fuse_projections().eval()
        models = DecodeModels(fp32, fp32, None)
        if compile and precision == "auto" and batch_size <= 2:
            # No fast bf16 products here (or a model too narrow for bf16 training), but the
            # compiled step's multiply-and-sum reads bf16 weights with plain vector code: half
            # the bytes of fp32 for the same fp32 sums. AVX2 EPYC, `small`: 151 -> 367 tokens/s;
            # Sapphire Rapids, `tiny` (fp32 by width): 2.24k -> 3.2k tokens/s.
            # The prompt stays fp32 (bf16 products are emulated, ~100x slower); one fp32 cache.
            bf16_weights = copy.deepcopy(model).to(torch.bfloat16).fuse_projections().eval()
            models = DecodeModels(fp32, bf16_weights, None, torch.float32)
    else:
        bf16 = copy.deepcopy(model).to(torch.bfloat16).fuse_projections().eval()
        if batch_size > 2 or compile:  # (a compiled step reads bf16 weights fast at any batch size)
            models = DecodeModels(bf16, bf16, None)
        else:
            models = DecodeModels(bf16, copy.deepcopy(model).float().fuse_projections().eval(), None, torch.float32)
    if compile:
        if device.type == "cpu":
            models.step = CompiledStep(models.step)
            models.compiled = True
        models.prefill = torch.compile(models.prefill)
    return models


class Generator:
    """Sample text from a MiniLLM.

    Args:
        model: the model (put in eval mode).
        tokenizer: its tokenizer.
        precision: ``auto`` (bf16 where fast), ``bf16`` or ``fp32``.
        compile: decode with compiled models (see :func:`decode_models`): the first
            call waits for the compiler, later tokens come about twice as fast on a CPU.
    """

    def __init__(self, model: MiniLLM, tokenizer: Tokenizer, precision: str = "auto", compile: bool = False):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.decoding = decode_models(model, precision, compile=compile)
        # Never emit padding or the unknown marker: they decode to nothing useful.
        self.suppress = [i for t in (PAD, UNK, BOS) if (i := tokenizer.token_id(t)) is not None]
        self.eos_id = tokenizer.token_id("<|eos|>")

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "auto", precision: str = "auto",
                        compile: bool = False) -> "Generator":
        """Load a model folder (or a run folder) for generation."""
        from ..models.model_dir import load_model_dir

        bundle = load_model_dir(path, resolve_device(device))
        return cls(bundle.model, bundle.tokenizer, precision, compile)

    def encode_prompt(self, prompt: str, warn: bool = True) -> list[int]:
        ids = self.tokenizer.encode(prompt)
        unk = self.tokenizer.token_id(UNK)
        if warn and unk is not None and unk in ids:
            n = ids.count(unk)
            print(f"warning: {n} prompt character(s) unknown to the tokenizer were replaced by {UNK}", file=sys.stderr)
        if not ids:
            # Start a document: BOS where the tokenizer has one, else a line break.
            bos = self.tokenizer.token_id(BOS)
            ids = [bos] if bos is not None else self.tokenizer.encode("\n")
            if not ids or ids == [unk]:
                raise FoundryError("the prompt is empty and this tokenizer has no BOS or line break; give a prompt")
        return ids

    @torch.no_grad()
    def stream(self, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8, top_k: int | None = None,
               top_p: float | None = None, stop: Sequence[str] = (), seed: int | None = None) -> Iterator[str]:
        """Yield the continuation of ``prompt`` piece by piece as it is generated.

        Stops after ``max_new_tokens``, at EOS, or before the first stop string
        (which is not yielded).
        """
        if max_new_tokens < 0:
            raise FoundryError("max_new_tokens must be >= 0")
        ids = self.encode_prompt(prompt)
        gen = torch.Generator(device=self.device)
        if seed is None:
            gen.seed()  # fresh randomness for this call only; the global RNG is left alone
        else:
            gen.manual_seed(seed)
        out_ids: list[int] = []
        emitted = ""
        stops = [s for s in stop if s]
        for token in self._tokens(ids, max_new_tokens, temperature, top_k, top_p, gen):
            out_ids.append(token)
            text = self.tokenizer.decode(out_ids)
            cut = min((text.find(s) for s in stops if s in text), default=-1)
            if cut >= 0:
                if cut > len(emitted):
                    yield text[len(emitted):cut]
                return
            # Hold back an incomplete UTF-8 character and any tail that may start a stop string.
            safe = len(text.rstrip("\ufffd"))
            for s in stops:
                for k in range(min(len(s) - 1, safe), 0, -1):
                    if text[:safe].endswith(s[:k]):
                        safe -= k
                        break
            if safe > len(emitted):
                yield text[len(emitted):safe]
                emitted = text[:safe]
        text = self.tokenizer.decode(out_ids)
        if len(text) > len(emitted):
            yield text[len(emitted):]

    def generate(self, prompt: str, **kwargs) -> str:
        """The whole continuation of ``prompt`` (same options as :meth:`stream`)."""
        return "".join(self.stream(prompt, **kwargs))

    def _tokens(self, ids: list[int], max_new: int, temperature: float, top_k, top_p, gen) -> Iterator[int]:
        max_len = self.model.cfg.max_seq_len
        context = list(ids[-max_len:])
        models = self.decoding
        cache = models.new_cache(1)
        with autocast_context(self.device, models.amp_dtype):
            logits, _ = models.prefill(torch.tensor([context], device=self.device), cache=cache, last_only=True)
            for _ in range(max_new):
                logits = logits[:, -1, :].float()
                if self.suppress:
                    logits[:, self.suppress] = float("-inf")
                if logits.size(-1) > self.tokenizer.vocab_size:
                    # Spare rows of a model with vocabulary headroom are no tokens yet.
                    logits[:, self.tokenizer.vocab_size:] = float("-inf")
                token = int(sample_next(logits, temperature, top_k, top_p, gen)[0])
                if token == self.eos_id:
                    return
                yield token
                context.append(token)
                if cache.pos >= max_len:
                    # Context full: keep the newest half and re-prefill it.
                    context = context[-(max_len // 2):]
                    cache.reset()
                    logits, _ = models.prefill(torch.tensor([context], device=self.device), cache=cache, last_only=True)
                else:
                    logits, _ = models.step(torch.tensor([[token]], device=self.device), cache=cache)

