"""LoRA fine-tuning through ``peft``: small adapters train, the model's own weights stay frozen.

``train.lora_rank=R`` (``foundry train``, ``midtrain``, ``sft``, ``dpo``) wraps each target
layer ``W`` (by default every attention and MLP projection) as ``W x + (alpha / R) * B (A x)``
with ``A`` (R x in) and ``B`` (out x R, zero at the start, so step 0 is the model itself).
Only ``A`` and ``B`` get gradients and optimizer state: on the ``tiny`` preset a rank of 8
trains about 5% of the parameters.

The wrapping is peft's (``inject_adapter_in_model``, the same layers ``get_peft_model`` uses);
the rest is ours:

* the checkpoint is the shared unit (``state.save_checkpoint``): the base weights under
  their plain names in ``model.safetensors`` and the adapters beside them in peft's files
  (``models/adapters.py``), with the optimizer state of the adapters in ``training_state.pt``,
  so ``--resume`` continues exactly;
* every reader of the folder merges the adapters into the weights (``load_model_dir``), and
  :func:`merge_lora_folder` writes that merged model as a plain folder (``foundry merge-lora``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from ..config import TrainConfig
from ..models.adapters import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, read_adapters
from ..utils.errors import FoundryError

ADAPTER = "default"  # peft's name of the one adapter a model carries here


def lora_targets(cfg: TrainConfig) -> list[str]:
    """The layer names of ``train.lora_targets``."""
    return [t.strip() for t in cfg.lora_targets.split(",") if t.strip()]


def _check_targets(model: nn.Module, cfg: TrainConfig) -> None:
    """Each target names a linear layer, and the rank fits every one of them.

    Raises:
        FoundryError: an unknown target or a rank above a layer's smaller side (one line).
    """
    # The output head is no target: tied to the embedding, it is saved once, as the embedding.
    layers = {name.rsplit(".", 1)[-1]: m for name, m in model.named_modules()
              if isinstance(m, nn.Linear) and name != "output"}
    for target in lora_targets(cfg):
        layer = layers.get(target)
        if layer is None:
            raise FoundryError(f"train.lora_targets: no linear layer is called '{target}' "
                               f"(the model's: {', '.join(sorted(layers))})")
        if cfg.lora_rank > min(layer.in_features, layer.out_features):
            raise FoundryError(f"train.lora_rank ({cfg.lora_rank}) is larger than the layer {target} "
                               f"({layer.out_features} x {layer.in_features}); use at most "
                               f"{min(layer.in_features, layer.out_features)}")


def lora_config(cfg: TrainConfig):
    """peft's ``LoraConfig`` of these settings."""
    try:
        from peft import LoraConfig
    except ImportError:
        raise FoundryError("train.lora_rank needs the peft package: pip install 'llm-foundry[lora]'") from None
    return LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=lora_targets(cfg), bias="none")


def attach_lora(model: nn.Module, cfg: TrainConfig, adapters_from: str | Path | None = None) -> nn.Module:
    """Wrap ``model``'s target layers with LoRA adapters (in place) and freeze everything else.

    Args:
        adapters_from: a model folder whose saved adapters to load (a LoRA run's resume);
            None: fresh adapters (``B`` = 0, so the model computes what it did).

    Raises:
        FoundryError: peft missing, an unknown target, a rank too large, or saved adapters
            that do not fit.
    """
    _check_targets(model, cfg)
    config = lora_config(cfg)  # first: a missing peft is one line
    from peft import inject_adapter_in_model, set_peft_model_state_dict

    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_" in name)
    if adapters_from is not None:
        saved, tensors = read_adapters(adapters_from)
        if saved.get("r") != cfg.lora_rank:
            raise FoundryError(f"{adapters_from} holds adapters of rank {saved.get('r')}, not train.lora_rank={cfg.lora_rank}")
        device = next(model.parameters()).device
        result = set_peft_model_state_dict(model, {k: v.to(device) for k, v in tensors.items()}, adapter_name=ADAPTER)
        if getattr(result, "unexpected_keys", None):
            raise FoundryError(f"the adapters in {adapters_from} do not fit this model ({result.unexpected_keys[0]})")
    return model


