"""Export a model folder as a Hugging Face ``transformers`` folder.

The result loads, offline, with::

    AutoModelForCausalLM.from_pretrained(out)   # LlamaForCausalLM, or Qwen3ForCausalLM with qk_norm
    AutoTokenizer.from_pretrained(out)          # PreTrainedTokenizerFast, same ids as ours

MiniLLM is Llama-shaped (RMSNorm, "rotate half" RoPE, GQA, SwiGLU), so the weights
are renamed, never permuted. A model with ``qk_norm`` is exported as Qwen3, which
is Llama plus a per-head RMSNorm of queries and keys before RoPE, exactly ours.

Folder written (every file atomically):

    config.json              LlamaConfig / Qwen3Config
    model.safetensors        fp32 weights under Hugging Face names
    generation_config.json   bos/pad ids; eos: every chat terminator (a list) for a tokenizer with the
                             chat tokens, else <|eos|>; the ids our decoding never emits are suppressed
    tokenizer.json           a Hugging Face ``tokenizers`` file (BPE: ours as is; byte, char: built here)
    tokenizer_config.json    PreTrainedTokenizerFast, its special tokens, and (chat tokens) the Jinja
                             ``chat_template`` of our chat layout (``chat_template.py``)

``transformers`` itself is not needed to export, only to load the result.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..config import ModelConfig
from ..tokenizers import ByteTokenizer, CharTokenizer, Tokenizer
from ..tokenizers.special import BOS, CHAT_SPECIAL_TOKENS, CHAT_TERMINATORS, EOS, NEVER_SAMPLED, PAD, UNK, token_ids
from ..utils.errors import FoundryError
from ..utils.io import atomic_write_bytes, atomic_write_json
from .chat_template import CHAT_TEMPLATE


# Our parameter names (per layer, after "layers.{i}.") -> Hugging Face names (after "model.layers.{i}.").
_LAYER_NAMES = {
    "attn.wq.weight": "self_attn.q_proj.weight",
    "attn.wk.weight": "self_attn.k_proj.weight",
    "attn.wv.weight": "self_attn.v_proj.weight",
    "attn.wo.weight": "self_attn.o_proj.weight",
    "attn.q_norm.weight": "self_attn.q_norm.weight",
    "attn.k_norm.weight": "self_attn.k_norm.weight",
    "ffn.w1.weight": "mlp.gate_proj.weight",
    "ffn.w3.weight": "mlp.up_proj.weight",
    "ffn.w2.weight": "mlp.down_proj.weight",
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_TOP_NAMES = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_KEY = re.compile(r"layers\.(\d+)\.(.+)")


def export_hf(model_dir: str | Path, out_dir: str | Path, force: bool = False) -> Path:
    """Write ``model_dir`` as a Hugging Face folder at ``out_dir``; returns ``out_dir``.

    Args:
        model_dir: a model folder (a run folder works).
        out_dir: where to write; must not exist, or be empty, unless ``force``.
        force: write into a non-empty ``out_dir``, replacing the files of the same names.
    """
    from safetensors.torch import save

    from ..models.model_dir import TOKENIZER_FILE, load_model_dir

    model_dir, out = Path(model_dir), Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FoundryError(f"--out {out} is a file, not a folder")
    if model_dir.is_dir() and out.is_dir() and out.resolve() == model_dir.resolve():
        raise FoundryError(f"--out {out} is the model folder itself; choose another folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FoundryError(f"--out {out} exists and is not empty; pass --force to write into it")

    # Everything is built (and checked) in memory before the first file is written.
    bundle = load_model_dir(model_dir, "cpu")
    model, tok = bundle.model, bundle.tokenizer
    tensors = hf_state_dict(model.state_dict(), model.cfg)
    config = hf_config(model.cfg, tok)
    if tok.kind == "bpe":
        # Our BPE file already is a Hugging Face tokenizer.json: copy it byte for byte.
        tokenizer_bytes = (model_dir / TOKENIZER_FILE).read_bytes()
    else:
        tokenizer_bytes = hf_tokenizer(tok).to_str().encode("utf-8")

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "model.safetensors", save(tensors, metadata={"format": "pt", "step": str(bundle.step)}))
    atomic_write_json(out / "config.json", config)
    atomic_write_json(out / "generation_config.json", generation_config(tok))
    atomic_write_bytes(out / "tokenizer.json", tokenizer_bytes)
    atomic_write_json(out / "tokenizer_config.json", hf_tokenizer_config(tok, model.cfg))
    return out


def hf_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our ``state_dict`` under Hugging Face Llama/Qwen3 names, fp32, contiguous, on the CPU.

    A tied output head is left out (``tie_word_embeddings`` makes ``transformers`` tie it);
    a parameter without a Hugging Face counterpart is an error, never silently dropped.
    """
    return {name: value.contiguous() for _, name, value in
            renamed(state, cfg, _LAYER_NAMES, _TOP_NAMES, "model.layers", "Hugging Face")}


