"""Generator: prompt in, text out (whole or streamed): plain text over the :class:`Engine`.

The engine (``mode="text"``) is the token loop: it runs the prompt once (prefill) to
fill the KV cache, then adds one position per token, with the decoding models of
:func:`~llm_foundry.inference.decoding.decode_models`; when the context fills up it
keeps the newest half and goes on. This class turns text into the prompt's ids and the
tokens back into text (:class:`~llm_foundry.inference.text_stream.TextStream`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator, Sequence

from ..models import MiniLLM
from ..tokenizers import Tokenizer
from ..tokenizers.special import UNK, document_start
from ..utils.device import resolve_device
from ..utils.errors import FoundryError
from .engine import Engine
from ..config.sampling import check_sampling
from .text_stream import TextStream


class Generator:
    """Sample text from a MiniLLM.

    Args:
        model: the model (put in eval mode; decoding reads inference copies of it, so
            its weights must not change while this generator is used).
        tokenizer: its tokenizer.
        precision: ``auto`` (bf16 where fast), ``bf16`` or ``fp32``.
        compile: decode with compiled models (see :func:`decode_models`): the first
            call waits for the compiler, later tokens come faster on a CPU.
    """

    def __init__(self, model: MiniLLM, tokenizer: Tokenizer, precision: str = "auto", compile: bool = False):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.engine = Engine(model, tokenizer, precision, tools=False, frozen=True, compile=compile, mode="text")

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "auto", precision: str = "auto",
                        compile: bool = False) -> "Generator":
        """Load a model folder (or a run folder) for generation."""
        from ..models.model_dir import load_model_dir

        bundle = load_model_dir(path, resolve_device(device))
        return cls(bundle.model, bundle.tokenizer, precision, compile)

    def encode_prompt(self, prompt: str, warn: bool = True) -> list[int]:
        """The prompt's ids (a warning on stderr for characters the tokenizer does not know)."""
        ids = self.tokenizer.encode(prompt)
        unk = self.tokenizer.token_id(UNK)
        if warn and unk is not None and unk in ids:
            n = ids.count(unk)
            print(f"warning: {n} prompt character(s) unknown to the tokenizer were replaced by {UNK}", file=sys.stderr)
        if not ids:
            ids = document_start(self.tokenizer)
            if not ids or ids == [unk]:
                raise FoundryError("the prompt is empty and this tokenizer has no BOS or line break; give a prompt")
        return ids

    def stream(self, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8, top_k: int | None = None,
               top_p: float | None = None, stop: Sequence[str] = (), seed: int | None = None) -> Iterator[str]:
        """Yield the continuation of ``prompt`` piece by piece as it is generated.

        Stops after ``max_new_tokens``, at EOS, or before the first stop string
        (which is not yielded). A prompt longer than the context keeps its end.
        """
        check_sampling(temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
        ids = self.encode_prompt(prompt)[-self.model.cfg.max_seq_len:]
        text = TextStream(self.tokenizer, stop)
        steps = self.engine.stream(ids, max_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                   seed=seed)
        try:
            for tokens, _ in steps:
                if tokens[0] in self.engine.terminators:
                    break  # EOS: the end of the document
                if piece := text.push(tokens[0]):
                    yield piece
                if text.stopped:
                    return
        finally:
            steps.close()
        if piece := text.flush():
            yield piece

    def generate(self, prompt: str, **kwargs) -> str:
        """The whole continuation of ``prompt`` (same options as :meth:`stream`)."""
        return "".join(self.stream(prompt, **kwargs))
