"""One dispatcher for every op: Triton for CUDA tensors, C++ for CPU tensors, eager reference last.

Each op registers an :class:`Op` with up to three implementations that take the same arguments:

* ``triton``    — kernels in ``muse_fast.kernels``; CUDA tensors, or CPU tensors when the
  process runs Triton's interpreter (``TRITON_INTERPRET=1``, how CI tests the kernels);
* ``cpu``       — C++ kernels in ``muse_fast._C``; CPU tensors;
* ``reference`` — the eager PyTorch definition of the op; always usable.

Selection (:meth:`Op.select`):

1. A forced backend — ``with muse_fast.backend("triton"):`` or ``MUSE_FAST_BACKEND=triton`` — is
   used when the op has that implementation; if it has one but refuses the inputs, a
   :class:`BackendUnavailableError` says why. An op with no implementation for the forced backend
   runs its reference (forcing ``cpu`` on an op without C++ kernels is not an error).
2. Otherwise the preferred backend for the inputs' device (``triton`` on CUDA, ``cpu`` on CPU) runs
   if it accepts them; if it refuses, the reference runs and a warning (once per op and reason)
   says why.

Why a backend refuses is answered by :meth:`Op.availability` (exposed as
``muse_fast.ops.available_backends``): a generic part (is Triton importable, is the extension
built, is the device right) and an op-specific ``*_check`` returning a reason or ``None``.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import torch

BACKENDS: tuple[str, ...] = ("triton", "cpu", "reference")
_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "muse_fast_backend", default=None
)


def _validate_backend(name: str | None, source: str) -> str | None:
    if name is None:
        return None
    name = name.strip().lower()
    if name in ("", "auto"):
        return None
    if name not in BACKENDS:
        raise ValueError(f"{source}: expected one of {BACKENDS} or 'auto', got {name!r}")
    return name


def forced_backend() -> str | None:
    """The backend forced by :func:`backend` or ``MUSE_FAST_BACKEND`` (the context wins), or None."""
    ctx = _forced.get()
    if ctx is not None:
        return ctx
    return _validate_backend(os.environ.get("MUSE_FAST_BACKEND"), "MUSE_FAST_BACKEND")


@contextlib.contextmanager
def backend(name: str | None) -> Iterator[None]:
    """Force every op inside the block onto one backend (``None`` or ``"auto"``: the default rule).

    >>> with muse_fast.backend("reference"):
    ...     y = muse_fast.ops.gather_tokens(x, idx)
    """
    token = _forced.set(_validate_backend(name, "backend(name)") if name is not None else None)
    try:
        yield
    finally:
        _forced.reset(token)


def triton_interpret() -> bool:
    """True when Triton kernels run on the CPU under the interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


@cache
def triton_import_error() -> str | None:
    """None when ``import triton`` works, else the reason."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as e:  # pragma: no cover - depends on the install
        return f"triton is not importable ({type(e).__name__}: {e})"
    return None


@cache
def extension_import_error() -> str | None:
    """None when the C++ extension ``muse_fast._C`` loads, else the reason."""
    try:
        from muse_fast import _C  # noqa: F401
    except Exception as e:
        return (
            f"the C++ extension muse_fast._C is not built ({type(e).__name__}: {e}); "
            "reinstall with `pip install -e .`"
        )
    return None


def _iter_tensors(args: tuple, kwargs: dict) -> Iterator[torch.Tensor]:
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, torch.Tensor):
            yield a
        elif isinstance(a, (list, tuple)):
            yield from (t for t in a if isinstance(t, torch.Tensor))


def device_of(args: tuple, kwargs: dict) -> torch.device:
    """The device an op call runs on: its first tensor's, else its ``device`` keyword, else CPU."""
    for t in _iter_tensors(args, kwargs):
        return t.device
    dev = kwargs.get("device")
    return torch.device(dev) if dev is not None else torch.device("cpu")


Check = Callable[..., "str | None"]


