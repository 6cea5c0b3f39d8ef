"""Generator: prompt in, text out (whole or streamed), decoding with the KV cache.

The prompt is run once (prefill) to fill the cache; after that each new token costs
one position of compute instead of re-reading the whole context. When the context
would overflow ``max_seq_len``, the cache is rebuilt from the most recent half.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator, Sequence

import torch

from ..models import MiniLLM
from ..tokenizers import Tokenizer
from ..tokenizers.special import BOS, PAD, UNK
from ..utils.device import autocast_context, resolve_device, resolve_dtype
from ..utils.errors import FoundryError
from .sampling import sample_next


class Generator:
    """Sample text from a MiniLLM.

    Args:
        model: the model (put in eval mode).
        tokenizer: its tokenizer.
        precision: ``auto`` (bf16 where fast), ``bf16`` or ``fp32``.
    """

    def __init__(self, model: MiniLLM, tokenizer: Tokenizer, precision: str = "auto"):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.amp_dtype = resolve_dtype(precision, self.device, model.cfg.dim)
        # Never emit padding or the unknown marker: they decode to nothing useful.
        self.suppress = [i for t in (PAD, UNK, BOS) if (i := tokenizer.token_id(t)) is not None]
        self.eos_id = tokenizer.token_id("<|eos|>")

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "auto", precision: str = "auto") -> "Generator":
        """Load a model folder (or a run folder) for generation."""
        from ..training.checkpoint import load_model_dir

        bundle = load_model_dir(path, resolve_device(device))
        return cls(bundle.model, bundle.tokenizer, precision)

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
        cache = self.model.new_cache(1)
        with autocast_context(self.device, self.amp_dtype):
            logits, _ = self.model(torch.tensor([context], device=self.device), cache=cache, last_only=True)
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
                    logits, _ = self.model(torch.tensor([context], device=self.device), cache=cache, last_only=True)
                else:
                    logits, _ = self.model(torch.tensor([[token]], device=self.device), cache=cache)