def has_lora(model: nn.Module) -> bool:
    """Whether ``model`` carries LoRA adapters (:func:`attach_lora`)."""
    return any(".lora_A." in name for name, _ in model.named_parameters())


def base_name(name: str) -> str:
    """A wrapped layer's parameter under its plain name (``wq.base_layer.weight`` -> ``wq.weight``)."""
    return name.replace(".base_layer.", ".")


def split_lora(model: nn.Module, weights: dict[str, torch.Tensor] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, bytes]]:
    """A LoRA model's checkpoint: its base weights under their plain names, and the adapter files.

    Args:
        weights: the state to split (e.g. averaged weights); None: the model's own.

    Returns:
        ``(base weights, {file name: content})`` for ``save_checkpoint_dir``.
    """
    from peft import get_peft_model_state_dict
    from safetensors.torch import save

    state = weights if weights is not None else model.state_dict()
    base = {base_name(k): v for k, v in state.items() if ".lora_" not in k}
    adapters = get_peft_model_state_dict(model, state_dict=dict(state), adapter_name=ADAPTER)
    config = lora_config_dict(model)
    return base, {ADAPTER_WEIGHTS_FILE: save({k: v.detach().cpu().contiguous() for k, v in adapters.items()},
                                             metadata={"format": "pt"}),
                  ADAPTER_CONFIG_FILE: json.dumps(config, indent=2, sort_keys=True).encode()}


def lora_config_dict(model: nn.Module) -> dict:
    """The model's adapter config as peft writes ``adapter_config.json`` (sets as sorted lists)."""
    config = model.peft_config[ADAPTER].to_dict()
    out = {}
    for k, v in config.items():
        if isinstance(v, set):
            v = sorted(v)
        elif hasattr(v, "value"):  # enums: PeftType.LORA -> "LORA"
            v = v.value
        out[k] = v
    return out


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameters of ``model`` (a tied matrix counted once)."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def describe_trainable(model: nn.Module) -> str:
    """``"trainable 40,960 of 845,568 parameters (4.84%)"``, for a run's headline."""
    trainable, total = parameter_counts(model)
    return f"trainable {trainable:,} of {total:,} parameters ({100 * trainable / max(total, 1):.2f}%)"


def peak_rss_mib() -> float | None:
    """This process's peak resident memory in MiB (None where the OS does not say)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / 2**20 if sys.platform == "darwin" else peak / 1024, 1)  # bytes on macOS, KiB elsewhere


def lora_summary(model: nn.Module) -> dict:
    """What a LoRA run reports at its end: trainable and total parameters, their share, peak memory."""
    trainable, total = parameter_counts(model)
    return {"trainable_parameters": trainable, "total_parameters": total,
            "trainable_percent": round(100 * trainable / max(total, 1), 3), "peak_rss_mib": peak_rss_mib()}


def merge_lora_folder(model_dir: str | Path, out: str | Path) -> dict:
    """Write the model folder ``model_dir`` with its adapters merged as a plain model folder ``out``.

    The merged weights are ``W + scale * B @ A`` (``models/adapters.py``), so ``out``'s logits
    are those of the adapted model. Returns a summary.

    Raises:
        FoundryError: no adapters in ``model_dir``, ``out`` is ``model_dir`` or holds a run.
    """
    from ..models.adapters import has_adapters
    from ..models.model_dir import CONFIG_FILE, load_model_dir, save_model_dir

    model_dir, out = Path(model_dir), Path(out)
    if not (model_dir / CONFIG_FILE).is_file():
        raise FoundryError(f"model folder not found: {model_dir}")
    if not has_adapters(model_dir):
        raise FoundryError(f"{model_dir} holds no LoRA adapters ({ADAPTER_CONFIG_FILE}); it is a plain model already")
    if out.resolve() == model_dir.resolve():
        raise FoundryError("--out must differ from the model folder")
    if out.exists() and any(out.iterdir()):
        raise FoundryError(f"{out} already exists and is not empty; choose another --out")
    bundle = load_model_dir(model_dir)  # the adapters merged
    save_model_dir(out, bundle.model, bundle.tokenizer, bundle.step)
    config, tensors = read_adapters(model_dir)
    return {"out": str(out), "rank": config["r"], "merged_layers": len(tensors) // 2, "step": bundle.step}
