"""The backbone adapter: a frozen causal language model seen through one small interface.

The memory modules read a backbone in three ways, and only these:

* ``embed(ids)``: the token embeddings;
* ``hidden_states(ids, layer)``: the residual stream after block ``layer`` (0-based);
* ``logits(ids, inject={layer: fn})``: the forward pass, with ``fn`` adding to the
  residual stream after the chosen blocks.

Both the reading of a middle layer and the injection go through *forward hooks* on the
decoder layers, so one code path serves our own model folders (MiniLLM) and Hugging Face
Llama / Qwen3 folders alike: nothing here re-implements a forward pass, and a backbone
without hooks runs exactly its own code (the "memory off equals the backbone" guarantee
is then trivially exact).

The backbone never changes: every parameter has ``requires_grad`` off, the module stays in
eval mode (dropout off) whatever ``train()`` is called on a parent, and gradients flow
*through* its activations to the memory modules, never into its weights.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
import torch.nn as nn

from ..models.model_dir import ARCHITECTURE, load_model_dir
from ..tokenizers import Tokenizer
from ..utils.errors import FoundryError

HF_ARCHITECTURES = ("llama", "qwen3")  # Hugging Face ``model_type`` values we read
Injection = Callable[[torch.Tensor], torch.Tensor]  # residual stream -> new residual stream


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the wanted layer has run (the layers above
    would be wasted work: features come from the middle of the model)."""


class HFTokenizer:
    """A ``transformers`` tokenizer behind our :class:`~llm_foundry.tokenizers.Tokenizer` protocol
    (the parts the memory uses: encode, decode, special ids)."""

    kind = "hf"

    def __init__(self, tok):
        self.tok = tok

    @property
    def vocab_size(self) -> int:
        return len(self.tok)

    @property
    def special_tokens(self) -> dict[str, int]:
        return {t: self.tok.convert_tokens_to_ids(t) for t in self.tok.all_special_tokens}

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        ids = list(self.tok.encode(text, add_special_tokens=False))
        if bos and self.tok.bos_token_id is not None:
            ids.insert(0, self.tok.bos_token_id)
        if eos and self.tok.eos_token_id is not None:
            ids.append(self.tok.eos_token_id)
        return ids

    def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=skip_special)

    def encode_batch(self, texts: Sequence[str], *, bos: bool = False, eos: bool = False) -> list[list[int]]:
        return [self.encode(t, bos=bos, eos=eos) for t in texts]

    def token_id(self, token: str) -> int | None:
        return self.special_tokens.get(token)

    def save(self, path) -> None:
        raise FoundryError("a Hugging Face tokenizer is saved with its model folder, not by llm-foundry")


