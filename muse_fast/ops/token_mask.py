"""Random token subsets and the token gather (docs/design.md, "Token masking").

``random_token_mask`` draws, per row, a uniform random subset of ``range(length)`` from the
Philox stream (:mod:`muse_fast.ops._philox`) with counters ``(l, b, 0, 0)``: word 0 >> 1 is a
31-bit key per token and the row keeps the n_keep smallest ``(key << 32) | l``, ascending. The
eager reference, the C++ kernel (``csrc/token_mask.cpp``) and the Triton kernel
(``kernels/token_mask.py``) draw the same bits, so one seed gives one mask on every backend.

``gather_tokens`` copies the kept rows; its backward scatters the gradient into zeros. Indices
of ``random_token_mask`` are distinct in each row: ``unique_indices=True`` says so and lets the
CUDA backward write each output row once (no atomics, no fp32 buffer); the default adds
gradients with atomics, as repeated indices need. Index ranges are checked for CPU tensors
(ValueError naming ``keep_idx``) and not for CUDA tensors, where a check would synchronize
with the host; there the kernels read an out-of-range index as a zero row.
"""

from __future__ import annotations

import torch

from .._backend import declare
from .._runtime import empty
from ._checks import (
    FLOATING,
    check_float,
    check_indices_in_range,
    check_int,
    check_same_device,
    check_tensor,
)
from ._philox import draw_device, philox4x32, seed_tensor

__all__ = [
    "random_token_mask",
    "gather_tokens",
    "num_kept_tokens",
    "random_token_mask_reference",
    "gather_tokens_reference",
    "gather_tokens_backward_reference",
]

_M32 = 0xFFFFFFFF
_INDEX = (torch.int64,)
MAX_TRITON_LENGTH = 16384  # one row of packed keys per Triton program


def num_kept_tokens(length: int, mask_ratio: float) -> int:
    """Tokens :func:`random_token_mask` keeps: ``max(1, int(length * (1 - mask_ratio)))`` (MAE).

    The float product is truncated as written, e.g. ``num_kept_tokens(100, 0.9) == 9`` because
    ``100 * (1 - 0.9) == 9.999999999999998``; ``num_kept_tokens(48, 0.9) == 4`` (Myna).
    """
    return max(1, int(length * (1.0 - mask_ratio)))


# ---------------------------------------------------------------------------------------------
# random_token_mask
# ---------------------------------------------------------------------------------------------
def random_token_mask_reference(
    seed: torch.Tensor, batch: int, length: int, n_keep: int
) -> torch.Tensor:
    """keep_idx (batch, n_keep) int64, each row an ascending uniform random subset of
    ``range(length)``.

    Token l of row b gets the 31-bit key ``philox4x32(seed, l, b, 0, 0)[0] >> 1``; the row keeps
    the n_keep tokens with the smallest ``(key << 32) | l`` (ties by index, so the subset is a
    function of the seed alone) and lists them in ascending order. Keys are i.i.d. uniform, so
    every n_keep-subset is equally likely (up to 2**-31 tie effects).
    """
    dev = seed.device
    l = torch.arange(length, device=dev, dtype=torch.int64)
    b = torch.arange(batch, device=dev, dtype=torch.int64)
    w0 = philox4x32(seed, l[None, :], b[:, None], 0, 0)[0]
    packed = ((w0 >> 1) << 32) | l[None, :]  # (batch, length)
    kept = torch.topk(packed, n_keep, dim=1, largest=False, sorted=False).values
    return (kept & _M32).sort(dim=1).values


def _random_token_mask_cpu(seed, batch, length, n_keep):
    from .._ext import ext, ptr

    out = empty(batch, n_keep, dtype=torch.int64, device="cpu")
    ext().random_token_mask(ptr(seed), batch, length, n_keep, ptr(out))
    return out


def _length_check(seed, batch, length, n_keep):
    if length > MAX_TRITON_LENGTH:
        return f"length {length} > {MAX_TRITON_LENGTH}: one row per program would not fit"
    return None


