"""llm-foundry: build, train, study and talk to small language models, offline.

The public API is re-exported here so that `from llm_foundry import MiniLLM` works;
deeper imports (`llm_foundry.models.components`) are for the package itself. The
re-exports load on first use, so that `foundry --help` and the light commands start
without importing PyTorch.
"""

from .utils.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "ModelConfig": ".config",
    "TrainConfig": ".config",
    "Tokenizer": ".tokenizers",
    "ByteTokenizer": ".tokenizers",
    "CharTokenizer": ".tokenizers",
    "BPETokenizer": ".tokenizers",
    "load_tokenizer": ".tokenizers",
    "MiniLLM": ".models",
    "Trainer": ".training",
    "Generator": ".inference",
}
__all__ = ["__version__", *_EXPORTS]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
