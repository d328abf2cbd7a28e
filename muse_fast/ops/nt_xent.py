"""Contrastive losses on paired embeddings: SimCLR NT-Xent and SogCLR's global contrastive loss.

Both take two views ``z1, z2`` of ``N`` samples each and look at the ``M = 2N`` rows of
``z = [z1; z2]`` (L2-normalized when ``normalize``); row ``i``'s positive is ``p(i) = i ± N`` and
``s_ik = ⟨z_i, z_k⟩`` is the cosine similarity.

* :func:`nt_xent` — ``ℓ_i = −s_{i,p(i)}/τ + log Σ_{k≠i} exp(s_ik/τ)``, loss = mean over the ``2N``
  rows (SPEC §1.4).
* :func:`global_contrastive_loss` — SogCLR (Yuan et al. 2022) as libauc's ``GCLoss_v1`` implements
  it (what Myna's public code trains with): a per-sample moving average of the negatives'
  ``exp(s/τ)`` replaces the batch's normalizer; see its docstring for the formula.

The fused kernels (Triton on CUDA, C++ on CPU; ``kernels/nt_xent.py``, ``csrc/nt_xent.cpp``) tile
the ``M × M`` similarity with an online log-sum-exp and recompute the tiles in the backward, so
memory is O(N·D) instead of the eager O(N²). They compute in fp32 whatever the input dtype
(float64 in float64 on the CPU). The eager baselines are :func:`nt_xent_reference` and
:func:`global_contrastive_loss_reference`.

Symmetry of ``s``: in both kernels' backward one tile ``s_IK`` yields both ``G_IK`` and ``G_KIᵀ``
(no transposed pass, no atomics). The C++ kernels also compute each tile only once (``K ≥ I``)
in both passes, with per-thread accumulators — half the forward's dot products, three quarters
of the backward's. The Triton forward computes each tile from both sides (one program per row
block, no cross-program reduction, deterministic). Measured CPU figures: the benchmark file;
GPU figures not measured yet.

Internally both losses are built on two dispatched ops that work on the stacked ``z`` and on a
subset of *active* rows (one rank's share of a gathered global batch, see
:class:`muse_fast.nn.NTXentLoss`):

* ``nt_xent`` (:func:`contrastive_stats_reference`): per active row the log-sum-exp of ``s/τ`` over
  ``k ≠ i`` (and ``k ≠ p(i)`` for SogCLR), the positive similarity, optionally the softmax-weighted
  mean similarity;
* ``nt_xent_backward`` (:func:`contrastive_grad_reference`): ``α (G + Gᵀ) ẑ`` pulled back through the
  normalization, for ``G_ik = exp(s_ik/τ − c_i)[k valid] − [i active][k = p(i)]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._backend import Op, register
from .._runtime import empty
from ._checks import FLOATING, check_float, check_same_device, check_tensor

__all__ = [
    "global_contrastive_loss",
    "global_contrastive_loss_reference",
    "nt_xent",
    "nt_xent_reference",
]

NORM_EPS = 1e-12  # F.normalize's eps


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


nt_xent_reference.example_inputs = lambda device: (  # type: ignore[attr-defined]
    (torch.randn(8, 16, device=device), torch.randn(8, 16, device=device)),
    {},
)


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
    cdt = _compute_dtype(z.dtype)
    m = 2 * n
    s = z @ z.T
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


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ------------------------------------------------------------------------------------------
# the dispatched statistics (forward) and gradient (backward)
# ------------------------------------------------------------------------------------------
def _active_rows(n_pairs: int, row_start: int, row_count: int, device) -> torch.Tensor:
    a = torch.arange(row_start, row_start + row_count, device=device)
    return torch.cat([a, a + n_pairs])


def contrastive_stats_reference(
    z: torch.Tensor,
    n_pairs: int,
    temperature: float,
    normalize: bool,
    row_start: int,
    row_count: int,
    exclude_pos: bool,
    with_t: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row statistics the fused kernels compute, eager (materializes the active rows × M block).

    ``z`` (M = 2·n_pairs, D); active rows (view-1 rows ``row_start .. row_start + row_count``, then
    the same rows of view 2). For each: ``lse = log Σ_{k valid} exp(s_ik/τ)`` (valid: ``k ≠ i``, and
    ``k ≠ p(i)`` if ``exclude_pos``), ``pos = s_{i,p(i)}``, and if ``with_t``
    ``t = Σ_{k valid} softmax_ik s_ik`` (else an empty tensor). fp32 (fp64 for fp64 ``z``).
    """
    cdt = _compute_dtype(z.dtype)
    zc = z.to(cdt)
    if normalize:
        zc = F.normalize(zc, dim=1, eps=NORM_EPS)
    m = zc.shape[0]
    rows = _active_rows(n_pairs, row_start, row_count, z.device)
    partner = (rows + n_pairs) % m
    s = zc[rows] @ zc.T
    cols = torch.arange(m, device=z.device)
    masked = cols[None, :] == rows[:, None]
    if exclude_pos:
        masked = masked | (cols[None, :] == partner[:, None])
    logits = (s / temperature).masked_fill(masked, float("-inf"))
    lse = torch.logsumexp(logits, dim=1)
    pos = s.gather(1, partner[:, None]).squeeze(1)
    if with_t:
        t = (torch.softmax(logits, dim=1) * s).sum(dim=1)
    else:
        t = s.new_empty(0)
    return lse, pos, t


