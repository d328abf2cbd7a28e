"""Triton kernels for :mod:`muse_fast.ops.summary_mixing` (no autograd, no dispatch).

Two fused pieces of SummaryMixing; the big matmuls stay in cuBLAS (torch):

* **masked mean over time** — ``s̄[b] = Σ_t m[b,t]·S[b,t] / max(Σ_t m[b,t], 1)`` for a
  (B, T, D) tensor of any strides, with its backward ``dS[b,t] = m[b,t]·ds̄[b] / max(n_b, 1)``;
* **add + GELU + mask** — ``z = H + g[b]`` (``g`` = ``W_s·s̄ + b``, one row per utterance,
  broadcast over time), ``y = GELU(z)`` (exact, erf) and ``y = 0`` at padded frames, writing
  ``z`` over ``H`` in place (the caller owns ``H``; it is saved for the backward); its backward
  ``dz = m·dy·GELU'(z)`` also reduces ``dg = Σ_t dz`` per time chunk (fp32 partial sums the
  launcher adds up), so no (B, T, 2D) tensor ever exists.

Accumulation is fp32 (fp64 for fp64 inputs). Masks are passed as uint8 views of bool tensors.
Tile sizes come from ``TILES["summary_mixing.*"]`` in :mod:`._utils`. Memory traffic: the mean
reads S once; add + GELU reads H, writes z over H and writes y; its backward reads dy and z and
writes dz (plus B x chunks x D partial sums); the mean's backward writes dX once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import acc_dtype, empty, launch, pow2, tile_config

_INV_SQRT2 = tl.constexpr(0.7071067811865476)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


# --------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _tile(T, D, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """Utterance ``b`` (int64: B·T·D may exceed 2^31) and the program's frame / feature block."""
    b = tl.program_id(0).to(tl.int64)
    offs_t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    return b, offs_t, offs_d, offs_t < T, offs_d < D