@dataclass
class Op:
    """An op's implementations, and the rule that picks one for given inputs."""

    name: str
    reference: Callable[..., Any]
    triton: Callable[..., Any] | None = None
    cpu: Callable[..., Any] | None = None
    triton_check: Check | None = None
    cpu_check: Check | None = None
    _warned: set = field(default_factory=set, repr=False)

    def impl(self, backend_name: str) -> Callable[..., Any] | None:
        return getattr(self, backend_name)

    def refusal(self, backend_name: str, *args: Any, **kwargs: Any) -> str | None:
        """Why ``backend_name`` cannot take these inputs, or None when it can."""
        if backend_name == "reference":
            return None
        if self.impl(backend_name) is None:
            return f"no {backend_name} kernel for {self.name}"
        dev = device_of(args, kwargs)
        tensors = list(_iter_tensors(args, kwargs))
        if len({t.device for t in tensors}) > 1:
            return f"inputs are on several devices: {sorted({str(t.device) for t in tensors})}"
        if backend_name == "triton":
            err = triton_import_error()
            if err:
                return err
            if dev.type == "cpu" and not triton_interpret():
                return "tensors are on the CPU; Triton runs them only under TRITON_INTERPRET=1"
            if dev.type not in ("cuda", "cpu"):
                return f"Triton needs CUDA tensors, got {dev.type}"
            check = self.triton_check
        else:
            err = extension_import_error()
            if err:
                return err
            if dev.type != "cpu":
                return f"the C++ kernels take CPU tensors, got {dev.type}"
            check = self.cpu_check
        return check(*args, **kwargs) if check is not None else None

    def availability(self, *args: Any, **kwargs: Any) -> dict[str, str | None]:
        """``{backend: None if usable else reason}`` for these inputs, in priority order."""
        return {b: self.refusal(b, *args, **kwargs) for b in BACKENDS}

    def select(self, *args: Any, **kwargs: Any) -> tuple[str, Callable[..., Any]]:
        forced = forced_backend()
        if forced is not None:
            if self.impl(forced) is None:
                return "reference", self.reference
            why = self.refusal(forced, *args, **kwargs)
            if why is not None:
                raise BackendUnavailableError(
                    f"{self.name}: backend {forced!r} was forced but {why}"
                )
            return forced, self.impl(forced)
        preferred = "triton" if device_of(args, kwargs).type == "cuda" else "cpu"
        if self.impl(preferred) is not None:
            why = self.refusal(preferred, *args, **kwargs)
            if why is None:
                return preferred, self.impl(preferred)
            if why not in self._warned:
                self._warned.add(why)
                warnings.warn(
                    f"muse_fast.{self.name}: falling back to the eager reference: {why}",
                    FallbackWarning,
                    stacklevel=3,
                )
        return "reference", self.reference

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        _, fn = self.select(*args, **kwargs)
        return fn(*args, **kwargs)


class BackendUnavailableError(ValueError):
    """A forced backend cannot take the given inputs (the message says why)."""


class FallbackWarning(UserWarning):
    """The preferred backend refused the inputs and the reference ran instead."""


_REGISTRY: dict[str, Op] = {}


def register(op: Op) -> Op:
    """Add ``op`` to the registry that ``available_backends`` and ``muse-fast info`` read."""
    _REGISTRY[op.name] = op
    return op


def get_op(name: str) -> Op:
    if name not in _REGISTRY:
        raise ValueError(f"op_name: unknown op {name!r}; known ops: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def registered_ops() -> dict[str, Op]:
    return dict(_REGISTRY)


def available_backends(op_name: str, *example_inputs: Any, **kwargs: Any) -> dict[str, str | None]:
    """Which backends can run ``op_name`` on these inputs: ``{backend: None | reason}``.

    ``None`` means usable; a string says why not. The order is the priority order.

    >>> muse_fast.ops.available_backends("gather_tokens", x, keep_idx)
    {'triton': 'tensors are on the CPU; Triton runs them only under TRITON_INTERPRET=1',
     'cpu': None, 'reference': None}
    """
    return get_op(op_name).availability(*example_inputs, **kwargs)
