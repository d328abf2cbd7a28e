"""Philox-4x32-10 in eager PyTorch: the random stream every muse_fast op draws from.

muse_fast draws each random number as ``philox4x32(seed, c0, c1, c2, c3)[word]``: the 64-bit
``seed`` is the key (low and high 32-bit halves), the four 32-bit counters name the element.
The same function exists in C++ (``csrc/common.h``, ``muse::philox4x32``) and in Triton
(``kernels/_philox.py``), so the eager references and both kernels draw bit-identical streams
for one seed; ``tests/ops/test_philox.py`` checks all three against each other.

Here the 32-bit words live in int64 tensors (values in ``[0, 2**32)``). A product of two 32-bit
words does not fit in int64, so the high half of ``a * b`` is formed from 16-bit pieces of
``b`` (:func:`_mul_hi_lo`).

Seeds: ops take a seed as an int64 tensor holding the 64 key bits (two's complement), on the
op's device, so kernels read it there without a host synchronization. :func:`seed_tensor`
builds one from an ``int``, a ``torch.Generator`` or the device's global RNG.
"""

from __future__ import annotations

import torch

__all__ = ["philox4x32", "seed_tensor", "draw_device", "uniform24", "box_muller"]

_M32 = 0xFFFFFFFF
_ROUND_A = 0xD2511F53  # multiplies c0
_ROUND_B = 0xCD9E8D57  # multiplies c2
_KEY_A = 0x9E3779B9
_KEY_B = 0xBB67AE85


def _mul_hi_lo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of the 64-bit product ``a * b`` (a: 32-bit constant, b: int64
    tensor of 32-bit words), without int64 overflow: with b = bh * 2**16 + bl, both
    ``a * bh`` and ``a * bl`` are below 2**48."""
    t_lo = a * (b & 0xFFFF)
    t_hi = a * (b >> 16)
    mid = t_hi + (t_lo >> 16)  # (a * b) >> 16, below 2**49
    hi = mid >> 16
    lo = ((mid & 0xFFFF) << 16) | (t_lo & 0xFFFF)
    return hi, lo


def _as_words(v: torch.Tensor | int, like: torch.Tensor | None) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v.to(torch.int64) & _M32
    dev = like.device if like is not None else None
    return torch.tensor(int(v) & _M32, dtype=torch.int64, device=dev)


def philox4x32(
    seed: torch.Tensor | int,
    c0: torch.Tensor | int,
    c1: torch.Tensor | int,
    c2: torch.Tensor | int = 0,
    c3: torch.Tensor | int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Philox-4x32-10 block for key ``seed`` and counters ``(c0, c1, c2, c3)`` (broadcast).

    ``seed`` is an int64 tensor (or int) holding the 64 key bits; counters are integer tensors
    or ints taken modulo 2**32. Returns four int64 tensors of 32-bit words in ``[0, 2**32)``.
    """
    like = next((t for t in (c0, c1, c2, c3, seed) if isinstance(t, torch.Tensor)), None)
    if isinstance(seed, torch.Tensor):
        s = seed.to(torch.int64)
        k0 = s & _M32
        k1 = (s >> 32) & _M32  # arithmetic shift, then the low 32 bits: the unsigned high half
    else:
        su = int(seed) & (2**64 - 1)
        k0 = _as_words(su & _M32, like)
        k1 = _as_words(su >> 32, like)
    x0, x1, x2, x3 = (_as_words(c, like) for c in (c0, c1, c2, c3))
    x0, x1, x2, x3 = torch.broadcast_tensors(x0, x1, x2, x3)
    for _ in range(10):
        hi0, lo0 = _mul_hi_lo(_ROUND_A, x0)
        hi2, lo2 = _mul_hi_lo(_ROUND_B, x2)
        x0, x1, x2, x3 = hi2 ^ x1 ^ k0, lo2, hi0 ^ x3 ^ k1, lo0
        k0 = (k0 + _KEY_A) & _M32
        k1 = (k1 + _KEY_B) & _M32
    return x0, x1, x2, x3


def uniform24(word: torch.Tensor) -> torch.Tensor:
    """A 32-bit word → float32 uniform in [0, 1): its top 24 bits times 2**-24 (exact)."""
    return (word >> 8).to(torch.float32) * (1.0 / 16777216.0)


def box_muller(w0: torch.Tensor, w1: torch.Tensor) -> torch.Tensor:
    """Standard normal float32 from two 32-bit words: u1 = ((w0 >> 8) + 1) * 2**-24 in (0, 1],
    u2 = (w1 >> 8) * 2**-24, z = sqrt(-2 ln u1) * cos(2 pi u2), all in float32."""
    u1 = ((w0 >> 8) + 1).to(torch.float32) * (1.0 / 16777216.0)
    u2 = uniform24(w1)
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(u2 * 6.283185307179586)


def draw_device(
    device: torch.device | str | None, generator: torch.Generator | None
) -> torch.device:
    """Where a random op draws: ``device``, else the generator's device, else the CPU."""
    if device is not None:
        return torch.device(device)
    if isinstance(generator, torch.Generator):
        return generator.device
    return torch.device("cpu")


def _wrap_int64(v: int) -> int:
    v &= 2**64 - 1
    return v - 2**64 if v >= 2**63 else v


def seed_tensor(
    seed: int | torch.Tensor | None,
    generator: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor:
    """The 0-dim int64 seed tensor on ``device`` that an op's kernels read.

    * ``seed`` (an int, any size: taken modulo 2**64) → that key; reproducible on every device.
    * ``generator`` → 64 bits drawn from it on its own device (no host synchronization on CUDA
      when it lives on ``device``), so seeding the generator makes calls reproducible.
    * neither → 64 bits from the global RNG of ``device`` (``torch.manual_seed`` reproduces).
    """
    if seed is not None and generator is not None:
        raise ValueError("seed: give a seed or a generator, not both")
    if isinstance(seed, torch.Tensor):
        if seed.dtype != torch.int64 or seed.numel() != 1:
            raise TypeError("seed: expected an int or a one-element int64 tensor")
        return seed.reshape(()).to(device)
    if seed is not None:
        if isinstance(seed, bool) or not hasattr(seed, "__index__"):
            raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
        # torch.full writes the value from a kernel argument: no host-to-device copy.
        return torch.full((), _wrap_int64(int(seed)), dtype=torch.int64, device=device)
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(
                f"generator: expected a torch.Generator, got {type(generator).__name__}"
            )
        s = torch.randint(
            -(2**63), 2**63 - 1, (), generator=generator, device=generator.device, dtype=torch.int64
        )
        return s.to(device, non_blocking=True)
    return torch.randint(-(2**63), 2**63 - 1, (), device=device, dtype=torch.int64)
