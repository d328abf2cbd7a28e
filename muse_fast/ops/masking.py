"""Token masking (SPEC §1.3): random token subsets, token gather, masked patch embedding,
span masks and their replacement.

Every random draw is Philox-4x32-10 (:mod:`muse_fast.ops._philox`) keyed by a 64-bit seed held
in an int64 tensor on the op's device, with these counters (c0, c1, c2, c3):

=========================  ==========================  =========================================
op                         counter                     use
=========================  ==========================  =========================================
``random_token_mask``      (l, b, 0, 0)                word 0 >> 1: a 31-bit key per token
``span_mask``              (span index, b, 1, 0)       word 0 >> 8 = m; masked iff m * 2**-24 < p
``apply_span_mask`` noise  (t, b, 2, d)                words 0, 1 → Box-Muller N(0, 1)
=========================  ==========================  =========================================

The eager references (``*_reference``), the C++ kernels (``csrc/masking.cpp``) and the Triton
kernels (``kernels/masking.py``) draw the same bits, so a seeded call returns the same mask on
every backend and device. A seed comes from ``seed=`` (an int), a ``generator=`` (64 bits drawn
from it on its device) or, with neither, the device's global RNG; nothing synchronizes with the
host on CUDA.

Each op is a ``torch.library.custom_op`` (``muse_fast::<name>``) with a fake implementation, so
models using them compile with ``torch.compile(fullgraph=True)``; the backward passes are
custom ops too.

Kernels (Triton for CUDA tensors, C++ for CPU tensors) exist for every op except the
mask-embedding replacement, which is a single ``torch.where`` pass already. On CUDA,
``masked_patch_embed`` is one Triton kernel (gather of the kept patches + LayerNorm + ``tl.dot``
+ bias + position rows); on CPU, C++ gathers and normalizes the kept patches and torch's GEMM
projects them. Index ranges are checked for CPU tensors (ValueError naming ``keep_idx``) and
not for CUDA tensors, where a check would synchronize with the host; there the Triton kernels
read an out-of-range index as a zero row and never touch memory outside their inputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._backend import Op, register
from .._runtime import empty
from ._checks import FLOATING, check_float, check_int, check_same_device, check_tensor
from ._philox import box_muller, philox4x32, seed_tensor

__all__ = [
    "random_token_mask",
    "gather_tokens",
    "masked_patch_embed",
    "span_mask",
    "apply_span_mask",
    "num_kept_tokens",
]

_M32 = 0xFFFFFFFF
_INDEX = (torch.int64,)


def num_kept_tokens(length: int, mask_ratio: float) -> int:
    """Tokens :func:`random_token_mask` keeps: ``max(1, int(length * (1 - mask_ratio)))`` (MAE).

    The float product is truncated as written, e.g. ``num_kept_tokens(100, 0.9) == 9`` because
    ``100 * (1 - 0.9) == 9.999999999999998``; ``num_kept_tokens(48, 0.9) == 4`` (Myna).
    """
    return max(1, int(length * (1.0 - mask_ratio)))


def _resolve_device(device, generator) -> torch.device:
    if device is not None:
        return torch.device(device)
    if generator is not None and isinstance(generator, torch.Generator):
        return generator.device
    return torch.device("cpu")


def _check_indices_in_range(keep_idx: torch.Tensor, n: int, what: str) -> None:
    """ValueError for out-of-range indices, checked on CPU tensors only (on CUDA the check would
    synchronize with the host; there the Triton kernels read an out-of-range index as a zero row
    and never touch memory outside their inputs)."""
    if keep_idx.device.type != "cpu" or keep_idx.numel() == 0:
        return
    lo, hi = torch.aminmax(keep_idx)
    lo, hi = int(lo), int(hi)
    if lo < 0 or hi >= n:
        raise ValueError(f"keep_idx: indices must lie in [0, {n}) ({what}), got min {lo}, max {hi}")


# =============================================================================================
# random_token_mask
# =============================================================================================
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
    packed = ((w0 >> 1) << 32) | l[None, :]
    kept = torch.topk(packed, n_keep, dim=1, largest=False, sorted=False).values
    return (kept & _M32).sort(dim=1).values


random_token_mask_reference.example_inputs = lambda device: (
    (torch.zeros((), dtype=torch.int64, device=device), 8, 48, 4),
    {},
)


def _random_token_mask_triton(seed, batch, length, n_keep):
    from ..kernels import masking as K

    return K.random_token_mask(seed, batch, length, n_keep)


def _random_token_mask_cpu(seed, batch, length, n_keep):
    from .._ext import ext, ptr

    out = empty(batch, n_keep, dtype=torch.int64, device="cpu")
    ext().random_token_mask(ptr(seed), batch, length, n_keep, ptr(out))
    return out


def _length_check(seed, batch, length, n_keep):
    if length > 16384:
        return f"length {length} > 16384: one sorted row per program would not fit"
    return None


_RANDOM_TOKEN_MASK = register(
    Op(
        "random_token_mask",
        reference=random_token_mask_reference,
        triton=_random_token_mask_triton,
        cpu=_random_token_mask_cpu,
        triton_check=_length_check,
    )
)


@torch.library.custom_op("muse_fast::random_token_mask", mutates_args=())
def _random_token_mask_op(seed: torch.Tensor, batch: int, length: int, n_keep: int) -> torch.Tensor:
    return _RANDOM_TOKEN_MASK(seed, batch, length, n_keep)


@_random_token_mask_op.register_fake
def _(seed, batch, length, n_keep):
    return seed.new_empty(batch, n_keep, dtype=torch.int64)


def random_token_mask(
    batch: int,
    length: int,
    mask_ratio: float = 0.9,
    *,
    generator: torch.Generator | None = None,
    seed: int | torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Indices of the tokens to keep: (batch, n_keep) int64, ascending in each row, each row an
    independent uniform random subset of ``range(length)``;
    ``n_keep = max(1, int(length * (1 - mask_ratio)))`` (:func:`num_kept_tokens`).

    Drawn on ``device`` (default: the generator's device, else CPU) without a host
    synchronization. ``seed`` (an int, or a one-element int64 tensor holding the 64 key bits,
    e.g. drawn on the device once and shared by several draws) makes the draw reproducible on
    every device and backend; ``generator`` draws a seed from that generator; neither uses the
    global RNG of ``device``.

    >>> keep = random_token_mask(4096, 48, 0.9, device="cuda")   # (4096, 4)
    >>> tokens = gather_tokens(x, keep)
    """
    batch = check_int("batch", batch, min=0)
    length = check_int("length", length, min=1)
    mask_ratio = check_float("mask_ratio", mask_ratio, min=0.0, max=1.0)
    dev = _resolve_device(device, generator)
    n_keep = num_kept_tokens(length, mask_ratio)
    s = seed_tensor(seed, generator, dev)
    return _random_token_mask_op(s, batch, length, n_keep)


