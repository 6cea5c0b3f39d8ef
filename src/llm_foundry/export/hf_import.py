"""Import a local Hugging Face Llama or Qwen3 folder as a model folder of ours.

The reverse of :mod:`.hf`: MiniLLM is Llama-shaped (RMSNorm, "rotate half" RoPE, GQA,
SwiGLU; Qwen3 adds a per-head RMSNorm of queries and keys), so the weights are renamed,
never permuted, and the logits are those of ``transformers`` on the same ids.

The tokenizer must be a byte-level BPE ``tokenizer.json`` (Llama 3, Qwen2/3, GPT-2 style):
it becomes our BPE tokenizer as it is, with two changes, both recorded in the folder:

* the model's own document tokens take our roles: its ``eos_token`` (tokenizer_config.json,
  else config.json's id) is renamed ``<|eos|>``, its ``bos_token`` ``<|bos|>`` (and a
  pad token ``<|pad|>``). The ids do not change; only our code finds them by these names.
* our chat tokens (``<|user_start|>`` ...) and any role still missing are added as new ids
  after the tokenizer's own. Their rows are the mean of the tokenizer's rows (the embedding
  grows where it has none; the other ids' logits do not change). A model has never seen these tokens:
  ``foundry sft`` teaches it our chat layout; plain text works at once.

A SentencePiece/Unigram/WordPiece tokenizer, an unknown architecture, RoPE scaling, biases,
missing or extra weights: one line each (``FoundryError``), nothing written.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import ModelConfig
from ..tokenizers.special import BOS, DEFAULT_SPECIAL_TOKENS, EOS, PAD
from ..utils.errors import FoundryError
from .hf import _LAYER_NAMES, _TOP_NAMES

ARCHITECTURES = ("llama", "qwen3")  # config.json model_type values we read
# Hugging Face names -> ours (the inverse of the export's maps).
_FROM_HF_LAYER = {hf: ours for ours, hf in _LAYER_NAMES.items()}
_FROM_HF_TOP = {hf: ours for ours, hf in _TOP_NAMES.items()}


def import_hf(hf_dir: str | Path, out_dir: str | Path, force: bool = False,
              max_seq_len: int | None = None) -> Path:
    """Convert the Hugging Face folder ``hf_dir`` into our model folder ``out_dir``; returns ``out_dir``.

    Args:
        hf_dir: a local folder with ``config.json``, ``tokenizer.json`` and safetensors (or
            ``pytorch_model.bin``) weights, sharded or not.
        out_dir: the model folder to write; must not exist, or be empty, unless ``force``.
        force: replace a non-empty ``out_dir``.
        max_seq_len: the context of the imported model (default: ``max_position_embeddings``).
    """
    from ..models import MiniLLM
    from ..models.model_dir import write_model_folder
    from ..tokenizers import BPETokenizer

    src, out = Path(hf_dir), Path(out_dir)
    if not src.is_dir():
        raise FoundryError(f"{src} is not a folder (foundry import reads a local Hugging Face model folder)")
    if out.exists() and not out.is_dir():
        raise FoundryError(f"--out {out} is a file, not a folder")
    if out.is_dir() and out.resolve() == src.resolve():
        raise FoundryError(f"--out {out} is the Hugging Face folder itself; choose another folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FoundryError(f"--out {out} exists and is not empty; pass --force to replace it")

    # Everything is read and checked before the first file is written.
    hf_cfg = _read_json(src / "config.json", "model config")
    cfg = model_config(hf_cfg, src, max_seq_len)
    tok_json, first_new = tokenizer_json(src, hf_cfg)
    tok = BPETokenizer.from_json(tok_json)
    if first_new > cfg.vocab_size:
        raise FoundryError(f"{src}: tokenizer.json has {first_new} ids but the model only {cfg.vocab_size} rows")
    weights = read_hf_weights(src)
    state = our_state_dict(weights, cfg, src)
    del weights
    with torch.device("meta"):
        model = MiniLLM(cfg)
    model.materialize(state)
    if tok.vocab_size > first_new:
        _init_new_rows(model, first_new, tok.vocab_size)
    write_model_folder(out, model, tok, step=0)
    return out


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise FoundryError(f"{path.parent} has no {path.name}; is it a Hugging Face model folder?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise FoundryError(f"{path} is not valid JSON ({what})") from None
    if not isinstance(data, dict):
        raise FoundryError(f"{path} is not a {what} (not a JSON object)")
    return data


def _first_line(e: Exception) -> str:
    """An exception from a library (the Rust tokenizers, safetensors, torch.load) as one line."""
    return str(e).splitlines()[0] if str(e).strip() else type(e).__name__


def model_config(hf: dict, src: Path, max_seq_len: int | None = None) -> ModelConfig:
    """Our :class:`ModelConfig` for a Llama/Qwen3 ``config.json``; refuses what MiniLLM cannot compute."""
    kind = hf.get("model_type")
    where = src / "config.json"
    if kind not in ARCHITECTURES:
        archs = hf.get("architectures")
        raise FoundryError(f"{where}: model_type {kind!r} ({archs}) is not supported; "
                           "foundry import reads Llama and Qwen3 models")

    def need(key: str):
        if not isinstance(hf.get(key), int) or isinstance(hf.get(key), bool):
            raise FoundryError(f"{where}: {key} is missing or not an integer")
        return hf[key]

    dim, heads = need("hidden_size"), need("num_attention_heads")
    if hf.get("hidden_act", "silu") != "silu":
        raise FoundryError(f"{where}: hidden_act {hf['hidden_act']!r} is not supported (MiniLLM's MLP is SwiGLU, silu)")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise FoundryError(f"{where}: {key} is true; MiniLLM's linear layers have no biases")
    if hf.get("use_sliding_window"):
        raise FoundryError(f"{where}: sliding-window attention is not supported")
    head_dim = hf.get("head_dim")
    if head_dim is not None and heads and head_dim * heads != dim:
        raise FoundryError(f"{where}: head_dim {head_dim} x {heads} heads != hidden_size {dim}; "
                           "MiniLLM's heads split hidden_size evenly")
    rope = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
    if scaling and (scaling.get("rope_type") or scaling.get("type")) not in (None, "default"):
        kind_ = scaling.get("rope_type") or scaling.get("type")
        raise FoundryError(f"{where}: RoPE scaling {kind_!r} is not supported (MiniLLM has plain RoPE)")
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    context = need("max_position_embeddings")
    if max_seq_len is not None:
        context = min(context, max_seq_len)
    try:
        return ModelConfig(
            vocab_size=need("vocab_size"), dim=dim, n_layers=need("num_hidden_layers"), n_heads=heads,
            n_kv_heads=hf.get("num_key_value_heads") or heads, max_seq_len=context,
            ffn_hidden_dim=need("intermediate_size"), norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=float(theta), qk_norm=kind == "qwen3",
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)), dropout=0.0,
            init_std=float(hf.get("initializer_range", 0.02)),
        ).validate()
    except (TypeError, ValueError) as e:
        raise FoundryError(f"{where}: {e}") from None


# ---------------------------------------------------------------- weights
def read_hf_weights(src: Path) -> dict[str, torch.Tensor]:
    """All tensors of the folder: ``model.safetensors``, its sharded index, or ``pytorch_model.bin`` (and shards)."""
    from safetensors.torch import load_file

    for index_name, single, loader in (("model.safetensors.index.json", "model.safetensors", "safetensors"),
                                       ("pytorch_model.bin.index.json", "pytorch_model.bin", "bin")):
        if (src / index_name).is_file():
            index = _read_json(src / index_name, "weights index")
            files = sorted(set((index.get("weight_map") or {}).values()))
            if not files:
                raise FoundryError(f"{src / index_name} has no weight_map")
        elif (src / single).is_file():
            files = [single]
        else:
            continue
        tensors: dict[str, torch.Tensor] = {}
        for name in files:
            path = src / name
            if not path.is_file():
                raise FoundryError(f"weights file {path} listed in {index_name} is missing")
            try:
                if loader == "safetensors":
                    tensors.update(load_file(str(path)))
                else:  # weights_only: a pickle from elsewhere must not run code
                    tensors.update(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
            except Exception as e:
                raise FoundryError(f"cannot read weights {path}: {_first_line(e)}") from None
        return tensors
    raise FoundryError(f"{src} has no weights (model.safetensors or pytorch_model.bin)")


def our_state_dict(weights: dict[str, torch.Tensor], cfg: ModelConfig, src: Path) -> dict[str, torch.Tensor]:
    """Hugging Face tensors under our names, fp32, checked against the shapes ``cfg`` gives."""
    from ..models import MiniLLM

    with torch.device("meta"):
        expected = {k: v.shape for k, v in MiniLLM(cfg).state_dict().items()}
    if cfg.tie_embeddings:
        expected.pop("output.weight")
        weights = {k: v for k, v in weights.items() if k != "lm_head.weight"}  # some folders store the tie twice
    state, extra = {}, []
    for name, value in weights.items():
        parts = name.split(".")
        if name in _FROM_HF_TOP:
            ours = _FROM_HF_TOP[name]
        elif len(parts) > 3 and parts[:2] == ["model", "layers"] and ".".join(parts[3:]) in _FROM_HF_LAYER:
            ours = f"layers.{parts[2]}.{_FROM_HF_LAYER['.'.join(parts[3:])]}"
        elif name.endswith("rotary_emb.inv_freq"):
            continue  # a buffer older transformers saved; computed from rope_theta
        else:
            extra.append(name)
            continue
        state[ours] = value
    missing = sorted(set(expected) - set(state))
    if extra or missing:
        what = f"unexpected weights {sorted(extra)[:3]}" if extra else f"missing weights (ours: {missing[:3]})"
        raise FoundryError(f"{src}: {what}; the weights do not match a {('Qwen3' if cfg.qk_norm else 'Llama')} "
                           "model of its config.json")
    for name, value in state.items():
        if tuple(value.shape) != tuple(expected[name]):
            raise FoundryError(f"{src}: weight for {name} has shape {tuple(value.shape)}, "
                               f"config.json wants {tuple(expected[name])}")
        if not value.is_floating_point():
            raise FoundryError(f"{src}: weight for {name} is {value.dtype}, not floating point (quantized?)")
    return {k: v.to(torch.float32).contiguous() for k, v in state.items()}


@torch.no_grad()
def _init_new_rows(model, first: int, end: int) -> None:
    """Rows ``first .. end`` (the tokens we added) of the embedding and an untied head: each the mean
    of the tokenizer's own rows, so a new token starts as an average token, not noise or an unused
    row's leftovers. The embedding grows where it is too small; the other ids' logits do not change."""
    emb_mean = model.tok_embeddings.weight[:first].mean(0)
    head_mean = None if model.cfg.tie_embeddings else model.output.weight[:first].mean(0)
    if end > model.cfg.vocab_size:
        model.resize_vocab(end)
    model.tok_embeddings.weight[first:end] = emb_mean
    if head_mean is not None:
        model.output.weight[first:end] = head_mean


# ---------------------------------------------------------------- tokenizer
def tokenizer_json(src: Path, hf_cfg: dict) -> tuple[str, int]:
    """The folder's ``tokenizer.json`` as our BPE tokenizer (roles renamed, chat tokens added: see the
    module docstring), and the first id it added (its own size when it added none)."""
    from tokenizers import AddedToken, Tokenizer as HFTokenizer

    path = src / "tokenizer.json"
    data = _read_json(path, "tokenizer")
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    if model.get("type") != "BPE" or not _byte_level(data):
        kind = model.get("type") or "unknown"
        raise FoundryError(f"{path}: a {kind} tokenizer without byte-level pre-tokenization cannot be mapped; "
                           "foundry import reads byte-level BPE tokenizers (Llama 3, Qwen, GPT-2 style), "
                           "not SentencePiece, Unigram or WordPiece")
    added = [t for t in data.get("added_tokens") or [] if isinstance(t, dict)]
    by_id = {t.get("id"): t for t in added}
    by_content = {t.get("content"): t for t in added}
    config_file = src / "tokenizer_config.json"
    config = _read_json(config_file, "tokenizer config") if config_file.is_file() else {}

    def role_token(name: str) -> dict | None:
        """The added token that plays ``name`` (bos/eos/pad) in this model, if any."""
        value = config.get(f"{name}_token")
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            return by_content.get(value)
        ids = hf_cfg.get(f"{name}_token_id")
        ids = ids[:1] if isinstance(ids, list) else [ids]
        return by_id.get(ids[0]) if ids and ids[0] is not None else None

    taken: set[int] = set()
    for ours, name in ((EOS, "eos"), (BOS, "bos"), (PAD, "pad")):
        token = role_token(name)
        if token is None or token["id"] in taken or ours in by_content:
            continue
        if name == "pad" and "pad" not in token["content"].lower():
            continue  # a pad_token that is really the end of text (Qwen) keeps that role (a pad is never sampled)
        if token["content"] in model.get("vocab", {}):  # GPT-2 style: the token is in the vocabulary too
            model["vocab"][ours] = model["vocab"].pop(token["content"])
        token["content"], token["special"] = ours, True  # special: typed in a text, it stays text
        taken.add(token["id"])
    # Our encode never runs the post-processor, and it names tokens by their old names.
    data["post_processor"] = None
    try:
        hf = HFTokenizer.from_str(json.dumps(data, ensure_ascii=False))
    except Exception as e:  # the Rust side's own message, first line
        raise FoundryError(f"{path} could not be read: {_first_line(e)}") from None
    first_new = hf.get_vocab_size(with_added_tokens=True)
    missing = [t for t in DEFAULT_SPECIAL_TOKENS if hf.token_to_id(t) is None]
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
    return hf.to_str(), first_new


def _byte_level(data: dict) -> bool:
    """Whether the tokenizer pre-tokenizes into bytes (a ByteLevel step, alone or in a Sequence)."""
    pre = data.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    decoder = data.get("decoder") or {}
    byte_steps = any(isinstance(s, dict) and s.get("type") == "ByteLevel" for s in steps)
    return byte_steps and decoder.get("type") == "ByteLevel"