class Backbone(nn.Module):
    """A frozen causal LM: our MiniLLM or a Hugging Face Llama / Qwen3 model.

    Build one with :meth:`load` (a folder) or directly from a module.

    Args:
        model: a :class:`~llm_foundry.models.MiniLLM` or a ``transformers`` ``*ForCausalLM``.
        tokenizer: its tokenizer (our protocol; wrap a Hugging Face one in :class:`HFTokenizer`).
        source: what it was loaded from (shown in messages, part of nothing else).
    """

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, source: str = ""):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        self.is_hf = not hasattr(model, "tok_embeddings")
        if self.is_hf:
            cfg = model.config
            self.dim, self.n_layers = int(cfg.hidden_size), int(cfg.num_hidden_layers)
            self.vocab_size = int(cfg.vocab_size)
        else:
            self.dim, self.n_layers, self.vocab_size = model.cfg.dim, model.cfg.n_layers, model.cfg.vocab_size
        if tokenizer.vocab_size > self.vocab_size:
            raise FoundryError(f"tokenizer has {tokenizer.vocab_size} ids but the backbone only {self.vocab_size}")
        model.requires_grad_(False)
        model.eval()
        self._fingerprint: str | None = None

    @classmethod
    def load(cls, folder: str | Path, tokenizer: Tokenizer | None = None, device: str = "cpu") -> "Backbone":
        """Load a backbone folder: one of ours (``config.json`` says ``MiniLLM``) or a local Hugging
        Face Llama / Qwen3 folder (read with ``local_files_only=True``: nothing is downloaded).

        Args:
            tokenizer: use this tokenizer instead of the folder's (a Hugging Face folder without one).

        Raises:
            FoundryError: a missing folder, an unsupported architecture, or no tokenizer.
        """
        folder = Path(folder)
        config = folder / "config.json"
        if not folder.is_dir():
            raise FoundryError(f"backbone folder not found: {folder}")
        if not config.is_file():
            raise FoundryError(f"{folder} has no config.json: not a model folder")
        try:
            meta = json.loads(config.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise FoundryError(f"{config} is not valid JSON: {e}") from None
        if not isinstance(meta, dict):
            raise FoundryError(f"{config} is not a JSON object")
        if meta.get("architecture") == ARCHITECTURE:
            bundle = load_model_dir(folder, device, with_tokenizer=tokenizer is None)
            return cls(bundle.model, tokenizer or bundle.tokenizer, str(folder))
        model_type = meta.get("model_type")
        if model_type not in HF_ARCHITECTURES:
            found = model_type or meta.get("architecture") or "unknown"
            raise FoundryError(f"{folder}: unsupported backbone architecture {found!r} "
                               f"(supported: our MiniLLM folders, Hugging Face {', '.join(HF_ARCHITECTURES)})")
        return cls(_load_hf_model(folder, device), tokenizer or _load_hf_tokenizer(folder), str(folder))

    def train(self, mode: bool = True) -> "Backbone":
        """Stay in eval mode: a frozen backbone's dropout stays off while its parent trains."""
        return super().train(False)

    @property
    def layers(self) -> nn.ModuleList:
        """The decoder blocks, in order (the hooks' targets)."""
        return _layers_of(self.model)

    @property
    def _embedding(self) -> nn.Embedding:
        return self.model.get_input_embeddings() if self.is_hf else self.model.tok_embeddings

    @property
    def context(self) -> int:
        """The longest sequence the backbone takes."""
        cfg = self.model.config if self.is_hf else self.model.cfg
        return int(cfg.max_position_embeddings if self.is_hf else cfg.max_seq_len)

    @property
    def device(self) -> torch.device:
        return self._embedding.weight.device

    # ------------------------------------------------------------------ reading
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings of ``ids`` (``batch, time``) -> ``batch, time, dim``."""
        return self._embedding(ids)

    def hidden_states(self, ids: torch.Tensor, layer: int) -> torch.Tensor:
        """The residual stream after block ``layer`` (0-based) for ``ids`` -> ``batch, time, dim``.

        The blocks above ``layer`` do not run. Right padding is harmless: the model is
        causal, so a real token never sees the padding after it.
        """
        self.check_layer(layer)
        got: list[torch.Tensor] = []

        def grab(module, args, output):
            got.append(output[0] if isinstance(output, tuple) else output)
            raise _Stop

        handle = self.layers[layer].register_forward_hook(grab)
        try:
            self._run(ids)
        except _Stop:
            pass
        finally:
            handle.remove()
        return got[0]

    @torch.no_grad()
    def read(self, texts: Sequence[str], layer: int, max_len: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token features of ``texts`` at block ``layer``: ``(states, embeddings, mask)``, each
        ``(n, longest, ...)``, right-padded (``mask`` is True on real tokens), without autograd
        (nothing below the memory modules learns).

        Args:
            max_len: keep at most this many tokens of each text (entries are short facts).
        """
        if not texts:
            raise FoundryError("no texts to read")
        max_len = min(max_len, self.context)
        ids = [self.tokenizer.encode(t)[:max_len] for t in texts]
        if not all(ids):
            raise FoundryError("an empty text has no tokens to read")
        longest = max(len(i) for i in ids)
        batch = torch.zeros(len(ids), longest, dtype=torch.long, device=self.device)
        mask = torch.zeros(len(ids), longest, dtype=torch.bool, device=self.device)
        for row, i in enumerate(ids):
            batch[row, :len(i)] = torch.tensor(i, dtype=torch.long)
            mask[row, :len(i)] = True
        return self.hidden_states(batch, layer), self.embed(batch), mask

    def logits(self, ids: torch.Tensor, inject: dict[int, Injection] | None = None) -> torch.Tensor:
        """Next-token logits for ``ids`` (``batch, time, vocab``), with ``inject[layer]`` applied to
        the residual stream after each chosen block. No ``inject``: the backbone's own forward."""
        with self.injecting(inject or {}):
            return self._run(ids)

    @contextmanager
    def injecting(self, inject: dict[int, Injection], *models: nn.Module) -> Iterator[None]:
        """Hooks that replace block ``layer``'s output ``h`` by ``inject[layer](h)`` while the block
        is entered; any forward of the wrapped model (the Engine's included) sees them.

        Args:
            models: hook these copies of the backbone's model instead (e.g. an Engine's inference
                copies with fused projections, ``decode_models``); they must have its blocks.
        """
        handles = []
        layer_lists = [_layers_of(m) for m in models] if models else [self.layers]
        if any(len(layers) != self.n_layers for layers in layer_lists):
            raise FoundryError("a model to inject into does not have the backbone's blocks")
        for layer, fn in inject.items():
            self.check_layer(layer)

            def hook(module, args, output, fn=fn):
                if isinstance(output, tuple):  # older transformers return (hidden, ...)
                    return (fn(output[0]),) + tuple(output[1:])
                return fn(output)

            handles += [layers[layer].register_forward_hook(hook) for layers in layer_lists]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _run(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dim() != 2:
            raise FoundryError(f"token ids must be (batch, time), got shape {tuple(ids.shape)}")
        if self.is_hf:
            return self.model(input_ids=ids, use_cache=False).logits
        return self.model(ids)[0]

    def check_layer(self, layer: int) -> None:
        """Refuse a block index this backbone does not have (one line)."""
        if not 0 <= layer < self.n_layers:
            raise FoundryError(f"layer {layer} is outside the backbone's blocks 0..{self.n_layers - 1}")

    # ------------------------------------------------------------------ identity
    def fingerprint(self) -> str:
        """A short hex id of this backbone: its config and a sample of every weight's bytes.

        Caches of entry vectors are valid only for the backbone they were computed with;
        hashing every byte of a multi-GB model on each start would cost seconds, while a
        strided sample of each tensor (plus names, shapes, dtypes) changes whenever the
        weights do in practice (fine-tuning touches every sampled position).
        """
        if self._fingerprint is None:
            h = hashlib.sha256()
            cfg = self.model.config.to_dict() if self.is_hf else vars(self.model.cfg)
            # Where the folder lies and which library wrote it are not the model's identity.
            cfg = {k: v for k, v in cfg.items() if not k.startswith("_") and k != "transformers_version"}
            h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
            for name, t in sorted(self.model.state_dict().items()):
                flat = t.detach().reshape(-1)
                sample = flat[:: max(1, flat.numel() // 256)].float().cpu().contiguous()
                h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
                h.update(sample.numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint


def _layers_of(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a MiniLLM (``layers``) or a Hugging Face ``*ForCausalLM`` (``model.layers``)."""
    return model.layers if hasattr(model, "tok_embeddings") else model.model.layers


def _load_hf_model(folder: Path, device: str) -> nn.Module:
    try:
        import transformers
        from transformers import AutoModelForCausalLM
    except ImportError:
        raise FoundryError("a Hugging Face backbone needs transformers: pip install 'llm-foundry[hf]'") from None
    from transformers.utils import logging as hf_logging

    # fp32 always (5.x loads in the checkpoint's dtype by default); the argument was renamed in 4.56.
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    dtype_arg = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"

    hf_logging.disable_progress_bar()  # a bar per load is noise on a command line that loads one model
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, **{dtype_arg: torch.float32})
    except Exception as e:  # noqa: BLE001 - whatever transformers raises, the cause is the folder's files
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise FoundryError(f"cannot load the Hugging Face model in {folder}: {type(e).__name__}: {first}") from None
    return model.to(device)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def _load_hf_tokenizer(folder: Path) -> HFTokenizer:
    from transformers import AutoTokenizer

    # Without these files transformers may still build an empty tokenizer (one id) instead of failing.
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise FoundryError(f"{folder} has no tokenizer files ({', '.join(TOKENIZER_FILES)}); pass a tokenizer")
    try:
        return HFTokenizer(AutoTokenizer.from_pretrained(folder, local_files_only=True))
    except (OSError, ValueError, TypeError) as e:
        raise FoundryError(f"{folder} has no usable tokenizer ({type(e).__name__}); pass one explicitly") from None
