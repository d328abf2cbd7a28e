"""Output allocation for kernels: ``torch.empty``, poisoned when ``MUSE_FAST_POISON=1``.

Tests set ``MUSE_FAST_POISON=1`` so an element a kernel forgot to write is NaN (floats) or -7
(ints) instead of whatever the allocator happened to hold.
"""

from __future__ import annotations

import os

import torch

from .testing import poison


def empty(*shape: int, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    t = torch.empty(*shape, dtype=dtype, device=device)
    if os.environ.get("MUSE_FAST_POISON", "0") == "1":
        poison(t)
    return t
