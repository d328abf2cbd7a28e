"""Triton kernels for :mod:`muse_fast.ops.nt_xent`: tiled contrastive statistics, forward and backward.

Notation. ``z`` is the stacked batch ``[z1; z2]`` of ``M = 2N`` rows of width ``D``; row ``i``'s
positive is ``p(i) = i ± N``. With ``normalize`` every row is scaled by ``rn_i = 1 / max(‖z_i‖, eps)``
(computed once by :func:`row_rnorm`); the similarity ``s_ik = rn_i rn_k ⟨z_i, z_k⟩`` is formed tile by
tile from the *raw* rows (``tl.dot`` with fp32 accumulation, then scaled by ``rn_i rn_k``), so the
normalized rows are never written and bf16 / fp16 inputs lose nothing to a rounded copy.

Rows can be restricted to an *active* subset, ``(i mod N) ∈ [row_start, row_start + row_count)``
(one rank's share of a gathered global batch); columns are always all ``M`` rows.

Forward (:func:`contrastive_fwd`), per active row, over ``k ≠ i`` (and ``k ≠ p(i)`` when
``exclude_pos``): an online log-sum-exp ``lse_i = log Σ_k exp(β s_ik)``, the positive similarity
``s_{i,p(i)}`` picked out of its tile by a select, and optionally ``t_i = Σ_k softmax_ik s_ik``.
The diagonal is excluded with ``tl.where`` (never by adding ``-inf``). Nothing of size ``M × M``
is stored. When the row blocks alone would not fill the GPU (``TILES[...]["MIN_PROGRAMS"]``),
the columns are split into ``S`` contiguous ranges: each program writes a partial
``(lse, pos, t)`` of its range and the launcher merges them (``lse = logsumexp_s lse_s``,
``t = Σ_s exp(lse_s − lse) t_s``, ``pos = Σ_s pos_s``). Traffic: ``z`` read once per row block
(``M²D / BLOCK_M`` elements), ``3 S`` floats written per row.

Backward (:func:`contrastive_bwd`). Both losses built on these statistics have a similarity
gradient ``G_ik = α (exp(β s_ik − c_i) [k valid for i] − [i active] [k = p(i)])`` for per-row
offsets ``c`` (``+inf`` for inactive rows, so their terms vanish). As ``s`` is symmetric,
``dL/dẑ = (G + Gᵀ) ẑ``, and ``Gᵀ``'s entry at ``(i, k)`` is ``G_ki``, built from the *same*
similarity ``s_ik`` and the column's offset ``c_k``. So one program per row block recomputes each
tile ``s_IK`` once and accumulates ``(G_IK + G_KIᵀ) ẑ_K`` — the symmetry removes the transposed
pass (or the atomics) that flash-attention's dK/dV needs. A row block with no active row visits
only the column blocks holding active rows (the two ranges are the loop's bounds, not a branch
inside it, so the loop software-pipelines). Columns are split as in the forward; each split
writes its own fp32 partial ``dẑ`` (no atomics, deterministic) and the last small kernel sums
them and backpropagates through the L2 normalization exactly:
``dz_i = rn_i (dẑ_i − ẑ_i ⟨ẑ_i, dẑ_i⟩)`` (the projection is dropped where ``‖z_i‖ < eps``, as in
``F.normalize``). When ``D`` fits one block the column tile loaded for ``s`` is also the ``ẑ_K``
operand of the second product. Traffic: ``z`` read once per row block, ``S·M·D`` fp32 partials
written and read once.

Precision: fp32 inputs use ``input_precision="tf32x3"`` (three TF32 tensor-core products, about
fp32's accuracy — eager PyTorch's matmul does not use plain TF32 either); bf16 / fp16 use the
tensor cores with fp32 accumulation. In the backward the coefficient tile is cast to the input
dtype for the second ``tl.dot`` (as flash-attention does with P), after dividing by the tile's
largest ``rn_k`` so tiny-norm rows cannot overflow fp16.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import empty, launch, pow2, tile_config, workaround

_NEG = tl.constexpr(-1.0e30)  # finite "minus infinity" for running maxima and masked logits
_INF = tl.constexpr(float("inf"))
_LOG2E = tl.constexpr(1.4426950408889634)  # exponentials in base 2: exp(x) = exp2(x log2 e)
_LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _row_rnorm_kernel(
    z_ptr, rn_ptr, M, D, stride, eps, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < M
    roff = rows.to(tl.int64) * stride
    acc = tl.zeros((BLOCK_R,), tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dc = d0 + tl.arange(0, BLOCK_D)
        x = tl.load(
            z_ptr + roff[:, None] + dc[None, :],
            mask=rmask[:, None] & (dc[None, :] < D),
            other=0.0,
        ).to(tl.float32)
        acc += tl.sum(x * x, axis=1)
    tl.store(rn_ptr + rows, 1.0 / tl.maximum(tl.sqrt(acc), eps), mask=rmask)


@triton.jit
def _mm(a, b, PREC: tl.constexpr, DOT_F32: tl.constexpr):
    """tl.dot with fp32 accumulation; DOT_F32 upcasts the operands first (interpreter only,
    workaround ``nt_xent.dot_f32``)."""
    if DOT_F32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=PREC)
    return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _sim_tile(
    z_ptr, stride, a, roff, rmask, cols, cmask, D,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ONE_D: tl.constexpr, PREC: tl.constexpr, DOT_F32: tl.constexpr,
):  # fmt: skip
    """Raw dot products <z_i, z_k> of one (BLOCK_M, BLOCK_N) tile, fp32."""
    coff = cols.to(tl.int64) * stride
    if ONE_D:
        dc = tl.arange(0, BLOCK_D)
        b = tl.load(
            z_ptr + coff[:, None] + dc[None, :],
            mask=cmask[:, None] & (dc[None, :] < D),
            other=0.0,
        )
        s = _mm(a, tl.trans(b), PREC, DOT_F32)
    else:
        s = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        for d0 in range(0, D, BLOCK_D):
            dc = d0 + tl.arange(0, BLOCK_D)
            dm = dc[None, :] < D
            ai = tl.load(z_ptr + roff[:, None] + dc[None, :], mask=rmask[:, None] & dm, other=0.0)
            b = tl.load(z_ptr + coff[:, None] + dc[None, :], mask=cmask[:, None] & dm, other=0.0)
            s += _mm(ai, tl.trans(b), PREC, DOT_F32)
    return s


@triton.jit
def _row_tile(
    z_ptr, roff, rmask, D, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, ONE_D: tl.constexpr
):
    """The rows' (BLOCK_M, BLOCK_D) operand, loaded once when D fits one block (else unused)."""
    a = tl.zeros((BLOCK_M, BLOCK_D), z_ptr.dtype.element_ty)
    if ONE_D:
        dc = tl.arange(0, BLOCK_D)
        a = tl.load(
            z_ptr + roff[:, None] + dc[None, :], mask=rmask[:, None] & (dc[None, :] < D), other=0.0
        )
    return a