contrastive_stats_reference.example_inputs = lambda device: (  # type: ignore[attr-defined]
    (torch.randn(16, 32, device=device), 8, 0.1, True, 0, 8, False, False),
    {},
)


def contrastive_grad_reference(
    z: torch.Tensor,
    c: torch.Tensor,
    alpha: torch.Tensor,
    n_pairs: int,
    temperature: float,
    normalize: bool,
    row_start: int,
    row_count: int,
    exclude_pos: bool,
) -> torch.Tensor:
    """``dz`` (M, D), eager: ``ẑ = normalize(z)``, ``s = ẑẑᵀ``,
    ``G_ik = α (exp(s_ik/τ − c_i) [k valid for i] − [i active] [k = p(i)])`` with ``c`` (M,) the
    per-row offsets (``+inf`` for inactive rows), ``dL/dẑ = (G + Gᵀ) ẑ``, pulled back through
    ``F.normalize``. Returned in ``z.dtype``."""
    cdt = _compute_dtype(z.dtype)
    m = z.shape[0]
    zc = z.to(cdt)
    norm = zc.norm(dim=1, keepdim=True)
    rn = 1.0 / norm.clamp(min=NORM_EPS)
    zn = zc * rn if normalize else zc
    s = zn @ zn.T
    ar = torch.arange(m, device=z.device)
    partner = ar.roll(n_pairs)
    is_pos = ar[None, :] == partner[:, None]
    valid = ar[None, :] != ar[:, None]
    if exclude_pos:
        valid = valid & ~is_pos
    rmod = torch.where(ar < n_pairs, ar, ar - n_pairs) - row_start
    act = (rmod >= 0) & (rmod < row_count)
    p = torch.where(valid, torch.exp(s / temperature - c.to(cdt)[:, None]), 0.0)
    g = alpha.to(cdt) * (p - (is_pos & act[:, None]).to(cdt))
    dz = (g + g.T) @ zn
    if normalize:  # F.normalize's backward: project out zn, where the norm was not clamped
        proj = (zn * dz).sum(dim=1, keepdim=True) * (norm >= NORM_EPS)
        dz = rn * (dz - zn * proj)
    return dz.to(z.dtype)


contrastive_grad_reference.example_inputs = lambda device: (  # type: ignore[attr-defined]
    (
        torch.randn(16, 32, device=device),
        torch.rand(16, device=device) + 4,
        torch.tensor(0.1, device=device),
        8, 0.1, True, 0, 8, False,
    ),
    {},
)  # fmt: skip


