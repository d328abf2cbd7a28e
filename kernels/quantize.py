"""Triton kernel for the BEST-RQ random-projection quantizer (muse_fast.ops.quantize).

One program takes ``BLOCK_N`` rows of ``x`` and one codebook ``g``:

1. ``y = x A_g`` — the x tile (BLOCK_N, d) is loaded in chunks of ``BLOCK_D`` columns (bf16 / fp16
   upcast to fp32) and accumulated in fp32 with ``tl.dot``;
2. ``y / max(||y||, 1e-12)`` (``torch.nn.functional.normalize``);
3. the pre-normalized codebook ``C^_g`` (normalized once on the host: n x h is cheap) is walked in
   tiles of ``BLOCK_C`` codes; each tile's scores (BLOCK_N, BLOCK_C) live only in registers;
4. a running arg-max: within a tile the lowest index among the maximal scores; across tiles a
   later tile replaces the running best only when strictly greater. Ties therefore go to the
   lowest index across tiles as well as within, as ``torch.argmin`` / ``argmax`` do. A zero row
   scores 0 everywhere and returns 0.

Nothing of size N x n is ever written. Row offsets are int64 (N d may exceed 2^31), and rows are
launched in chunks of at most ``MAX_GRID_ROWS`` programs (``_launch`` loops), so any N fits the
grid limits.

Matmul precision (``DOT_PRECISION``). The arg-max is sensitive to rounding: two codes whose
scores differ by less than the dot's error may swap. Emulating tensor-core TF32 on the CPU at
d = 512, n = 8192, h = 16, xavier A, standard-normal x (20 000 rows, against float64):

=====================================  ===============  ===============
dot precision                          rows flipped     max score loss
=====================================  ===============  ===============
ieee fp32                              0 %              0
tf32 (round-to-nearest), both dots     0.12 %           2.9e-4
tf32 (truncation), both dots           0.18 %           3.6e-4
tf32 for the codebook dot only         0.085 %          2.8e-4
tf32x3 (3 TF32 MMAs, split hi/lo)      0 %              0
=====================================  ===============  ===============

(the median gap between the two best scores is 0.023; 2.8 % of rows have a gap below 1e-3).
Plain TF32 would change about one token in 800 relative to the fp32 reference, so the default is
``"tf32x3"``: near-fp32 agreement on tensor cores, about 3x the MMA work of TF32 and still far
cheaper than the CUDA-core ``"ieee"`` path. On ROCm, where tf32x3 is unavailable, ``"ieee"`` is
used. Under ``TRITON_INTERPRET=1`` every precision computes in full fp32 (numpy), so the table
above comes from a CPU emulation of TF32 rounding
(``benchmarks/test_bench_quantize.py::test_bench_tf32_emulated_agreement``); on a GPU,
``test_bench_dot_precision_gpu`` times tf32 / ieee against the default and measures the same
agreement with the real kernel (not measured yet: no GPU was available).

Block sizes on CUDA (128 rows x 128 codes x 64 columns of d, 8 warps, 2 stages) compile for
sm_90 without spills (226-254 registers/thread) but are not tuned on hardware yet.
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
def _rpq_fwd_kernel(
    x_ptr,
    a_ptr,
    c_ptr,
    out_ptr,
    N,
    D,
    H,
    NC,
    stride_xn,
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
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    rows = offs_n.to(tl.int64)
    offs_h = tl.arange(0, BLOCK_H)
    mask_h = offs_h < H
    offs_d = tl.arange(0, BLOCK_D)

    # 1. projection y = x A_g, fp32 accumulation over chunks of d
    y = tl.zeros((BLOCK_N, BLOCK_H), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + offs_d
        mask_d = dd < D
        xt = tl.load(
            x_ptr + rows[:, None] * stride_xn + dd[None, :].to(tl.int64) * stride_xd,
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

    # 3-4. scores against codebook tiles, running arg-max (lowest index on ties)
    best = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
    best_idx = tl.zeros((BLOCK_N,), dtype=tl.int32)
    offs_c = tl.arange(0, BLOCK_C)
    for c0 in range(0, NC, BLOCK_C):
        cc = c0 + offs_c
        mask_c = cc < NC
        ct = tl.load(
            c_ptr + g * stride_cg + cc[:, None].to(tl.int64) * stride_cn + offs_h[None, :],
            mask=mask_c[:, None] & mask_h[None, :],
            other=0.0,
        )
        s = tl.dot(y, tl.trans(ct), input_precision=PRECISION)
        s = tl.where(mask_c[None, :], s, float("-inf"))
        tile_best = tl.max(s, axis=1)
        tile_idx = tl.min(tl.where(s == tile_best[:, None], cc[None, :], _BIG_INDEX), axis=1)
        better = tile_best > best
        best = tl.where(better, tile_best, best)
        best_idx = tl.where(better, tile_idx, best_idx)
    tl.store(out_ptr + rows * stride_on + g, best_idx.to(tl.int64), mask=mask_n)


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
    """Fill ``out`` (N, G) int64 with the codes of ``x`` (N, d; any strides; fp32/bf16/fp16).

    ``projection`` (G, d, h) and ``codebook_normalized`` (G, n, h) are float32 with a contiguous
    last dimension; the codebook rows must already be unit-norm. ``block_*`` override the tile
    sizes (powers of two >= 16; tests use small ones), ``input_precision`` the dot precision.
    """
    n_rows, d = x.shape
    g_count, _, h = projection.shape
    n_codes = codebook_normalized.shape[1]
    if n_rows == 0:
        return out
    cfg = tile_config("quantize.rpq_fwd", x.device)
    bn = block_n or pow2(n_rows, 16, cfg["BLOCK_N"])
    bc = block_c or pow2(n_codes, 16, cfg["BLOCK_C"])
    bd = block_d or pow2(d, 16, cfg["BLOCK_D"])
    bh = pow2(h, 16)
    precision = input_precision or default_precision(x.device)
    rows_per_launch = MAX_GRID_ROWS * bn
    for start in range(0, n_rows, rows_per_launch):
        stop = min(n_rows, start + rows_per_launch)
        xs, os_ = x[start:stop], out[start:stop]
        grid = (triton.cdiv(stop - start, bn), g_count)
        launch(
            _rpq_fwd_kernel,
            grid,
            xs,
            projection,
            codebook_normalized,
            os_,
            stop - start,
            d,
            h,
            n_codes,
            xs.stride(0),
            xs.stride(1),
            projection.stride(0),
            projection.stride(1),
            codebook_normalized.stride(0),
            codebook_normalized.stride(1),
            os_.stride(0),
            BLOCK_N=bn,
            BLOCK_D=bd,
            BLOCK_H=bh,
            BLOCK_C=bc,
            PRECISION=precision,
            num_warps=cfg["num_warps"],
            num_stages=cfg["num_stages"],
        )
    return out
