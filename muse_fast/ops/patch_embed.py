"""Patch embedding of the kept patches only (docs/design.md, "Masked patch embedding").

``masked_patch_embed(spec, keep_idx, patch_size, weight, bias, pos_embed, norm_eps=...)``
computes ``LN?(patch(b, keep_idx[b, k])) @ weight.T + bias + pos_embed[keep_idx[b, k]]``
without building the full patch tensor: Myna keeps 10 % of the patches, so 10 % of the work.
On CUDA one Triton kernel (``kernels/patch_embed.py``) loads each kept patch once, in the
spectrogram's dtype, and casts it to the weights' dtype on load: an fp32 spectrogram with
bf16 weights (autocast) is never cast as a whole. On CPU C++ (``csrc/patch_embed.cpp``)
gathers and normalizes the kept patches and torch's GEMM projects them. Index ranges are
checked for CPU tensors only (see :mod:`muse_fast.ops.token_mask`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

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

__all__ = [
    "masked_patch_embed",
    "masked_patch_embed_reference",
    "masked_patch_gather_reference",
    "masked_patch_scatter_reference",
]

_INDEX = (torch.int64,)
_HALF = (torch.bfloat16, torch.float16)
MAX_TRITON_K = 4096  # a patch vector is one register tile of the Triton kernels


def _as_4d(spec: torch.Tensor) -> torch.Tensor:
    return spec if spec.dim() == 4 else spec.unsqueeze(1)


def _patchify(spec: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """(B, [C,] H, W) → (B, gh * gw, ph * pw * C): einops
    ``'b c (h p1) (w p2) -> b (h w) (p1 p2 c)'``."""
    s = _as_4d(spec)
    B, C, H, W = s.shape
    gh, gw = H // ph, W // pw
    s = s.reshape(B, C, gh, ph, gw, pw).permute(0, 2, 4, 3, 5, 1)  # (B, gh, gw, ph, pw, C)
    return s.reshape(B, gh * gw, ph * pw * C)


def _unpatchify(patches: torch.Tensor, shape: torch.Size, ph: int, pw: int) -> torch.Tensor:
    """Inverse of :func:`_patchify` back to ``shape`` ((B, H, W) or (B, C, H, W))."""
    B, H, W = shape[0], shape[-2], shape[-1]
    C = shape[1] if len(shape) == 4 else 1
    gh, gw = H // ph, W // pw
    s = patches.reshape(B, gh, gw, ph, pw, C).permute(0, 5, 1, 3, 2, 4)  # (B, C, gh, ph, gw, pw)
    return s.reshape(shape)


def _project(sel, keep_idx, weight, bias, pos_embed) -> torch.Tensor:
    """(B * n_keep, K) patch vectors → (B, n_keep, D): cast to weight's dtype, linear, + pos."""
    B, n_keep = keep_idx.shape
    out = F.linear(sel.to(weight.dtype), weight, bias).reshape(B, n_keep, weight.shape[0])
    return out if pos_embed is None else out + pos_embed[keep_idx]


# ---------------------------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------------------------
def masked_patch_gather_reference(
    spec: torch.Tensor,
    keep_idx: torch.Tensor,
    patch_size: Sequence[int],
    norm_eps: float | None = None,
) -> torch.Tensor:
    """The kept patch vectors, (B * n_keep, ph * pw * C) in spec's dtype, each LayerNorm-ed
    (no affine, biased variance, ``norm_eps``) when ``norm_eps`` is not None."""
    ph, pw = patch_size
    patches = _patchify(spec, ph, pw)
    K = patches.shape[-1]
    sel = torch.gather(patches, 1, keep_idx.unsqueeze(-1).expand(-1, -1, K))  # (B, n, K)
    if norm_eps is not None:
        sel = F.layer_norm(sel, (K,), eps=norm_eps)
    return sel.reshape(-1, K)


