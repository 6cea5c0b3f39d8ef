"""Text generation with a KV cache: sampling and the Generator."""

from .sampling import sample_next
from .generator import Generator

__all__ = ["sample_next", "Generator"]
