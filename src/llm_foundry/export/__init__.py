"""Export a model folder to formats other tools load (Hugging Face ``transformers``)."""

from ..utils.lazy import lazy_exports

FORMATS = ("hf",)  # what `foundry export --format` accepts

__all__ = ["FORMATS", "export_hf", "hf_tokenizer"]
__getattr__, __dir__ = lazy_exports(__name__, {"export_hf": ".hf", "hf_tokenizer": ".hf"})