def masked_patch_scatter_reference(
    grad: torch.Tensor,
    spec: torch.Tensor,
    keep_idx: torch.Tensor,
    patch_size: Sequence[int],
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


def masked_patch_embed_reference(
    spec: torch.Tensor,
    keep_idx: torch.Tensor,
    patch_size: Sequence[int],
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    pos_embed: torch.Tensor | None = None,
    norm_eps: float | None = None,
) -> torch.Tensor:
    """Embedding of the kept patches only: (B, n_keep, D) in weight's dtype.

    spec (B, H, W) or (B, C, H, W); patch_size (ph, pw) divides (H, W); the patch grid is
    gh = H // ph by gw = W // pw and patch p = i * gw + j (row-major), its vector laid out
    ``(p1 p2 c)`` exactly as einops ``'b c (h p1) (w p2) -> b (h w) (p1 p2 c)'`` (Myna /
    SimpleViT). With v = that vector in spec's dtype (LayerNorm-ed without affine when
    ``norm_eps`` is set), cast to weight's dtype:
    ``out[b, k] = v(b, keep_idx[b, k]) @ weight.T + bias + pos_embed[keep_idx[b, k]]``.
    weight (D, ph * pw * C), bias (D,), pos_embed (gh * gw, D). This eager version builds the
    full patch tensor; the kernels never do.
    """
    sel = masked_patch_gather_reference(spec, keep_idx, patch_size, norm_eps)
    return _project(sel, keep_idx, weight, bias, pos_embed)


# ---------------------------------------------------------------------------------------------
# backends
# ---------------------------------------------------------------------------------------------
def _masked_patch_gather_cpu(spec, keep_idx, patch_size, norm_eps=None):
    from .._ext import dtype_name, ext, ptr

    s4 = _as_4d(spec)
    B, C, H, W = s4.shape
    ph, pw = patch_size
    keep_idx = keep_idx.contiguous()
    n_keep = keep_idx.shape[1]
    out = empty(B * n_keep, ph * pw * C, dtype=spec.dtype, device="cpu")
    ext().patch_gather(
        ptr(s4), dtype_name(s4), list(s4.stride()), B, C, H, W, ph, pw, ptr(keep_idx), n_keep,
        -1.0 if norm_eps is None else float(norm_eps), ptr(out),
    )  # fmt: skip
    return out


def _masked_patch_embed_cpu(spec, keep_idx, patch_size, weight, bias=None, pos_embed=None,
                            norm_eps=None):  # fmt: skip
    # C++ gathers (and normalizes) only the kept patches; the projection is torch's GEMM.
    sel = _masked_patch_gather_cpu(spec, keep_idx, patch_size, norm_eps)
    return _project(sel, keep_idx, weight, bias, pos_embed)


def _masked_patch_scatter_cpu(grad, spec, keep_idx, patch_size, norm_eps=None):
    from .._ext import dtype_name, ext, ptr

    s4 = _as_4d(spec)
    B, C, H, W = s4.shape
    ph, pw = patch_size
    grad, keep_idx = grad.contiguous(), keep_idx.contiguous()
    out = torch.zeros(B, C, H, W, dtype=spec.dtype)
    ext().patch_scatter(
        ptr(grad), ptr(s4), dtype_name(s4), list(s4.stride()), B, C, H, W, ph, pw,
        ptr(keep_idx), keep_idx.shape[1], -1.0 if norm_eps is None else float(norm_eps), ptr(out),
    )  # fmt: skip
    return out.reshape(spec.shape)


def _masked_patch_embed_triton(spec, keep_idx, patch_size, weight, bias=None, pos_embed=None,
                               norm_eps=None):  # fmt: skip
    from ..kernels import patch_embed as K

    return K.masked_patch_embed(
        spec, keep_idx.contiguous(), patch_size, weight.contiguous(),
        None if bias is None else bias.contiguous(),
        None if pos_embed is None else pos_embed.contiguous(), norm_eps,
    )  # fmt: skip


def _masked_patch_gather_triton(spec, keep_idx, patch_size, norm_eps=None):
    from ..kernels import patch_embed as K

    return K.patch_gather(spec, keep_idx.contiguous(), patch_size, norm_eps)


def _masked_patch_scatter_triton(grad, spec, keep_idx, patch_size, norm_eps=None):
    from ..kernels import patch_embed as K

    return K.patch_scatter(grad.contiguous(), spec, keep_idx.contiguous(), patch_size, norm_eps)


def _triton_check(spec, keep_idx, patch_size, *args, **kwargs):
    if spec.dtype == torch.float64:
        return "float64 is not supported by the Triton kernels (fp32 statistics, tl.dot)"
    K = patch_size[0] * patch_size[1] * (spec.shape[1] if spec.dim() == 4 else 1)
    if K > MAX_TRITON_K:
        return f"patch vector length {K} > {MAX_TRITON_K}: one patch per register tile"
    return None


def _example_spec_idx(device):
    return torch.randn(8, 128, 96, device=device), torch.arange(4, device=device).repeat(8, 1)


_MASKED_PATCH_GATHER = declare(
    "masked_patch_gather",
    reference=masked_patch_gather_reference,
    triton=_masked_patch_gather_triton,
    cpu=_masked_patch_gather_cpu,
    checks={"triton": _triton_check},
    example_inputs=lambda device: ((*_example_spec_idx(device), (16, 16), 1e-5), {}),
    fake=lambda spec, keep_idx, patch_size, norm_eps=None: spec.new_empty(
        keep_idx.shape[0] * keep_idx.shape[1],
        patch_size[0] * patch_size[1] * (spec.shape[1] if spec.dim() == 4 else 1),
    ),
)
_MASKED_PATCH_SCATTER = declare(
    "masked_patch_scatter",
    reference=masked_patch_scatter_reference,
    triton=_masked_patch_scatter_triton,
    cpu=_masked_patch_scatter_cpu,
    checks={"triton": lambda grad, spec, *a, **k: _triton_check(spec, *a, **k)},
    example_inputs=lambda device: (
        (torch.randn(32, 256, device=device), *_example_spec_idx(device), (16, 16), 1e-5),
        {},
    ),
    fake=lambda grad, spec, *a, **k: torch.empty_like(spec, memory_format=torch.contiguous_format),
)


def _mpe_setup(ctx, inputs, output):
    spec, keep_idx, patch_size, weight, bias, pos_embed, norm_eps = inputs
    ctx.save_for_backward(spec, keep_idx, weight)
    ctx.patch = tuple(patch_size)
    ctx.norm_eps = norm_eps
    ctx.num_pos = None if pos_embed is None else pos_embed.shape[0]
    # which of spec, weight, bias, pos_embed need a gradient (needs_input_grad skips Nones)
    ctx.needs = tuple(t is not None and t.requires_grad for t in (spec, weight, bias, pos_embed))


def _mpe_backward(ctx, grad):
    spec, keep_idx, weight = ctx.saved_tensors
    need_spec, need_w, need_b, need_pos = ctx.needs
    D = weight.shape[0]
    g2 = grad.reshape(-1, D)  # (B * n_keep, D)
    grad_spec = grad_w = grad_b = grad_pos = None
    if need_w:
        sel = _MASKED_PATCH_GATHER(spec, keep_idx, ctx.patch, ctx.norm_eps)
        grad_w = g2.t().mm(sel.to(g2.dtype))
    if need_b:
        grad_b = g2.sum(0)
    if need_pos:
        grad_pos = g2.new_zeros(ctx.num_pos, D).index_add(0, keep_idx.reshape(-1), g2)
    if need_spec:
        grad_sel = g2.mm(weight).to(spec.dtype)
        grad_spec = _MASKED_PATCH_SCATTER(grad_sel, spec, keep_idx, ctx.patch, ctx.norm_eps)
    return grad_spec, None, None, grad_w, grad_b, grad_pos, None


def _num_patches(spec: torch.Tensor, patch_size: Sequence[int]) -> int:
    return (spec.shape[-2] // patch_size[0]) * (spec.shape[-1] // patch_size[1])


def _example_embed(device):
    spec, idx = _example_spec_idx(device)
    w, b, pos = (torch.randn(*s, device=device) for s in ((384, 256), (384,), (48, 384)))
    return (spec, idx, (16, 16), w, b, pos, 1e-5), {}


_MASKED_PATCH_EMBED = declare(
    "masked_patch_embed",
    reference=masked_patch_embed_reference,
    triton=_masked_patch_embed_triton,
    cpu=_masked_patch_embed_cpu,
    checks={"triton": _triton_check},
    example_inputs=_example_embed,
    fake=lambda spec, keep_idx, patch_size, weight, *a, **k: spec.new_empty(
        keep_idx.shape[0], keep_idx.shape[1], weight.shape[0], dtype=weight.dtype
    ),
    backward=_mpe_backward,
    setup_context=_mpe_setup,
    validate=lambda spec, keep_idx, patch_size, *a, **k: check_indices_in_range(
        "keep_idx", keep_idx, _num_patches(spec, patch_size), "the number of patches"
    ),
)


def _pair(name: str, v: object) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name}: expected an int or a pair (ph, pw), got {v!r}")
        return check_int(name, v[0], min=1), check_int(name, v[1], min=1)
    p = check_int(name, v, min=1)
    return p, p


def _dtype_name(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


def _check_dtypes(spec, weight, bias, pos_embed) -> None:
    """weight, bias and pos_embed share a dtype; spec has it too, or is float32 beside 16-bit
    weights (cast inside the kernel)."""
    for name, t in (("bias", bias), ("pos_embed", pos_embed)):
        if t is not None and t.dtype != weight.dtype:
            raise TypeError(
                f"{name}: expected dtype {_dtype_name(weight.dtype)} (as weight), "
                f"got {_dtype_name(t.dtype)}"
            )
    if spec.dtype != weight.dtype and not (spec.dtype == torch.float32 and weight.dtype in _HALF):
        raise TypeError(
            f"weight: expected dtype {_dtype_name(spec.dtype)} (as spec; 16-bit weights may "
            f"go with a float32 spec), got {_dtype_name(weight.dtype)}"
        )


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
    no full token tensor): (B, n_keep, D) in weight's dtype.

    ``out[b, k] = LN?(patch(b, keep_idx[b, k])) @ weight.T + bias + pos_embed[keep_idx[b, k]]``,
    with patches numbered row-major over the (H // ph, W // pw) grid and laid out ``(p1 p2 c)``
    as einops ``'b c (h p1) (w p2) -> b (h w) (p1 p2 c)'`` (see
    :func:`masked_patch_embed_reference`). ``norm_eps`` not None: LayerNorm without affine over
    each patch vector first (fold a LayerNorm's affine into weight and bias).

    Args:
        spec: (B, H, W) or (B, C, H, W) float; any strides.
        keep_idx: (B, n_keep) int64 patch indices in ``[0, gh * gw)`` (checked on CPU only).
        patch_size: ph or (ph, pw), dividing H and W.
        weight: (D, ph * pw * C), spec's dtype, or bfloat16 / float16 with a float32 spec (the
            LayerNorm then runs on the float32 values and the result is cast for the GEMM).
        bias: (D,), pos_embed: (gh * gw, D), weight's dtype.

    Gradients flow to spec, weight, bias and pos_embed. Under autocast weight, bias and
    pos_embed are cast to the autocast dtype like ``F.linear``'s inputs; a float32 spec is
    not (the kernel reads the kept 10 % and casts on load).
    """
    check_tensor("spec", spec, ndim=(3, 4), dtypes=FLOATING)
    ph, pw = _pair("patch_size", patch_size)
    H, W = spec.shape[-2], spec.shape[-1]
    if H % ph or W % pw:
        raise ValueError(
            f"patch_size: ({ph}, {pw}) must divide the spectrogram size ({H}, {W}) of spec"
        )
    C = spec.shape[1] if spec.dim() == 4 else 1
    N = (H // ph) * (W // pw)
    check_tensor("keep_idx", keep_idx, ndim=2, dtypes=_INDEX)
    if keep_idx.shape[0] != spec.shape[0]:
        raise ValueError(
            f"keep_idx: expected batch size {spec.shape[0]} (as spec), got shape "
            f"{tuple(keep_idx.shape)}"
        )
    check_tensor("weight", weight, shape=(None, ph * pw * C), dtypes=FLOATING)
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
        weight = weight.to(dt)
        bias = None if bias is None else bias.to(dt)
        pos_embed = None if pos_embed is None else pos_embed.to(dt)
        if spec.dtype != torch.float32 or dt not in _HALF:
            spec = spec.to(dt)
    _check_dtypes(spec, weight, bias, pos_embed)
    return _MASKED_PATCH_EMBED(spec, keep_idx, (ph, pw), weight, bias, pos_embed, norm_eps)
