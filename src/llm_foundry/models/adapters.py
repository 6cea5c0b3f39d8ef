"""LoRA adapters saved beside a model folder's weights, and their merge into them.

A LoRA run (``train.lora_rank > 0``, see ``training/lora.py``) writes its model folder as
the *base* weights, untouched, plus two files in peft's layout:

    adapter_config.json        {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": [...], ...}
    adapter_model.safetensors  layers.0.attn.wq.lora_A.weight (r x in), ...lora_B.weight (out x r), ...

The adapted layer computes ``W x + scale * B (A x)`` with ``scale = lora_alpha / r``
(``lora_alpha / sqrt(r)`` with ``use_rslora``), so the plain weight ``W + scale * B @ A``
gives the same logits. Every reader of a model folder (chat, serve, eval, export, a new
fine-tune) gets the merged weights from :func:`merge_adapters`; only a LoRA run's own
``--resume`` keeps them apart. Nothing here needs peft: the merge is one matrix product
per adapted layer.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..utils.errors import FoundryError
from ..utils.io import read_json

ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"


def has_adapters(path: str | Path) -> bool:
    """Whether the model folder ``path`` holds LoRA adapters."""
    return (Path(path) / ADAPTER_CONFIG_FILE).is_file()


def adapter_scale(config: dict) -> float:
    """The factor of ``B @ A``: ``lora_alpha / r`` (over ``sqrt(r)`` with rsLoRA)."""
    r, alpha = config["r"], config["lora_alpha"]
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def read_adapters(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The adapter config and tensors of the model folder ``path``.

    Raises:
        FoundryError: a missing, damaged or foreign adapter file (one line).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    config = read_json(path / ADAPTER_CONFIG_FILE, "adapter config")
    if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA":
        raise FoundryError(f"{path / ADAPTER_CONFIG_FILE} is not a LoRA adapter config")
    r, alpha = config.get("r"), config.get("lora_alpha")
    if not (isinstance(r, int) and r > 0 and isinstance(alpha, (int, float)) and alpha > 0):
        raise FoundryError(f"{path / ADAPTER_CONFIG_FILE} needs a positive integer 'r' and a positive 'lora_alpha'")
    if config.get("use_dora") or config.get("fan_in_fan_out") or config.get("bias", "none") != "none":
        raise FoundryError(f"{path / ADAPTER_CONFIG_FILE}: only plain LoRA adapters (no DoRA, bias or fan_in_fan_out) load here")
    file = path / ADAPTER_WEIGHTS_FILE
    try:
        tensors = load_file(file)
    except FileNotFoundError:
        raise FoundryError(f"{path} has {ADAPTER_CONFIG_FILE} but no {ADAPTER_WEIGHTS_FILE}") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise FoundryError(f"adapter weights are corrupt: {file} ({str(e).splitlines()[0][:100]})") from None
    return config, tensors


def merge_adapters(weights: dict[str, torch.Tensor], path: str | Path) -> dict[str, torch.Tensor]:
    """``weights`` (plain names, e.g. ``layers.0.attn.wq.weight``) with the adapters of the model
    folder ``path`` merged in: ``W + scale * B @ A`` for each adapted layer.

    Raises:
        FoundryError: an adapter for a layer the weights lack, or of the wrong shape.
    """
    config, tensors = read_adapters(path)
    scale = adapter_scale(config)
    out = dict(weights)
    layers = sorted({k[: -len(".lora_A.weight")] for k in tensors if k.endswith(".lora_A.weight")})
    for layer in layers:
        a, b = tensors[f"{layer}.lora_A.weight"], tensors.get(f"{layer}.lora_B.weight")
        w = out.get(f"{layer}.weight")
        if b is None or w is None or b.shape[1] != a.shape[0] or (b.shape[0], a.shape[1]) != tuple(w.shape):
            raise FoundryError(f"adapter of {layer} in {path / ADAPTER_WEIGHTS_FILE} does not fit the model's weights")
        out[f"{layer}.weight"] = (w.float() + scale * (b.float() @ a.float())).to(w.dtype)
    return out
