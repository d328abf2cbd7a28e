"""Walk an op at full size on ``meta`` tensors and record what its Triton path does.

``capture(prepare)`` runs the step ``prepare()`` returns (public ops, forward and backward,
on meta tensors) twice, recording the second call,
with every muse_fast op routed to its Triton implementation and every kernel launch recorded
without running (``record_launches(dry=True)`` under ``tiles("cuda")``). A
``TorchDispatchMode`` sees the rest: each aten op on the same path (allocations, copies, the
FFT, GEMMs) with the bytes it reads and writes and its FLOPs, and every host sync
(``.item()``, ``bool(t)``, copies to the CPU) — those fail on meta tensors, so the mode
answers them with a placeholder and counts them instead.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch._library.custom_ops import _maybe_get_opdef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .. import _backend
from ..kernels._utils import Launch, record_launches, tiles

# aten ops that allocate or alias without moving data
_FREE = {
    "empty",
    "empty_like",
    "empty_strided",
    "new_empty",
    "new_empty_strided",
    "detach",
    "lift_fresh",
    "_to_copy_meta_noop",
}


@dataclass
class HostOp:
    name: str
    bytes: int
    flops: float  # tensor-core-able GEMM flops or FFT flops
    kind: str  # "memory" | "gemm" | "fft"
    dtype: str
    note: str = ""
    tensors: list[tuple[int, int, int]] = field(default_factory=list)  # (storage, bytes, cap)


@dataclass
class Capture:
    launches: list[Launch] = field(default_factory=list)
    host_ops: list[HostOp] = field(default_factory=list)
    host_syncs: list[str] = field(default_factory=list)
    error: str | None = None
    # storages that exist outside the step (inputs, parameters, outputs, gradients): the
    # floor counts only these; everything else is an intermediate a fused op need not write
    external: set[int] = field(default_factory=set)
    # every tensor seen stays referenced until the rows are built, so no storage is freed and
    # its address (the storage identity used here) reused by a later allocation
    keep: list[torch.Tensor] = field(default_factory=list, repr=False)


def _nbytes(t: torch.Tensor) -> int:
    """Bytes a view touches: its elements, or its extent in storage when views overlap
    (e.g. STFT frames with hop < n_fft)."""
    if t.numel() == 0:
        return 0
    extent = 1 + sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride()))
    return min(t.numel(), extent) * t.element_size()


def storage_key(t: torch.Tensor) -> tuple[int, int]:
    """(identity, size in bytes) of the storage behind ``t``."""
    st = t.untyped_storage()
    return st._cdata, st.nbytes()


def _tensors(tree: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


def _gemm_flops(name: str, args: tuple, out: Any) -> float:
    outs = _tensors(out)
    if not outs:
        return 0.0
    if name in ("mm", "addmm", "bmm", "baddbmm", "matmul", "linear"):
        a = args[1] if name in ("addmm", "baddbmm") else args[0]
        return 2.0 * outs[0].numel() * a.shape[-1]
    if name == "_scaled_dot_product_flash_attention":
        q = args[0]
        return 4.0 * q.shape[0] * q.shape[1] * q.shape[2] ** 2 * q.shape[3]
    return 0.0


def _fft_flops(args: tuple, out: Any) -> float:
    x = args[0]
    n = x.shape[-1]
    batch = x.numel() // max(n, 1)
    return 2.5 * n * math.log2(max(n, 2)) * batch  # real FFT: half of 5 n log2 n


class _Recorder(TorchDispatchMode):
    def __init__(self, cap: Capture):
        super().__init__()
        self.cap = cap

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        ns = func.namespace
        name = func._schema.name.split("::")[-1]
        if ns == "muse_fast":  # a custom op: run its body (dispatch -> Triton), not its fake
            opdef = _maybe_get_opdef(func)
            body = opdef._init_fn if opdef is not None else _backend.get_op(name).dispatch
            with self:
                return body(*args, **kwargs)
        if name == "_local_scalar_dense":
            self.cap.host_syncs.append(f"{name} ({args[0].dtype}, e.g. .item() / bool(t))")
            return True if args[0].dtype == torch.bool else 0
        if name in ("_to_copy", "copy_") and any(
            t.device.type == "cpu"
            for t in _tensors((args, kwargs)) + _tensors(kwargs.get("device"))
        ):
            self.cap.host_syncs.append(f"{name} to the CPU")
        out = func(*args, **kwargs)
        self._account(name, func, args, kwargs, out)
        return out

    def _account(self, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        if name in _FREE or name.startswith(("empty", "view", "_unsafe_view", "as_strided")):
            return
        outs = _tensors(out)
        ins = _tensors((args, kwargs))
        self.cap.keep.extend(ins + outs)
        aliases = (
            any(o.untyped_storage()._cdata == i.untyped_storage()._cdata for o in outs for i in ins)
            and not func._schema.is_mutable
        )
        if aliases or not outs:
            return  # a view (t, transpose, reshape, slice, ...): no data moved
        moved = sum(_nbytes(t) for t in ins) + sum(_nbytes(t) for t in outs if not _is_in(t, ins))
        dtype = str(outs[0].dtype).replace("torch.", "")
        seen = [(*storage_key(t), _nbytes(t)) for t in ins + outs]
        tensors = [(k, b, n) for k, n, b in seen]
        if name.startswith(("_fft_", "fft_")):
            note = ""
            if str(func._overloadname) == "out":
                # cuFFT computes into a temporary and copies into out=: one more write + read
                moved += 2 * sum(_nbytes(t) for t in outs)
                note = "out= copy"
            flops = _fft_flops(args, out)
            self.cap.host_ops.append(HostOp(name, moved, flops, "fft", dtype, note, tensors))
            return
        flops = _gemm_flops(name, args, out)
        kind = "gemm" if flops else "memory"
        if name in ("zeros", "zero_", "fill_", "full", "ones"):
            moved = sum(_nbytes(t) for t in outs)
        self.cap.host_ops.append(HostOp(name, moved, flops, kind, dtype, "", tensors))


def _is_in(t: torch.Tensor, ins: list[torch.Tensor]) -> bool:
    return any(t is i for i in ins)


@contextlib.contextmanager
def _meta_host_syncs(cap: Capture, autocast: torch.dtype | None = None) -> Iterator[None]:
    """``.item()`` / ``bool(t)`` / ``.tolist()`` on a meta tensor raise before any dispatch mode
    sees them: count each as a host sync and answer with a placeholder (True / 0)."""
    T = torch.Tensor
    saved = {n: getattr(T, n) for n in ("item", "__bool__", "__int__", "__float__", "tolist")}
    saved_autocast = torch.is_autocast_enabled
    saved_dtype = torch.get_autocast_dtype

    def patched(name: str):
        def fn(self, *a: Any, **k: Any):
            if self.device.type != "meta":
                return saved[name](self, *a, **k)
            cap.host_syncs.append(f"Tensor.{name} ({str(self.dtype).replace('torch.', '')})")
            if name == "tolist":
                return torch.zeros(self.shape, dtype=self.dtype).tolist()
            return True if self.dtype == torch.bool else 0

        return fn

    def is_autocast_enabled(*args: Any) -> bool:  # meta has no autocast state of its own:
        if args and args[0] == "meta":  # answer as torch.autocast("cuda", dtype) would
            return autocast is not None
        return saved_autocast(*args)

    def get_autocast_dtype(device_type: str) -> torch.dtype:
        if device_type == "meta":
            return autocast or torch.float32
        return saved_dtype(device_type)

    for n in saved:
        setattr(T, n, patched(n))
    torch.is_autocast_enabled, torch.get_autocast_dtype = is_autocast_enabled, get_autocast_dtype
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(T, n, f)
        torch.is_autocast_enabled, torch.get_autocast_dtype = saved_autocast, saved_dtype


@contextlib.contextmanager
def _direct_launches() -> Iterator[None]:
    """Record ``kernel[grid](...)`` calls that bypass :func:`launch` too (older launchers),
    with Triton's defaults for warps (4) and stages (3)."""
    from triton.runtime.jit import KernelInterface

    from ..kernels._utils import launch

    saved = KernelInterface.__getitem__

    def getitem(self, grid):
        def start(*args: Any, **kwargs: Any) -> None:
            warps, stages = kwargs.pop("num_warps", 4), kwargs.pop("num_stages", 3)
            g = grid(kwargs) if callable(grid) else grid
            g = tuple(g) if isinstance(g, (tuple, list)) else (g,)
            launch(self, g, *args, num_warps=warps, num_stages=stages, **kwargs)

        return start

    KernelInterface.__getitem__ = getitem
    try:
        yield
    finally:
        KernelInterface.__getitem__ = saved


