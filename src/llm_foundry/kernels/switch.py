"""The one switch of the fast paths: ``FOUNDRY_NO_CPU_KERNELS=1`` turns every one of them off.

Read once, when the package is imported: a compiled graph takes it as a constant, so one
process runs with one setting. With it off, the model runs its plain PyTorch reference
(``models/``), the native kernels are never built, and the optimizer takes PyTorch's step.
"""

from __future__ import annotations

import os

ENABLED = not os.environ.get("FOUNDRY_NO_CPU_KERNELS")