@triton.jit
def _row_dot(z_ptr, roff, poff, rmask, D, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """⟨z_i, z_p(i)⟩ per row in fp32 (the positive similarity, outside the column loop)."""
    acc = tl.zeros((BLOCK_M,), tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dc = d0 + tl.arange(0, BLOCK_D)
        m2 = rmask[:, None] & (dc[None, :] < D)
        x = tl.load(z_ptr + roff[:, None] + dc[None, :], mask=m2, other=0.0).to(tl.float32)
        y = tl.load(z_ptr + poff[:, None] + dc[None, :], mask=m2, other=0.0).to(tl.float32)
        acc += tl.sum(x * y, axis=1)
    return acc


@triton.jit
def _fwd_kernel(
    z_ptr, rn_ptr, lse_ptr, pos_ptr, t_ptr,
    M, N, D, stride, row_start, row_count, beta, blocks_per_split,
    NORMALIZE: tl.constexpr, EXCLUDE_POS: tl.constexpr, WITH_T: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ONE_D: tl.constexpr, PREC: tl.constexpr, DOT_F32: tl.constexpr,
):  # fmt: skip
    # compact index j over the active rows: view-1 rows first, then view-2 rows
    R = 2 * row_count
    j = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    jmask = j < R
    rows = tl.where(j < row_count, row_start + j, N + row_start + j - row_count)
    rows = tl.where(jmask, rows, 0)
    prow = tl.where(rows < N, rows + N, rows - N)
    roff = rows.to(tl.int64) * stride
    # logits in base 2: x_ik = log2(e) β s_ik = (raw dot · rn_k) · u_i, u_i = log2(e) β rn_i
    rn_i = tl.full((BLOCK_M,), 1.0, tl.float32)
    if NORMALIZE:
        rn_i = tl.load(rn_ptr + rows, mask=jmask, other=0.0)
    u_i = rn_i * (beta * _LOG2E)
    a = _row_tile(z_ptr, roff, jmask, D, BLOCK_M, BLOCK_D, ONE_D)
    m_i = tl.full((BLOCK_M,), _NEG, tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    t_i = tl.zeros((BLOCK_M,), tl.float32)
    split = tl.program_id(1)
    k_lo = split * blocks_per_split * BLOCK_N
    k_hi = tl.minimum(M, k_lo + blocks_per_split * BLOCK_N)
    for k0 in range(k_lo, k_hi, BLOCK_N):
        cols = k0 + tl.arange(0, BLOCK_N)
        cmask = cols < M
        s = _sim_tile(
            z_ptr, stride, a, roff, jmask, cols, cmask, D,
            BLOCK_M, BLOCK_N, BLOCK_D, ONE_D, PREC, DOT_F32,
        )  # fmt: skip
        if NORMALIZE:
            s = s * tl.load(rn_ptr + cols, mask=cmask, other=0.0)[None, :]
        valid = cmask[None, :] & (cols[None, :] != rows[:, None])
        if EXCLUDE_POS:
            valid = valid & (cols[None, :] != prow[:, None])
        x = tl.where(valid, s * u_i[:, None], _NEG)  # masked before any exp: nothing overflows
        m_new = tl.maximum(m_i, tl.max(x, axis=1))
        scale = tl.exp2(m_i - m_new)
        p = tl.where(valid, tl.exp2(x - m_new[:, None]), 0.0)
        l_i = l_i * scale + tl.sum(p, axis=1)
        if WITH_T:
            t_i = t_i * scale + tl.sum(p * s, axis=1)
        m_i = m_new
    # a split whose range holds no valid column of a row: lse -inf, t 0 (weight 0 in the merge)
    out = split * R + j
    tl.store(lse_ptr + out, (m_i + tl.log2(l_i)) * _LN2, mask=jmask)
    poff = prow.to(tl.int64) * stride
    pos = _row_dot(z_ptr, roff, poff, jmask, D, BLOCK_M, BLOCK_D) * (split == 0)
    if NORMALIZE:
        pos = pos * rn_i * tl.load(rn_ptr + prow, mask=jmask, other=0.0)
    tl.store(pos_ptr + out, pos, mask=jmask)
    if WITH_T:
        tl.store(t_ptr + out, tl.where(l_i > 0, t_i * rn_i / l_i, 0.0), mask=jmask)


@triton.jit
def _merge_kernel(lse_ptr, pos_ptr, t_ptr, R, n_split, WITH_T: tl.constexpr, BLOCK: tl.constexpr):
    """Column splits' partials (S, R) -> (R,) in place of split 0: lse = logsumexp_s lse_s,
    t = Σ_s exp(lse_s − lse) t_s, pos = Σ_s pos_s (one split holds the positive)."""
    r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    rmask = r < R
    mx = tl.full((BLOCK,), _NEG, tl.float32)
    for sp in range(n_split):
        mx = tl.maximum(mx, tl.load(lse_ptr + sp * R + r, mask=rmask, other=_NEG))
    se = tl.zeros((BLOCK,), tl.float32)
    st = tl.zeros((BLOCK,), tl.float32)
    pos = tl.zeros((BLOCK,), tl.float32)
    for sp in range(n_split):
        w = tl.exp(tl.load(lse_ptr + sp * R + r, mask=rmask, other=_NEG) - mx)
        se += w
        if WITH_T:
            st += w * tl.load(t_ptr + sp * R + r, mask=rmask, other=0.0)
        pos += tl.load(pos_ptr + sp * R + r, mask=rmask, other=0.0)
    tl.store(lse_ptr + r, mx + tl.log(se), mask=rmask)
    tl.store(pos_ptr + r, pos, mask=rmask)
    if WITH_T:
        tl.store(t_ptr + r, st / se, mask=rmask)


@triton.jit
def _col_tile(z_ptr, stride, cols, cmask, do, dmask):
    """Columns ``do`` of rows ``cols``: the (BLOCK_N, BLOCK_DO) ẑ_K operand, input dtype."""
    return tl.load(
        z_ptr + cols.to(tl.int64)[:, None] * stride + do[None, :],
        mask=cmask[:, None] & dmask[None, :],
        other=0.0,
    )


@triton.jit
def _active_col_blocks(
    r0, M, N, row_start, row_count, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr
):
    """Column blocks a backward program visits, as two ranges ``[a_lo, a_lo + n_a)`` and
    ``[b_lo, b_lo + n_b)``: every block when rows ``r0 .. r0 + BLOCK_M`` hold an active row, else
    the blocks holding active rows (an inactive row's own terms vanish, c_i = +inf)."""
    r1 = r0 + BLOCK_M
    hi = row_start + row_count
    row_any = ((r0 < hi) & (r1 > row_start)) | ((r0 < N + hi) & (r1 > N + row_start))
    nkb = tl.cdiv(M, BLOCK_N)
    a_lo = row_start // BLOCK_N
    a_hi = tl.cdiv(hi, BLOCK_N)
    b_lo = tl.maximum((N + row_start) // BLOCK_N, a_hi)  # the two ranges never overlap
    b_hi = tl.maximum(tl.cdiv(N + hi, BLOCK_N), b_lo)
    a_lo = tl.where(row_any, 0, a_lo)
    n_a = tl.where(row_any, nkb, a_hi - a_lo)
    n_b = tl.where(row_any, 0, b_hi - b_lo)
    return a_lo, n_a, b_lo, n_b


@triton.jit
def _bwd_kernel(
    z_ptr, rn_ptr, c_ptr, alpha_ptr, dzn_ptr,
    M, N, D, stride, row_start, row_count, beta,
    NORMALIZE: tl.constexpr, EXCLUDE_POS: tl.constexpr, SCALE_TILE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DO: tl.constexpr,
    ONE_D: tl.constexpr, PREC: tl.constexpr, DOT_F32: tl.constexpr,
):  # fmt: skip
    r0 = tl.program_id(0) * BLOCK_M
    rows = r0 + tl.arange(0, BLOCK_M)
    rmask = rows < M
    rmod = tl.where(rows < N, rows, rows - N) - row_start
    ract = rmask & (rmod >= 0) & (rmod < row_count)
    prow = tl.where(rows < N, rows + N, rows - N)
    roff = rows.to(tl.int64) * stride
    c_i = tl.load(c_ptr + rows, mask=rmask, other=_INF) * _LOG2E
    rn_i = tl.full((BLOCK_M,), 1.0, tl.float32)
    if NORMALIZE:
        rn_i = tl.load(rn_ptr + rows, mask=rmask, other=0.0)
    u_i = rn_i * (beta * _LOG2E)  # base-2 logits, as in the forward
    a = _row_tile(z_ptr, roff, rmask, D, BLOCK_M, BLOCK_D, ONE_D)
    do = tl.program_id(1) * BLOCK_DO + tl.arange(0, BLOCK_DO)
    dmask = do < D
    # the positive terms, −[i active][k = p(i)] in both G and Gᵀ: −2 rn_p z_p, once (split 0)
    zp = tl.load(
        z_ptr + prow.to(tl.int64)[:, None] * stride + do[None, :],
        mask=(ract & (tl.program_id(2) == 0))[:, None] & dmask[None, :],
        other=0.0,
    ).to(tl.float32)
    rn_p = tl.full((BLOCK_M,), 1.0, tl.float32)
    if NORMALIZE:
        rn_p = tl.load(rn_ptr + prow, mask=rmask, other=0.0)
    acc = -2.0 * rn_p[:, None] * zp
    a_lo, n_a, b_lo, n_b = _active_col_blocks(r0, M, N, row_start, row_count, BLOCK_M, BLOCK_N)
    n_it = n_a + n_b
    per_split = tl.cdiv(n_it, tl.num_programs(2))
    it_lo = tl.program_id(2) * per_split
    it_hi = tl.minimum(n_it, it_lo + per_split)
    for it in range(it_lo, it_hi):
        cols = tl.where(it < n_a, a_lo + it, b_lo + it - n_a) * BLOCK_N + tl.arange(0, BLOCK_N)
        cmask = cols < M
        if ONE_D:  # the column tile is both s's operand and the ẑ_K of the second product
            zk = _col_tile(z_ptr, stride, cols, cmask, do, dmask)
            s = _mm(a, tl.trans(zk), PREC, DOT_F32)
        else:  # the output chunk's column tile after the D loop: not live across it
            s = _sim_tile(
                z_ptr, stride, a, roff, rmask, cols, cmask, D,
                BLOCK_M, BLOCK_N, BLOCK_D, ONE_D, PREC, DOT_F32,
            )  # fmt: skip
            zk = _col_tile(z_ptr, stride, cols, cmask, do, dmask)
        rn_k = tl.full((BLOCK_N,), 1.0, tl.float32)
        if NORMALIZE:
            rn_k = tl.load(rn_ptr + cols, mask=cmask, other=0.0)
        c_k = tl.load(c_ptr + cols, mask=cmask, other=_INF) * _LOG2E
        valid = cmask[None, :] & (cols[None, :] != rows[:, None])
        if EXCLUDE_POS:
            valid = valid & (cols[None, :] != prow[:, None])
        # masked logits are _NEG before the exp, so exp2(. - c) is 0 there (c > -inf)
        x = tl.where(valid, s * (u_i[:, None] * rn_k[None, :]), _NEG)
        w = tl.exp2(x - c_i[:, None]) + tl.exp2(x - c_k[None, :])
        if SCALE_TILE:  # keep w·rn_k within fp16 range whatever the norms
            smax = tl.max(rn_k, axis=0)
            w = w * (rn_k / smax)[None, :]
            acc += smax * _mm(w.to(zk.dtype), zk, PREC, DOT_F32)
        else:
            acc += _mm((w * rn_k[None, :]).to(zk.dtype), zk, PREC, DOT_F32)
    alpha = tl.load(alpha_ptr).to(tl.float32)
    out = tl.program_id(2).to(tl.int64) * M * D + rows.to(tl.int64)[:, None] * D + do[None, :]
    tl.store(dzn_ptr + out, acc * alpha, mask=rmask[:, None] & dmask[None, :])


@triton.jit
def _norm_bwd_kernel(
    z_ptr, rn_ptr, dzn_ptr, dz_ptr, M, D, stride, eps, n_split,
    NORMALIZE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < M
    dc = tl.arange(0, BLOCK_D)
    m2 = rmask[:, None] & (dc[None, :] < D)
    goff = rows.to(tl.int64)[:, None] * D + dc[None, :]
    g = tl.zeros((BLOCK_R, BLOCK_D), tl.float32)
    for sp in range(n_split):  # the column splits' partial dẑ, summed in a fixed order
        g += tl.load(dzn_ptr + sp * M * D + goff, mask=m2, other=0.0)
    if NORMALIZE:
        x = tl.load(z_ptr + rows.to(tl.int64)[:, None] * stride + dc[None, :], mask=m2, other=0.0)
        x = x.to(tl.float32)
        rn = tl.load(rn_ptr + rows, mask=rmask, other=0.0)
        norm = tl.sqrt(tl.sum(x * x, axis=1))
        zn = x * rn[:, None]
        proj = tl.where(norm >= eps, tl.sum(zn * g, axis=1), 0.0)
        g = rn[:, None] * (g - zn * proj[:, None])
    tl.store(dz_ptr + goff, g.to(dz_ptr.dtype.element_ty), mask=m2)


# ------------------------------------------------------------------------------------------
# launchers
# ------------------------------------------------------------------------------------------
# the interpreter's tl.dot mishandles bf16 / fp16 operands; products of 16-bit values are exact
# in fp32, so upcasting first changes nothing but the speed
_DOT_F32_WHY = "tl.dot mishandles bf16 / fp16 operands under the interpreter; upcast to fp32"


def _prec(z: torch.Tensor) -> str:
    # fp32: three TF32 tensor-core products (the dropped lo·lo term is ~2^-22 relative, fp32-like
    # accuracy; eager matmul does not use plain TF32 either). Ignored for 16-bit inputs.
    return "tf32x3" if z.dtype == torch.float32 else "ieee"


def _tiles(kernel: str, z: torch.Tensor) -> tuple[dict[str, int], int, int, int]:
    """(config, BLOCK_M, BLOCK_N, BLOCK_D) of ``kernel`` shrunk to ``z`` (M, D)."""
    cfg = tile_config(kernel, z.device)
    M, D = z.shape
    bm = pow2(M, 16, cfg["BLOCK_M"])
    bn = pow2(M, 16, cfg["BLOCK_N"])
    bd = cfg["BLOCK_D_FP32" if z.dtype == torch.float32 else "BLOCK_D"]
    return cfg, bm, bn, pow2(D, 16, bd)


def _n_split(programs: int, col_blocks: int, min_programs: int) -> int:
    """Column splits that bring ``programs`` up to ``min_programs`` (at most one per block)."""
    if programs >= min_programs:
        return 1
    return max(1, min(col_blocks, triton.cdiv(min_programs, programs)))


def row_rnorm(z: torch.Tensor, eps: float) -> torch.Tensor:
    """``1 / max(‖z_i‖, eps)`` per row, fp32, shape (M,)."""
    M, D = z.shape
    cfg = tile_config("nt_xent.row_rnorm", z.device)
    rn = empty(M, dtype=torch.float32, device=z.device)
    br = pow2(M, 1, cfg["BLOCK_R"])
    launch(
        _row_rnorm_kernel, (triton.cdiv(M, br),), z, rn, M, D, z.stride(0), eps,
        BLOCK_R=br, BLOCK_D=pow2(D, 16, cfg["BLOCK_D"]),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    return rn


def contrastive_fwd(
    z: torch.Tensor,
    rn: torch.Tensor | None,
    n_pairs: int,
    beta: float,
    row_start: int,
    row_count: int,
    exclude_pos: bool,
    with_t: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per active row (view-1 rows then view-2 rows): ``(lse, pos, t)``, fp32, shape (2·row_count,)."""
    M, D = z.shape
    cfg, bm, bn, bd = _tiles("nt_xent.fwd", z)
    R = 2 * row_count
    row_blocks, col_blocks = triton.cdiv(R, bm), triton.cdiv(M, bn)
    split = _n_split(row_blocks, col_blocks, cfg["MIN_PROGRAMS"])
    per_split = triton.cdiv(col_blocks, split)
    split = triton.cdiv(col_blocks, per_split)  # no empty split
    lse = empty(split, R, dtype=torch.float32, device=z.device)  # (S, R) partials
    pos = empty(split, R, dtype=torch.float32, device=z.device)
    t = empty(split, R if with_t else 1, dtype=torch.float32, device=z.device)
    launch(
        _fwd_kernel, (row_blocks, split),
        z, rn if rn is not None else lse, lse, pos, t,
        M, n_pairs, D, z.stride(0), row_start, row_count, float(beta), per_split,
        NORMALIZE=rn is not None, EXCLUDE_POS=bool(exclude_pos), WITH_T=bool(with_t),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, ONE_D=D <= bd, PREC=_prec(z),
        DOT_F32=workaround("nt_xent.dot_f32", _DOT_F32_WHY),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    if split > 1:
        mcfg = tile_config("nt_xent.merge", z.device)
        block = pow2(R, 16, mcfg["BLOCK"])
        launch(
            _merge_kernel, (triton.cdiv(R, block),), lse, pos, t, R, split,
            WITH_T=bool(with_t), BLOCK=block,
            num_warps=mcfg["num_warps"], num_stages=mcfg["num_stages"],
        )  # fmt: skip
    return lse[0], pos[0], t[0]


def contrastive_bwd(
    z: torch.Tensor,
    rn: torch.Tensor | None,
    c: torch.Tensor,
    alpha: torch.Tensor,
    n_pairs: int,
    beta: float,
    row_start: int,
    row_count: int,
    exclude_pos: bool,
    eps: float,
) -> torch.Tensor:
    """``dz`` (M, D) in ``z.dtype``: ``α (G + Gᵀ) ẑ`` pulled back through the normalization."""
    M, D = z.shape
    cfg, bm, bn, bd = _tiles("nt_xent.bwd", z)
    grid = (triton.cdiv(M, bm), triton.cdiv(D, bd))
    split = _n_split(grid[0] * grid[1], triton.cdiv(M, bn), cfg["MIN_PROGRAMS"])
    dzn = empty(split, M, D, dtype=torch.float32, device=z.device)  # (S, M, D) partials
    launch(
        _bwd_kernel, (*grid, split),
        z, rn if rn is not None else c, c, alpha, dzn,
        M, n_pairs, D, z.stride(0), row_start, row_count, float(beta),
        NORMALIZE=rn is not None, EXCLUDE_POS=bool(exclude_pos),
        SCALE_TILE=rn is not None and z.dtype in (torch.float16, torch.bfloat16),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, BLOCK_DO=bd, ONE_D=D <= bd, PREC=_prec(z),
        DOT_F32=workaround("nt_xent.dot_f32", _DOT_F32_WHY),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    dz = empty(M, D, dtype=z.dtype, device=z.device)
    ncfg = tile_config("nt_xent.norm_bwd", z.device)
    bdn = pow2(D, 16)
    br = pow2(ncfg["ELEMS"] // bdn, 1, ncfg["BLOCK_R"])
    launch(
        _norm_bwd_kernel, (triton.cdiv(M, br),),
        z, rn if rn is not None else c, dzn, dz, M, D, z.stride(0), eps, split,
        NORMALIZE=rn is not None, BLOCK_R=br, BLOCK_D=bdn,
        num_warps=ncfg["num_warps"], num_stages=ncfg["num_stages"],
    )  # fmt: skip
    return dz
