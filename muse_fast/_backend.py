"""One dispatcher for every op, and :func:`declare`, the one way an op is declared.

An op (:class:`Op`) has up to four implementations taking the same arguments:

* ``triton``    — kernels in ``muse_fast.kernels``; CUDA tensors, or CPU tensors when the
  process runs Triton's interpreter (``TRITON_INTERPRET=1``, how CI tests the kernels);
* ``cpu``       — C++ kernels in ``muse_fast._C``; CPU tensors;
* ``torch``     — a pure-PyTorch fast path (any device; not gated on the extension);
* ``reference`` — the eager PyTorch definition of the op; always usable.

Selection (:meth:`Op.select`):

1. A forced backend — ``with muse_fast.backend("triton"):`` or ``MUSE_FAST_BACKEND=triton`` — is
   used when the op has that implementation; if it has one but refuses the inputs, a
   :class:`BackendUnavailableError` says why. An op with no implementation for the forced backend
   runs its reference (forcing ``cpu`` on an op without C++ kernels is not an error).
2. Otherwise the kernel for the inputs' device (``triton`` on CUDA, ``cpu`` on CPU), then
   ``torch``, run if they accept the inputs; the reference runs last. Skipping a backend that
   refused warns once per op and reason (:class:`FallbackWarning`).

Why a backend refuses is answered by :meth:`Op.availability` (exposed as
``muse_fast.ops.available_backends``): a generic part (is Triton importable, is the extension
built, is the device right) and the op's own ``checks[backend]`` returning a reason or ``None``.
docs/design.md ("Dispatch") describes the contract.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import torch
import torch as _torch  # `torch` is also a backend name below

from ._runtime import triton_interpret

BACKENDS: tuple[str, ...] = ("triton", "cpu", "torch", "reference")
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
# An implementation: a callable, or "module:attr" imported on first use, where a module under
# ``kernels.`` is ``muse_fast.kernels.`` (so importing an op never imports triton).
Impl = Callable[..., Any] | str | None
ExampleInputs = Callable[[torch.device], "tuple[tuple, dict]"]


def resolve(spec: Impl) -> Callable[..., Any] | None:
    """The callable an :data:`Impl` names."""
    if spec is None or callable(spec):
        return spec
    module, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"implementation {spec!r}: expected 'module:function'")
    if not module.startswith("muse_fast."):
        module = f"muse_fast.{module}"
    return getattr(importlib.import_module(module), attr)


@dataclass
class Op:
    """An op's implementations, and the rule that picks one for given inputs.

    ``triton`` (CUDA, or CPU under the interpreter), ``cpu`` (the C++ extension), ``torch`` (a
    pure-PyTorch fast path on any device, not gated on the extension) and ``reference`` (the
    eager definition) take the same arguments. ``checks[backend]`` returns why that backend
    refuses an input, or None. ``example_inputs(device)`` gives ``(args, kwargs)`` for
    ``muse-fast info`` and the dispatch tests. Built by :func:`declare`.
    """

    name: str
    reference: Callable[..., Any]
    triton: Impl = None
    cpu: Impl = None
    torch: Impl = None
    checks: dict[str, Check] = field(default_factory=dict)
    example_inputs: ExampleInputs | None = None
    library: Callable[..., Any] | None = field(default=None, repr=False)
    # transition aliases for checks["triton"] / checks["cpu"]
    triton_check: Check | None = field(default=None, repr=False)
    cpu_check: Check | None = field(default=None, repr=False)
    _warned: set = field(default_factory=set, repr=False)
    _resolved: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.triton_check is not None:
            self.checks.setdefault("triton", self.triton_check)
        if self.cpu_check is not None:
            self.checks.setdefault("cpu", self.cpu_check)
        unknown = set(self.checks) - set(BACKENDS)
        if unknown:
            raise ValueError(f"Op {self.name}: checks for unknown backends {sorted(unknown)}")

    def has(self, backend_name: str) -> bool:
        return backend_name == "reference" or getattr(self, backend_name) is not None

    def impl(self, backend_name: str) -> Callable[..., Any] | None:
        if backend_name not in self._resolved:
            self._resolved[backend_name] = resolve(getattr(self, backend_name))
        return self._resolved[backend_name]

    def refusal(self, backend_name: str, *args: Any, **kwargs: Any) -> str | None:
        """Why ``backend_name`` cannot take these inputs, or None when it can."""
        if backend_name == "reference":
            return None
        if not self.has(backend_name):
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
        elif backend_name == "cpu":
            err = extension_import_error()
            if err:
                return err
            if dev.type != "cpu":
                return f"the C++ kernels take CPU tensors, got {dev.type}"
        check = self.checks.get(backend_name)
        return check(*args, **kwargs) if check is not None else None

    def availability(self, *args: Any, **kwargs: Any) -> dict[str, str | None]:
        """``{backend: None if usable else reason}`` for these inputs, in priority order."""
        return {b: self.refusal(b, *args, **kwargs) for b in BACKENDS}

    def select(self, *args: Any, **kwargs: Any) -> tuple[str, Callable[..., Any]]:
        forced = forced_backend()
        if forced is not None:
            if not self.has(forced):
                return "reference", self.reference
            why = self.refusal(forced, *args, **kwargs)
            if why is not None:
                raise BackendUnavailableError(
                    f"{self.name}: backend {forced!r} was forced but {why}"
                )
            return forced, self.impl(forced)
        kernel = "triton" if device_of(args, kwargs).type == "cuda" else "cpu"
        reasons = []
        for name in (kernel, "torch"):
            if not self.has(name):
                continue
            why = self.refusal(name, *args, **kwargs)
            if why is None:
                self._warn(reasons, name)
                return name, self.impl(name)
            reasons.append(f"{name}: {why}")
        self._warn(reasons, "reference")
        return "reference", self.reference

    def _warn(self, reasons: list[str], chosen: str) -> None:
        why = "; ".join(reasons)
        if why and why not in self._warned:
            self._warned.add(why)
            warnings.warn(
                f"muse_fast.{self.name}: falling back to the {chosen} implementation: {why}",
                FallbackWarning,
                stacklevel=4,
            )

    def dispatch(self, *args: Any, **kwargs: Any) -> Any:
        """Run the selected implementation (no custom-op boundary)."""
        _, fn = self.select(*args, **kwargs)
        return fn(*args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The registered ``torch.library`` op when there is one, else :meth:`dispatch`."""
        if self.library is not None:
            return self.library(*args, **kwargs)
        return self.dispatch(*args, **kwargs)


