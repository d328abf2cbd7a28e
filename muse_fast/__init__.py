"""muse_fast: fused kernels for self-supervised music representation learning.

``muse_fast.ops`` holds the functional ops (each with an eager ``*_reference``), ``muse_fast.nn``
their modules, ``muse_fast.models`` the papers' encoders. Every op dispatches CUDA tensors to
Triton, CPU tensors to C++ (where a kernel exists) and otherwise to its reference;
:func:`backend` or ``MUSE_FAST_BACKEND`` forces one.
"""

from . import nn, ops  # noqa: E402  (after the dispatcher they use)
from .__version__ import __version__
from ._backend import (
    BACKENDS,
    BackendUnavailableError,
    FallbackWarning,
    available_backends,
    backend,
    forced_backend,
)

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "FallbackWarning",
    "__version__",
    "available_backends",
    "backend",
    "forced_backend",
    "nn",
    "ops",
]
