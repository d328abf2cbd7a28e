"""SummaryMixing's mixing step (docs/design.md, "SummaryMixing"): a masked mean over time and a combiner whose weight
is split so the per-utterance summary is projected once instead of once per frame.

SummaryMixing (Parcollet et al., 2023) replaces self-attention by

    f_t = f(x_t)                      local MLP, per frame            (B, T, Dl)
    s̄   = Σ_t m_t s(x_t) / Σ_t m_t    masked mean of the summary MLP  (B, Ds)
    y_t = GELU(W_c · [f_t ; s̄] + b_c) · m_t                           (B, T, Dout)

The public implementation (SpeechBrain ``speechbrain/nnet/summary_mixing.py``) repeats ``s̄``
T times, concatenates it with ``f`` and applies the combiner to the (B, T, Dl + Ds) result.
With ``W_c = [W_f | W_s]`` the same output is ``GELU(W_f·f_t + (W_s·s̄ + b_c))``: the summary
term is one (B, Dout) row per utterance, broadcast over time. :func:`summary_mixing` computes
that (no repeat, no concat, half the combiner FLOPs forward and backward);
:func:`summary_mixing_reference` computes it the public way. The MLPs f and s belong to the
caller (:class:`muse_fast.nn.SummaryMixing`); this op is the part in between.

Backends (declared once with :func:`muse_fast._backend.declare`):

* ``triton`` — split-weight algebra; cuBLAS matmuls + two Triton kernels
  (:mod:`muse_fast.kernels.summary_mixing`): the masked mean, and add-summary-term + GELU + mask
  (whose backward also reduces the summary-term gradient over time);
* ``torch`` — the same split-weight algebra in torch ops (any device, no C++ extension needed,
  so ``MUSE_FAST_NO_EXT=1`` keeps the fast path). There is no C++ kernel: the matmuls dominate
  and a fused C++ elementwise pass would need a vectorised erf to match torch's GELU
  (docs/design.md, "SummaryMixing");
* ``reference`` — repeat + concat + one combiner matmul (the public implementation).

Conventions shared by every backend:

* ``mask`` (B, T) bool, True = valid frame; ``None`` = all frames valid.
* Output frames where ``mask`` is False are exactly 0, and so are their gradients.
* A row with no valid frame has ``s̄ = 0`` (the sum over no frames divided by max(0, 1)) and an
  all-zero output; the public implementation divides by zero there (NaN).
* Dropout (``dropout`` > 0 and ``training``) acts on ``[f_t ; s̄]``: on ``f`` per frame and
  element, on ``s̄`` once per utterance and element (one mask shared by all frames of an
  utterance, which is what lets the summary term stay one row per utterance). Both paths draw
  the same masks from torch's RNG in the same order (``f`` first), so fused and reference agree
  under a fixed seed.
* Only first-order gradients (no double backward).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._backend import declare
from .._runtime import acc_dtype
from ._checks import FLOATING, check_float, check_same_device, check_tensor

__all__ = [
    "masked_mean",
    "masked_mean_reference",
    "summary_mixing",
    "summary_mixing_reference",
]

Tensor = torch.Tensor


# ============================================================================================
# masked mean over time
# ============================================================================================


def _mask_weights(mask: Tensor | None, B: int, T: int, like: Tensor) -> Tensor:
    """(B, T, 1) float weights m_t (ones when mask is None)."""
    if mask is None:
        return torch.ones(B, T, 1, dtype=like.dtype, device=like.device)
    return mask.unsqueeze(-1).to(like.dtype)


def masked_mean_reference(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean of ``x`` (B, T, D) over the valid frames of ``mask`` (B, T) bool → (B, D).

    ``out[b] = Σ_t m[b,t] x[b,t] / max(Σ_t m[b,t], 1)``: a row without valid frames gives 0.
    Eager PyTorch (multiply by the mask and sum, as SpeechBrain's SummaryMixing does);
    differentiable. Padded frames must hold finite values here (0 · inf is NaN); the kernels
    select instead of multiplying.
    """
    B, T, _ = x.shape
    m = _mask_weights(mask, B, T, x)
    return (x * m).sum(1) / m.sum(1).clamp_min(1)


def _mean_example(device: torch.device) -> tuple[tuple, dict]:
    return (torch.randn(2, 5, 8, device=device), torch.rand(2, 5, device=device) > 0.3), {}