def renamed(state: dict[str, torch.Tensor], cfg: ModelConfig, layer_names: dict[str, str], top_names: dict[str, str],
            layer_prefix: str, target: str):
    """``(our name, their name, fp32 CPU tensor)`` for each parameter, renamed by ``layer_names`` (after
    ``layers.{i}.``, written after ``{layer_prefix}.{i}.``) and ``top_names``; a tied head is skipped.

    Raises:
        FoundryError: a parameter has no name in ``target`` (never silently dropped).
    """
    for key, value in state.items():
        if key == "output.weight" and cfg.tie_embeddings:
            continue
        m = _LAYER_KEY.fullmatch(key)
        if m and m.group(2) in layer_names:
            name = f"{layer_prefix}.{m.group(1)}.{layer_names[m.group(2)]}"
        elif key in top_names:
            name = top_names[key]
        else:
            raise FoundryError(f"cannot export parameter {key!r}: it has no {target} counterpart")
        yield key, name, value.detach().to("cpu", torch.float32)


def _special_ids(tok: Tokenizer) -> dict[str, int | None]:
    return {name: tok.token_id(token) for name, token in (("bos", BOS), ("eos", EOS), ("pad", PAD), ("unk", UNK))}


def hf_config(cfg: ModelConfig, tok: Tokenizer) -> dict:
    """``config.json`` for ``LlamaForCausalLM``, or ``Qwen3ForCausalLM`` when ``cfg.qk_norm``."""
    ids = _special_ids(tok)
    config = {
        "architectures": ["Qwen3ForCausalLM" if cfg.qk_norm else "LlamaForCausalLM"],
        "model_type": "qwen3" if cfg.qk_norm else "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        # transformers 4.x reads rope_theta, 5.x rope_parameters; both say the same.
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": cfg.init_std,
        "use_cache": True,
        "torch_dtype": "float32",  # the 4.x name
        "dtype": "float32",
        "bos_token_id": ids["bos"],
        "eos_token_id": ids["eos"],
        "pad_token_id": ids["pad"],
    }
    if cfg.qk_norm:
        config.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layers,
                      layer_types=["full_attention"] * cfg.n_layers)
    else:
        config.update(mlp_bias=False, pretraining_tp=1)
    return config


def generation_config(tok: Tokenizer) -> dict:
    """Defaults for ``model.generate``, as our decoding has them.

    A tokenizer with the chat tokens gets the chat engine's: a reply ends at any of
    ``CHAT_TERMINATORS`` (``eos_token_id`` is their list) and only ``NEVER_SAMPLED`` is
    suppressed. Without them (a char tokenizer) it is plain text: ends at ``<|eos|>``, and
    never emits what our text-mode Generator never samples (``NEVER_SAMPLED`` and BOS).
    """
    ids = _special_ids(tok)
    chat = _has_chat_tokens(tok)
    suppress = sorted(token_ids(tok, NEVER_SAMPLED if chat else (*NEVER_SAMPLED, BOS)))
    eos = [tok.token_id(t) for t in CHAT_TERMINATORS if tok.token_id(t) is not None] if chat else ids["eos"]
    gen = {"bos_token_id": ids["bos"], "eos_token_id": eos, "pad_token_id": ids["pad"]}
    if suppress:
        gen["suppress_tokens"] = suppress
    return gen