# =============================================================================================
# gather_tokens
# =============================================================================================
def gather_tokens_reference(x: torch.Tensor, keep_idx: torch.Tensor) -> torch.Tensor:
    """``out[b, k, :] = x[b, keep_idx[b, k], :]``: x (B, L, D), keep_idx (B, n_keep) int64 →
    (B, n_keep, D), x's dtype. Differentiable: the gradient wrt x is ``grad`` scattered into
    zeros (repeated indices add up)."""
    return torch.gather(x, 1, keep_idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


gather_tokens_reference.example_inputs = lambda device: (
    (
        torch.randn(8, 48, 384, device=device),
        torch.arange(4, device=device).repeat(8, 1),
    ),
    {},
)


def gather_tokens_backward_reference(
    grad: torch.Tensor, keep_idx: torch.Tensor, length: int
) -> torch.Tensor:
    """Gradient of :func:`gather_tokens_reference` wrt x: (B, length, D) zeros with
    ``grad[b, k]`` added at row ``keep_idx[b, k]``."""
    B, _, D = grad.shape
    out = grad.new_zeros(B, length, D)
    return out.scatter_add_(1, keep_idx.unsqueeze(-1).expand(-1, -1, D), grad)


gather_tokens_backward_reference.example_inputs = lambda device: (
    (
        torch.randn(8, 4, 384, device=device),
        torch.arange(4, device=device).repeat(8, 1),
        48,
    ),
    {},
)


def _gather_tokens_triton(x, keep_idx):
    from ..kernels import masking as K

    return K.gather_tokens(x, keep_idx)


def _gather_tokens_cpu(x, keep_idx):
    from .._ext import ext, ptr

    B, L, D = x.shape
    n_keep = keep_idx.shape[1]
    out = empty(B, n_keep, D, dtype=x.dtype, device="cpu")
    ext().gather_rows(ptr(x), ptr(keep_idx), ptr(out), B, L, n_keep, D, x.element_size())
    return out


def _gather_tokens_backward_triton(grad, keep_idx, length):
    from ..kernels import masking as K

    return K.scatter_add_tokens(grad, keep_idx, length)


def _gather_tokens_backward_cpu(grad, keep_idx, length):
    from .._ext import dtype_name, ext, ptr

    B, n_keep, D = grad.shape
    out = empty(B, length, D, dtype=grad.dtype, device="cpu")  # the kernel zeroes it
    ext().scatter_add_rows(
        ptr(grad), ptr(keep_idx), ptr(out), B, length, n_keep, D, dtype_name(grad)
    )
    return out


_GATHER_TOKENS = register(
    Op(
        "gather_tokens",
        reference=gather_tokens_reference,
        triton=_gather_tokens_triton,
        cpu=_gather_tokens_cpu,
    )
)
_GATHER_TOKENS_BACKWARD = register(
    Op(
        "gather_tokens_backward",
        reference=gather_tokens_backward_reference,
        triton=_gather_tokens_backward_triton,
        cpu=_gather_tokens_backward_cpu,
    )
)


@torch.library.custom_op("muse_fast::gather_tokens", mutates_args=())
def _gather_tokens_op(x: torch.Tensor, keep_idx: torch.Tensor) -> torch.Tensor:
    _check_indices_in_range(keep_idx, x.shape[1], "the length of x")
    return _GATHER_TOKENS(x.contiguous(), keep_idx.contiguous())


@_gather_tokens_op.register_fake
def _(x, keep_idx):
    return x.new_empty(x.shape[0], keep_idx.shape[1], x.shape[2])


@torch.library.custom_op("muse_fast::gather_tokens_backward", mutates_args=())
def _gather_tokens_backward_op(
    grad: torch.Tensor, keep_idx: torch.Tensor, length: int
) -> torch.Tensor:
    return _GATHER_TOKENS_BACKWARD(grad.contiguous(), keep_idx.contiguous(), length)


@_gather_tokens_backward_op.register_fake
def _(grad, keep_idx, length):
    return grad.new_empty(grad.shape[0], length, grad.shape[2])


def _gather_setup(ctx, inputs, output):
    x, keep_idx = inputs
    ctx.save_for_backward(keep_idx)
    ctx.length = x.shape[1]


def _gather_backward(ctx, grad):
    (keep_idx,) = ctx.saved_tensors
    return _gather_tokens_backward_op(grad, keep_idx, ctx.length), None


_gather_tokens_op.register_autograd(_gather_backward, setup_context=_gather_setup)


def gather_tokens(x: torch.Tensor, keep_idx: torch.Tensor) -> torch.Tensor:
    """The kept tokens: ``out[b, k] = x[b, keep_idx[b, k]]``; x (B, L, D) float, keep_idx
    (B, n_keep) int64 (e.g. from :func:`random_token_mask`) → (B, n_keep, D).

    Backward: the gradient scattered into zeros at the kept rows (repeated indices add up).
    Indices out of ``[0, L)`` raise ValueError for CPU tensors; CUDA tensors are not checked
    (that would synchronize with the host) and the Triton kernel reads such rows as zeros.
    """
    check_tensor("x", x, ndim=3, dtypes=FLOATING)
    check_tensor("keep_idx", keep_idx, ndim=2, dtypes=_INDEX)
    check_same_device(x=x, keep_idx=keep_idx)
    if keep_idx.shape[0] != x.shape[0]:
        raise ValueError(
            f"keep_idx: expected batch size {x.shape[0]} (as x), got shape {tuple(keep_idx.shape)}"
        )
    return _gather_tokens_op(x, keep_idx)


# =============================================================================================
# masked_patch_embed
# =============================================================================================
def _as_4d(spec: torch.Tensor) -> torch.Tensor:
    return spec if spec.dim() == 4 else spec.unsqueeze(1)


def _patchify(spec: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """(B, [C,] H, W) → (B, gh * gw, ph * pw * C): einops
    ``'b c (h p1) (w p2) -> b (h w) (p1 p2 c)'``."""
    s = _as_4d(spec)
    B, C, H, W = s.shape
    gh, gw = H // ph, W // pw
    s = s.reshape(B, C, gh, ph, gw, pw).permute(0, 2, 4, 3, 5, 1)
    return s.reshape(B, gh * gw, ph * pw * C)


def _unpatchify(patches: torch.Tensor, shape: torch.Size, ph: int, pw: int) -> torch.Tensor:
    """Inverse of :func:`_patchify` back to ``shape`` ((B, H, W) or (B, C, H, W))."""
    B, H, W = shape[0], shape[-2], shape[-1]
    C = shape[1] if len(shape) == 4 else 1
    gh, gw = H // ph, W // pw
    s = patches.reshape(B, gh, gw, ph, pw, C).permute(0, 5, 1, 3, 2, 4)
    return s.reshape(shape)


def masked_patch_gather_reference(
    spec: torch.Tensor,
    keep_idx: torch.Tensor,
    patch_size: tuple[int, int],
    norm_eps: float | None = None,
) -> torch.Tensor:
    """The kept patch vectors, (B * n_keep, ph * pw * C) in spec's dtype, each LayerNorm-ed
    (no affine, biased variance, ``norm_eps``) when ``norm_eps`` is not None."""
    ph, pw = patch_size
    patches = _patchify(spec, ph, pw)
    K = patches.shape[-1]
    sel = torch.gather(patches, 1, keep_idx.unsqueeze(-1).expand(-1, -1, K))
    if norm_eps is not None:
        sel = F.layer_norm(sel, (K,), eps=norm_eps)
    return sel.reshape(-1, K)


masked_patch_gather_reference.example_inputs = lambda device: (
    (
        torch.randn(8, 128, 96, device=device),
        torch.arange(4, device=device).repeat(8, 1),
        (16, 16),
        1e-5,
    ),
    {},
)


def masked_patch_scatter_reference(
    grad: torch.Tensor,
    spec: torch.Tensor,
    keep_idx: torch.Tensor,
    patch_size: tuple[int, int],
    norm_eps: float | None = None,
) -> torch.Tensor:
    """Gradient wrt ``spec`` of :func:`masked_patch_gather_reference` given ``grad``
    (B * n_keep, K): through the LayerNorm, ``dx = rstd * (g - mean(g) - xhat * mean(g * xhat))``,
    then scattered (added) into zeros at each kept patch. Computed in float32 for 16-bit
    inputs; returned in spec's dtype and shape."""
    ph, pw = patch_size
    B, n_keep = keep_idx.shape
    acc = spec.dtype if spec.dtype in (torch.float32, torch.float64) else torch.float32
    K = grad.shape[-1]
    g = grad.reshape(B, n_keep, K).to(acc)
    if norm_eps is not None:
        x = masked_patch_gather_reference(spec, keep_idx, patch_size, None)
        x = x.reshape(B, n_keep, K).to(acc)
        mean = x.mean(-1, keepdim=True)
        rstd = torch.rsqrt(((x - mean) ** 2).mean(-1, keepdim=True) + norm_eps)
        xhat = (x - mean) * rstd
        g = rstd * (g - g.mean(-1, keepdim=True) - xhat * (g * xhat).mean(-1, keepdim=True))
    s4 = _as_4d(spec)
    N = (s4.shape[2] // ph) * (s4.shape[3] // pw)
    full = g.new_zeros(B, N, K).scatter_add_(1, keep_idx.unsqueeze(-1).expand(-1, -1, K), g)
    return _unpatchify(full, spec.shape, ph, pw).to(spec.dtype)


masked_patch_scatter_reference.example_inputs = lambda device: (
    (
        torch.randn(32, 256, device=device),
        torch.randn(8, 128, 96, device=device),
        torch.arange(4, device=device).repeat(8, 1),
        (16, 16),
        1e-5,
    ),
    {},
)


def masked_patch_embed_reference(
    spec: torch.Tensor,
    keep_idx: torch.Tensor,
    patch_size: tuple[int, int],
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    pos_embed: torch.Tensor | None = None,
    norm_eps: float | None = None,
) -> torch.Tensor:
    """Embedding of the kept patches only: (B, n_keep, D) in weight's dtype.

    spec (B, H, W) or (B, C, H, W); patch_size (ph, pw) divides (H, W); the patch grid is
    gh = H // ph by gw = W // pw and patch p = i * gw + j (row-major), its vector laid out
    ``(p1 p2 c)`` exactly as einops ``'b c (h p1) (w p2) -> b (h w) (p1 p2 c)'`` (Myna /
    SimpleViT). With v = that vector (LayerNorm-ed without affine when ``norm_eps`` is set):
    ``out[b, k] = v(b, keep_idx[b, k]) @ weight.T + bias + pos_embed[keep_idx[b, k]]``.
    weight (D, ph * pw * C), bias (D,), pos_embed (gh * gw, D). This eager version builds the
    full patch tensor; the kernels never do.
    """
    B, n_keep = keep_idx.shape
    sel = masked_patch_gather_reference(spec, keep_idx, patch_size, norm_eps)
    out = F.linear(sel, weight, bias).reshape(B, n_keep, weight.shape[0])
    if pos_embed is not None:
        out = out + pos_embed[keep_idx]
    return out


masked_patch_embed_reference.example_inputs = lambda device: (
    (
        torch.randn(8, 128, 96, device=device),
        torch.arange(4, device=device).repeat(8, 1),
        (16, 16),
        torch.randn(384, 256, device=device),
        torch.randn(384, device=device),
        torch.randn(48, 384, device=device),
        1e-5,
    ),
    {},
)


def _masked_patch_embed_triton(spec, keep_idx, patch_size, weight, bias, pos_embed, norm_eps):
    from ..kernels import masking as K

    return K.masked_patch_embed(spec, keep_idx, patch_size, weight, bias, pos_embed, norm_eps)


def _masked_patch_gather_cpu(spec, keep_idx, patch_size, norm_eps):
    from .._ext import dtype_name, ext, ptr

    s4 = _as_4d(spec)
    B, C, H, W = s4.shape
    ph, pw = patch_size
    n_keep = keep_idx.shape[1]
    out = empty(B * n_keep, ph * pw * C, dtype=spec.dtype, device="cpu")
    ext().patch_gather(
        ptr(s4), dtype_name(s4), list(s4.stride()), B, C, H, W, ph, pw, ptr(keep_idx), n_keep,
        -1.0 if norm_eps is None else float(norm_eps), ptr(out),
    )  # fmt: skip
    return out


def _masked_patch_embed_cpu(spec, keep_idx, patch_size, weight, bias, pos_embed, norm_eps):
    # C++ gathers (and normalizes) only the kept patches; the projection is torch's GEMM.
    B, n_keep = keep_idx.shape
    sel = _masked_patch_gather_cpu(spec, keep_idx, patch_size, norm_eps)
    out = F.linear(sel, weight, bias).reshape(B, n_keep, weight.shape[0])
    if pos_embed is not None:
        out = out + pos_embed[keep_idx]
    return out


def _masked_patch_gather_triton(spec, keep_idx, patch_size, norm_eps):
    from ..kernels import masking as K

    return K.patch_gather(spec, keep_idx, patch_size, norm_eps)


def _masked_patch_scatter_triton(grad, spec, keep_idx, patch_size, norm_eps):
    from ..kernels import masking as K

    return K.patch_scatter(grad, spec, keep_idx, patch_size, norm_eps)


def _masked_patch_scatter_cpu(grad, spec, keep_idx, patch_size, norm_eps):
    from .._ext import dtype_name, ext, ptr

    s4 = _as_4d(spec)
    B, C, H, W = s4.shape
    ph, pw = patch_size
    out = torch.zeros(B, C, H, W, dtype=spec.dtype)
    ext().patch_scatter(
        ptr(grad), ptr(s4), dtype_name(s4), list(s4.stride()), B, C, H, W, ph, pw,
        ptr(keep_idx), keep_idx.shape[1], -1.0 if norm_eps is None else float(norm_eps), ptr(out),
    )  # fmt: skip
    return out.reshape(spec.shape)


def _no_float64_dot(spec, *args, **kwargs):
    if spec.dtype == torch.float64:
        return "float64 is not supported by the Triton kernel (tl.dot)"
    return None


def _no_float64_stats(spec, *args, **kwargs):
    if spec.dtype == torch.float64:
        return "float64 is not supported by the Triton kernel (float32 LayerNorm statistics)"
    return None


_MASKED_PATCH_EMBED = register(
    Op(
        "masked_patch_embed",
        reference=masked_patch_embed_reference,
        triton=_masked_patch_embed_triton,
        cpu=_masked_patch_embed_cpu,
        triton_check=_no_float64_dot,
    )
)
_MASKED_PATCH_GATHER = register(
    Op(
        "masked_patch_gather",
        reference=masked_patch_gather_reference,
        triton=_masked_patch_gather_triton,
        cpu=_masked_patch_gather_cpu,
        triton_check=_no_float64_stats,
    )
)
_MASKED_PATCH_SCATTER = register(
    Op(
        "masked_patch_scatter",
        reference=masked_patch_scatter_reference,
        triton=_masked_patch_scatter_triton,
        cpu=_masked_patch_scatter_cpu,
        triton_check=lambda grad, spec, *a, **k: _no_float64_stats(spec),
    )
)


def _num_patches(spec: torch.Tensor, ph: int, pw: int) -> int:
    return (spec.shape[-2] // ph) * (spec.shape[-1] // pw)


@torch.library.custom_op("muse_fast::masked_patch_embed", mutates_args=())
def _masked_patch_embed_op(
    spec: torch.Tensor,
    keep_idx: torch.Tensor,
    ph: int,
    pw: int,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    pos_embed: torch.Tensor | None,
    norm_eps: float | None,
) -> torch.Tensor:
    _check_indices_in_range(keep_idx, _num_patches(spec, ph, pw), "the number of patches")
    return _MASKED_PATCH_EMBED(
        spec,
        keep_idx.contiguous(),
        (ph, pw),
        weight.contiguous(),
        None if bias is None else bias.contiguous(),
        None if pos_embed is None else pos_embed.contiguous(),
        norm_eps,
    )


@_masked_patch_embed_op.register_fake
def _(spec, keep_idx, ph, pw, weight, bias, pos_embed, norm_eps):
    return spec.new_empty(keep_idx.shape[0], keep_idx.shape[1], weight.shape[0], dtype=weight.dtype)


@torch.library.custom_op("muse_fast::masked_patch_gather", mutates_args=())
def _masked_patch_gather_op(
    spec: torch.Tensor, keep_idx: torch.Tensor, ph: int, pw: int, norm_eps: float | None
) -> torch.Tensor:
    return _MASKED_PATCH_GATHER(spec, keep_idx.contiguous(), (ph, pw), norm_eps)


@_masked_patch_gather_op.register_fake
def _(spec, keep_idx, ph, pw, norm_eps):
    C = spec.shape[1] if spec.dim() == 4 else 1
    return spec.new_empty(keep_idx.shape[0] * keep_idx.shape[1], ph * pw * C)


@torch.library.custom_op("muse_fast::masked_patch_scatter", mutates_args=())
def _masked_patch_scatter_op(
    grad: torch.Tensor,
    spec: torch.Tensor,
    keep_idx: torch.Tensor,
    ph: int,
    pw: int,
    norm_eps: float | None,
) -> torch.Tensor:
    return _MASKED_PATCH_SCATTER(grad.contiguous(), spec, keep_idx.contiguous(), (ph, pw), norm_eps)


@_masked_patch_scatter_op.register_fake
def _(grad, spec, keep_idx, ph, pw, norm_eps):
    return torch.empty_like(spec, memory_format=torch.contiguous_format)


def _mpe_setup(ctx, inputs, output):
    spec, keep_idx, ph, pw, weight, bias, pos_embed, norm_eps = inputs
    ctx.save_for_backward(spec, keep_idx, weight)
    ctx.patch = (ph, pw)
    ctx.norm_eps = norm_eps
    ctx.num_pos = None if pos_embed is None else pos_embed.shape[0]


def _mpe_backward(ctx, grad):
    spec, keep_idx, weight = ctx.saved_tensors
    ph, pw = ctx.patch
    need_spec, _, _, _, need_w, need_b, need_pos, _ = ctx.needs_input_grad
    D = weight.shape[0]
    g2 = grad.reshape(-1, D)
    grad_spec = grad_w = grad_b = grad_pos = None
    if need_w:
        sel = _masked_patch_gather_op(spec, keep_idx, ph, pw, ctx.norm_eps)
        grad_w = g2.t().mm(sel.to(g2.dtype))
    if need_b:
        grad_b = g2.sum(0)
    if need_pos:
        grad_pos = g2.new_zeros(ctx.num_pos, D).index_add(0, keep_idx.reshape(-1), g2)
    if need_spec:
        grad_sel = g2.mm(weight).to(spec.dtype)
        grad_spec = _masked_patch_scatter_op(grad_sel, spec, keep_idx, ph, pw, ctx.norm_eps)
    return grad_spec, None, None, None, grad_w, grad_b, grad_pos, None


_masked_patch_embed_op.register_autograd(_mpe_backward, setup_context=_mpe_setup)


def _pair(name: str, v: object) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name}: expected an int or a pair (ph, pw), got {v!r}")
        return check_int(name, v[0], min=1), check_int(name, v[1], min=1)
    p = check_int(name, v, min=1)
    return p, p


def masked_patch_embed(
    spec: torch.Tensor,
    keep_idx: torch.Tensor,
    patch_size: int | tuple[int, int],
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    pos_embed: torch.Tensor | None = None,
    *,
    norm_eps: float | None = None,
) -> torch.Tensor:
    """Patch embedding of the kept patches only (Myna keeps 10 %: a tenth of the embedding work,
    no full token tensor): (B, n_keep, D).

    ``out[b, k] = LN?(patch(b, keep_idx[b, k])) @ weight.T + bias + pos_embed[keep_idx[b, k]]``,
    with patches numbered row-major over the (H // ph, W // pw) grid and laid out ``(p1 p2 c)``
    as einops ``'b c (h p1) (w p2) -> b (h w) (p1 p2 c)'`` (see
    :func:`masked_patch_embed_reference`). ``norm_eps`` not None: LayerNorm without affine over
    each patch vector first (fold a LayerNorm's affine into weight and bias).

    Args:
        spec: (B, H, W) or (B, C, H, W) float; any strides.
        keep_idx: (B, n_keep) int64 patch indices in ``[0, gh * gw)`` (checked on CPU only).
        patch_size: ph or (ph, pw), dividing H and W.
        weight: (D, ph * pw * C), same dtype as spec. bias: (D,). pos_embed: (gh * gw, D).

    Gradients flow to spec, weight, bias and pos_embed. Under autocast, inputs are cast to the
    autocast dtype like ``F.linear``'s.
    """
    check_tensor("spec", spec, ndim=(3, 4), dtypes=FLOATING)
    ph, pw = _pair("patch_size", patch_size)
    H, W = spec.shape[-2], spec.shape[-1]
    if H % ph or W % pw:
        raise ValueError(
            f"patch_size: ({ph}, {pw}) must divide the spectrogram size ({H}, {W}) of spec"
        )
    C = spec.shape[1] if spec.dim() == 4 else 1
    K = ph * pw * C
    N = (H // ph) * (W // pw)
    check_tensor("keep_idx", keep_idx, ndim=2, dtypes=_INDEX)
    if keep_idx.shape[0] != spec.shape[0]:
        raise ValueError(
            f"keep_idx: expected batch size {spec.shape[0]} (as spec), got shape "
            f"{tuple(keep_idx.shape)}"
        )
    check_tensor("weight", weight, shape=(None, K), dtypes=FLOATING)
    D = weight.shape[0]
    if bias is not None:
        check_tensor("bias", bias, shape=(D,), dtypes=FLOATING)
    if pos_embed is not None:
        check_tensor("pos_embed", pos_embed, shape=(N, D), dtypes=FLOATING)
    if norm_eps is not None:
        norm_eps = check_float("norm_eps", norm_eps, min=0.0, min_open=True)
    dev = check_same_device(
        spec=spec, keep_idx=keep_idx, weight=weight, bias=bias, pos_embed=pos_embed
    )
    if torch.is_autocast_enabled(dev.type):
        dt = torch.get_autocast_dtype(dev.type)
        spec, weight = spec.to(dt), weight.to(dt)
        bias = None if bias is None else bias.to(dt)
        pos_embed = None if pos_embed is None else pos_embed.to(dt)
    for name, t in (("weight", weight), ("bias", bias), ("pos_embed", pos_embed)):
        if t is not None and t.dtype != spec.dtype:
            raise TypeError(
                f"{name}: expected dtype {str(spec.dtype).replace('torch.', '')} (as spec), "
                f"got {str(t.dtype).replace('torch.', '')}"
            )
    return _masked_patch_embed_op(spec, keep_idx, ph, pw, weight, bias, pos_embed, norm_eps)


# =============================================================================================
# span_mask and apply_span_mask
# =============================================================================================
def _span_threshold(prob: float) -> int:
    """u = m * 2**-24 < prob  ⇔  m < ceil(prob * 2**24) for integer m (exact in double)."""
    return int(math.ceil(prob * 16777216.0))


def span_mask_reference(
    seed: torch.Tensor, batch: int, frames: int, span: int, threshold: int
) -> torch.Tensor:
    """bool (batch, frames): frames split into ``frames // span`` whole spans (a trailing partial
    span is never masked, as MusicFM); span s of row b is masked iff
    ``(philox4x32(seed, s, b, 1, 0)[0] >> 8) < threshold`` with
    ``threshold = ceil(prob * 2**24)``, i.e. iff u < prob for u = (word >> 8) * 2**-24."""
    dev = seed.device
    n_spans = frames // span
    s = torch.arange(n_spans, device=dev, dtype=torch.int64)
    b = torch.arange(batch, device=dev, dtype=torch.int64)
    w0 = philox4x32(seed, s[None, :], b[:, None], 1, 0)[0]
    per_span = (w0 >> 8) < threshold  # (batch, n_spans)
    out = torch.zeros(batch, frames, dtype=torch.bool, device=dev)
    out[:, : n_spans * span] = per_span.repeat_interleave(span, dim=1)
    return out


span_mask_reference.example_inputs = lambda device: (
    (torch.zeros((), dtype=torch.int64, device=device), 8, 750, 10, _span_threshold(0.6)),
    {},
)


def _span_mask_triton(seed, batch, frames, span, threshold):
    from ..kernels import masking as K

    return K.span_mask(seed, batch, frames, span, threshold)


def _span_mask_cpu(seed, batch, frames, span, threshold):
    from .._ext import ext, ptr

    out = empty(batch, frames, dtype=torch.bool, device="cpu")
    ext().span_mask(ptr(seed), batch, frames, span, threshold, ptr(out))
    return out


_SPAN_MASK = register(
    Op("span_mask", reference=span_mask_reference, triton=_span_mask_triton, cpu=_span_mask_cpu)
)


@torch.library.custom_op("muse_fast::span_mask", mutates_args=())
def _span_mask_op(
    seed: torch.Tensor, batch: int, frames: int, span: int, threshold: int
) -> torch.Tensor:
    return _SPAN_MASK(seed, batch, frames, span, threshold)


@_span_mask_op.register_fake
def _(seed, batch, frames, span, threshold):
    return seed.new_empty(batch, frames, dtype=torch.bool)


def span_mask(
    batch: int,
    frames: int,
    span: int,
    prob: float,
    *,
    generator: torch.Generator | None = None,
    seed: int | torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """bool (batch, frames), True = masked: ``frames // span`` non-overlapping spans, each masked
    independently with probability ``prob`` (a trailing partial span never is). 400 ms spans:
    MusicFM p = 0.6, MuseLQ p = 0.2.

    The draw depends only on (seed, row, span index), so one seed gives the same spans at the
    waveform resolution (``span=9600`` samples at 24 kHz) and at the token resolution
    (``span=10`` tokens at 25 Hz). Seeds as in :func:`random_token_mask`.
    """
    batch = check_int("batch", batch, min=0)
    frames = check_int("frames", frames, min=0)
    span = check_int("span", span, min=1)
    prob = check_float("prob", prob, min=0.0, max=1.0)
    dev = _resolve_device(device, generator)
    s = seed_tensor(seed, generator, dev)
    return _span_mask_op(s, batch, frames, span, _span_threshold(prob))


def span_noise_fill_reference(
    x: torch.Tensor, mask: torch.Tensor, seed: torch.Tensor, noise_std: float
) -> torch.Tensor:
    """x (B, T) or (B, T, D) with masked frames replaced by ``noise_std * z``: z standard normal
    by Box-Muller (float32) from words 0 and 1 of ``philox4x32(seed, t, b, 2, d)`` (d = 0 for
    2-D x), cast to x's dtype."""
    B, T = x.shape[0], x.shape[1]
    D = x.shape[2] if x.dim() == 3 else 1
    dev = x.device
    t = torch.arange(T, device=dev, dtype=torch.int64)[None, :, None]
    b = torch.arange(B, device=dev, dtype=torch.int64)[:, None, None]
    d = torch.arange(D, device=dev, dtype=torch.int64)[None, None, :]
    w0, w1, _, _ = philox4x32(seed, t, b, 2, d)
    noise = (noise_std * box_muller(w0, w1)).to(x.dtype).reshape(x.shape)
    m = mask if x.dim() == 2 else mask.unsqueeze(-1)
    return torch.where(m, noise, x)


span_noise_fill_reference.example_inputs = lambda device: (
    (
        torch.randn(4, 24000, device=device),
        torch.zeros(4, 24000, dtype=torch.bool, device=device),
        torch.zeros((), dtype=torch.int64, device=device),
        0.1,
    ),
    {},
)


def _span_noise_fill_triton(x, mask, seed, noise_std):
    from ..kernels import masking as K

    return K.span_noise_fill(x, mask, seed, noise_std)


def _span_noise_fill_cpu(x, mask, seed, noise_std):
    from .._ext import dtype_name, ext, ptr

    B, T = x.shape[0], x.shape[1]
    D = x.shape[2] if x.dim() == 3 else 1
    out = empty(*x.shape, dtype=x.dtype, device="cpu")
    ext().span_noise_fill(
        ptr(x), dtype_name(x), ptr(mask), ptr(seed), B, T, D, float(noise_std), ptr(out)
    )
    return out


_SPAN_NOISE_FILL = register(
    Op(
        "span_noise_fill",
        reference=span_noise_fill_reference,
        triton=_span_noise_fill_triton,
        cpu=_span_noise_fill_cpu,
    )
)


@torch.library.custom_op("muse_fast::span_noise_fill", mutates_args=())
def _span_noise_fill_op(
    x: torch.Tensor, mask: torch.Tensor, seed: torch.Tensor, noise_std: float
) -> torch.Tensor:
    return _SPAN_NOISE_FILL(x.contiguous(), mask.contiguous(), seed, noise_std)


@_span_noise_fill_op.register_fake
def _(x, mask, seed, noise_std):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _noise_setup(ctx, inputs, output):
    x, mask, _, _ = inputs
    ctx.save_for_backward(mask)
    ctx.three_d = x.dim() == 3


def _noise_backward(ctx, grad):
    (mask,) = ctx.saved_tensors
    m = mask.unsqueeze(-1) if ctx.three_d else mask
    return grad.masked_fill(m, 0), None, None, None


_span_noise_fill_op.register_autograd(_noise_backward, setup_context=_noise_setup)


def apply_span_mask(
    x: torch.Tensor,
    mask: torch.Tensor,
    *,
    noise_std: float | None = None,
    mask_embedding: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """x with its masked frames replaced: x (B, T) or (B, T, D) float, mask (B, T) bool.

    Exactly one of:

    * ``noise_std``: N(0, noise_std²) noise (MusicFM: 0.1 on the waveform), drawn from Philox
      counters (t, b, 2, d) with the seed from ``seed`` / ``generator`` / the global RNG (see
      :func:`span_noise_fill_reference`); gradient flows to x at unmasked frames. Fused kernel.
    * ``mask_embedding`` (D,): a learned vector (x must be 3-D); gradient flows to it (summed
      over masked frames) and to x at unmasked frames. A single ``torch.where``, which is
      already one fused pass, so no custom kernel.
    """
    check_tensor("x", x, ndim=(2, 3), dtypes=FLOATING)
    check_tensor("mask", mask, shape=(x.shape[0], x.shape[1]), dtypes=(torch.bool,))
    dev = check_same_device(x=x, mask=mask, mask_embedding=mask_embedding)
    if (noise_std is None) == (mask_embedding is None):
        raise ValueError("noise_std: give exactly one of noise_std and mask_embedding")
    if mask_embedding is not None:
        if x.dim() != 3:
            raise ValueError(
                f"x: a mask_embedding needs x of shape (B, T, D), got {tuple(x.shape)}"
            )
        check_tensor("mask_embedding", mask_embedding, shape=(x.shape[2],), dtypes=FLOATING)
        if seed is not None or generator is not None:
            raise ValueError("seed: a mask_embedding replacement draws no random numbers")
        return torch.where(mask.unsqueeze(-1), mask_embedding.to(x.dtype), x)
    noise_std = check_float("noise_std", noise_std, min=0.0)
    s = seed_tensor(seed, generator, dev)
    return _span_noise_fill_op(x, mask, s, noise_std)
