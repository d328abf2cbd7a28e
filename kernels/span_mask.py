"""Triton kernels for ``muse_fast.ops.span_mask`` (launchers included; no autograd, no
dispatch). Contracts: docs/design.md, "Span masking".

* ``span_mask``: frame t of row b is masked iff span s = t // span is whole (s < frames // span)
  and ``philox4x32(seed, s, b, 1, 0)[0] >> 8 < threshold``. Writes B·T bools, reads the seed.
* ``span_noise_fill``: masked frames replaced by ``noise_std * z``, z standard normal by
  Box-Muller from words 0, 1 of ``philox4x32(seed, t, b, 2, d)``. Reads x and the mask once,
  writes the output once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._philox import box_muller, philox4x32, round_bf16, seed_key
from ._utils import empty, launch, pow2, tile_config, workaround


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
    """seed: one-element int64 tensor → bool (batch, frames)."""
    out = empty(batch, frames, dtype=torch.bool, device=seed.device)
    cfg = tile_config("span_mask.span_mask", seed.device)
    BLOCK = pow2(frames, 1, cfg["BLOCK"])
    launch(
        _span_mask_kernel, (batch, triton.cdiv(frames, BLOCK)),
        seed.reshape(1), out, frames, span, frames // span, threshold,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], BLOCK=BLOCK,
    )  # fmt: skip
    return out


@triton.jit
def _span_noise_kernel(
    x_ptr, mask_ptr, seed_ptr, out_ptr, frames, D, noise_std,
    ROUND_BF16: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
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
    if ROUND_BF16:
        z = round_bf16(z)
    y = tl.where(msk, z.to(out_ptr.dtype.element_ty), x)
    tl.store(out_ptr + row * D + e, y, mask=ok)


def span_noise_fill(
    x: torch.Tensor, mask: torch.Tensor, seed: torch.Tensor, noise_std: float
) -> torch.Tensor:
    """x (B, T) or (B, T, D) contiguous, mask (B, T) bool contiguous."""
    B, T = x.shape[0], x.shape[1]
    D = x.shape[2] if x.dim() == 3 else 1
    out = empty(*x.shape, dtype=x.dtype, device=x.device)
    cfg = tile_config("span_mask.noise", x.device)
    BLOCK = pow2(T * D, 1, cfg["BLOCK"])
    rnd = x.dtype == torch.bfloat16 and workaround(
        "span_mask.round_bf16",
        "the interpreter's fp32 -> bf16 cast truncates; a GPU rounds to nearest even",
    )
    launch(
        _span_noise_kernel, (B, triton.cdiv(T * D, BLOCK)),
        x, mask, seed.reshape(1), out, T, D, float(noise_std),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], ROUND_BF16=rnd, BLOCK=BLOCK,
    )  # fmt: skip
    return out
