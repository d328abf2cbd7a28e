"""Triton kernel for the BEST-RQ random-projection quantizer (muse_fast.ops.quantize).

One program takes ``BLOCK_N`` rows of ``x`` (a (B, T, d) view of any strides, read in place)
and one codebook ``g``:

1. ``y = x A_g`` — x tiles (BLOCK_N, BLOCK_D) (bf16 / fp16 upcast to fp32) accumulated in fp32
   with ``tl.dot``;
2. ``y / max(||y||, 1e-12)`` (``torch.nn.functional.normalize``);
3. the pre-normalized codebook ``C^_g`` is walked in tiles of ``BLOCK_C`` codes; each tile's
   scores ``<y, C^_i>`` (BLOCK_N, BLOCK_C) live only in registers and update a running
   arg-max per (row, lane) — one compare and two selects per score;
4. after the last tile, one reduction across lanes: the lowest code index among the row's
   maximal scores (ties go to the lowest index, as ``torch.argmin`` / ``argmax``). A zero row
   scores 0 everywhere and returns 0.

Memory traffic: x is read once (N d elements), A_g and C^_g once per program (from L2), the
N x G int64 codes written once; nothing of size N x n exists. Row offsets are int64, and rows
are launched in ranges of at most ``MAX_GRID_ROWS`` programs, so any N fits the grid limits.

Dot precision: ``DOT_PRECISION = "tf32x3"`` (three TF32 MMAs, split hi/lo) agrees with fp32 on
the arg-max where plain TF32 flips about one code in 800 (docs/design.md, "Quantizer"); ROCm,
which lacks tf32x3, uses ``"ieee"``. Under ``TRITON_INTERPRET=1`` every precision is fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import launch, pow2, tile_config

DOT_PRECISION = "tf32x3"
# Programs along the row axis per launch; larger N is launched in chunks (tests shrink it).
MAX_GRID_ROWS = 65535
_BIG_INDEX: tl.constexpr = tl.constexpr(2147483647)  # globals in @jit code must be constexpr


@triton.jit
def _score_tile(
    y,
    c_g,
    c0,
    NC,
    stride_cn,
    H,
    best,
    best_tile,
    BLOCK_H: tl.constexpr,
    BLOCK_C: tl.constexpr,
    MASKED: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Scores of codes c0 .. c0 + BLOCK_C against y; update each (row, lane)'s best."""
    cc = c0 + tl.arange(0, BLOCK_C)
    offs_h = tl.arange(0, BLOCK_H)
    mask = offs_h[None, :] < H
    if MASKED:
        mask = mask & (cc[:, None] < NC)
    ct = tl.load(c_g + cc[:, None].to(tl.int64) * stride_cn + offs_h[None, :], mask=mask, other=0.0)
    s = tl.dot(y, tl.trans(ct), input_precision=PRECISION)
    if MASKED:  # padded codes (loaded as 0) never win
        s = tl.where(cc[None, :] < NC, s, float("-inf"))
    better = s > best
    return tl.maximum(s, best), tl.where(better, c0, best_tile)


