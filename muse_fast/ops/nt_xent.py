"""Contrastive losses on paired embeddings: SimCLR NT-Xent and SogCLR's global contrastive loss.

Both take two views ``z1, z2`` of ``N`` samples each and look at the ``M = 2N`` rows of
``z = [z1; z2]`` (L2-normalized when ``normalize``); row ``i``'s positive is ``p(i) = i ± N`` and
``s_ik = ⟨z_i, z_k⟩`` is the cosine similarity.

* :func:`nt_xent` — ``ℓ_i = −s_{i,p(i)}/τ + log Σ_{k≠i} exp(s_ik/τ)``, loss = mean over the ``2N``
  rows (docs/design.md, "NT-Xent").
* :func:`global_contrastive_loss` — SogCLR (Yuan et al. 2022) as libauc's ``GCLoss_v1`` implements
  it (what Myna's public code trains with): a per-sample moving average of the negatives'
  ``exp(s/τ)`` replaces the batch's normalizer; see its docstring for the formula.

The fused kernels (Triton on CUDA, C++ on CPU; ``kernels/nt_xent.py``, ``csrc/nt_xent.cpp``) tile
the ``M × M`` similarity with an online log-sum-exp and recompute the tiles in the backward, so
memory is O(N·D) instead of the eager O(N²). They take fp32, bf16 or fp16 embeddings and
accumulate in fp32 (float64 in float64 on the CPU): feed bf16 embeddings directly, an ``.float()``
first only costs time. The eager baselines are :func:`nt_xent_reference` and
:func:`global_contrastive_loss_reference`.

Symmetry of ``s``: in both kernels' backward one tile ``s_IK`` yields both ``G_IK`` and ``G_KIᵀ``
(no transposed pass, no atomics). The C++ kernels also compute each tile only once (``K ≥ I``)
in both passes, with per-thread accumulators. The Triton forward computes each tile from both
sides (one program per row block, no cross-program reduction, deterministic).

The registered ops are the losses of the stacked global batch for a subset of active rows (one
rank's share, see :class:`muse_fast.nn.NTXentLoss`): ``muse_fast::nt_xent`` and
``muse_fast::global_contrastive_loss``; their backward is ``muse_fast::contrastive_grad``
(:mod:`muse_fast.ops._contrastive`, which also holds the statistics both forwards share).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._backend import declare
from ._checks import FLOATING, check_float, check_same_device, check_tensor
from ._contrastive import (
    CHECKS,
    CONTRASTIVE_GRAD,
    NORM_EPS,
    STATS,
    acc_dtype,
    full_offsets,
)

__all__ = [
    "check_pair",
    "global_contrastive_loss",
    "global_contrastive_loss_reference",
    "nt_xent",
    "nt_xent_reference",
]


# ------------------------------------------------------------------------------------------
# public eager references
# ------------------------------------------------------------------------------------------
def nt_xent_reference(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1, normalize: bool = True
) -> torch.Tensor:
    """SimCLR NT-Xent, eager PyTorch (materializes the ``2N × 2N`` similarity).

    ``z = [z1; z2]`` (``2N × D``), rows L2-normalized (``F.normalize``, eps 1e-12) if ``normalize``;
    for row ``i`` with positive ``p(i) = (i + N) mod 2N``::

        ℓ_i = −s_{i,p(i)}/τ + log Σ_{k≠i} exp(s_ik/τ),      loss = mean_i ℓ_i

    — ``F.cross_entropy`` over the similarity logits with the diagonal removed. The diagonal is
    removed by a select (``fill_diagonal_`` on the logits, whose gradient there is zero), so no
    NaN reaches the gradient. Computes in the input dtype (the eager baseline); returns a scalar
    of that dtype. ``N ≥ 2``.
    """
    n = z1.shape[0]
    z = torch.cat([z1, z2], dim=0)
    if normalize:
        z = F.normalize(z, dim=1, eps=NORM_EPS)
    logits = (z @ z.T).div_(temperature)
    logits.fill_diagonal_(float("-inf"))
    target = torch.arange(2 * n, device=z.device).roll(n)  # p(i)
    return F.cross_entropy(logits, target)


def global_contrastive_loss_reference(
    z1: torch.Tensor,
    z2: torch.Tensor,
    log_u: torch.Tensor,
    gamma: float = 0.9,
    temperature: float = 0.1,
    normalize: bool = True,
    eps: float = 1e-8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SogCLR's global contrastive loss (libauc ``GCLoss_v1``), eager PyTorch.

    With ``z = [z1; z2]`` (normalized if ``normalize``), ``B = N`` pairs, ``M = 2B`` rows, the
    negatives of row ``r`` are ``Neg(r) = {k : k ≠ r, k ≠ p(r)}`` (``2(B−1)`` of them)::

        g_r   = mean_{k ∈ Neg(r)} exp(s_rk / τ)                      this batch's estimate
        u_r   = g_r                            if sample r was never seen (log_u = −inf)
              = (1 − γ) u_old + γ g_r          otherwise (libauc's convention: γ weighs the new)
        w_rk  = exp(s_rk / τ) / max(u_r, eps)                        (no gradient)
        ℓ_r   = −s_{r,p(r)} + Σ_{k ∈ Neg(r)} w_rk s_rk / (2(B−1))
        loss  = mean_b (ℓ_b + ℓ_{b+B})
        u_new = (u_b + u_{b+B}) / 2                                  one average per sample

    Its gradient is that of ``τ · log mean_{Neg} exp(s/τ) − s_pos`` with the batch mean replaced by
    the moving average. ``log_u`` (N,) holds ``log u_old`` of the batch's samples (``−inf``: never
    seen); the moving averages are kept in log space so that small temperatures cannot overflow
    them (libauc keeps ``u``; ``exp(log_u)`` is the same number). Libauc initializes a *batch*
    whose stored ``u`` are all zero; here each never-seen *sample* is initialized — the same
    whenever a batch is all-new or all-seen, as in epoch-shuffled training.

    Returns ``(loss, log_u_new)``: the scalar (input dtype) and the updated ``log u`` (N,) (fp32, or
    fp64 for fp64 inputs; no gradient) for the caller to store.
    """
    n = z1.shape[0]
    z = torch.cat([z1, z2], dim=0)
    if normalize:
        z = F.normalize(z, dim=1, eps=NORM_EPS)
    cdt = acc_dtype(z.dtype)
    m = 2 * n
    s = z @ z.T  # (M, M)
    ar = torch.arange(m, device=z.device)
    partner = ar.roll(n)
    neg = (ar[:, None] != ar[None, :]) & (ar[None, :] != partner[:, None])
    with torch.no_grad():
        logits = (s.to(cdt) / temperature).masked_fill(~neg, float("-inf"))
        log_g = torch.logsumexp(logits, dim=1) - math.log(m - 2)
        lu = _ema_log(log_u.to(cdt).repeat(2), log_g, gamma)
        w = torch.exp(logits - lu.clamp(min=math.log(eps))[:, None])  # 0 off Neg
        log_u_new = torch.logaddexp(lu[:n], lu[n:]) - math.log(2.0)
    pos = s[ar, partner]
    row = -pos + (w.to(s.dtype) * s).sum(dim=1) / (m - 2)
    return row.sum() / n, log_u_new