def _kernel_dtype_check(allowed: tuple[torch.dtype, ...], who: str):
    def check(z=None, *args, **kwargs):
        if not isinstance(z, torch.Tensor):
            return "z: expected the stacked embeddings (M, D)"
        if z.dtype not in allowed:
            names = ", ".join(str(d).replace("torch.", "") for d in allowed)
            return f"z: the {who} kernel takes {names}, got {str(z.dtype).replace('torch.', '')}"
        if z.dim() != 2 or z.shape[0] < 4 or z.shape[1] < 1:
            return f"z: expected (M >= 4, D >= 1), got {tuple(z.shape)}"
        return None

    return check


_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_CPU_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _unit_stride(z: torch.Tensor) -> torch.Tensor:
    return z if z.stride(1) == 1 and z.stride(0) >= z.shape[1] else z.contiguous()


def _stats_triton(z, n_pairs, temperature, normalize, row_start, row_count, exclude_pos, with_t):
    from ..kernels import nt_xent as K

    z = _unit_stride(z)
    rn = K.row_rnorm(z, NORM_EPS) if normalize else None
    lse, pos, t = K.contrastive_fwd(
        z, rn, n_pairs, 1.0 / temperature, row_start, row_count, exclude_pos, with_t
    )
    return lse, pos, t if with_t else t.new_empty(0)


def _grad_triton(z, c, alpha, n_pairs, temperature, normalize, row_start, row_count, exclude_pos):
    from ..kernels import nt_xent as K

    z = _unit_stride(z)
    rn = K.row_rnorm(z, NORM_EPS) if normalize else None
    return K.contrastive_bwd(
        z,
        rn,
        c.to(torch.float32).contiguous(),
        alpha.to(torch.float32).reshape(1),
        n_pairs,
        1.0 / temperature,
        row_start,
        row_count,
        exclude_pos,
        NORM_EPS,
    )


_SYM_ACC_BYTES = 256 << 20  # largest per-thread gradient accumulators the symmetric path takes


