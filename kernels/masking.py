"""Triton kernels for muse_fast.ops.masking (launchers included; no autograd, no dispatch).

* ``random_token_mask``: per row, Philox keys packed as ``(key << 32) | index`` → a radix
  select (bit by bit, compare-and-count) finds the n_keep-th smallest as the threshold → kept
  indices written in order through a ``tl.cumsum``. No sort (``tl.sort`` is a bitonic network
  that Triton's interpreter runs element by element). Several rows per program when rows are
  short (Myna: 48 tokens a row).
* ``gather_tokens`` / ``scatter_add_tokens``: token rows copied / accumulated (fp32 atomics, so
  repeated indices add up as the gradient of a gather must).
* ``masked_patch_embed``: gathers only the kept patches straight from the spectrogram
  (any strides), LayerNorm statistics in fp32 (optional), ``tl.dot`` against the projection
  with fp32 accumulation, bias and the kept rows of the position table added in the epilogue.
  ``patch_gather`` / ``patch_scatter`` are the pieces its backward needs.
* ``span_mask`` / ``span_noise_fill``: Philox per (row, span) and Box-Muller noise per element.

Randomness comes from ``kernels/_philox.py`` with the counters documented in
``muse_fast/ops/masking.py``, so these kernels draw exactly what the eager references draw.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from muse_fast._runtime import empty

from ._philox import box_muller, philox4x32, seed_key


def _interpret() -> bool:
    from muse_fast._runtime import triton_interpret

    return triton_interpret()


# ---------------------------------------------------------------------------------------------
# random_token_mask
# ---------------------------------------------------------------------------------------------
@triton.jit
def _token_mask_kernel(
    seed_ptr, out_ptr, B, L, n_keep,
    ROWS: tl.constexpr, BLOCK_L: tl.constexpr, LOG_L: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)  # (ROWS,)
    cols = tl.arange(0, BLOCK_L)  # (BLOCK_L,)
    row_ok = rows < B
    valid = row_ok[:, None] & (cols[None, :] < L)
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
    # bits, then LOG_L index bits). No sort: 31 + LOG_L compare-and-count passes.
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
    out = empty(batch, n_keep, dtype=torch.int64, device=seed.device)
    if batch == 0:
        return out
    BLOCK_L = triton.next_power_of_2(length)
    cap = 1 << 16 if _interpret() else 2048  # elements per program
    ROWS = max(1, min(triton.next_power_of_2(batch), cap // BLOCK_L))
    grid = (triton.cdiv(batch, ROWS),)
    _token_mask_kernel[grid](
        seed.reshape(1), out, batch, length, n_keep,
        ROWS=ROWS, BLOCK_L=BLOCK_L, LOG_L=BLOCK_L.bit_length() - 1,
        num_warps=4 if ROWS * BLOCK_L <= 2048 else 8,
    )  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------
# gather_tokens and its backward
# ---------------------------------------------------------------------------------------------
@triton.jit
def _gather_kernel(
    x_ptr, idx_ptr, out_ptr, M, n_keep, L, D, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr
):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    r_ok = r < M
    l = tl.load(idx_ptr + r, mask=r_ok, other=0)
    l_ok = r_ok & (l >= 0) & (l < L)  # out-of-range indices read zeros, never stray memory
    b = (r // n_keep).to(tl.int64)
    src = (b * L + l)[:, None] * D + d[None, :]
    m = l_ok[:, None] & (d[None, :] < D)
    v = tl.load(x_ptr + src, mask=m, other=0.0)
    tl.store(
        out_ptr + r.to(tl.int64)[:, None] * D + d[None, :], v, mask=r_ok[:, None] & (d[None, :] < D)
    )


@triton.jit
def _scatter_add_kernel(
    g_ptr, idx_ptr, out_ptr, M, n_keep, L, D, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr
):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    r_ok = r < M
    l = tl.load(idx_ptr + r, mask=r_ok, other=0)
    l_ok = r_ok & (l >= 0) & (l < L)
    b = (r // n_keep).to(tl.int64)
    g = tl.load(
        g_ptr + r.to(tl.int64)[:, None] * D + d[None, :],
        mask=r_ok[:, None] & (d[None, :] < D),
        other=0.0,
    )
    dst = (b * L + l)[:, None] * D + d[None, :]
    tl.atomic_add(
        out_ptr + dst, g.to(out_ptr.dtype.element_ty), mask=l_ok[:, None] & (d[None, :] < D)
    )


def _row_blocks(M: int, D: int) -> tuple[int, int]:
    if _interpret():  # few, large programs: the interpreter pays per program
        BLOCK_D = triton.next_power_of_2(max(D, 1))
        return max(1, min(triton.next_power_of_2(max(M, 1)), (1 << 16) // BLOCK_D)), BLOCK_D
    # 128-wide column blocks tile D = 384 / 768 without masked lanes; 32 rows a program
    BLOCK_D = min(128, triton.next_power_of_2(max(D, 1)))
    return max(1, min(triton.next_power_of_2(max(M, 1)), 4096 // BLOCK_D)), BLOCK_D


def gather_tokens(x: torch.Tensor, keep_idx: torch.Tensor) -> torch.Tensor:
    """x (B, L, D) contiguous, keep_idx (B, n_keep) int64 contiguous → (B, n_keep, D)."""
    B, L, D = x.shape
    n_keep = keep_idx.shape[1]
    out = empty(B, n_keep, D, dtype=x.dtype, device=x.device)
    M = B * n_keep
    if M == 0 or D == 0:
        return out
    BLOCK_R, BLOCK_D = _row_blocks(M, D)
    grid = (triton.cdiv(M, BLOCK_R), triton.cdiv(D, BLOCK_D))
    _gather_kernel[grid](x, keep_idx, out, M, n_keep, L, D, BLOCK_R=BLOCK_R, BLOCK_D=BLOCK_D)
    return out


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def scatter_add_tokens(grad: torch.Tensor, keep_idx: torch.Tensor, length: int) -> torch.Tensor:
    """grad (B, n_keep, D) contiguous → (B, length, D): zeros with grad rows added at keep_idx."""
    B, n_keep, D = grad.shape
    acc = torch.zeros(B, length, D, dtype=_acc_dtype(grad.dtype), device=grad.device)
    M = B * n_keep
    if M and D:
        BLOCK_R, BLOCK_D = _row_blocks(M, D)
        grid = (triton.cdiv(M, BLOCK_R), triton.cdiv(D, BLOCK_D))
        _scatter_add_kernel[grid](
            grad, keep_idx, acc, M, n_keep, length, D, BLOCK_R=BLOCK_R, BLOCK_D=BLOCK_D
        )
    return acc if acc.dtype == grad.dtype else acc.to(grad.dtype)


# ---------------------------------------------------------------------------------------------
# masked_patch_embed and its pieces
# ---------------------------------------------------------------------------------------------
@triton.jit
def _patch_rows(idx_ptr, rows, M, n_keep, N, gw, ph, pw, s0, s2, s3):
    """Element offset of each row's patch origin in spec; rows in range; rows whose patch
    index is valid too (an out-of-range index reads nothing and writes nothing but zeros)."""
    r_ok = rows < M
    p = tl.load(idx_ptr + rows, mask=r_ok, other=0)
    p_ok = r_ok & (p >= 0) & (p < N)
    p = tl.where(p_ok, p, 0)
    b = (rows // n_keep).to(tl.int64)
    i = p // gw
    j = p % gw
    base = b * s0 + (i * ph) * s2 + (j * pw) * s3
    return base, r_ok, p_ok


@triton.jit
def _patch_cols(k, K, pw, C, s1, s2, s3):
    """Element offset within a patch of vector position k (layout (p1 p2 c)), and its mask."""
    p1 = k // (pw * C)
    rem = k % (pw * C)
    p2 = rem // C
    c = rem % C
    return c * s1 + p1 * s2 + p2 * s3, k < K


@triton.jit
def _patch_stats(
    spec_ptr, base, r_ok, K, pw, C, s1, s2, s3, eps, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr
):
    """Per-row mean and 1/std (fp32) of the patch vectors, two passes over K."""
    acc = tl.zeros([BLOCK_M], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        koff, k_ok = _patch_cols(k0 + tl.arange(0, BLOCK_K), K, pw, C, s1, s2, s3)
        m = r_ok[:, None] & k_ok[None, :]
        x = tl.load(spec_ptr + base[:, None] + koff[None, :], mask=m, other=0.0).to(tl.float32)
        acc += tl.sum(x, axis=1)
    mean = acc / K
    acc2 = tl.zeros([BLOCK_M], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        koff, k_ok = _patch_cols(k0 + tl.arange(0, BLOCK_K), K, pw, C, s1, s2, s3)
        m = r_ok[:, None] & k_ok[None, :]
        x = tl.load(spec_ptr + base[:, None] + koff[None, :], mask=m, other=0.0).to(tl.float32)
        xc = tl.where(m, x - mean[:, None], 0.0)
        acc2 += tl.sum(xc * xc, axis=1)
    rstd = 1.0 / tl.sqrt(acc2 / K + eps)
    return mean, rstd


@triton.jit
def _patch_embed_kernel(
    spec_ptr, s0, s1, s2, s3,
    idx_ptr, w_ptr, bias_ptr, pos_ptr, out_ptr,
    M, n_keep, N, C, gw, ph, pw, K, D, eps,
    HAS_NORM: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_POS: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = cols < D
    base, r_ok, p_ok = _patch_rows(idx_ptr, rows, M, n_keep, N, gw, ph, pw, s0, s2, s3)
    if HAS_NORM:
        mean, rstd = _patch_stats(
            spec_ptr, base, p_ok, K, pw, C, s1, s2, s3, eps, BLOCK_M=BLOCK_M, BLOCK_K=BLOCK_K
        )
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        koff, k_ok = _patch_cols(k, K, pw, C, s1, s2, s3)
        m = p_ok[:, None] & k_ok[None, :]
        a = tl.load(spec_ptr + base[:, None] + koff[None, :], mask=m, other=0.0)
        if HAS_NORM:
            a = tl.where(m, (a.to(tl.float32) - mean[:, None]) * rstd[:, None], 0.0)
        a = a.to(w_ptr.dtype.element_ty)
        w = tl.load(
            w_ptr + cols[None, :].to(tl.int64) * K + k[:, None],
            mask=k_ok[:, None] & n_ok[None, :],
            other=0.0,
        )  # (BLOCK_K, BLOCK_N) = weight.T tile
        if UPCAST_DOT:  # the interpreter multiplies bf16 bit patterns as integers
            acc = tl.dot(a.to(tl.float32), w.to(tl.float32), acc)
        else:
            acc = tl.dot(a, w, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    om = r_ok[:, None] & n_ok[None, :]
    if HAS_POS:
        p = tl.load(idx_ptr + rows, mask=p_ok, other=0).to(tl.int64)
        pm = p_ok[:, None] & n_ok[None, :]
        acc += tl.load(pos_ptr + p[:, None] * D + cols[None, :], mask=pm, other=0.0).to(tl.float32)
    tl.store(
        out_ptr + rows.to(tl.int64)[:, None] * D + cols[None, :],
        acc.to(out_ptr.dtype.element_ty),
        mask=om,
    )


def _geometry(spec: torch.Tensor, patch_size: tuple[int, int]):
    spec4 = spec if spec.dim() == 4 else spec.unsqueeze(1)
    B, C, H, W = spec4.shape
    ph, pw = patch_size
    return spec4, B, C, H, W, ph, pw, W // pw


def masked_patch_embed(
    spec: torch.Tensor,
    keep_idx: torch.Tensor,
    patch_size: tuple[int, int],
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    pos_embed: torch.Tensor | None,
    norm_eps: float | None,
) -> torch.Tensor:
    """Fused gather of the kept patches + LayerNorm + projection + bias + position rows.
    weight (D, K), bias (D,), pos_embed (N, D) contiguous; keep_idx (B, n_keep) contiguous."""
    spec4, B, C, H, W, ph, pw, gw = _geometry(spec, patch_size)
    gh = H // ph
    n_keep = keep_idx.shape[1]
    D, K = weight.shape
    M = B * n_keep
    out = empty(B, n_keep, D, dtype=weight.dtype, device=spec.device)
    if M == 0:
        return out
    if _interpret():
        BLOCK_M = min(128, max(16, triton.next_power_of_2(M)))
        BLOCK_N = min(512, max(16, triton.next_power_of_2(D)))
        BLOCK_K = min(256, max(16, triton.next_power_of_2(K)))
    else:
        BLOCK_M, BLOCK_N, BLOCK_K = 64, min(128, max(16, triton.next_power_of_2(D))), 64
    precision = "ieee"
    if weight.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        precision = "tf32"  # what torch.matmul would do under the same setting
    grid = (triton.cdiv(M, BLOCK_M), triton.cdiv(D, BLOCK_N))
    dummy = weight
    _patch_embed_kernel[grid](
        spec4, *spec4.stride(),
        keep_idx, weight, bias if bias is not None else dummy,
        pos_embed if pos_embed is not None else dummy, out,
        M, n_keep, gh * gw, C, gw, ph, pw, K, D, float(norm_eps) if norm_eps is not None else 0.0,
        HAS_NORM=norm_eps is not None, HAS_BIAS=bias is not None, HAS_POS=pos_embed is not None,
        PRECISION=precision, UPCAST_DOT=_interpret() and weight.dtype == torch.bfloat16,
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K,
        num_warps=4,
    )  # fmt: skip
    return out


@triton.jit
def _patch_gather_kernel(
    spec_ptr, s0, s1, s2, s3, idx_ptr, out_ptr, M, n_keep, N, C, gw, ph, pw, K, eps,
    HAS_NORM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    base, r_ok, p_ok = _patch_rows(idx_ptr, rows, M, n_keep, N, gw, ph, pw, s0, s2, s3)
    if HAS_NORM:
        mean, rstd = _patch_stats(
            spec_ptr, base, p_ok, K, pw, C, s1, s2, s3, eps, BLOCK_M=BLOCK_M, BLOCK_K=BLOCK_K
        )
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        koff, k_ok = _patch_cols(k, K, pw, C, s1, s2, s3)
        m = p_ok[:, None] & k_ok[None, :]
        a = tl.load(spec_ptr + base[:, None] + koff[None, :], mask=m, other=0.0)
        if HAS_NORM:
            a = tl.where(m, (a.to(tl.float32) - mean[:, None]) * rstd[:, None], 0.0)
        tl.store(
            out_ptr + rows.to(tl.int64)[:, None] * K + k[None, :],
            a.to(out_ptr.dtype.element_ty),
            mask=r_ok[:, None] & k_ok[None, :],
        )


@triton.jit
def _patch_scatter_kernel(
    g_ptr, spec_ptr, s0, s1, s2, s3, idx_ptr, out_ptr, o0, o1, o2, o3,
    M, n_keep, N, C, gw, ph, pw, K, eps,
    HAS_NORM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    base, r_ok, p_ok = _patch_rows(idx_ptr, rows, M, n_keep, N, gw, ph, pw, s0, s2, s3)
    obase, r_ok2, p_ok2 = _patch_rows(idx_ptr, rows, M, n_keep, N, gw, ph, pw, o0, o2, o3)
    grow = rows.to(tl.int64)[:, None] * K
    if HAS_NORM:
        mean, rstd = _patch_stats(
            spec_ptr, base, p_ok, K, pw, C, s1, s2, s3, eps, BLOCK_M=BLOCK_M, BLOCK_K=BLOCK_K
        )
        sg = tl.zeros([BLOCK_M], dtype=tl.float32)
        sgx = tl.zeros([BLOCK_M], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            koff, k_ok = _patch_cols(k, K, pw, C, s1, s2, s3)
            m = p_ok[:, None] & k_ok[None, :]
            x = tl.load(spec_ptr + base[:, None] + koff[None, :], mask=m, other=0.0)
            xhat = (x.to(tl.float32) - mean[:, None]) * rstd[:, None]
            g = tl.load(g_ptr + grow + k[None, :], mask=m, other=0.0).to(tl.float32)
            sg += tl.sum(g, axis=1)
            sgx += tl.sum(tl.where(m, g * xhat, 0.0), axis=1)
        sg = sg / K
        sgx = sgx / K
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        koff, k_ok = _patch_cols(k, K, pw, C, s1, s2, s3)
        ooff, k_ok2 = _patch_cols(k, K, pw, C, o1, o2, o3)
        m = p_ok[:, None] & k_ok[None, :]
        g = tl.load(g_ptr + grow + k[None, :], mask=m, other=0.0).to(tl.float32)
        if HAS_NORM:
            x = tl.load(spec_ptr + base[:, None] + koff[None, :], mask=m, other=0.0)
            xhat = (x.to(tl.float32) - mean[:, None]) * rstd[:, None]
            g = rstd[:, None] * (g - sg[:, None] - xhat * sgx[:, None])
        tl.atomic_add(
            out_ptr + obase[:, None] + ooff[None, :], g.to(out_ptr.dtype.element_ty), mask=m
        )


def _gather_blocks(M: int, K: int) -> tuple[int, int]:
    if _interpret():
        return min(256, triton.next_power_of_2(max(M, 1))), min(1024, triton.next_power_of_2(K))
    return 32, min(128, triton.next_power_of_2(K))


def patch_gather(
    spec: torch.Tensor, keep_idx: torch.Tensor, patch_size: tuple[int, int], norm_eps: float | None
) -> torch.Tensor:
    """Kept patch vectors (B * n_keep, K) in spec's dtype, LayerNorm-ed when norm_eps is set."""
    spec4, B, C, H, W, ph, pw, gw = _geometry(spec, patch_size)
    n_keep = keep_idx.shape[1]
    K = ph * pw * C
    M = B * n_keep
    out = empty(M, K, dtype=spec.dtype, device=spec.device)
    if M == 0:
        return out
    BLOCK_M, BLOCK_K = _gather_blocks(M, K)
    _patch_gather_kernel[(triton.cdiv(M, BLOCK_M),)](
        spec4, *spec4.stride(), keep_idx, out, M, n_keep, (H // ph) * gw, C, gw, ph, pw, K,
        float(norm_eps) if norm_eps is not None else 0.0,
        HAS_NORM=norm_eps is not None, BLOCK_M=BLOCK_M, BLOCK_K=BLOCK_K,
    )  # fmt: skip
    return out


def patch_scatter(
    grad: torch.Tensor,
    spec: torch.Tensor,
    keep_idx: torch.Tensor,
    patch_size: tuple[int, int],
    norm_eps: float | None,
) -> torch.Tensor:
    """Gradient wrt spec (spec's shape, contiguous) of ``patch_gather`` given grad (M, K)."""
    spec4, B, C, H, W, ph, pw, gw = _geometry(spec, patch_size)
    n_keep = keep_idx.shape[1]
    K = ph * pw * C
    M = B * n_keep
    acc = torch.zeros(B, C, H, W, dtype=_acc_dtype(spec.dtype), device=spec.device)
    if M:
        BLOCK_M, BLOCK_K = _gather_blocks(M, K)
        _patch_scatter_kernel[(triton.cdiv(M, BLOCK_M),)](
            grad, spec4, *spec4.stride(), keep_idx, acc, *acc.stride(),
            M, n_keep, (H // ph) * gw, C, gw, ph, pw, K, float(norm_eps) if norm_eps is not None else 0.0,
            HAS_NORM=norm_eps is not None, BLOCK_M=BLOCK_M, BLOCK_K=BLOCK_K,
        )  # fmt: skip
    acc = acc.reshape(spec.shape)
    return acc if acc.dtype == spec.dtype else acc.to(spec.dtype)


# ---------------------------------------------------------------------------------------------
# span_mask and the noise replacement
# ---------------------------------------------------------------------------------------------
@triton.jit
def _span_mask_kernel(seed_ptr, out_ptr, frames, span, n_spans, threshold, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    t = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    s = t // span
    k0, k1 = seed_key(seed_ptr)
    zero = tl.zeros([BLOCK], dtype=tl.uint32)
    w0, _, _, _ = philox4x32(k0, k1, s.to(tl.uint32), zero + b.to(tl.uint32), zero + 1, zero)
    m = ((w0 >> 8).to(tl.int32) < threshold) & (s < n_spans)
    tl.store(out_ptr + b.to(tl.int64) * frames + t, m, mask=t < frames)


def span_mask(
    seed: torch.Tensor, batch: int, frames: int, span: int, threshold: int
) -> torch.Tensor:
    out = empty(batch, frames, dtype=torch.bool, device=seed.device)
    if batch == 0 or frames == 0:
        return out
    BLOCK = min(1 << 16 if _interpret() else 1024, triton.next_power_of_2(frames))
    grid = (batch, triton.cdiv(frames, BLOCK))
    _span_mask_kernel[grid](
        seed.reshape(1), out, frames, span, frames // span, threshold, BLOCK=BLOCK
    )
    return out


@triton.jit
def _span_noise_kernel(
    x_ptr, mask_ptr, seed_ptr, out_ptr, frames, D, noise_std, BLOCK: tl.constexpr
):
    b = tl.program_id(0)
    e = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)  # element within the row: t * D + d
    ok = e < frames * D
    t = e // D
    d = e % D
    row = b.to(tl.int64) * frames
    x = tl.load(x_ptr + row * D + e, mask=ok, other=0.0)
    msk = tl.load(mask_ptr + row + t, mask=ok, other=0).to(tl.int1)
    k0, k1 = seed_key(seed_ptr)
    zero = tl.zeros([BLOCK], dtype=tl.uint32)
    w0, w1, _, _ = philox4x32(
        k0, k1, t.to(tl.uint32), zero + b.to(tl.uint32), zero + 2, d.to(tl.uint32)
    )
    z = box_muller(w0, w1) * noise_std
    y = tl.where(msk, z.to(out_ptr.dtype.element_ty), x)
    tl.store(out_ptr + row * D + e, y, mask=ok)


def span_noise_fill(
    x: torch.Tensor, mask: torch.Tensor, seed: torch.Tensor, noise_std: float
) -> torch.Tensor:
    """x (B, T) or (B, T, D) contiguous, mask (B, T) bool contiguous."""
    B, T = x.shape[0], x.shape[1]
    D = x.shape[2] if x.dim() == 3 else 1
    out = empty(*x.shape, dtype=x.dtype, device=x.device)
    n = T * D
    if B == 0 or n == 0:
        return out
    BLOCK = min(1 << 16 if _interpret() else 1024, triton.next_power_of_2(n))
    grid = (B, triton.cdiv(n, BLOCK))
    _span_noise_kernel[grid](x, mask, seed.reshape(1), out, T, D, float(noise_std), BLOCK=BLOCK)
    return out