def declare(
    name: str,
    *,
    reference: Callable[..., Any],
    triton: Impl = None,
    cpu: Impl = None,
    torch: Impl = None,
    checks: dict[str, Check] | None = None,
    example_inputs: ExampleInputs | None = None,
    library: bool = True,
    fake: Callable[..., Any] | None = None,
    backward: Callable[..., Any] | None = None,
    setup_context: Callable[..., Any] | None = None,
    validate: Callable[..., None] | None = None,
) -> Op:
    """Declare an op once: its implementations, their checks, and (``library=True``) the
    ``torch.library`` custom op ``muse_fast::<name>``.

    The custom op's schema is inferred from ``reference``'s annotations; its body dispatches
    (:meth:`Op.select`). ``fake`` computes output metadata for ``torch.compile`` (default: the
    reference, run on fake tensors). ``backward`` / ``setup_context`` are registered with
    ``register_autograd``. ``validate`` runs inside the custom op before dispatch: checks of
    values (not shapes) that need the data, so they run eagerly under ``torch.compile`` too.
    Calling the returned :class:`Op` calls the custom op.
    """
    op = register(
        Op(
            name,
            reference=reference,
            triton=triton,
            cpu=cpu,
            torch=torch,
            checks=dict(checks or {}),
            example_inputs=example_inputs,
        )
    )
    if not library:
        return op
    schema = _torch.library.infer_schema(reference, mutates_args=())
    body = op.dispatch
    if validate is not None:

        def body(*args: Any, **kwargs: Any) -> Any:
            validate(*args, **kwargs)
            return op.dispatch(*args, **kwargs)

    lib = _torch.library.custom_op(f"muse_fast::{name}", body, mutates_args=(), schema=schema)
    lib.register_fake(fake or reference)
    if backward is not None:
        lib.register_autograd(backward, setup_context=setup_context)
    op.library = lib
    return op


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