_RANDOM_TOKEN_MASK = declare(
    "random_token_mask",
    reference=random_token_mask_reference,
    triton="kernels.token_mask:random_token_mask",
    cpu=_random_token_mask_cpu,
    checks={"triton": _length_check},
    example_inputs=lambda device: (
        (torch.zeros((), dtype=torch.int64, device=device), 8, 48, 4),
        {},
    ),
    fake=lambda seed, batch, length, n_keep: seed.new_empty(batch, n_keep, dtype=torch.int64),
)


def random_token_mask(
    batch: int,
    length: int,
    mask_ratio: float = 0.9,
    *,
    generator: torch.Generator | None = None,
    seed: int | torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Indices of the tokens to keep: (batch, n_keep) int64, ascending and distinct in each
    row, each row an independent uniform random subset of ``range(length)``;
    ``n_keep = max(1, int(length * (1 - mask_ratio)))`` (:func:`num_kept_tokens`).

    Drawn on ``device`` (default: the generator's device, else CPU) without a host
    synchronization. ``seed`` (an int, or a one-element int64 tensor holding the 64 key bits,
    e.g. drawn on the device once and shared by several draws) makes the draw reproducible on
    every device and backend; ``generator`` draws a seed from that generator; neither uses the
    global RNG of ``device``.

    >>> keep = random_token_mask(4096, 48, 0.9, device="cuda")   # (4096, 4)
    >>> tokens = gather_tokens(x, keep, unique_indices=True)
    """
    batch = check_int("batch", batch, min=0)
    length = check_int("length", length, min=1)
    mask_ratio = check_float("mask_ratio", mask_ratio, min=0.0, max=1.0)
    dev = draw_device(device, generator)
    s = seed_tensor(seed, generator, dev)
    return _RANDOM_TOKEN_MASK(s, batch, length, num_kept_tokens(length, mask_ratio))


# ---------------------------------------------------------------------------------------------
# gather_tokens and its backward
# ---------------------------------------------------------------------------------------------
def gather_tokens_reference(
    x: torch.Tensor, keep_idx: torch.Tensor, unique_indices: bool = False
) -> torch.Tensor:
    """``out[b, k, :] = x[b, keep_idx[b, k], :]``: x (B, L, D), keep_idx (B, n_keep) int64 →
    (B, n_keep, D), x's dtype. Differentiable: the gradient wrt x is ``grad`` scattered into
    zeros (repeated indices add up). ``unique_indices`` changes nothing here (see
    :func:`gather_tokens`)."""
    return torch.gather(x, 1, keep_idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def gather_tokens_backward_reference(
    grad: torch.Tensor, keep_idx: torch.Tensor, length: int, unique_indices: bool = False
) -> torch.Tensor:
    """Gradient of :func:`gather_tokens_reference` wrt x: (B, length, D) zeros with
    ``grad[b, k]`` added at row ``keep_idx[b, k]``."""
    B, _, D = grad.shape
    out = grad.new_zeros(B, length, D)
    return out.scatter_add_(1, keep_idx.unsqueeze(-1).expand(-1, -1, D), grad)


def _gather_tokens_triton(x, keep_idx, unique_indices=False):
    from ..kernels import token_mask as K

    return K.gather_tokens(x.contiguous(), keep_idx.contiguous())


def _gather_tokens_cpu(x, keep_idx, unique_indices=False):
    from .._ext import ext, ptr

    x, keep_idx = x.contiguous(), keep_idx.contiguous()
    B, L, D = x.shape
    n_keep = keep_idx.shape[1]
    out = empty(B, n_keep, D, dtype=x.dtype, device="cpu")
    ext().gather_rows(ptr(x), ptr(keep_idx), ptr(out), B, L, n_keep, D, x.element_size())
    return out


def _gather_backward_triton(grad, keep_idx, length, unique_indices=False):
    from ..kernels import token_mask as K

    scatter = K.scatter_unique_tokens if unique_indices else K.scatter_add_tokens
    return scatter(grad.contiguous(), keep_idx.contiguous(), length)


def _gather_backward_cpu(grad, keep_idx, length, unique_indices=False):
    from .._ext import dtype_name, ext, ptr

    grad, keep_idx = grad.contiguous(), keep_idx.contiguous()
    B, n_keep, D = grad.shape
    out = empty(B, length, D, dtype=grad.dtype, device="cpu")  # the kernel zeroes it
    ext().scatter_add_rows(
        ptr(grad), ptr(keep_idx), ptr(out), B, length, n_keep, D, dtype_name(grad)
    )
    return out


def _example_x_idx(device, rows=48):
    idx = torch.arange(4, device=device).repeat(8, 1)  # (8, 4)
    return torch.randn(8, rows, 384, device=device), idx


_GATHER_TOKENS_BACKWARD = declare(
    "gather_tokens_backward",
    reference=gather_tokens_backward_reference,
    triton=_gather_backward_triton,
    cpu=_gather_backward_cpu,
    example_inputs=lambda device: (
        (torch.randn(8, 4, 384, device=device), _example_x_idx(device)[1], 48),
        {},
    ),
    fake=lambda grad, keep_idx, length, unique_indices=False: grad.new_empty(
        grad.shape[0], length, grad.shape[2]
    ),
)


def _gather_setup(ctx, inputs, output):
    x, keep_idx, unique_indices = inputs
    ctx.save_for_backward(keep_idx)
    ctx.length = x.shape[1]
    ctx.unique_indices = unique_indices


def _gather_backward(ctx, grad):
    (keep_idx,) = ctx.saved_tensors
    gx = _GATHER_TOKENS_BACKWARD(grad, keep_idx, ctx.length, ctx.unique_indices)
    return gx, None, None


_GATHER_TOKENS = declare(
    "gather_tokens",
    reference=gather_tokens_reference,
    triton=_gather_tokens_triton,
    cpu=_gather_tokens_cpu,
    example_inputs=lambda device: (_example_x_idx(device), {}),
    fake=lambda x, keep_idx, unique_indices=False: x.new_empty(
        x.shape[0], keep_idx.shape[1], x.shape[2]
    ),
    backward=_gather_backward,
    setup_context=_gather_setup,
    validate=lambda x, keep_idx, unique_indices=False: check_indices_in_range(
        "keep_idx", keep_idx, x.shape[1], "the length of x"
    ),
)


def gather_tokens(
    x: torch.Tensor, keep_idx: torch.Tensor, *, unique_indices: bool = False
) -> torch.Tensor:
    """The kept tokens: ``out[b, k] = x[b, keep_idx[b, k]]``; x (B, L, D) float, keep_idx
    (B, n_keep) int64 (e.g. from :func:`random_token_mask`) → (B, n_keep, D).

    Backward: the gradient scattered into zeros at the kept rows (repeated indices add up).
    ``unique_indices=True`` promises that each row of keep_idx holds distinct indices (true of
    :func:`random_token_mask`'s output): the CUDA backward then writes every row of the
    gradient once in its dtype instead of adding rows into an fp32 buffer with atomics. With
    repeated indices and ``unique_indices=True`` the CUDA gradient keeps one of the repeated
    rows instead of their sum (not checked: that would synchronize with the host).
    Indices out of ``[0, L)`` raise ValueError for CPU tensors; CUDA tensors are not checked
    and the Triton kernel reads such rows as zeros.
    """
    check_tensor("x", x, ndim=3, dtypes=FLOATING)
    check_tensor("keep_idx", keep_idx, ndim=2, dtypes=_INDEX)
    check_same_device(x=x, keep_idx=keep_idx)
    if keep_idx.shape[0] != x.shape[0]:
        raise ValueError(
            f"keep_idx: expected batch size {x.shape[0]} (as x), got shape {tuple(keep_idx.shape)}"
        )
    if not isinstance(unique_indices, bool):
        raise TypeError(f"unique_indices: expected a bool, got {type(unique_indices).__name__}")
    return _GATHER_TOKENS(x, keep_idx, unique_indices)
