"""llm-foundry: build, train, study and talk to small language models, offline.

The public API is re-exported here so that `from llm_foundry import MiniLLM` works;
deeper imports (`llm_foundry.models.components`) are for the package itself.
"""

__version__ = "0.1.0"

from .config import ModelConfig, TrainConfig
from .tokenizers import Tokenizer, ByteTokenizer, CharTokenizer, BPETokenizer, load_tokenizer
from .models import MiniLLM
from .training import Trainer
from .inference import Generator

__all__ = [
    "__version__",
    "ModelConfig",
    "TrainConfig",
    "Tokenizer",
    "ByteTokenizer",
    "CharTokenizer",
    "BPETokenizer",
    "load_tokenizer",
    "MiniLLM",
    "Trainer",
    "Generator",
]
