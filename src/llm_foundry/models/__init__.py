"""MiniLLM: a Llama-shaped decoder (RMSNorm, RoPE, GQA, SwiGLU) with a KV cache, and the model folder format."""

from .components import RMSNorm, Attention, SwiGLU, Block, rope_tables, apply_rope
from .kv_cache import KVCache
from .minillm import MiniLLM
from .model_dir import ModelBundle, load_model_config, load_model_dir, save_model_dir

__all__ = ["RMSNorm", "Attention", "SwiGLU", "Block", "rope_tables", "apply_rope", "KVCache", "MiniLLM",
           "ModelBundle", "load_model_config", "load_model_dir", "save_model_dir"]
