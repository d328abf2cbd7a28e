"""Triton kernels for ``muse_fast.ops.patch_embed`` (launchers included; no autograd, no
dispatch). Contracts: docs/design.md, "Masked patch embedding".

Patch p of row b is the (ph, pw, C) block at grid cell (p // gw, p % gw) of spec (any strides),
its vector laid out ``(p1 p2 c)``. Each program loads the whole patch vector of BLOCK_M kept
patches once (one (BLOCK_M, pow2(K)) tile, read in spec's dtype and computed in fp32), so the
LayerNorm statistics and the normalized tile come from a single load:

* ``masked_patch_embed``: ``out = LN?(v) @ W.T + bias + pos[p]``; the normalized tile is cast
  to W's dtype on load (an fp32 spectrogram with bf16 weights is never cast as a whole) and
  multiplied by every column block of W in turn (``tl.dot``, fp32 accumulation; bias and the
  kept position rows in the epilogue). Traffic: B·n·K spec elements read once, W read from L2
  once per program, B·n·D written.
* ``patch_gather``: the normalized kept vectors (B·n, K) for the weight gradient.
* ``patch_scatter``: the spectrogram gradient, ``dx = rstd (g - mean g - x̂ mean(g x̂))``, added
  at each kept patch with fp32 atomics (indices may repeat).

A patch vector must fit one register tile: K = ph·pw·C <= ``MAX_K``; the patch geometry
(C, ph, pw) is a compile-time constant (one compiled kernel per patch shape).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._philox import round_bf16
from ._utils import acc_dtype, empty, launch, pow2, tile_config, workaround

MAX_K = 4096


@triton.jit
def _patch_rows(idx_ptr, rows, M, n_keep, N, gw, s0, s2, s3, PH: tl.constexpr, PW: tl.constexpr):
    """Element offset of each row's patch origin in spec; rows in range; rows whose patch
    index is valid too (an out-of-range index reads nothing and writes nothing but zeros)."""
    r_ok = rows < M
    p = tl.load(idx_ptr + rows, mask=r_ok, other=0)
    p_ok = r_ok & (p >= 0) & (p < N)
    p = tl.where(p_ok, p, 0)
    b = (rows // n_keep).to(tl.int64)
    base = b * s0 + ((p // gw) * PH) * s2 + ((p % gw) * PW) * s3
    return base, r_ok, p_ok, p


@triton.jit
def _patch_cols(k, s1, s2, s3, C: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr):
    """Element offset within a patch of vector position k (layout (p1 p2 c)) and its mask
    k < K. The geometry is constexpr, so the divisions are by constants (by runtime values
    they cost registers and instructions per element of the tile)."""
    p1 = k // (PW * C)
    rem = k % (PW * C)
    return (rem % C) * s1 + p1 * s2 + (rem // C) * s3, k < PH * PW * C


@triton.jit
def _patch_tile(
    spec_ptr, base, p_ok, k, s1, s2, s3, eps,
    C: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr, HAS_NORM: tl.constexpr,
):  # fmt: skip
    """(BLOCK_M, BLOCK_K) fp32 patch vectors from one load, LayerNorm-ed (no affine) when
    HAS_NORM; zeros outside the patch; and 1/std per row (ones without the norm)."""
    K: tl.constexpr = PH * PW * C
    koff, k_ok = _patch_cols(k, s1, s2, s3, C, PH, PW)
    m = p_ok[:, None] & k_ok[None, :]
    x = tl.load(spec_ptr + base[:, None] + koff[None, :], mask=m, other=0.0).to(tl.float32)
    rstd = tl.sum(x, axis=1) * 0.0 + 1.0
    if HAS_NORM:
        mean = tl.sum(x, axis=1) / K
        xc = tl.where(m, x - mean[:, None], 0.0)  # two-pass variance, from registers
        rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / K + eps)
        x = xc * rstd[:, None]
    return x, rstd


@triton.jit
def _cast(x, dtype: tl.constexpr, ROUND_BF16: tl.constexpr):
    if ROUND_BF16:
        return round_bf16(x)
    return x.to(dtype)


@triton.jit
def _patch_embed_kernel(
    spec_ptr, s0, s1, s2, s3,
    idx_ptr, w_ptr, bias_ptr, pos_ptr, out_ptr,
    M, n_keep, N, gw, D, eps,
    C: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    HAS_NORM: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_POS: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr, ROUND_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    K: tl.constexpr = PH * PW * C
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    k = tl.arange(0, BLOCK_K)
    base, r_ok, p_ok, p = _patch_rows(idx_ptr, rows, M, n_keep, N, gw, s0, s2, s3, PH, PW)
    x, _ = _patch_tile(spec_ptr, base, p_ok, k, s1, s2, s3, eps, C, PH, PW, HAS_NORM)
    a = _cast(x, w_ptr.dtype.element_ty, ROUND_BF16)  # W and out share a dtype
    if UPCAST_DOT:
        a = a.to(tl.float32)
    prow = pos_ptr + (p * D)[:, None]  # int32 offsets: the position table is small
    # weight.T and out as block pointers: no per-element address tensors for their tiles
    w_t = tl.make_block_ptr(w_ptr, (K, D), (1, K), (0, 0), (BLOCK_K, BLOCK_N), order=(0, 1))
    o_t = tl.make_block_ptr(
        out_ptr, (M, D), (D, 1), (tl.program_id(0) * BLOCK_M, 0), (BLOCK_M, BLOCK_N), order=(1, 0)
    )
    for n0 in range(0, D, BLOCK_N):  # every column block from the one patch tile
        w = tl.load(w_t, boundary_check=(0, 1), padding_option="zero")
        if UPCAST_DOT:
            acc = tl.dot(a, w.to(tl.float32))
        else:
            acc = tl.dot(a, w, input_precision=PRECISION, out_dtype=tl.float32)
        cols = n0 + tl.arange(0, BLOCK_N)
        n_ok = cols < D
        if HAS_BIAS:
            acc += tl.load(bias_ptr + cols, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        if HAS_POS:
            pm = p_ok[:, None] & n_ok[None, :]
            acc += tl.load(prow + cols[None, :], mask=pm, other=0.0).to(tl.float32)
        y = _cast(acc, out_ptr.dtype.element_ty, ROUND_BF16)
        tl.store(o_t, y, boundary_check=(0, 1))
        w_t = tl.advance(w_t, (0, BLOCK_N))
        o_t = tl.advance(o_t, (0, BLOCK_N))


def _geometry(spec: torch.Tensor, patch_size) -> tuple:
    spec4 = spec if spec.dim() == 4 else spec.unsqueeze(1)  # (B, C, H, W)
    B, C, H, W = spec4.shape
    ph, pw = patch_size
    return spec4, dict(C=C, PH=ph, PW=pw), (H // ph) * (W // pw), W // pw, ph * pw * C


def _rows(cfg: dict, M: int, BLOCK_K: int, lo: int) -> int:
    return pow2(M, lo, max(lo, min(cfg["BLOCK_M"], cfg["ELEMS"] // BLOCK_K)))


def _round_bf16(dtype: torch.dtype) -> bool:
    return dtype == torch.bfloat16 and workaround(
        "patch_embed.round_bf16",
        "the interpreter's fp32 -> bf16 cast truncates; a GPU rounds to nearest even",
    )


def _eps(norm_eps: float | None) -> float:
    return 0.0 if norm_eps is None else float(norm_eps)


def masked_patch_embed(spec, keep_idx, patch_size, weight, bias, pos_embed, norm_eps):
    """Fused gather of the kept patches + LayerNorm + projection + bias + position rows.
    weight (D, K), bias (D,), pos_embed (N, D) contiguous, one dtype (the output's); spec any
    float dtype and strides; keep_idx (B, n_keep) contiguous."""
    spec4, geo, N, gw, K = _geometry(spec, patch_size)
    B, n_keep = keep_idx.shape
    D = weight.shape[0]
    M = B * n_keep
    out = empty(B, n_keep, D, dtype=weight.dtype, device=spec.device)
    cfg = tile_config("patch_embed.embed", spec.device)
    BLOCK_K = pow2(K, 16)
    BLOCK_M = _rows(cfg, M, BLOCK_K, 16)
    # the W^T tile (BLOCK_K, BLOCK_N) stays within W_BYTES of shared memory
    w_cols = cfg["W_BYTES"] // (BLOCK_K * weight.element_size())
    BLOCK_N = pow2(D, 16, max(16, min(cfg["BLOCK_N"], w_cols)))
    precision = "ieee"
    if weight.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        precision = "tf32"  # what torch.matmul would do under the same setting
    upcast = weight.dtype == torch.bfloat16 and workaround(
        "patch_embed.upcast_dot", "the interpreter multiplies bf16 tl.dot operands as integers"
    )
    launch(
        _patch_embed_kernel, (triton.cdiv(M, BLOCK_M),),
        spec4, *spec4.stride(),
        keep_idx, weight, weight if bias is None else bias,
        weight if pos_embed is None else pos_embed, out,
        M, n_keep, N, gw, D, _eps(norm_eps),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **geo,
        HAS_NORM=norm_eps is not None, HAS_BIAS=bias is not None, HAS_POS=pos_embed is not None,
        PRECISION=precision, UPCAST_DOT=upcast, ROUND_BF16=_round_bf16(weight.dtype),
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K,
    )  # fmt: skip
    return out


@triton.jit
def _patch_gather_kernel(
    spec_ptr, s0, s1, s2, s3, idx_ptr, out_ptr, M, n_keep, N, gw, eps,
    C: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr, HAS_NORM: tl.constexpr,
    ROUND_BF16: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    K: tl.constexpr = PH * PW * C
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    k = tl.arange(0, BLOCK_K)
    base, r_ok, p_ok, _ = _patch_rows(idx_ptr, rows, M, n_keep, N, gw, s0, s2, s3, PH, PW)
    x, _ = _patch_tile(spec_ptr, base, p_ok, k, s1, s2, s3, eps, C, PH, PW, HAS_NORM)
    tl.store(
        out_ptr + rows.to(tl.int64)[:, None] * K + k[None, :],
        _cast(x, out_ptr.dtype.element_ty, ROUND_BF16),
        mask=r_ok[:, None] & (k < K)[None, :],
    )


@triton.jit
def _patch_scatter_kernel(
    g_ptr, spec_ptr, s0, s1, s2, s3, idx_ptr, out_ptr, o0, o1, o2, o3, M, n_keep, N, gw, eps,
    C: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
    HAS_NORM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    K: tl.constexpr = PH * PW * C
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    k = tl.arange(0, BLOCK_K)
    base, _, p_ok, _ = _patch_rows(idx_ptr, rows, M, n_keep, N, gw, s0, s2, s3, PH, PW)
    obase, _, _, _ = _patch_rows(idx_ptr, rows, M, n_keep, N, gw, o0, o2, o3, PH, PW)
    m = p_ok[:, None] & (k < K)[None, :]
    g = tl.load(g_ptr + rows.to(tl.int64)[:, None] * K + k[None, :], mask=m, other=0.0)
    g = g.to(tl.float32)
    if HAS_NORM:
        xhat, rstd = _patch_tile(spec_ptr, base, p_ok, k, s1, s2, s3, eps, C, PH, PW, True)
        sg = tl.sum(g, axis=1) / K
        sgx = tl.sum(g * xhat, axis=1) / K  # xhat is zero outside the patch
        g = rstd[:, None] * (g - sg[:, None] - xhat * sgx[:, None])
    ooff, _ = _patch_cols(k, o1, o2, o3, C, PH, PW)
    tl.atomic_add(out_ptr + obase[:, None] + ooff[None, :], g.to(out_ptr.dtype.element_ty), mask=m)


def patch_gather(spec, keep_idx, patch_size, norm_eps):
    """Kept patch vectors (B * n_keep, K) in spec's dtype, LayerNorm-ed when norm_eps is set."""
    spec4, geo, N, gw, K = _geometry(spec, patch_size)
    M = keep_idx.numel()
    out = empty(M, K, dtype=spec.dtype, device=spec.device)
    cfg = tile_config("patch_embed.gather", spec.device)
    BLOCK_K = pow2(K)
    BLOCK_M = _rows(cfg, M, BLOCK_K, 1)
    launch(
        _patch_gather_kernel, (triton.cdiv(M, BLOCK_M),),
        spec4, *spec4.stride(), keep_idx, out, M, keep_idx.shape[1], N, gw, _eps(norm_eps),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **geo,
        HAS_NORM=norm_eps is not None, ROUND_BF16=_round_bf16(spec.dtype),
        BLOCK_M=BLOCK_M, BLOCK_K=BLOCK_K,
    )  # fmt: skip
    return out


def patch_scatter(grad, spec, keep_idx, patch_size, norm_eps):
    """Gradient wrt spec (spec's shape, contiguous) of ``patch_gather`` given grad (M, K)."""
    spec4, geo, N, gw, K = _geometry(spec, patch_size)
    M = keep_idx.numel()
    acc = torch.zeros(spec4.shape, dtype=acc_dtype(spec.dtype), device=spec.device)
    cfg = tile_config("patch_embed.scatter", spec.device)
    BLOCK_K = pow2(K)
    BLOCK_M = _rows(cfg, M, BLOCK_K, 1)
    launch(
        _patch_scatter_kernel, (triton.cdiv(M, BLOCK_M),),
        grad, spec4, *spec4.stride(), keep_idx, acc, *acc.stride(),
        M, keep_idx.shape[1], N, gw, _eps(norm_eps),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **geo,
        HAS_NORM=norm_eps is not None, BLOCK_M=BLOCK_M, BLOCK_K=BLOCK_K,
    )  # fmt: skip
    acc = acc.reshape(spec.shape)
    return acc if acc.dtype == spec.dtype else acc.to(spec.dtype)
