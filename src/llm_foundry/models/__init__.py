"""MiniLLM: a Llama-shaped decoder (RMSNorm, RoPE, GQA, SwiGLU) with a KV cache."""

from .components import RMSNorm, Attention, SwiGLU, Block, rope_tables, apply_rope
from .kv_cache import KVCache
from .minillm import MiniLLM

__all__ = ["RMSNorm", "Attention", "SwiGLU", "Block", "rope_tables", "apply_rope", "KVCache", "MiniLLM"]
