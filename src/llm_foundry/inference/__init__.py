"""Text generation: the Engine (the one token loop), the Generator over it, sampling, the text stream."""

from ..config.sampling import MAX_TEMPERATURE, check_sampling
from .sampling import sample_next
from .decoding import DecodeModels, decode_models
from .text_stream import ReplyDecoder, TextStream
from .engine import Engine
from .generator import Generator

__all__ = ["sample_next", "check_sampling", "MAX_TEMPERATURE", "Generator", "Engine", "DecodeModels",
           "decode_models", "TextStream", "ReplyDecoder"]