def masked_mean_backward_reference(dmean: Tensor, mask: Tensor | None, T: int) -> Tensor:
    """dX[b, t] = m[b, t] · dmean[b] / max(n_b, 1) (B, T, D), contiguous."""
    B, D = dmean.shape
    m = _mask_weights(mask, B, T, dmean)
    return (m / m.sum(1, keepdim=True).clamp_min(1)) * dmean.unsqueeze(1)


def _mean_backward_example(device: torch.device) -> tuple[tuple, dict]:
    (x, mask), _ = _mean_example(device)
    return (torch.randn(2, 8, device=device), mask, x.shape[1]), {}


def _triton_float_check(x: Tensor, *args, **kwargs) -> str | None:
    if x.dtype not in FLOATING:
        return f"dtype {x.dtype} is not supported (float16, bfloat16, float32, float64)"
    return None


def _masked_mean_torch(x: Tensor, mask: Tensor | None = None) -> Tensor:
    return _mean_torch(x, mask).to(x.dtype)


def _masked_mean_setup(ctx, inputs, output):
    x, mask = inputs
    ctx.save_for_backward(mask)
    ctx.T = x.shape[1]


def _masked_mean_backward(ctx, dmean):
    (mask,) = ctx.saved_tensors
    return _MEAN_BWD(dmean, mask, ctx.T), None


_MEAN_BWD = declare(
    "masked_mean_backward",
    reference=masked_mean_backward_reference,
    triton="kernels.summary_mixing:masked_mean_backward",
    torch=masked_mean_backward_reference,
    checks={"triton": _triton_float_check},
    example_inputs=_mean_backward_example,
    fake=lambda dmean, mask, T: dmean.new_empty(dmean.shape[0], T, dmean.shape[1]),
)
_MEAN = declare(
    "masked_mean",
    reference=masked_mean_reference,
    triton="kernels.summary_mixing:masked_mean",
    torch=_masked_mean_torch,
    checks={"triton": _triton_float_check},
    example_inputs=_mean_example,
    fake=lambda x, mask=None: x.new_empty(x.shape[0], x.shape[2]),
    backward=_masked_mean_backward,
    setup_context=_masked_mean_setup,
)


def _check_mask(mask: object, B: int, T: int, device: torch.device) -> Tensor | None:
    if mask is None:
        return None
    check_tensor("mask", mask, dtypes=(torch.bool,), shape=(B, T))
    if mask.device != device:
        raise ValueError(f"mask: expected a tensor on {device}, got one on {mask.device}")
    return mask


