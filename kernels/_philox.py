"""Philox-4x32-10 for Triton kernels: the same stream as ``muse::philox4x32`` (csrc/common.h)
and ``muse_fast.ops._philox.philox4x32`` (eager PyTorch).

Kernels read the seed from an int64 tensor (no host synchronization) and call

    k0, k1 = seed_key(seed_ptr)
    w0, w1, w2, w3 = philox4x32(k0, k1, c0, c1, c2, c3)

with uint32 counters (broadcast blocks). Other kernels in ``kernels/`` may import these, and
:func:`round_bf16`, the round-to-nearest-even fp32 -> bf16 cast the masking kernels use under
the interpreter (whose own cast truncates).
"""

import triton
import triton.language as tl

from ._utils import launch, tile_config

ROUND_A = tl.constexpr(0xD2511F53)
ROUND_B = tl.constexpr(0xCD9E8D57)
KEY_A = tl.constexpr(0x9E3779B9)
KEY_B = tl.constexpr(0xBB67AE85)


@triton.jit
def seed_key(seed_ptr):
    """(k0, k1): the low and high 32-bit halves of the int64 seed at ``seed_ptr``."""
    s = tl.load(seed_ptr)
    k0 = (s & 0xFFFFFFFF).to(tl.uint32)
    k1 = ((s >> 32) & 0xFFFFFFFF).to(tl.uint32)
    return k0, k1


@triton.jit
def philox4x32(k0, k1, c0, c1, c2, c3):
    """Ten Philox rounds on uint32 counters (c0, c1, c2, c3) with key (k0, k1)."""
    c0 = c0.to(tl.uint32)
    c1 = c1.to(tl.uint32)
    c2 = c2.to(tl.uint32)
    c3 = c3.to(tl.uint32)
    k0 = k0.to(tl.uint32)
    k1 = k1.to(tl.uint32)
    a = tl.full((1,), ROUND_A, tl.uint32)
    b = tl.full((1,), ROUND_B, tl.uint32)
    ka = tl.full((1,), KEY_A, tl.uint32)
    kb = tl.full((1,), KEY_B, tl.uint32)
    for _ in tl.static_range(10):
        p0, p2 = c0, c2
        c0 = tl.umulhi(b, p2) ^ c1 ^ k0
        c2 = tl.umulhi(a, p0) ^ c3 ^ k1
        c1 = b * p2
        c3 = a * p0
        k0 = k0 + ka
        k1 = k1 + kb
    return c0, c1, c2, c3


@triton.jit
def uniform24(w):
    """uint32 word → float32 uniform in [0, 1): (w >> 8) * 2**-24 (exact)."""
    return (w >> 8).to(tl.int32).to(tl.float32) * (1.0 / 16777216.0)


@triton.jit
def box_muller(w0, w1):
    """Standard normal float32 from two words (see muse_fast.ops._philox.box_muller)."""
    u1 = ((w0 >> 8) + 1).to(tl.int32).to(tl.float32) * (1.0 / 16777216.0)
    u2 = (w1 >> 8).to(tl.int32).to(tl.float32) * (1.0 / 16777216.0)
    return tl.sqrt(-2.0 * tl.log(u1)) * tl.cos(u2 * 6.283185307179586)


@triton.jit
def round_bf16(x):
    """fp32 → bf16 rounded to nearest even, in integer arithmetic (what a GPU's cvt.rn does;
    finite values and infinities; the interpreter's ``.to(tl.bfloat16)`` truncates)."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True).to(tl.bfloat16)


@triton.jit
def _philox_block_kernel(seed_ptr, c_ptr, out_ptr, n, BLOCK: tl.constexpr):
    # test helper: counters (n, 4) int64 → words (n, 4) int64
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    k0, k1 = seed_key(seed_ptr)
    c0 = tl.load(c_ptr + offs * 4 + 0, mask=m, other=0).to(tl.uint32)
    c1 = tl.load(c_ptr + offs * 4 + 1, mask=m, other=0).to(tl.uint32)
    c2 = tl.load(c_ptr + offs * 4 + 2, mask=m, other=0).to(tl.uint32)
    c3 = tl.load(c_ptr + offs * 4 + 3, mask=m, other=0).to(tl.uint32)
    w0, w1, w2, w3 = philox4x32(k0, k1, c0, c1, c2, c3)
    tl.store(out_ptr + offs * 4 + 0, w0.to(tl.int64), mask=m)
    tl.store(out_ptr + offs * 4 + 1, w1.to(tl.int64), mask=m)
    tl.store(out_ptr + offs * 4 + 2, w2.to(tl.int64), mask=m)
    tl.store(out_ptr + offs * 4 + 3, w3.to(tl.int64), mask=m)


def philox_words(seed, counters):
    """Run the Triton Philox on ``counters`` (n, 4) int64 (values < 2**32) with the int64 seed
    tensor ``seed``; returns (n, 4) int64 words. For tests and debugging."""
    import torch

    counters = counters.to(torch.int64).contiguous()
    n = counters.shape[0]
    out = torch.empty_like(counters)
    BLOCK = tile_config("philox.block", seed.device)["BLOCK"]
    launch(
        _philox_block_kernel,
        (triton.cdiv(n, BLOCK),),
        seed.reshape(1),
        counters,
        out,
        n,
        BLOCK=BLOCK,
    )
    return out