@triton.jit
def _rpq_fwd_kernel(
    x_ptr,
    a_ptr,
    c_ptr,
    out_ptr,
    row_start,
    N,
    T,
    D,
    H,
    NC,
    stride_xb,
    stride_xt,
    stride_xd,
    stride_ag,
    stride_ad,
    stride_cg,
    stride_cn,
    stride_on,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_C: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    g = tl.program_id(1).to(tl.int64)
    rows = row_start + pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = rows < N
    # row r of the (N, d) view is x[r // T, r % T]: a (B, T, d) view of any strides, so the
    # model's transposed frames are read in place instead of being copied by a reshape
    x_rows = (rows // T) * stride_xb + (rows % T) * stride_xt
    offs_h = tl.arange(0, BLOCK_H)
    mask_h = offs_h < H
    offs_d = tl.arange(0, BLOCK_D)

    # 1. projection y = x A_g, fp32 accumulation over chunks of d
    y = tl.zeros((BLOCK_N, BLOCK_H), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + offs_d
        mask_d = dd < D
        xt = tl.load(
            x_ptr + x_rows[:, None] + dd[None, :].to(tl.int64) * stride_xd,
            mask=mask_n[:, None] & mask_d[None, :],
            other=0.0,
        ).to(tl.float32)
        at = tl.load(
            a_ptr + g * stride_ag + dd[:, None].to(tl.int64) * stride_ad + offs_h[None, :],
            mask=mask_d[:, None] & mask_h[None, :],
            other=0.0,
        )
        y = tl.dot(xt, at, y, input_precision=PRECISION)

    # 2. normalize (padded columns are 0 and do not change the norm)
    norm = tl.sqrt(tl.sum(y * y, axis=1))
    y = y / tl.maximum(norm, 1e-12)[:, None]

    # 3. scores against codebook tiles with a running arg-max per (row, lane): lane j sees
    # codes j, j + BLOCK_C, ... in increasing order, so a strict ">" keeps each lane's lowest
    # index among its maxima; a lane remembers the tile base (a scalar), not the code index.
    # Full tiles need no code mask; only the last, partial tile is masked.
    best = tl.full((BLOCK_N, BLOCK_C), float("-inf"), dtype=tl.float32)
    best_tile = tl.zeros((BLOCK_N, BLOCK_C), dtype=tl.int32)
    c_g = c_ptr + g * stride_cg
    nc_full = (NC // BLOCK_C) * BLOCK_C
    for c0 in range(0, nc_full, BLOCK_C):
        best, best_tile = _score_tile(
            y, c_g, c0, NC, stride_cn, H, best, best_tile, BLOCK_H, BLOCK_C, False, PRECISION
        )
    if nc_full < NC:
        best, best_tile = _score_tile(
            y, c_g, nc_full, NC, stride_cn, H, best, best_tile, BLOCK_H, BLOCK_C, True, PRECISION
        )

    # 4. one reduction across lanes: the lowest index among the row's maxima (ties go to the
    # lowest index, as torch.argmin / argmax); a zero row scores 0 everywhere and returns 0
    row_best = tl.max(best, axis=1)
    code = best_tile + tl.arange(0, BLOCK_C)[None, :]
    idx = tl.min(tl.where(best == row_best[:, None], code, _BIG_INDEX), axis=1)
    tl.store(out_ptr + rows * stride_on + g, idx.to(tl.int64), mask=mask_n)


def default_precision(device: torch.device) -> str:
    if device.type == "cuda" and getattr(torch.version, "hip", None):
        return "ieee"
    return DOT_PRECISION


def rpq_forward(
    x: torch.Tensor,
    projection: torch.Tensor,
    codebook_normalized: torch.Tensor,
    out: torch.Tensor,
    *,
    block_n: int | None = None,
    block_c: int | None = None,
    block_d: int | None = None,
    input_precision: str | None = None,
) -> torch.Tensor:
    """Fill ``out`` (N, G) int64 with the codes of the rows of ``x``: (N, d) or (B, T, d) with
    N = B T, any strides (read in place), fp32/bf16/fp16.

    ``projection`` (G, d, h) and ``codebook_normalized`` (G, n, h) are float32 with a contiguous
    last dimension; the codebook rows must already be unit-norm. ``block_*`` override the tile
    sizes (powers of two >= 16; tests use small ones), ``input_precision`` the dot precision.
    """
    x3 = x if x.dim() == 3 else x.unsqueeze(0)  # (B, T, d)
    _, t_len, d = x3.shape
    n_rows = out.shape[0]
    g_count, _, h = projection.shape
    n_codes = codebook_normalized.shape[1]
    if n_rows == 0:
        return out
    cfg = tile_config("quantize.rpq_fwd", x.device)
    bn = block_n or pow2(n_rows, 16, cfg["BLOCK_N"])
    bc = block_c or pow2(n_codes, 16, cfg["BLOCK_C"])
    bd = block_d or pow2(d, 16, cfg["BLOCK_D"])
    precision = input_precision or default_precision(x.device)
    rows_per_launch = MAX_GRID_ROWS * bn  # grid limit on axis 0: launch row ranges in turn
    for start in range(0, n_rows, rows_per_launch):
        grid = (triton.cdiv(min(n_rows - start, rows_per_launch), bn), g_count)
        launch(
            _rpq_fwd_kernel,
            grid,
            x3,
            projection,
            codebook_normalized,
            out,
            start,
            n_rows,
            t_len,
            d,
            h,
            n_codes,
            *x3.stride(),
            projection.stride(0),
            projection.stride(1),
            codebook_normalized.stride(0),
            codebook_normalized.stride(1),
            out.stride(0),
            BLOCK_N=bn,
            BLOCK_D=bd,
            BLOCK_H=pow2(h, 16),
            BLOCK_C=bc,
            PRECISION=precision,
            num_warps=cfg["num_warps"],
            num_stages=cfg["num_stages"],
        )
    return out
