"""Small shared helpers: user-facing errors, atomic file writes, device detection."""

from .errors import FoundryError
from .io import atomic_write_bytes, atomic_write_json, atomic_write_text, atomic_torch_save, read_json
from .lazy import lazy_exports

# The device helpers import PyTorch: loaded on first use.
__getattr__, __dir__ = lazy_exports(__name__, {name: ".device" for name in (
    "resolve_device", "bf16_supported", "autocast_context", "resolve_dtype")})

__all__ = [
    "FoundryError",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "atomic_torch_save",
    "read_json",
    "resolve_device",
    "bf16_supported",
    "autocast_context",
    "resolve_dtype",
]
