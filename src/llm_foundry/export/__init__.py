"""Models out to and in from other tools: Hugging Face ``transformers`` folders, GGUF for llama.cpp."""

from ..utils.lazy import lazy_exports

FORMATS = ("hf", "gguf")  # what `foundry export --format` accepts

__all__ = ["FORMATS", "export_gguf", "export_hf", "hf_tokenizer", "import_hf"]
__getattr__, __dir__ = lazy_exports(__name__, {"export_hf": ".hf", "hf_tokenizer": ".hf", "import_hf": ".hf_import",
                                                 "export_gguf": ".gguf"})