def _ema_log(log_u_old: torch.Tensor, log_g: torch.Tensor, gamma: float) -> torch.Tensor:
    """log((1 − γ) u_old + γ g), or log g where u_old was never set (log_u_old = −inf)."""
    fresh = torch.isneginf(log_u_old)
    ema = torch.logaddexp(
        log_u_old + (math.log1p(-gamma) if gamma < 1 else float("-inf")), log_g + math.log(gamma)
    )
    return torch.where(fresh, log_g, ema)


# ------------------------------------------------------------------------------------------
# argument checks (also used by the nn modules before they gather across ranks)
# ------------------------------------------------------------------------------------------
def check_pair(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float, normalize: bool, min_pairs: int = 2
) -> int:
    """Validate two views (N, D) and the loss arguments; returns ``N``. ``min_pairs`` is 1 for
    one rank's share of a gathered batch (its negatives come from the other ranks)."""
    check_tensor("z1", z1, ndim=2, dtypes=FLOATING)
    check_tensor("z2", z2, ndim=2, dtypes=FLOATING)
    if z2.shape != z1.shape:
        raise ValueError(f"z2: expected the shape of z1 {tuple(z1.shape)}, got {tuple(z2.shape)}")
    if z2.dtype != z1.dtype:
        raise TypeError(f"z2: expected the dtype of z1 ({z1.dtype}), got {z2.dtype}")
    check_same_device(z1=z1, z2=z2)
    n, d = z1.shape
    if n < min_pairs:
        raise ValueError(
            f"z1: contrastive losses need at least {min_pairs} pair(s) (N >= {min_pairs}), got "
            f"N = {n}: with one pair the only other row is the positive — there is no negative"
        )
    if d < 1:
        raise ValueError(f"z1: expected at least one feature, got shape {tuple(z1.shape)}")
    t = check_float("temperature", temperature, min=0.0, min_open=True)
    if not math.isfinite(t):
        raise ValueError(f"temperature: expected a finite float, got {t}")
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize: expected a bool, got {type(normalize).__name__}")
    return n