def _sym_threads(C, m: int, d: int, n_pairs: int, row_count: int, elem: int, kind: int) -> int:
    """Threads for the C++ symmetric variant (each tile once, per-thread accumulators), or 0 for
    the row-block variant: when only some rows are active, or when the backward's per-thread
    M x D accumulators would exceed _SYM_ACC_BYTES (many threads, huge batches)."""
    if row_count != n_pairs:
        return 0
    threads = C.max_threads() if m * m * d >= (1 << 22) else 1
    if kind == 2 and threads * m * (-(-d // 16) * 16) * elem > _SYM_ACC_BYTES:
        return 0
    return threads


def _stats_cpu(z, n_pairs, temperature, normalize, row_start, row_count, exclude_pos, with_t):
    from .._ext import dtype_name, ext, ptr

    C = ext()
    z = _unit_stride(z)
    m, d = z.shape
    cdt = _compute_dtype(z.dtype)
    sym = _sym_threads(C, m, d, n_pairs, row_count, cdt.itemsize, 1)
    scratch = torch.empty(C.nt_xent_scratch_elems(m, d, max(sym, 1), 1 if sym else 0), dtype=cdt)
    r = 2 * row_count
    lse = empty(r, dtype=cdt, device="cpu")
    pos = empty(r, dtype=cdt, device="cpu")
    t = empty(r if with_t else 0, dtype=cdt, device="cpu")
    C.nt_xent_fwd(
        ptr(z), dtype_name(z), m, d, z.stride(0), n_pairs, bool(normalize), NORM_EPS,
        1.0 / temperature, row_start, row_count, bool(exclude_pos), bool(with_t), sym,
        ptr(scratch), ptr(lse), ptr(pos), ptr(t) if with_t else 0,
    )  # fmt: skip
    return lse, pos, t


def _grad_cpu(z, c, alpha, n_pairs, temperature, normalize, row_start, row_count, exclude_pos):
    from .._ext import dtype_name, ext, ptr

    C = ext()
    z = _unit_stride(z)
    m, d = z.shape
    cdt = _compute_dtype(z.dtype)
    sym = _sym_threads(C, m, d, n_pairs, row_count, cdt.itemsize, 2)
    scratch = torch.empty(C.nt_xent_scratch_elems(m, d, max(sym, 1), 2 if sym else 0), dtype=cdt)
    c = c.to(cdt).contiguous()
    dz = empty(m, d, dtype=z.dtype, device="cpu")
    C.nt_xent_bwd(
        ptr(z), dtype_name(z), m, d, z.stride(0), n_pairs, bool(normalize), NORM_EPS,
        1.0 / temperature, row_start, row_count, bool(exclude_pos), ptr(c), float(alpha), sym,
        ptr(scratch), ptr(dz), dz.stride(0),
    )  # fmt: skip
    return dz


_STATS = register(
    Op(
        "nt_xent",
        reference=contrastive_stats_reference,
        triton=_stats_triton,
        cpu=_stats_cpu,
        triton_check=_kernel_dtype_check(_TRITON_DTYPES, "Triton"),
        cpu_check=_kernel_dtype_check(_CPU_DTYPES, "C++"),
    )
)
_GRAD = register(
    Op(
        "nt_xent_backward",
        reference=contrastive_grad_reference,
        triton=_grad_triton,
        cpu=_grad_cpu,
        triton_check=_kernel_dtype_check(_TRITON_DTYPES, "Triton"),
        cpu_check=_kernel_dtype_check(_CPU_DTYPES, "C++"),
    )
)


@torch.library.custom_op("muse_fast::contrastive_grad", mutates_args=())
def _grad_op(
    z: torch.Tensor,
    c: torch.Tensor,
    alpha: torch.Tensor,
    n_pairs: int,
    temperature: float,
    normalize: bool,
    row_start: int,
    row_count: int,
    exclude_pos: bool,
) -> torch.Tensor:
    return _GRAD(z, c, alpha, n_pairs, temperature, normalize, row_start, row_count, exclude_pos)


@_grad_op.register_fake
def _(z, c, alpha, n_pairs, temperature, normalize, row_start, row_count, exclude_pos):
    return torch.empty_like(z, memory_format=torch.contiguous_format)


def _full_offsets(
    act_values: torch.Tensor, m: int, n_pairs: int, row_start: int, row_count: int
) -> torch.Tensor:
    """(M,) offsets: the active rows' values (view-1 rows then view-2 rows), +inf elsewhere."""
    c = act_values.new_full((m,), float("inf"))
    c[row_start : row_start + row_count] = act_values[:row_count]
    c[n_pairs + row_start : n_pairs + row_start + row_count] = act_values[row_count:]
    return c


# ------------------------------------------------------------------------------------------
# NT-Xent
# ------------------------------------------------------------------------------------------
@torch.library.custom_op("muse_fast::nt_xent", mutates_args=())
def _nt_xent_op(
    z: torch.Tensor,
    n_pairs: int,
    temperature: float,
    normalize: bool,
    row_start: int,
    row_count: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    lse, pos, _ = _STATS(z, n_pairs, temperature, normalize, row_start, row_count, False, False)
    loss = (lse - pos / temperature).mean()
    return loss.to(z.dtype), lse


@_nt_xent_op.register_fake
def _(z, n_pairs, temperature, normalize, row_start, row_count):
    return z.new_empty(()), z.new_empty(2 * row_count, dtype=_compute_dtype(z.dtype))


def _nt_xent_setup(ctx, inputs, output):
    z, n_pairs, temperature, normalize, row_start, row_count = inputs
    ctx.save_for_backward(z, output[1])
    ctx.args = (n_pairs, temperature, normalize, row_start, row_count)


def _nt_xent_backward(ctx, grad_loss, grad_lse):
    z, lse = ctx.saved_tensors
    n_pairs, temperature, normalize, row_start, row_count = ctx.args
    c = _full_offsets(lse, z.shape[0], n_pairs, row_start, row_count)
    alpha = grad_loss.to(lse.dtype) / (temperature * 2 * row_count)
    dz = _grad_op(z, c, alpha, n_pairs, temperature, normalize, row_start, row_count, False)
    return dz, None, None, None, None, None


_nt_xent_op.register_autograd(_nt_xent_backward, setup_context=_nt_xent_setup)


def _check_pair(z1, z2, temperature, normalize, min_pairs: int = 2) -> int:
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


def nt_xent(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1, normalize: bool = True
) -> torch.Tensor:
    """SimCLR NT-Xent loss of two views (N, D) each; see :func:`nt_xent_reference` for the exact
    definition. Fused: memory O(N·D), fp32 accumulation; returns a scalar in the input dtype.

    >>> loss = muse_fast.ops.nt_xent(proj(view1), proj(view2), temperature=0.1)
    """
    n = _check_pair(z1, z2, temperature, normalize)
    z = torch.cat([z1, z2], dim=0)
    return _nt_xent_op(z, n, float(temperature), normalize, 0, n)[0]


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
    return _nt_xent_op(z, n_pairs, float(temperature), normalize, row_start, row_count)[0]


# ------------------------------------------------------------------------------------------
# SogCLR global contrastive loss
# ------------------------------------------------------------------------------------------
@torch.library.custom_op("muse_fast::global_contrastive", mutates_args=())
def _gcl_op(
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
    lse, pos, t = _STATS(z, n_pairs, temperature, normalize, row_start, row_count, True, True)
    m = z.shape[0]
    log_g = lse - math.log(m - 2)
    lu = _ema_log(log_u.to(lse.dtype).repeat(2), log_g, gamma)
    luc = lu.clamp(min=math.log(eps))
    row = -pos + torch.exp(log_g - luc) * t
    loss = row.sum() / row_count
    log_u_new = torch.logaddexp(lu[:row_count], lu[row_count:]) - math.log(2.0)
    c = luc + math.log(m - 2)
    return loss.to(z.dtype), log_u_new, c


@_gcl_op.register_fake
def _(z, log_u, n_pairs, temperature, gamma, normalize, eps, row_start, row_count):
    cdt = _compute_dtype(z.dtype)
    return (
        z.new_empty(()),
        z.new_empty(row_count, dtype=cdt),
        z.new_empty(2 * row_count, dtype=cdt),
    )


def _gcl_setup(ctx, inputs, output):
    z, _, n_pairs, temperature, _, normalize, _, row_start, row_count = inputs
    ctx.save_for_backward(z, output[2])
    ctx.args = (n_pairs, temperature, normalize, row_start, row_count)


def _gcl_backward(ctx, grad_loss, grad_u, grad_c):
    z, c_act = ctx.saved_tensors
    n_pairs, temperature, normalize, row_start, row_count = ctx.args
    c = _full_offsets(c_act, z.shape[0], n_pairs, row_start, row_count)
    alpha = grad_loss.to(c.dtype) / row_count
    dz = _grad_op(z, c, alpha, n_pairs, temperature, normalize, row_start, row_count, True)
    return dz, None, None, None, None, None, None, None, None


_gcl_op.register_autograd(_gcl_backward, setup_context=_gcl_setup)


def _check_gcl(z1, z2, log_u, gamma, temperature, normalize, eps) -> int:
    n = _check_pair(z1, z2, temperature, normalize)
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
    z = torch.cat([z1, z2], dim=0)
    loss, log_u_new, _ = _gcl_op(
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
    loss, log_u_new, _ = _gcl_op(
        z, log_u, n_pairs, float(temperature), float(gamma), normalize, float(eps),
        row_start, row_count,
    )  # fmt: skip
    return loss, log_u_new
