"""Text in, token shards out: sources, memory-mapped shards, and a resumable loader."""

from ..utils.lazy import lazy_exports
from .sources import Corpus, Document, read_documents, read_text_file, builtin_corpus
from .shards import prepare_dataset, TokenDataset
from .split import split_documents

__all__ = ["Corpus", "Document", "read_documents", "read_text_file", "builtin_corpus", "prepare_dataset", "split_documents", "TokenDataset", "WindowLoader"]
# The loader needs PyTorch; `foundry prepare` should not pay for importing it.
__getattr__, __dir__ = lazy_exports(__name__, {"WindowLoader": ".loader"})
