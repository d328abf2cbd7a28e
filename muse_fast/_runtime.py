"""Leaf runtime helpers shared by every layer (no muse_fast imports, no triton import).

* :func:`empty` allocates kernel outputs; with ``MUSE_FAST_POISON=1`` (the tests) they are
  filled with a value a kernel must overwrite, so an element it forgot to write fails a test
  instead of holding whatever the allocator left there.
* :func:`triton_interpret` says whether Triton kernels run on the CPU under the interpreter.
* :func:`acc_dtype` is the accumulation dtype every kernel and reference uses.
"""

from __future__ import annotations

import os

import torch


def triton_interpret() -> bool:
    """True when Triton kernels run on the CPU under the interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def acc_dtype(*dtypes: torch.dtype | torch.Tensor) -> torch.dtype:
    """Accumulation dtype for inputs of these dtypes (or tensors): float64 if any is float64,
    else float32 (bf16 / fp16 / fp32 inputs all accumulate in fp32)."""
    ds = [d.dtype if isinstance(d, torch.Tensor) else d for d in dtypes]
    return torch.float64 if torch.float64 in ds else torch.float32


def poison(t: torch.Tensor) -> torch.Tensor:
    """Fill ``t`` in place with a value a kernel must overwrite (NaN for floats, -7 for ints)."""
    if t.is_floating_point():
        return t.fill_(float("nan"))
    if t.dtype == torch.bool:
        return t.fill_(True)
    return t.fill_(-7)


def empty(*shape: int, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """``torch.empty``, poisoned when ``MUSE_FAST_POISON=1``."""
    t = torch.empty(*shape, dtype=dtype, device=device)
    if os.environ.get("MUSE_FAST_POISON", "0") == "1" and t.device.type != "meta":
        poison(t)
    return t
