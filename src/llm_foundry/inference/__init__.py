"""Text generation with a KV cache: sampling and the Generator."""

from .sampling import sample_next
from .generator import DecodeModels, Generator, decode_models

__all__ = ["sample_next", "Generator", "DecodeModels", "decode_models"]
