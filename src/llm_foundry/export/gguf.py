"""Export a model folder as one GGUF file, for llama.cpp and ollama.

Written with the ``gguf`` package (llama.cpp's own writer; ``pip install 'llm-foundry[gguf]'``).

Architecture: MiniLLM is llama.cpp's ``llama``, or ``qwen3`` when it has QK-norm. The two
differ in how llama.cpp rotates: ``qwen3`` rotates half against half, as we do, while
``llama`` rotates neighbouring pairs, so for ``llama`` the rows of each query and key head
are reordered (first half to the even rows, second half to the odd ones); the model computes
the same function.

Tokenizer: llama.cpp's byte-level BPE (``tokenizer.ggml.model = "gpt2"``) with the regex
split (``tokenizer.ggml.pre``) that matches the one the BPE was trained with:

* byte: the 256 bytes as byte-level BPE tokens (GPT-2's byte -> character map) and no
  merges, so every byte is its own token, same ids; specials follow as control tokens.
* bpe: our (Hugging Face) vocabulary and merges as they are; the split must be one llama.cpp
  knows (GPT-2's, ours; SmolLM's, Llama 3's and Qwen2's, for imported models).
* char: refused (no byte fallback: llama.cpp could not encode an unseen character).

The chat terminators are marked for llama.cpp: ``<|eos|>`` is its eos, ``<|assistant_end|>``
its end-of-turn, ``<|user_start|>`` its end-of-message (all three end generation there); the
chat template of the Hugging Face export is carried as ``tokenizer.chat_template``. Rows of the
embedding beyond the tokenizer are named ``[PAD<i>]`` (unused).

Quantization: ``f16`` (matrices in float16, norms in float32) or ``q8_0`` (matrices whose rows
are multiples of 32 in llama.cpp's 8-bit blocks; the rest as for f16).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..tokenizers import Tokenizer
from ..tokenizers.special import ASSISTANT_END, BOS, EOS, PAD, UNK, USER_START
from ..utils.errors import FoundryError
from ..utils.io import fsync_dir

QUANTS = ("f16", "q8_0")  # what `foundry export --format gguf --quant` accepts

# Our parameter names (per layer, after "layers.{i}.") -> llama.cpp's (after "blk.{i}.").
_LAYER_NAMES = {
    "attn_norm.weight": "attn_norm.weight",
    "attn.wq.weight": "attn_q.weight",
    "attn.wk.weight": "attn_k.weight",
    "attn.wv.weight": "attn_v.weight",
    "attn.wo.weight": "attn_output.weight",
    "attn.q_norm.weight": "attn_q_norm.weight",
    "attn.k_norm.weight": "attn_k_norm.weight",
    "ffn_norm.weight": "ffn_norm.weight",
    "ffn.w1.weight": "ffn_gate.weight",
    "ffn.w3.weight": "ffn_up.weight",
    "ffn.w2.weight": "ffn_down.weight",
}
_TOP_NAMES = {"tok_embeddings.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
              "output.weight": "output.weight"}

# The regex splits of byte-level BPE tokenizers, as Hugging Face tokenizer.json spells them,
# -> llama.cpp's name for the same split (tokenizer.ggml.pre).
_SPLITS = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+":
        "qwen2",
}


def _gguf():
    try:
        import gguf
    except ImportError:
        raise FoundryError("--format gguf needs the gguf package: pip install 'llm-foundry[gguf]'") from None
    return gguf


def export_gguf(model_dir: str | Path, out_file: str | Path, quant: str = "f16", force: bool = False) -> Path:
    """Write ``model_dir`` as the GGUF file ``out_file`` (atomically); returns ``out_file``.

    Args:
        model_dir: a model folder (a run folder works).
        out_file: the file to write; must not exist unless ``force``.
        quant: ``f16`` or ``q8_0``.
        force: replace an existing ``out_file``.
    """
    from ..models.model_dir import TOKENIZER_FILE, load_model_dir

    if quant not in QUANTS:
        raise FoundryError(f"unknown --quant {quant!r} (use {', '.join(QUANTS)})")
    gguf = _gguf()
    model_dir, out = Path(model_dir), Path(out_file)
    if out.is_dir():
        raise FoundryError(f"--out {out} is a folder; GGUF is one file (e.g. --out model.gguf)")
    if out.exists() and not force:
        raise FoundryError(f"--out {out} exists; pass --force to replace it")
    bundle = load_model_dir(model_dir, "cpu")
    model, tok = bundle.model, bundle.tokenizer
    cfg = model.cfg
    arch = "qwen3" if cfg.qk_norm else "llama"
    vocab = gguf_vocab(tok, cfg.vocab_size, model_dir / TOKENIZER_FILE)  # refuses a char tokenizer first

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    writer = gguf.GGUFWriter(str(tmp), arch)
    try:
        _write_metadata(writer, gguf, cfg, model_dir.resolve().name, quant)
        _write_vocab(writer, gguf, tok, vocab)
        for name, data in gguf_tensors(model.state_dict(), cfg):
            _add_tensor(writer, gguf, name, data, quant)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
        fsync_dir(out.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _write_metadata(writer, gguf, cfg, name: str, quant: str) -> None:
    file_type = gguf.LlamaFileType.MOSTLY_F16 if quant == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0
    writer.add_name(name)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_context_length(cfg.max_seq_len)
    writer.add_embedding_length(cfg.dim)
    writer.add_block_count(cfg.n_layers)
    writer.add_feed_forward_length(cfg.hidden_dim)
    writer.add_head_count(cfg.n_heads)
    writer.add_head_count_kv(cfg.kv_heads)
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def gguf_tensors(state: dict[str, torch.Tensor], cfg):
    """``(llama.cpp name, fp32 numpy array)`` for every tensor to write; a tied head is left out
    (llama.cpp then uses ``token_embd`` as the output)."""
    from .hf import renamed

    for key, name, data in renamed(state, cfg, _LAYER_NAMES, _TOP_NAMES, "blk", "llama.cpp"):
        if not cfg.qk_norm and key.endswith(("attn.wq.weight", "attn.wk.weight")):
            data = pairs_from_halves(data, cfg.n_heads if key.endswith("wq.weight") else cfg.kv_heads)
        yield name, data.contiguous().numpy()


def pairs_from_halves(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Reorder the rows of each head of a query/key projection from "rotate half" order (pairs
    ``i, i + d/2``) to neighbouring pairs (``2i, 2i + 1``), the order llama.cpp's ``llama`` rotates."""
    rows, cols = w.shape
    d = rows // heads
    return w.reshape(heads, 2, d // 2, cols).transpose(1, 2).reshape(rows, cols)


def _add_tensor(writer, gguf, name: str, data, quant: str) -> None:
    import numpy as np

    if data.ndim == 1:
        writer.add_tensor(name, data.astype(np.float32))
        return
    if quant == "q8_0" and data.shape[-1] % 32 == 0:
        qtype = gguf.GGMLQuantizationType.Q8_0
        writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        return
    writer.add_tensor(name, data.astype(np.float16))


# ---------------------------------------------------------------- tokenizer
def gguf_vocab(tok: Tokenizer, n_vocab: int, tokenizer_file: Path) -> dict:
    """llama.cpp's view of ``tok``: ``tokens``, ``types``, ``merges`` and ``pre``, padded to ``n_vocab`` ids."""
    import json

    from .hf import _bytes_to_unicode

    if tok.kind == "byte":
        tokens = [_bytes_to_unicode()[b] for b in range(256)]
        specials = sorted(tok.special_tokens, key=tok.special_tokens.__getitem__)
        # No merges, so every byte stays its own token, whatever the split. llama.cpp wants at
        # least one merge: this one joins two special tokens, which never meet inside a text.
        merges = [f"{specials[0]} {specials[0]}"] if specials else []
        pre = "gpt-2"
        added = {t: True for t in specials}
        tokens += specials
    elif tok.kind == "bpe":
        data = json.loads(tokenizer_file.read_text(encoding="utf-8"))
        model = data["model"]
        pre = _pre_tokenizer(data, tokenizer_file)
        by_id = {i: t for t, i in model["vocab"].items()}
        added = {}
        for t in data.get("added_tokens") or []:
            by_id[t["id"]] = t["content"]
            added[t["content"]] = bool(t.get("special"))
        size = max(by_id) + 1
        missing = [i for i in range(size) if i not in by_id]
        if missing:
            raise FoundryError(f"{tokenizer_file}: ids {missing[:3]} have no token; llama.cpp needs every id named")
        tokens = [by_id[i] for i in range(size)]
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    else:
        raise FoundryError(f"a {tok.kind} tokenizer cannot be exported to GGUF: llama.cpp has no tokenizer that "
                           "reads unknown characters as ours does; train with tokenizer=byte or bpe")
    if len(tokens) > n_vocab:
        raise FoundryError(f"the tokenizer has {len(tokens)} ids but the model only {n_vocab}")
    normal, control, user, unused = 1, 3, 4, 5  # gguf.TokenType values (no import needed here)
    types = [control if added.get(t) else user if t in added else normal for t in tokens]
    pad = n_vocab - len(tokens)
    return {"tokens": tokens + [f"[PAD{i}]" for i in range(pad)], "types": types + [unused] * pad,
            "merges": merges, "pre": pre}


def _pre_tokenizer(data: dict, where: Path) -> str:
    """llama.cpp's name for the split of a byte-level BPE tokenizer.json: GPT-2's (the ByteLevel
    step's own regex: ours), SmolLM's (single digits first), or a Split regex of ``_SPLITS``."""
    pre = data.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    byte_level = [s for s in steps if s.get("type") == "ByteLevel"]
    if len(byte_level) != 1 or kinds[-1] != "ByteLevel":
        raise FoundryError(f"{where}: not a byte-level BPE; llama.cpp's BPE reads byte-level tokenizers only")
    regex = byte_level[0].get("use_regex", True)
    if kinds == ["ByteLevel"] and regex:
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and regex and steps[0].get("individual_digits"):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not regex:
        pattern = (steps[0].get("pattern") or {}).get("Regex")
        if pattern in _SPLITS:
            return _SPLITS[pattern]
    raise FoundryError(f"{where}: its pre-tokenizer ({' + '.join(map(str, kinds))}) is not a split llama.cpp "
                       "knows (GPT-2's, SmolLM's, Llama 3's, Qwen2's)")


def _write_vocab(writer, gguf, tok: Tokenizer, vocab: dict) -> None:
    from .chat_template import CHAT_TEMPLATE
    from .hf import _has_chat_tokens

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab["pre"])
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    writer.add_token_merges(vocab["merges"])
    ids = {name: tok.token_id(name) for name in (BOS, EOS, PAD, UNK, ASSISTANT_END, USER_START)}
    # llama.cpp ends generation at eos, eot and eom: our end of text, end of the assistant's turn,
    # and (eom) the start of a user turn the model would write itself. BOS, our fourth chat
    # terminator, has no such slot (a Modelfile's `stop` covers it; docs/*/interop.md).
    for name, add in ((BOS, writer.add_bos_token_id), (EOS, writer.add_eos_token_id), (PAD, writer.add_pad_token_id),
                      (UNK, writer.add_unk_token_id), (ASSISTANT_END, writer.add_eot_token_id),
                      (USER_START, writer.add_eom_token_id)):
        if ids[name] is not None:
            add(ids[name])
    writer.add_add_bos_token(False)  # our prompts carry BOS where they need it (a chat always starts with it)
    if _has_chat_tokens(tok):
        writer.add_chat_template(CHAT_TEMPLATE)
