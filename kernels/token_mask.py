"""Triton kernels for ``muse_fast.ops.token_mask``: random token subsets and the token gather
(launchers included; no autograd, no dispatch). Contracts: docs/design.md, "Token masking".

* ``random_token_mask``: per row, Philox keys packed as ``(key << 32) | index``; a radix select
  (bit by bit, compare-and-count) finds the n_keep-th smallest as the threshold and the kept
  indices are written in order through a ``tl.cumsum``. No sort (``tl.sort`` is a bitonic
  network the interpreter runs element by element). Several rows a program when rows are short.
  Traffic: 8 bytes written per kept index, nothing read but the seed.
* ``gather_tokens``: ``out[b, k] = x[b, idx[b, k]]``, a row copy (reads and writes B·n·D).
* backward, general indices: fp32 zeros, ``atomic_add`` of each gradient row at its index (so
  repeated indices add up), one cast to the gradient's dtype.
* backward, unique indices: one pass over the (B, L, D) output in the gradient's dtype, each row
  either the gradient row of the token that kept it (found through an int32 inverse map of
  B·L entries) or zeros: writes B·L·D, reads B·n·D, no atomics, no fp32 buffer.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._philox import philox4x32, seed_key
from ._utils import empty, launch, pow2, tile_config


@triton.jit
def _token_mask_kernel(
    seed_ptr, out_ptr, B, L, n_keep,
    ROWS: tl.constexpr, BLOCK_L: tl.constexpr, LOG_L: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)  # (ROWS,)
    cols = tl.arange(0, BLOCK_L)  # (BLOCK_L,)
    valid = (rows < B)[:, None] & (cols[None, :] < L)
    k0, k1 = seed_key(seed_ptr)
    zero = tl.zeros([ROWS, BLOCK_L], dtype=tl.uint32)
    c0 = zero + cols[None, :].to(tl.uint32)
    c1 = zero + rows[:, None].to(tl.uint32)
    w0, _, _, _ = philox4x32(k0, k1, c0, c1, zero, zero)
    key = (w0 >> 1).to(tl.int64)  # 31 bits
    packed = (key << 32) | cols[None, :].to(tl.int64)  # unique per row: ties broken by index
    packed = tl.where(valid, packed, 0x7FFFFFFFFFFFFFFF)
    # Radix select of v = the n_keep-th smallest packed value of each row: the largest v with
    # #{x < v} < n_keep, built bit by bit over the bits a packed value can have set (31 key
    # bits, then LOG_L index bits): 31 + LOG_L compare-and-count passes.
    v = tl.zeros([ROWS], dtype=tl.int64)
    one = tl.full([ROWS], 1, dtype=tl.int64)
    for i in range(31 + LOG_L):
        bit = tl.where(i < 31, 62 - i, 31 + LOG_L - 1 - i).to(tl.int64)
        t = v + (one << bit)
        cnt = tl.sum((packed < t[:, None]).to(tl.int32), axis=1)
        v = tl.where(cnt < n_keep, t, v)
    keep = valid & (packed <= v[:, None])  # exactly n_keep per row
    pos = tl.cumsum(keep.to(tl.int32), axis=1) - 1
    offs = rows[:, None].to(tl.int64) * n_keep + pos
    tl.store(out_ptr + offs, (zero + cols[None, :]).to(tl.int64), mask=keep)


def random_token_mask(seed: torch.Tensor, batch: int, length: int, n_keep: int) -> torch.Tensor:
    """seed: one-element int64 tensor → (batch, n_keep) int64, each row ascending."""
    out = empty(batch, n_keep, dtype=torch.int64, device=seed.device)
    cfg = tile_config("token_mask.random_token_mask", seed.device)
    BLOCK_L = pow2(length)
    ROWS = pow2(batch, 1, max(1, cfg["ELEMS"] // BLOCK_L))
    # a row longer than the tile budget runs alone, with the wider warp count
    warps = cfg["num_warps"] if ROWS * BLOCK_L <= cfg["ELEMS"] else cfg["num_warps_long"]
    launch(
        _token_mask_kernel, (triton.cdiv(batch, ROWS),),
        seed.reshape(1), out, batch, length, n_keep,
        num_warps=warps, num_stages=cfg["num_stages"],
        ROWS=ROWS, BLOCK_L=BLOCK_L, LOG_L=BLOCK_L.bit_length() - 1,
    )  # fmt: skip
    return out


@triton.jit
def _row_tile(r0, d0, M, D, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """Row and column indices of one (BLOCK_R, BLOCK_D) tile and their masks."""
    r = r0 * BLOCK_R + tl.arange(0, BLOCK_R)
    d = d0 * BLOCK_D + tl.arange(0, BLOCK_D)
    return r, d, r < M, d < D


@triton.jit
def _gather_kernel(
    x_ptr, idx_ptr, out_ptr, M, n_keep, L, D, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr
):
    r, d, r_ok, d_ok = _row_tile(tl.program_id(0), tl.program_id(1), M, D, BLOCK_R, BLOCK_D)
    l = tl.load(idx_ptr + r, mask=r_ok, other=0)
    l_ok = r_ok & (l >= 0) & (l < L)  # out-of-range indices read zeros, never stray memory
    b = (r // n_keep).to(tl.int64)
    src = x_ptr + (b * L + l)[:, None] * D + d[None, :]
    v = tl.load(src, mask=l_ok[:, None] & d_ok[None, :], other=0.0)
    tl.store(
        out_ptr + r.to(tl.int64)[:, None] * D + d[None, :], v, mask=r_ok[:, None] & d_ok[None, :]
    )


@triton.jit
def _scatter_add_kernel(
    g_ptr, idx_ptr, out_ptr, M, n_keep, L, D, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr
):
    r, d, r_ok, d_ok = _row_tile(tl.program_id(0), tl.program_id(1), M, D, BLOCK_R, BLOCK_D)
    l = tl.load(idx_ptr + r, mask=r_ok, other=0)
    l_ok = r_ok & (l >= 0) & (l < L)
    b = (r // n_keep).to(tl.int64)
    g = tl.load(
        g_ptr + r.to(tl.int64)[:, None] * D + d[None, :], mask=r_ok[:, None] & d_ok[None, :]
    )
    dst = out_ptr + (b * L + l)[:, None] * D + d[None, :]
    tl.atomic_add(dst, g.to(out_ptr.dtype.element_ty), mask=l_ok[:, None] & d_ok[None, :])


@triton.jit
def _scatter_rows_kernel(
    g_ptr, inv_ptr, out_ptr, BL, n_keep, L, D, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr
):
    # one program per (BLOCK_R output rows, BLOCK_D columns): each output row (b, l) is the
    # gradient row k = inv[b, l] of the token that kept it, or zeros when inv[b, l] < 0
    r, d, r_ok, d_ok = _row_tile(tl.program_id(0), tl.program_id(1), BL, D, BLOCK_R, BLOCK_D)
    k = tl.load(inv_ptr + r, mask=r_ok, other=-1)
    k_ok = r_ok & (k >= 0) & (k < n_keep)
    src = ((r // L).to(tl.int64) * n_keep + k)[:, None] * D + d[None, :]
    g = tl.load(g_ptr + src, mask=k_ok[:, None] & d_ok[None, :], other=0.0)
    tl.store(
        out_ptr + r.to(tl.int64)[:, None] * D + d[None, :], g, mask=r_ok[:, None] & d_ok[None, :]
    )


def _row_launch(kernel, name: str, rows: int, D: int, device: torch.device, *args) -> None:
    """Launch a row-copy kernel over a (rows, D) grid of tiles from ``TILES[name]``."""
    cfg = tile_config(name, device)
    BLOCK_D = pow2(D, 1, cfg["BLOCK_D"])
    BLOCK_R = pow2(rows, 1, max(1, cfg["ELEMS"] // BLOCK_D))
    grid = (triton.cdiv(rows, BLOCK_R), triton.cdiv(D, BLOCK_D))
    launch(
        kernel, grid, *args, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        BLOCK_R=BLOCK_R, BLOCK_D=BLOCK_D,
    )  # fmt: skip


def gather_tokens(x: torch.Tensor, keep_idx: torch.Tensor) -> torch.Tensor:
    """x (B, L, D) contiguous, keep_idx (B, n_keep) int64 contiguous → (B, n_keep, D)."""
    B, L, D = x.shape
    n_keep = keep_idx.shape[1]
    out = empty(B, n_keep, D, dtype=x.dtype, device=x.device)
    M = B * n_keep
    _row_launch(
        _gather_kernel, "token_mask.gather", M, D, x.device, x, keep_idx, out, M, n_keep, L, D
    )
    return out


def scatter_add_tokens(grad: torch.Tensor, keep_idx: torch.Tensor, length: int) -> torch.Tensor:
    """grad (B, n_keep, D) contiguous → (B, length, D): zeros with grad rows added at keep_idx
    (any indices; repeated ones add up)."""
    B, n_keep, D = grad.shape
    acc_t = grad.dtype if grad.dtype == torch.float64 else torch.float32  # atomics' dtype
    acc = torch.zeros(B, length, D, dtype=acc_t, device=grad.device)
    M = B * n_keep
    _row_launch(
        _scatter_add_kernel, "token_mask.scatter_add", M, D, grad.device,
        grad, keep_idx, acc, M, n_keep, length, D,
    )  # fmt: skip
    return acc if acc.dtype == grad.dtype else acc.to(grad.dtype)


def scatter_unique_tokens(grad: torch.Tensor, keep_idx: torch.Tensor, length: int) -> torch.Tensor:
    """The same as :func:`scatter_add_tokens` when each row of keep_idx holds distinct indices,
    in one pass writing grad's dtype (repeated indices would keep only one of their rows)."""
    B, n_keep, D = grad.shape
    out = empty(B, length, D, dtype=grad.dtype, device=grad.device)
    # inverse map: inv[b, l] = k with keep_idx[b, k] == l, else -1 (B·L int32; on the device,
    # no host sync). Out-of-range indices are dropped, as the atomic path drops them.
    ok = (keep_idx >= 0) & (keep_idx < length)
    inv = torch.full((B, length + 1), -1, dtype=torch.int32, device=grad.device)
    k = torch.arange(n_keep, dtype=torch.int32, device=grad.device).expand(B, n_keep)
    inv.scatter_(1, torch.where(ok, keep_idx, length), k)  # bad indices land in column L
    inv = inv[:, :length].contiguous()  # (B, L)
    BL = B * length
    _row_launch(
        _scatter_rows_kernel, "token_mask.scatter_rows", BL, D, grad.device,
        grad, inv, out, BL, n_keep, length, D,
    )  # fmt: skip
    return out
