"""The two kernels both contrastive losses of :mod:`muse_fast.ops.nt_xent` are built on.

Both work on the stacked batch ``z = [z1; z2]`` (``M = 2·n_pairs`` rows) and on a subset of
*active* rows: pairs ``row_start .. row_start + row_count``, both views (one rank's share of a
gathered global batch; the negatives are always all ``M`` rows).

* **contrastive statistics** (forward; :func:`contrastive_stats_reference`, backends in
  :data:`STATS`): per active row the log-sum-exp of ``s/τ`` over ``k ≠ i`` (and ``k ≠ p(i)``
  for SogCLR), the positive similarity, optionally the softmax-weighted mean similarity. It is
  not an op of its own: each loss op runs the statistics of the backend it selected.
* **contrastive_grad** (backward; :func:`contrastive_grad_reference`, the op
  :data:`CONTRASTIVE_GRAD`): ``α (G + Gᵀ) ẑ`` pulled back through the normalization, for
  ``G_ik = exp(s_ik/τ − c_i)[k valid] − [i active][k = p(i)]``.

Backends: Triton (``kernels/nt_xent.py``) and C++ (``csrc/nt_xent.cpp``); both accumulate in
:func:`acc_dtype` of the input (fp32, or fp64 for fp64 inputs on the CPU).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .._backend import declare
from .._ext import dtype_name
from .._runtime import acc_dtype, empty

NORM_EPS = 1e-12  # F.normalize's eps

_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_CPU_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_SYM_ACC_BYTES = 256 << 20  # largest per-thread gradient accumulators the symmetric path takes


# ------------------------------------------------------------------------------------------
# eager definitions
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
    zc = z.to(acc_dtype(z.dtype))
    if normalize:
        zc = F.normalize(zc, dim=1, eps=NORM_EPS)
    m = zc.shape[0]
    rows = _active_rows(n_pairs, row_start, row_count, z.device)
    partner = (rows + n_pairs) % m
    s = zc[rows] @ zc.T  # (2·row_count, M)
    cols = torch.arange(m, device=z.device)
    masked = cols[None, :] == rows[:, None]
    if exclude_pos:
        masked = masked | (cols[None, :] == partner[:, None])
    logits = (s / temperature).masked_fill(masked, float("-inf"))
    lse = torch.logsumexp(logits, dim=1)
    pos = s.gather(1, partner[:, None]).squeeze(1)
    t = (torch.softmax(logits, dim=1) * s).sum(dim=1) if with_t else s.new_empty(0)
    return lse, pos, t


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
    cdt = acc_dtype(z.dtype)
    m = z.shape[0]
    zc = z.to(cdt)
    norm = zc.norm(dim=1, keepdim=True)
    rn = 1.0 / norm.clamp(min=NORM_EPS)
    zn = zc * rn if normalize else zc
    s = zn @ zn.T  # (M, M)
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


def full_offsets(
    act_values: torch.Tensor, m: int, n_pairs: int, row_start: int, row_count: int
) -> torch.Tensor:
    """(M,) offsets: the active rows' values (view-1 rows then view-2 rows), +inf elsewhere."""
    if row_start == 0 and row_count == n_pairs:
        return act_values  # every row active, already in row order
    c = act_values.new_full((m,), float("inf"))
    c[row_start : row_start + row_count] = act_values[:row_count]
    c[n_pairs + row_start : n_pairs + row_start + row_count] = act_values[row_count:]
    return c


# ------------------------------------------------------------------------------------------
# kernels
# ------------------------------------------------------------------------------------------
def _dtype_check(allowed: tuple[torch.dtype, ...], who: str) -> Callable[..., str | None]:
    def check(z=None, *args, **kwargs):
        if not isinstance(z, torch.Tensor):
            return "z: expected the stacked embeddings (M, D)"
        if z.dtype not in allowed:
            names = ", ".join(dtype_name(d) for d in allowed)
            return f"z: the {who} kernel takes {names}, got {dtype_name(z)}"
        if z.dim() != 2 or z.shape[0] < 4 or z.shape[1] < 1:
            return f"z: expected (M >= 4, D >= 1), got {tuple(z.shape)}"
        return None

    return check


CHECKS = {"triton": _dtype_check(_TRITON_DTYPES, "Triton"), "cpu": _dtype_check(_CPU_DTYPES, "C++")}


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
    c, alpha = c.to(torch.float32).contiguous(), alpha.to(torch.float32).reshape(1)
    return K.contrastive_bwd(
        z, rn, c, alpha, n_pairs, 1.0 / temperature, row_start, row_count, exclude_pos, NORM_EPS
    )


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


def _cpu_setup(z: torch.Tensor, n_pairs: int, row_count: int, kind: int):
    """(extension, unit-stride z, accumulation dtype, threads, scratch) for a C++ call."""
    from .._ext import ext

    C = ext()
    z = _unit_stride(z)
    m, d = z.shape
    cdt = acc_dtype(z.dtype)
    sym = _sym_threads(C, m, d, n_pairs, row_count, cdt.itemsize, kind)
    elems = C.nt_xent_scratch_elems(m, d, max(sym, 1), kind if sym else 0)
    return C, z, cdt, sym, torch.empty(elems, dtype=cdt)


def _stats_cpu(z, n_pairs, temperature, normalize, row_start, row_count, exclude_pos, with_t):
    from .._ext import ptr

    C, z, cdt, sym, scratch = _cpu_setup(z, n_pairs, row_count, 1)
    m, d = z.shape
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
    from .._ext import ptr

    C, z, cdt, sym, scratch = _cpu_setup(z, n_pairs, row_count, 2)
    m, d = z.shape
    c = c.to(cdt).contiguous()
    dz = empty(m, d, dtype=z.dtype, device="cpu")
    C.nt_xent_bwd(
        ptr(z), dtype_name(z), m, d, z.stride(0), n_pairs, bool(normalize), NORM_EPS,
        1.0 / temperature, row_start, row_count, bool(exclude_pos), ptr(c), float(alpha), sym,
        ptr(scratch), ptr(dz), dz.stride(0),
    )  # fmt: skip
    return dz


# the statistics of each backend, for the loss ops (which select the backend)
STATS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {
    "triton": _stats_triton,
    "cpu": _stats_cpu,
    "reference": contrastive_stats_reference,
}


def _grad_example(device: torch.device) -> tuple[tuple, dict]:
    z = torch.randn(16, 32, device=device)
    c = torch.rand(16, device=device) + 4
    return (z, c, torch.tensor(0.1, device=device), 8, 0.1, True, 0, 8, False), {}


def _grad_fake(z, c, alpha, n_pairs, temperature, normalize, row_start, row_count, exclude_pos):
    return torch.empty_like(z, memory_format=torch.contiguous_format)


CONTRASTIVE_GRAD = declare(
    "contrastive_grad",
    reference=contrastive_grad_reference,
    triton=_grad_triton,
    cpu=_grad_cpu,
    checks=CHECKS,
    example_inputs=_grad_example,
    fake=_grad_fake,
)