def masked_mean(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean of ``x`` (B, T, D) over its valid frames → (B, D); see :func:`masked_mean_reference`.

    ``mask`` (B, T) bool, True = valid; ``None`` = every frame. A row with no valid frame gives
    zeros (and zero gradients). On CUDA one Triton kernel reads ``x`` once (any strides).
    """
    check_tensor("x", x, ndim=3, dtypes=FLOATING)
    B, T, D = x.shape
    if B == 0 or T == 0 or D == 0:
        raise ValueError(f"x: expected non-empty (B, T, D), got shape {tuple(x.shape)}")
    mask = _check_mask(mask, B, T, x.device)
    return _MEAN(x, mask)


# ============================================================================================
# summary mixing (combiner)
# ============================================================================================


def _reference_parts(
    local: Tensor,
    summary: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    mask: Tensor | None,
    scale: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The public implementation's computation → (y, z, s̄): z is the combiner's pre-activation,
    s̄ (B, Ds) is returned in the accumulation dtype (float32 for half types)."""
    B, T, _ = local.shape
    m = _mask_weights(mask, B, T, local)
    sbar = (summary * m).sum(1) / m.sum(1).clamp_min(1)  # (B, Ds)
    s = (sbar * scale).to(local.dtype) if scale is not None else sbar
    rep = s.unsqueeze(1).repeat(1, T, 1)  # (B, T, Ds): the T-fold copy
    z = F.linear(torch.cat([local, rep], dim=-1), weight, bias)  # (B, T, Dout)
    y = F.gelu(z) * m
    return y, z, sbar.to(acc_dtype(local.dtype))


def _dropout_scale(B: int, D: int, p: float, like: Tensor) -> Tensor:
    """Inverted-dropout multipliers (B, D) in the accumulation dtype: 0 w.p. p, else 1 / (1 - p)."""
    keep = torch.empty(B, D, dtype=acc_dtype(like.dtype), device=like.device).bernoulli_(1.0 - p)
    return keep.div_(1.0 - p)


def summary_mixing_reference(
    local: Tensor,
    summary: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    mask: Tensor | None = None,
    *,
    dropout: float = 0.0,
    training: bool = True,
) -> Tensor:
    """SummaryMixing's combiner written the way the public implementation does it.

    Args:
        local: ``f(x)`` (B, T, Dl), the local MLP's output.
        summary: ``s(x)`` (B, T, Ds), the summary MLP's per-frame output (before the mean).
        weight: combiner weight (Dout, Dl + Ds); columns ``[:Dl]`` act on ``f``.
        bias: combiner bias (Dout,) or None.
        mask: (B, T) bool, True = valid frame; None = all valid.
        dropout, training: see the module docstring (``f`` per frame, ``s̄`` per utterance).

    Returns:
        y (B, T, Dout): ``GELU(W·[f_t ; repeat_T(s̄)] + b)`` at valid frames, 0 at padded ones.

    Eager PyTorch, differentiable (plain autograd): ``s̄`` is repeated T times and concatenated
    with ``f`` before one (Dl + Ds) → Dout matmul. The baseline the fused path is measured
    against.
    """
    B, _, _ = local.shape
    p = float(dropout)
    scale = None
    if p > 0 and training:
        local = F.dropout(local, p)
        scale = _dropout_scale(B, summary.shape[-1], p, summary)
    return _reference_parts(local, summary, weight, bias, mask, scale)[0]


# --- the fused (split-weight) algebra, with pluggable elementwise primitives ----------------


def _mean_torch(x: Tensor, mask: Tensor | None) -> Tensor:
    """Masked mean over time → (B, D) in the accumulation dtype."""
    acc = acc_dtype(x.dtype)
    if mask is None:
        return x.mean(1, dtype=acc)
    n = mask.sum(1, keepdim=True).clamp_min(1).to(acc)  # (B, 1)
    # one GEMV per utterance: (B, 1, T) @ (B, T, D)
    return torch.bmm(mask.unsqueeze(1).to(x.dtype), x).squeeze(1).to(acc) / n


def _zero_padded_rows(t: Tensor, mask: Tensor | None) -> Tensor:
    """Zero, in place, the frames of ``t`` (B, T, D) contiguous where ``mask`` is False.

    On the CPU only the padded rows are written (an index fill, cheaper than a full
    masked_fill); elsewhere a masked_fill, since ``nonzero`` would wait for the device.
    """
    if mask is None:
        return t
    if t.device.type != "cpu":
        return t.masked_fill_(~mask.unsqueeze(-1), 0.0)
    rows = (~mask).flatten().nonzero().squeeze(1)
    t.view(-1, t.shape[-1]).index_fill_(0, rows, 0.0)
    return t


def _add_gelu_mask_torch(h: Tensor, g: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    z = h.add_(g.unsqueeze(1))  # h is ours (fresh matmul output); g may be float32
    return _zero_padded_rows(F.gelu(z), mask), z


def _add_gelu_mask_backward_torch(
    dy: Tensor, z: Tensor, mask: Tensor | None
) -> tuple[Tensor, Tensor]:
    dz = _zero_padded_rows(torch.ops.aten.gelu_backward(dy, z).contiguous(), mask)
    return dz, dz.sum(1, dtype=acc_dtype(dz.dtype))


def _mean_backward_torch(dmean: Tensor, mask: Tensor | None, T: int, dtype) -> Tensor:
    return masked_mean_backward_reference(dmean, mask, T).to(dtype)


def _mean_triton(x: Tensor, mask: Tensor | None) -> Tensor:
    from ..kernels import summary_mixing as K

    return K.masked_mean(x, mask, out_dtype=acc_dtype(x.dtype))


def _fused_forward(local, summary, weight, bias, mask, scale, mean, add_gelu):
    """The split-weight forward with ``mean`` / ``add_gelu`` from the torch or Triton backend."""
    Dl = local.shape[-1]
    acc = acc_dtype(local.dtype)
    # the summary term, once per utterance, in float32 (float64) whatever the input dtype
    sbar = mean(summary, mask)  # (B, Ds)
    s = sbar * scale if scale is not None else sbar
    g = F.linear(s, weight[:, Dl:].to(acc), None if bias is None else bias.to(acc))  # (B, Dout)
    h = F.linear(local, weight[:, :Dl])  # (B, T, Dout): the only per-frame matmul
    if not h.is_contiguous():
        h = h.contiguous()
    y, z = add_gelu(h, g, mask)
    return y, z, sbar


def _fused_backward(dy, local, weight, mask, scale, z, sbar, gelu_bwd, mean_bwd):
    """The split-weight backward with the elementwise passes of the torch or Triton backend."""
    B, T, Dl = local.shape
    Dout = weight.shape[0]
    dz, dg = gelu_bwd(dy, z, mask)  # (B, T, Dout) in z's dtype, (B, Dout) float32 (float64)
    dz2 = dz.reshape(B * T, Dout)
    w_f, w_s = weight[:, :Dl], weight[:, Dl:]
    d_local = (dz2 @ w_f).reshape(B, T, Dl)
    dw_f = dz2.t() @ local.reshape(B * T, Dl)
    # per-utterance terms stay in the accumulation dtype
    s = sbar * scale if scale is not None else sbar
    dw_s = (dg.t() @ s).to(weight.dtype)
    db = dg.sum(0).to(weight.dtype)
    ds = dg @ w_s.to(dg.dtype)  # (B, Ds)
    if scale is not None:
        ds = ds * scale
    d_summary = mean_bwd(ds, mask, T, local.dtype)
    return d_local, d_summary, torch.cat([dw_f, dw_s], dim=1), db


def _sm_torch(local, summary, weight, bias, mask, scale):
    return _fused_forward(
        local, summary, weight, bias, mask, scale, _mean_torch, _add_gelu_mask_torch
    )


def _sm_triton(local, summary, weight, bias, mask, scale):
    from ..kernels import summary_mixing as K

    return _fused_forward(local, summary, weight, bias, mask, scale, _mean_triton, K.add_gelu_mask)


def summary_mixing_backward_reference(
    dy: Tensor,
    local: Tensor,
    weight: Tensor,
    mask: Tensor | None,
    scale: Tensor | None,
    z: Tensor,
    sbar: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Backward of the public computation, explicitly: through the (B, T, Dl + Ds) concat."""
    B, T, Dl = local.shape
    Dout = weight.shape[0]
    m = _mask_weights(mask, B, T, dy)
    dz = torch.ops.aten.gelu_backward(dy * m, z)
    s = (sbar * scale if scale is not None else sbar).to(local.dtype)
    cat = torch.cat([local, s.unsqueeze(1).repeat(1, T, 1)], dim=-1)
    dw = dz.reshape(-1, Dout).t() @ cat.reshape(B * T, -1)
    db = dz.sum((0, 1))
    dcat = dz @ weight  # (B, T, Dl + Ds)
    d_local = dcat[..., :Dl].contiguous()
    ds = dcat[..., Dl:].sum(1)
    if scale is not None:
        ds = (ds * scale).to(local.dtype)
    d_summary = m * ds.unsqueeze(1) / m.sum(1, keepdim=True).clamp_min(1)
    return d_local, d_summary, dw, db


def _sm_example(device: torch.device) -> tuple[tuple, dict]:
    local = torch.randn(2, 5, 8, device=device)
    weight = torch.randn(8, 14, device=device) * 0.2
    mask = torch.rand(2, 5, device=device) > 0.3
    return (local, torch.randn(2, 5, 6, device=device), weight, None, mask, None), {}


def _sm_backward_example(device: torch.device) -> tuple[tuple, dict]:
    (local, summary, weight, _, mask, _), _ = _sm_example(device)
    y, z, sbar = _reference_parts(local, summary, weight, None, mask, None)
    return (torch.randn_like(y), local, weight, mask, None, z, sbar), {}


def _sm_backward_torch(dy, local, weight, mask, scale, z, sbar):
    return _fused_backward(
        dy, local, weight, mask, scale, z, sbar, _add_gelu_mask_backward_torch, _mean_backward_torch
    )


def _sm_backward_triton(dy, local, weight, mask, scale, z, sbar):
    from ..kernels import summary_mixing as K

    return _fused_backward(
        dy, local, weight, mask, scale, z, sbar, K.add_gelu_mask_backward, K.masked_mean_backward
    )


def _sm_fake(local, summary, weight, bias, mask, scale):
    B, T, _ = local.shape
    Dout = weight.shape[0]
    return (
        local.new_empty(B, T, Dout),
        local.new_empty(B, T, Dout),
        summary.new_empty(B, summary.shape[-1], dtype=acc_dtype(summary.dtype)),
    )


def _sm_backward_fake(dy, local, weight, mask, scale, z, sbar):
    B, T, _ = local.shape
    return (
        local.new_empty(B, T, local.shape[-1]),
        local.new_empty(B, T, sbar.shape[-1]),
        weight.new_empty(weight.shape),
        weight.new_empty(weight.shape[0]),
    )


def _sm_setup(ctx, inputs, output):
    local, summary, weight, bias, mask, scale = inputs
    _, z, sbar = output
    ctx.save_for_backward(local, weight, mask, scale, z, sbar)
    ctx.has_bias = bias is not None
    ctx.mark_non_differentiable(z, sbar)
    ctx.set_materialize_grads(False)  # no zero (B, T, Dout) gradient for the unused z


def _sm_backward(ctx, dy, _dz, _dsbar):
    if dy is None:  # y unused (grads are not materialized)
        return None, None, None, None, None, None
    local, weight, mask, scale, z, sbar = ctx.saved_tensors
    d_local, d_summary, dw, db = _SM_BWD(dy, local, weight, mask, scale, z, sbar)
    return d_local, d_summary, dw, (db if ctx.has_bias else None), None, None


# The registered ops take the dropout multipliers ``scale`` (B, Ds) or None and return
# (y, z, s̄): z (the combiner's pre-activation) and s̄ are saved for the backward.
_SM_BWD = declare(
    "summary_mixing_backward",
    reference=summary_mixing_backward_reference,
    triton=_sm_backward_triton,
    torch=_sm_backward_torch,
    checks={"triton": _triton_float_check},
    example_inputs=_sm_backward_example,
    fake=_sm_backward_fake,
)
_SM = declare(
    "summary_mixing",
    reference=_reference_parts,
    triton=_sm_triton,
    torch=_sm_torch,
    checks={"triton": _triton_float_check},
    example_inputs=_sm_example,
    fake=_sm_fake,
    backward=_sm_backward,
    setup_context=_sm_setup,
)


def _validate(local, summary, weight, bias, mask, dropout):
    check_tensor("local", local, ndim=3, dtypes=FLOATING)
    B, T, Dl = local.shape
    if B == 0 or T == 0 or Dl == 0:
        raise ValueError(f"local: expected non-empty (B, T, Dl), got shape {tuple(local.shape)}")
    check_tensor("summary", summary, ndim=3, dtypes=FLOATING)
    if summary.shape[:2] != local.shape[:2] or summary.shape[2] == 0:
        raise ValueError(
            f"summary: expected shape ({B}, {T}, Ds) like local, got {tuple(summary.shape)}"
        )
    if summary.dtype != local.dtype:
        raise TypeError(f"summary: expected dtype {local.dtype} like local, got {summary.dtype}")
    Ds = summary.shape[2]
    check_tensor("weight", weight, ndim=2, dtypes=FLOATING)
    if weight.shape[1] != Dl + Ds or weight.shape[0] == 0:
        raise ValueError(
            f"weight: expected shape (Dout, {Dl + Ds}) = (Dout, Dl + Ds), got {tuple(weight.shape)}"
        )
    if bias is not None:
        check_tensor("bias", bias, dtypes=FLOATING, shape=(weight.shape[0],))
    mask = _check_mask(mask, B, T, local.device)
    check_same_device(local=local, summary=summary, weight=weight, bias=bias, mask=mask)
    p = check_float("dropout", dropout, min=0.0)
    if p >= 1.0:
        raise ValueError(f"dropout: expected a float in [0, 1), got {p}")
    return mask, p


def summary_mixing(
    local: Tensor,
    summary: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    mask: Tensor | None = None,
    *,
    dropout: float = 0.0,
    training: bool = True,
) -> Tensor:
    """SummaryMixing's combiner with the split weight: ``y_t = GELU(W_f·f_t + W_s·s̄ + b)·m_t``.

    Same arguments and result as :func:`summary_mixing_reference` (see the module docstring
    for masks, empty rows and dropout). ``W_s·s̄ + b`` is computed once per utterance and
    broadcast; no (B, T, Dl + Ds) tensor is formed, forward or backward. ``weight``/``bias`` in
    another floating dtype than ``local`` (autocast) are cast to it. Dispatches to Triton (CUDA),
    the split algebra in torch (CPU, or CUDA without Triton) or the reference
    (``muse_fast.backend("reference")``).
    """
    mask, p = _validate(local, summary, weight, bias, mask, dropout)
    if weight.dtype != local.dtype:
        weight = weight.to(local.dtype)
    if bias is not None and bias.dtype != local.dtype:
        bias = bias.to(local.dtype)
    scale = None
    if p > 0 and training:
        local = F.dropout(local, p)
        scale = _dropout_scale(local.shape[0], summary.shape[-1], p, summary)
    y, _, _ = _SM(local, summary, weight, bias, mask, scale)
    return y
