"""Text in, token shards out: sources, memory-mapped shards, and a resumable loader."""

from .sources import Document, read_documents, read_text_file, builtin_corpus
from .shards import prepare_dataset, split_documents, TokenDataset
from .loader import WindowLoader

__all__ = ["Document", "read_documents", "read_text_file", "builtin_corpus", "prepare_dataset", "split_documents", "TokenDataset", "WindowLoader"]
