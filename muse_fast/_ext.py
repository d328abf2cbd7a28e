"""Access to the C++ extension: the module, and the raw-pointer view the kernels take.

The extension has no libtorch linkage; it receives ``data_ptr()`` integers, sizes, strides
and dtype names, so it works with any torch version.
"""

from __future__ import annotations

from types import ModuleType

import torch

from ._backend import extension_import_error


def ext() -> ModuleType:
    """The loaded ``muse_fast._C`` module (raises ImportError with the reason if not built)."""
    err = extension_import_error()
    if err:
        raise ImportError(err)
    from . import _C

    return _C


def dtype_name(t: torch.Tensor | torch.dtype) -> str:
    """'float32', 'bfloat16', ... as csrc/common.h parses them."""
    dt = t.dtype if isinstance(t, torch.Tensor) else t
    return str(dt).replace("torch.", "")


def ptr(t: torch.Tensor | None) -> int:
    """Address of a CPU tensor's first element (0 for None)."""
    if t is None:
        return 0
    if t.device.type != "cpu":
        raise ValueError(f"C++ kernels take CPU tensors, got one on {t.device}")
    return t.data_ptr()
