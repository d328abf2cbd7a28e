"""Input checks shared by every op: each failure names the argument and what was expected."""

from __future__ import annotations

from collections.abc import Sequence

import torch

FLOATING = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_tensor(
    name: str,
    x: object,
    *,
    ndim: int | Sequence[int] | None = None,
    min_ndim: int | None = None,
    dtypes: Sequence[torch.dtype] | None = None,
    device: torch.device | None = None,
    shape: Sequence[int | None] | None = None,
    finite: bool = False,
) -> torch.Tensor:
    """Validate one tensor argument; raises TypeError (not a tensor / dtype) or ValueError."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if dtypes is not None and x.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(
            f"{name}: expected dtype in ({names}), got {str(x.dtype).replace('torch.', '')}"
        )
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in allowed:
            raise ValueError(
                f"{name}: expected {' or '.join(map(str, allowed))} dims, got shape {tuple(x.shape)}"
            )
    if min_ndim is not None and x.dim() < min_ndim:
        raise ValueError(f"{name}: expected at least {min_ndim} dims, got shape {tuple(x.shape)}")
    if shape is not None:
        if x.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape)):
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{name}: expected shape {want}, got {tuple(x.shape)}")
    if device is not None and x.device != torch.device(device):
        raise ValueError(f"{name}: expected a tensor on {device}, got one on {x.device}")
    if finite and x.is_floating_point() and x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: contains NaN or inf")
    return x


def check_same_device(**tensors: torch.Tensor | None) -> torch.device:
    """All given tensors on one device; returns it."""
    items = [(k, t) for k, t in tensors.items() if t is not None]
    dev = items[0][1].device
    for k, t in items[1:]:
        if t.device != dev:
            raise ValueError(
                f"{k}: expected a tensor on {dev} (like {items[0][0]}), got one on {t.device}"
            )
    return dev


def check_int(name: str, v: object, *, min: int | None = None, max: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, torch.Tensor) or not hasattr(v, "__index__"):
            raise TypeError(f"{name}: expected an int, got {type(v).__name__}")
        v = int(v)  # numpy ints and SymInts
    if min is not None and v < min:
        raise ValueError(f"{name}: expected an int >= {min}, got {v}")
    if max is not None and v > max:
        raise ValueError(f"{name}: expected an int <= {max}, got {v}")
    return v


def check_float(
    name: str,
    v: object,
    *,
    min: float | None = None,
    max: float | None = None,
    min_open: bool = False,
) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name}: expected a float, got {type(v).__name__}")
    v = float(v)
    if v != v:
        raise ValueError(f"{name}: expected a number, got nan")
    if min is not None and (v <= min if min_open else v < min):
        raise ValueError(f"{name}: expected a float {'>' if min_open else '>='} {min}, got {v}")
    if max is not None and v > max:
        raise ValueError(f"{name}: expected a float <= {max}, got {v}")
    return v


def check_choice(name: str, v: object, choices: Sequence[object]) -> object:
    if v not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {v!r}")
    return v


def check_indices_in_range(name: str, idx: torch.Tensor, n: int, what: str) -> None:
    """ValueError for indices outside ``[0, n)``, checked on CPU tensors only: on CUDA the check
    would synchronize with the host (the masking kernels read an out-of-range index as a zero
    row there and never touch memory outside their inputs)."""
    if idx.device.type != "cpu" or idx.numel() == 0:
        return
    lo, hi = torch.aminmax(idx)
    lo, hi = int(lo), int(hi)
    if lo < 0 or hi >= n:
        raise ValueError(f"{name}: indices must lie in [0, {n}) ({what}), got min {lo}, max {hi}")