@triton.jit
def _masked_mean_fwd_kernel(
    S,
    M,
    OUT,
    T,
    D,
    T_CHUNK,
    s_b,
    s_t,
    s_d,
    m_b,
    out_b,
    out_c,
    HAS_MASK: tl.constexpr,
    FINAL: tl.constexpr,
    IS_F64: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """One program: utterance ``b``, time chunk ``c`` (T_CHUNK frames), BLOCK_D features.

    FINAL (one chunk covers all of T): writes the mean in OUT's dtype. Otherwise writes fp32
    (fp64) partial sums OUT[b, c, d] that the launcher adds up and divides.
    """
    b = tl.program_id(0).to(tl.int64)  # 64-bit offsets: B·T·D may exceed 2^31
    c = tl.program_id(1)
    pid_d = tl.program_id(2)
    acc_t = tl.float64 if IS_F64 else tl.float32
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    # accumulate elementwise over the time loop and reduce over time once, after it
    acc = tl.zeros([BLOCK_T, BLOCK_D], dtype=acc_t)
    cnt = tl.zeros([BLOCK_T], dtype=acc_t)
    t_start = c * T_CHUNK
    t_end = tl.minimum(t_start + T_CHUNK, T)
    for t0 in range(t_start, t_end, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        t_ok = offs_t < t_end
        if HAS_MASK:
            mv = tl.load(M + b * m_b + offs_t, mask=t_ok, other=0) != 0
            t_ok = t_ok & mv
        cnt += t_ok.to(acc_t)
        ptrs = S + b * s_b + offs_t[:, None] * s_t + offs_d[None, :] * s_d
        ok = t_ok[:, None] & d_ok[None, :]
        x = tl.load(ptrs, mask=ok, other=0.0).to(acc_t)
        acc += x  # masked-out elements loaded as 0 (never NaN from padding)
    total = tl.sum(acc, axis=0)
    if FINAL:
        n = tl.maximum(tl.sum(cnt, axis=0), 1.0)
        res = total / n
        tl.store(OUT + b * out_b + offs_d, res.to(OUT.dtype.element_ty), mask=d_ok)
    else:
        tl.store(OUT + b * out_b + c * out_c + offs_d, total, mask=d_ok)


@triton.jit
def _masked_mean_bwd_kernel(
    DMEAN,
    INV,
    M,
    DX,
    T,
    D,
    m_b,
    HAS_MASK: tl.constexpr,
    IS_F64: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """dX[b, t, d] = m[b, t] · dmean[b, d] · inv[b]  (DX contiguous (B, T, D))."""
    b, offs_t, offs_d, t_ok, d_ok = _tile(T, D, BLOCK_T, BLOCK_D)
    acc_t = tl.float64 if IS_F64 else tl.float32
    g = tl.load(DMEAN + b * D + offs_d, mask=d_ok, other=0.0).to(acc_t)
    inv = tl.load(INV + b).to(acc_t)
    g = g * inv
    keep = t_ok
    if HAS_MASK:
        keep = keep & (tl.load(M + b * m_b + offs_t, mask=t_ok, other=0) != 0)
    val = tl.where(keep[:, None], g[None, :], 0.0)
    ptrs = DX + b * T * D + offs_t[:, None] * D + offs_d[None, :]
    tl.store(ptrs, val.to(DX.dtype.element_ty), mask=t_ok[:, None] & d_ok[None, :])


@triton.jit
def _add_gelu_mask_fwd_kernel(
    H,
    G,
    M,
    Y,
    T,
    D,
    m_b,
    HAS_MASK: tl.constexpr,
    IS_F64: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """z = H + G[b] (stored over H), Y = GELU(z), 0 at padded frames (H, Y contiguous)."""
    b, offs_t, offs_d, t_ok, d_ok = _tile(T, D, BLOCK_T, BLOCK_D)
    acc_t = tl.float64 if IS_F64 else tl.float32
    ok = t_ok[:, None] & d_ok[None, :]
    g = tl.load(G + b * D + offs_d, mask=d_ok, other=0.0).to(acc_t)
    off = b * T * D + offs_t[:, None] * D + offs_d[None, :]
    h = tl.load(H + off, mask=ok, other=0.0).to(acc_t)
    z = h + g[None, :]
    y = 0.5 * z * (1.0 + tl.math.erf(z * _INV_SQRT2))
    if HAS_MASK:
        keep = tl.load(M + b * m_b + offs_t, mask=t_ok, other=0) != 0
        y = tl.where(keep[:, None], y, 0.0)
    tl.store(H + off, z.to(H.dtype.element_ty), mask=ok)
    tl.store(Y + off, y.to(Y.dtype.element_ty), mask=ok)


@triton.jit
def _add_gelu_mask_bwd_kernel(
    DY,
    Z,
    M,
    DZ,
    DG,
    T,
    D,
    T_CHUNK,
    m_b,
    dg_b,
    dg_c,
    HAS_MASK: tl.constexpr,
    IS_F64: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """dz = m · dy · GELU'(z) (DZ, DY, Z contiguous); DG[b, c, d] = Σ_{t in chunk c} dz."""
    b = tl.program_id(0).to(tl.int64)  # 64-bit offsets: B·T·D may exceed 2^31
    c = tl.program_id(1)
    pid_d = tl.program_id(2)
    acc_t = tl.float64 if IS_F64 else tl.float32
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    acc = tl.zeros([BLOCK_T, BLOCK_D], dtype=acc_t)  # reduced over time once, after the loop
    t_start = c * T_CHUNK
    t_end = tl.minimum(t_start + T_CHUNK, T)
    for t0 in range(t_start, t_end, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        t_ok = offs_t < t_end
        ok = t_ok[:, None] & d_ok[None, :]
        off = b * T * D + offs_t[:, None] * D + offs_d[None, :]
        dy = tl.load(DY + off, mask=ok, other=0.0).to(acc_t)
        z = tl.load(Z + off, mask=ok, other=0.0).to(acc_t)
        cdf = 0.5 * (1.0 + tl.math.erf(z * _INV_SQRT2))
        pdf = tl.exp(-0.5 * z * z) * _INV_SQRT_2PI
        dz = dy * (cdf + z * pdf)
        keep = ok
        if HAS_MASK:
            mv = tl.load(M + b * m_b + offs_t, mask=t_ok, other=0) != 0
            keep = keep & mv[:, None]
        dz = tl.where(keep, dz, 0.0)
        dz_st = dz.to(DZ.dtype.element_ty)
        tl.store(DZ + off, dz_st, mask=ok)
        acc += dz
    tl.store(DG + b * dg_b + c * dg_c + offs_d, tl.sum(acc, axis=0), mask=d_ok)


# --------------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------------


def _blocks(name: str, device: torch.device, T: int, D: int) -> tuple[dict, int, int]:
    """The tile entry of kernel ``name`` and (BLOCK_T, BLOCK_D) shrunk to the problem."""
    cfg = tile_config(name, device)
    return cfg, pow2(T, 1, cfg["BLOCK_T"]), pow2(D, 1, cfg["BLOCK_D"])


def _mask_u8(mask: torch.Tensor | None, like: torch.Tensor) -> tuple[torch.Tensor, int]:
    if mask is None:
        return like, 0  # never read (HAS_MASK=False)
    m = mask.contiguous().view(torch.uint8)
    return m, m.stride(0)


def masked_mean(
    x: torch.Tensor, mask: torch.Tensor | None = None, out_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """(B, T, D) any strides, mask (B, T) bool or None → (B, D) in ``out_dtype`` (x's dtype)."""
    out_dtype = out_dtype or x.dtype
    B, T, D = x.shape
    cfg, bt, bd = _blocks("summary_mixing.masked_mean_fwd", x.device, T, D)
    # split time (at least 4 time blocks per chunk) when B x feature blocks cannot fill the
    # PROGRAMS the tile entry asks for (one on the interpreter)
    n_chunks = max(1, min(triton.cdiv(T, 4 * bt), cfg["PROGRAMS"] // (B * triton.cdiv(D, bd))))
    t_chunk = triton.cdiv(T, n_chunks)
    n_chunks = triton.cdiv(T, t_chunk)
    m, m_b = _mask_u8(mask, x)
    final = n_chunks == 1
    if final:
        out = empty(B, D, dtype=out_dtype, device=x.device)
        out_b, out_c = out.stride(0), 0
    else:
        out = empty(B, n_chunks, D, dtype=acc_dtype(x.dtype), device=x.device)
        out_b, out_c = out.stride(0), out.stride(1)
    grid = (B, n_chunks, triton.cdiv(D, bd))
    launch(
        _masked_mean_fwd_kernel,
        grid,
        x,
        m,
        out,
        T,
        D,
        t_chunk,
        x.stride(0),
        x.stride(1),
        x.stride(2),
        m_b,
        out_b,
        out_c,
        HAS_MASK=mask is not None,
        FINAL=final,
        IS_F64=x.dtype == torch.float64,
        BLOCK_T=bt,
        BLOCK_D=bd,
        num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )
    if final:
        return out
    n = (
        mask.sum(1, dtype=out.dtype)
        if mask is not None
        else torch.full((B,), T, dtype=out.dtype, device=x.device)
    )
    return (out.sum(1) / n.clamp_min(1).unsqueeze(1)).to(out_dtype)


def masked_mean_backward(
    dmean: torch.Tensor, mask: torch.Tensor | None, T: int, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """dmean (B, D) (any float dtype) → dX (B, T, D) contiguous in ``dtype`` (dmean's)."""
    dtype = dtype or dmean.dtype
    dmean = dmean.contiguous()
    B, D = dmean.shape
    acc = acc_dtype(dmean.dtype)
    if mask is not None:
        inv = 1.0 / mask.sum(1, dtype=acc).clamp_min(1)
    else:
        inv = torch.full((B,), 1.0 / max(T, 1), dtype=acc, device=dmean.device)
    dx = empty(B, T, D, dtype=dtype, device=dmean.device)
    is_f64 = dtype == torch.float64 or dmean.dtype == torch.float64
    cfg, bt, bd = _blocks("summary_mixing.masked_mean_bwd", dmean.device, T, D)
    m, m_b = _mask_u8(mask, dmean)
    grid = (B, triton.cdiv(T, bt), triton.cdiv(D, bd))
    launch(
        _masked_mean_bwd_kernel,
        grid,
        dmean,
        inv,
        m,
        dx,
        T,
        D,
        m_b,
        HAS_MASK=mask is not None,
        IS_F64=is_f64,
        BLOCK_T=bt,
        BLOCK_D=bd,
        num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )
    return dx


def add_gelu_mask(
    h: torch.Tensor, g: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """h (B, T, D) contiguous, owned by the caller; g (B, D) → (y, z) with z written over h."""
    if not h.is_contiguous():
        raise ValueError("h: expected a contiguous (B, T, D) tensor (z is written over it)")
    B, T, D = h.shape
    g = g.contiguous()
    y = empty(B, T, D, dtype=h.dtype, device=h.device)
    cfg, bt, bd = _blocks("summary_mixing.add_gelu_mask_fwd", h.device, T, D)
    m, m_b = _mask_u8(mask, h)
    grid = (B, triton.cdiv(T, bt), triton.cdiv(D, bd))
    launch(
        _add_gelu_mask_fwd_kernel,
        grid,
        h,
        g,
        m,
        y,
        T,
        D,
        m_b,
        HAS_MASK=mask is not None,
        IS_F64=h.dtype == torch.float64,
        BLOCK_T=bt,
        BLOCK_D=bd,
        num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )
    return y, h


def add_gelu_mask_backward(
    dy: torch.Tensor, z: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(dz (B, T, D) in z's dtype, dg = Σ_t dz (B, D) in the accumulation dtype)."""
    dy = dy.contiguous()
    z = z.contiguous()
    B, T, D = z.shape
    cfg, bt, bd = _blocks("summary_mixing.add_gelu_mask_bwd", z.device, T, D)
    t_chunk = min(T, cfg["T_CHUNK"])  # frames whose dz one program sums into a dg partial
    n_chunks = triton.cdiv(T, t_chunk)
    dz = empty(B, T, D, dtype=z.dtype, device=z.device)
    dg = empty(B, n_chunks, D, dtype=acc_dtype(z.dtype), device=z.device)
    m, m_b = _mask_u8(mask, z)
    grid = (B, n_chunks, triton.cdiv(D, bd))
    launch(
        _add_gelu_mask_bwd_kernel,
        grid,
        dy,
        z,
        m,
        dz,
        dg,
        T,
        D,
        t_chunk,
        m_b,
        dg.stride(0),
        dg.stride(1),
        HAS_MASK=mask is not None,
        IS_F64=z.dtype == torch.float64,
        BLOCK_T=bt,
        BLOCK_D=bd,
        num_warps=cfg["num_warps"],
        num_stages=cfg["num_stages"],
    )
    return dz, (dg[:, 0] if n_chunks == 1 else dg.sum(1))
