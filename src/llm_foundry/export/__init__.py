"""Export a model folder to formats other tools load (Hugging Face ``transformers``)."""

from .hf import FORMATS, export_hf, hf_tokenizer

__all__ = ["FORMATS", "export_hf", "hf_tokenizer"]