@contextlib.contextmanager
def triton_everywhere() -> Iterator[None]:
    """Every op picks its Triton implementation (meta tensors are not CUDA tensors)."""
    original = _backend.Op.select

    def select(self, *args: Any, **kwargs: Any):
        impl = self.impl("triton")
        if impl is not None:
            return "triton", impl
        return original(self, *args, **kwargs)

    _backend.Op.select = select
    try:
        with _direct_launches():
            yield
    finally:
        _backend.Op.select = original


def _external(fn: Callable[[], Any], result: Any) -> set[int]:
    """Storages of the tensors the step closes over (and their ``.grad``, module parameters)
    and of what it returns."""
    found: list[torch.Tensor] = []

    def visit(obj: Any, depth: int = 0) -> None:
        if isinstance(obj, torch.Tensor):
            found.append(obj)
            if obj.is_leaf and obj.grad is not None:
                found.append(obj.grad)
        elif isinstance(obj, torch.nn.Module):
            for p in obj.parameters():
                visit(p, depth + 1)
        elif isinstance(obj, (list, tuple)) and depth < 3:
            for o in obj:
                visit(o, depth + 1)
        elif callable(obj) and getattr(obj, "__closure__", None) and depth < 3:
            for cell in obj.__closure__:
                try:
                    visit(cell.cell_contents, depth + 1)
                except ValueError:  # an empty cell
                    pass

    visit(fn)
    visit(result)
    return {storage_key(t)[0] for t in found}


def capture(
    prepare: Callable[[], Callable[[], Any]], autocast: torch.dtype | None = None
) -> Capture:
    """``prepare()`` builds full-size inputs on ``meta`` (not recorded) and returns the step;
    run the step and record its launches and host work."""
    cap = Capture()
    try:
        fn = prepare()
        with triton_everywhere(), tiles("cuda"), record_launches(dry=True):
            with _meta_host_syncs(Capture(), autocast):
                fn()  # once unrecorded: one-time work (cached tables) is not per call
        with triton_everywhere(), tiles("cuda"), record_launches(dry=True) as launches:
            with _meta_host_syncs(cap, autocast), _Recorder(cap):
                result = fn()
        cap.launches = list(launches)
        cap.external = _external(fn, result)
    except Exception as e:  # an op that cannot walk on meta: say which and why
        cap.launches = list(launches) if "launches" in locals() else []
        cap.error = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    return cap