def _stacked_example(device: torch.device) -> torch.Tensor:
    return torch.randn(16, 32, device=device)  # (M = 2·8, D)


# ------------------------------------------------------------------------------------------
# NT-Xent: the op muse_fast::nt_xent
# ------------------------------------------------------------------------------------------
def _nt_xent_from(backend: str):
    stats = STATS[backend]

    def run(z, n_pairs, temperature, normalize, row_start, row_count):
        lse, pos, _ = stats(z, n_pairs, temperature, normalize, row_start, row_count, False, False)
        return (lse - pos / temperature).mean().to(z.dtype), lse

    return run


def nt_xent_rows_reference(
    z: torch.Tensor,
    n_pairs: int,
    temperature: float,
    normalize: bool,
    row_start: int,
    row_count: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The op's eager definition: ``(loss, lse)`` of the stacked batch ``z`` (2·n_pairs, D) for
    the active pairs ``row_start .. row_start + row_count`` — the mean of ``lse_i − s_{i,p(i)}/τ``
    over their ``2·row_count`` rows (loss in ``z.dtype``) and ``lse`` (accumulation dtype), the
    backward's offsets. Computed from :func:`contrastive_stats_reference`."""
    return _nt_xent_from("reference")(z, n_pairs, temperature, normalize, row_start, row_count)


def _nt_xent_fake(z, n_pairs, temperature, normalize, row_start, row_count):
    return z.new_empty(()), z.new_empty(2 * row_count, dtype=acc_dtype(z.dtype))


def _nt_xent_setup(ctx, inputs, output):
    z, n_pairs, temperature, normalize, row_start, row_count = inputs
    ctx.save_for_backward(z, output[1])
    ctx.args = (n_pairs, temperature, normalize, row_start, row_count)


def _nt_xent_backward(ctx, grad_loss, grad_lse):
    z, lse = ctx.saved_tensors
    n_pairs, temperature, normalize, row_start, row_count = ctx.args
    c = full_offsets(lse, z.shape[0], n_pairs, row_start, row_count)
    alpha = grad_loss.to(lse.dtype) / (temperature * 2 * row_count)
    dz = CONTRASTIVE_GRAD(z, c, alpha, n_pairs, temperature, normalize, row_start, row_count, False)
    return dz, None, None, None, None, None


NT_XENT = declare(
    "nt_xent",
    reference=nt_xent_rows_reference,
    triton=_nt_xent_from("triton"),
    cpu=_nt_xent_from("cpu"),
    checks=CHECKS,
    example_inputs=lambda device: ((_stacked_example(device), 8, 0.1, True, 0, 8), {}),
    fake=_nt_xent_fake,
    backward=_nt_xent_backward,
    setup_context=_nt_xent_setup,
)


def nt_xent(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1, normalize: bool = True
) -> torch.Tensor:
    """SimCLR NT-Xent loss of two views (N, D) each; see :func:`nt_xent_reference` for the exact
    definition. Fused: memory O(N·D), fp32 accumulation; returns a scalar in the input dtype.

    >>> loss = muse_fast.ops.nt_xent(proj(view1), proj(view2), temperature=0.1)
    """
    n = check_pair(z1, z2, temperature, normalize)
    z = torch.cat([z1, z2], dim=0)  # (2N, D)
    return NT_XENT(z, n, float(temperature), normalize, 0, n)[0]


def nt_xent_rows(
    z: torch.Tensor,
    n_pairs: int,
    temperature: float,
    normalize: bool,
    row_start: int,
    row_count: int,
) -> torch.Tensor:
    """NT-Xent of the stacked global batch ``z`` (2·n_pairs, D), averaged over the active rows only
    (pairs ``row_start .. row_start + row_count``, both views) — one rank's share; the negatives
    are all ``2·n_pairs`` rows and the gradient reaches every row of ``z``."""
    return NT_XENT(z, n_pairs, float(temperature), normalize, row_start, row_count)[0]


# ------------------------------------------------------------------------------------------
# SogCLR global contrastive loss: the op muse_fast::global_contrastive_loss
# ------------------------------------------------------------------------------------------
def _gcl_from(backend: str):
    stats = STATS[backend]

    def run(z, log_u, n_pairs, temperature, gamma, normalize, eps, row_start, row_count):
        lse, pos, t = stats(z, n_pairs, temperature, normalize, row_start, row_count, True, True)
        m = z.shape[0]
        log_g = lse - math.log(m - 2)
        lu = _ema_log(log_u.to(lse.dtype).repeat(2), log_g, gamma)
        luc = lu.clamp(min=math.log(eps))
        row = -pos + torch.exp(log_g - luc) * t
        loss = row.sum() / row_count
        log_u_new = torch.logaddexp(lu[:row_count], lu[row_count:]) - math.log(2.0)
        return loss.to(z.dtype), log_u_new, luc + math.log(m - 2)

    return run


def global_contrastive_rows_reference(
    z: torch.Tensor,
    log_u: torch.Tensor,
    n_pairs: int,
    temperature: float,
    gamma: float,
    normalize: bool,
    eps: float,
    row_start: int,
    row_count: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The op's eager definition: ``(loss, log_u_new, c)`` of the stacked batch for the active
    pairs (formula: :func:`global_contrastive_loss_reference`); ``c`` (2·row_count,) are the
    backward's offsets ``log(max(u, eps)·(M − 2))``. Computed from the eager statistics."""
    return _gcl_from("reference")(
        z, log_u, n_pairs, temperature, gamma, normalize, eps, row_start, row_count
    )


def _gcl_fake(z, log_u, n_pairs, temperature, gamma, normalize, eps, row_start, row_count):
    cdt = acc_dtype(z.dtype)
    r = row_count
    return z.new_empty(()), z.new_empty(r, dtype=cdt), z.new_empty(2 * r, dtype=cdt)


def _gcl_setup(ctx, inputs, output):
    z, _, n_pairs, temperature, _, normalize, _, row_start, row_count = inputs
    ctx.save_for_backward(z, output[2])
    ctx.args = (n_pairs, temperature, normalize, row_start, row_count)


def _gcl_backward(ctx, grad_loss, grad_u, grad_c):
    z, c_act = ctx.saved_tensors
    n_pairs, temperature, normalize, row_start, row_count = ctx.args
    c = full_offsets(c_act, z.shape[0], n_pairs, row_start, row_count)
    alpha = grad_loss.to(c.dtype) / row_count
    dz = CONTRASTIVE_GRAD(z, c, alpha, n_pairs, temperature, normalize, row_start, row_count, True)
    return dz, None, None, None, None, None, None, None, None


def _gcl_example(device: torch.device) -> tuple[tuple, dict]:
    log_u = torch.randn(8, device=device)
    return (_stacked_example(device), log_u, 8, 0.1, 0.9, True, 1e-8, 0, 8), {}


GLOBAL_CONTRASTIVE_LOSS = declare(
    "global_contrastive_loss",
    reference=global_contrastive_rows_reference,
    triton=_gcl_from("triton"),
    cpu=_gcl_from("cpu"),
    checks=CHECKS,
    example_inputs=_gcl_example,
    fake=_gcl_fake,
    backward=_gcl_backward,
    setup_context=_gcl_setup,
)


def _check_gcl(z1, z2, log_u, gamma, temperature, normalize, eps) -> int:
    n = check_pair(z1, z2, temperature, normalize)
    check_tensor("log_u", log_u, shape=(n,), dtypes=FLOATING)
    check_same_device(z1=z1, log_u=log_u)
    check_float("gamma", gamma, min=0.0, max=1.0, min_open=True)
    check_float("eps", eps, min=0.0, min_open=True)
    return n


def global_contrastive_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    log_u: torch.Tensor,
    gamma: float = 0.9,
    temperature: float = 0.1,
    normalize: bool = True,
    eps: float = 1e-8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SogCLR global contrastive loss (libauc ``GCLoss_v1``), fused; exact definition in
    :func:`global_contrastive_loss_reference`. ``log_u`` (N,): log of the stored moving averages of
    the batch's samples (``−inf`` = never seen). Returns ``(loss, log_u_new)``; store
    ``log_u_new`` back (:class:`muse_fast.nn.GlobalContrastiveLoss` does, indexed by dataset index).
    """
    n = _check_gcl(z1, z2, log_u, gamma, temperature, normalize, eps)
    z = torch.cat([z1, z2], dim=0)  # (2N, D)
    loss, log_u_new, _ = GLOBAL_CONTRASTIVE_LOSS(
        z, log_u, n, float(temperature), float(gamma), normalize, float(eps), 0, n
    )
    return loss, log_u_new


def global_contrastive_loss_rows(
    z: torch.Tensor,
    log_u: torch.Tensor,
    n_pairs: int,
    gamma: float,
    temperature: float,
    normalize: bool,
    eps: float,
    row_start: int,
    row_count: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`global_contrastive_loss` of the stacked global batch for the active pairs
    ``row_start .. row_start + row_count`` only (``log_u`` and ``log_u_new`` are theirs)."""
    loss, log_u_new, _ = GLOBAL_CONTRASTIVE_LOSS(
        z, log_u, n_pairs, float(temperature), float(gamma), normalize, float(eps),
        row_start, row_count,
    )  # fmt: skip
    return loss, log_u_new