def _has_chat_tokens(tok: Tokenizer) -> bool:
    return all(tok.token_id(t) is not None for t in (BOS, *CHAT_SPECIAL_TOKENS))


def hf_tokenizer_config(tok: Tokenizer, cfg: ModelConfig) -> dict:
    """``tokenizer_config.json``: a plain ``PreTrainedTokenizerFast`` over ``tokenizer.json``."""
    specials = tok.special_tokens
    config: dict = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": cfg.max_seq_len,
                    # Our decode is exact: no "clean-up" of spaces before punctuation.
                    "clean_up_tokenization_spaces": False,
                    # No token_type_ids (transformers 4.x adds them otherwise, and generate() rejects them).
                    "model_input_names": ["input_ids", "attention_mask"]}
    for key, token in (("bos_token", BOS), ("eos_token", EOS), ("pad_token", PAD), ("unk_token", UNK)):
        if token in specials:
            config[key] = token
    if _has_chat_tokens(tok):
        # apply_chat_template renders our layout as text and tokenizes it: the special tokens
        # in it must be read as tokens (so a "<|eos|>" typed inside a message is one too, unlike
        # ours; apply_chat_template(..., sanitize_control_tokens=True) reads it as text).
        config["chat_template"] = CHAT_TEMPLATE
        config["split_special_tokens"] = False
    else:
        # Our tokenizers read "<|eos|>" inside a text as plain characters; this makes
        # transformers do the same.
        config["split_special_tokens"] = True
    return config


def hf_tokenizer(tok: Tokenizer):
    """A Hugging Face ``tokenizers.Tokenizer`` that gives the same ids as ``tok`` for any text."""
    from tokenizers import Tokenizer as HFTokenizer

    if isinstance(tok, ByteTokenizer):
        hf = _byte_tokenizer(tok)
    elif isinstance(tok, CharTokenizer):
        hf = _char_tokenizer(tok)
    elif tok.kind == "bpe":
        return HFTokenizer.from_str(tok.to_json())  # type: ignore[attr-defined]
    else:
        raise FoundryError(f"cannot export a {tok.kind!r} tokenizer to Hugging Face")
    for token, i in tok.special_tokens.items():
        if hf.token_to_id(token) != i:
            raise FoundryError(f"exported tokenizer gives {token} id {hf.token_to_id(token)}, ours {i}")
    return hf


def _bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable character map of byte-level BPE (GPT-2's, the one ``tokenizers`` uses)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


def _added(tokens):
    from tokenizers import AddedToken

    return [AddedToken(t, special=True, normalized=False, single_word=False, lstrip=False, rstrip=False) for t in tokens]


def _byte_tokenizer(tok: ByteTokenizer):
    """Byte-level BPE with no merges: byte ``b`` is its own token, id ``b``; specials from 256."""
    from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers

    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
    # No regex split: ours does not split either, and with no merges it would change nothing.
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens(_added(sorted(tok.special_tokens, key=tok.special_tokens.__getitem__)))
    return hf


def _char_tokenizer(tok: CharTokenizer):
    """One token per character (code point), unknown ones -> ``<|unk|>``, decoded without separators."""
    from tokenizers import Regex, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers

    hf = HFTokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(tok.itos)}, unk_token=UNK))
    hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    hf.decoder = decoders.Fuse()
    hf.add_special_tokens(_added(sorted(tok.special_tokens, key=tok.special_tokens.__getitem__)))
    return hf
