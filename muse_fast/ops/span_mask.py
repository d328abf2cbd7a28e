"""Span masks and their replacement (docs/design.md, "Span masking").

``span_mask`` splits the frames of each row into ``frames // span`` whole spans and masks each
independently with probability p: span s of row b is masked iff
``philox4x32(seed, s, b, 1, 0)[0] >> 8 < ceil(p * 2**24)``. ``apply_span_mask`` replaces the
masked frames with N(0, noise_std²) noise (Box-Muller from words 0, 1 of
``philox4x32(seed, t, b, 2, d)``; one fused kernel) or with a learned embedding (one
``torch.where``, already a single pass). The eager references, the C++ kernels
(``csrc/span_mask.cpp``) and the Triton kernels (``kernels/span_mask.py``) draw the same bits.
"""

from __future__ import annotations

import math

import torch

from .._backend import declare
from .._runtime import empty
from ._checks import FLOATING, check_float, check_int, check_same_device, check_tensor
from ._philox import box_muller, draw_device, philox4x32, seed_tensor

__all__ = ["span_mask", "apply_span_mask", "span_mask_reference", "span_noise_fill_reference"]


def _span_threshold(prob: float) -> int:
    """u = m * 2**-24 < prob  ⇔  m < ceil(prob * 2**24) for integer m (exact in double)."""
    return int(math.ceil(prob * 16777216.0))


def _zero_seed(device) -> torch.Tensor:
    return torch.zeros((), dtype=torch.int64, device=device)


# ---------------------------------------------------------------------------------------------
# span_mask
# ---------------------------------------------------------------------------------------------
def span_mask_reference(
    seed: torch.Tensor, batch: int, frames: int, span: int, threshold: int
) -> torch.Tensor:
    """bool (batch, frames): frames split into ``frames // span`` whole spans (a trailing partial
    span is never masked, as MusicFM); span s of row b is masked iff
    ``(philox4x32(seed, s, b, 1, 0)[0] >> 8) < threshold`` with
    ``threshold = ceil(prob * 2**24)``, i.e. iff u < prob for u = (word >> 8) * 2**-24."""
    dev = seed.device
    n_spans = frames // span
    s = torch.arange(n_spans, device=dev, dtype=torch.int64)
    b = torch.arange(batch, device=dev, dtype=torch.int64)
    w0 = philox4x32(seed, s[None, :], b[:, None], 1, 0)[0]
    per_span = (w0 >> 8) < threshold  # (batch, n_spans)
    out = torch.zeros(batch, frames, dtype=torch.bool, device=dev)
    out[:, : n_spans * span] = per_span.repeat_interleave(span, dim=1)
    return out


def _span_mask_cpu(seed, batch, frames, span, threshold):
    from .._ext import ext, ptr

    out = empty(batch, frames, dtype=torch.bool, device="cpu")
    ext().span_mask(ptr(seed), batch, frames, span, threshold, ptr(out))
    return out


_SPAN_MASK = declare(
    "span_mask",
    reference=span_mask_reference,
    triton="kernels.span_mask:span_mask",
    cpu=_span_mask_cpu,
    example_inputs=lambda device: ((_zero_seed(device), 8, 750, 10, _span_threshold(0.6)), {}),
    fake=lambda seed, batch, frames, span, threshold: seed.new_empty(
        batch, frames, dtype=torch.bool
    ),
)


def span_mask(
    batch: int,
    frames: int,
    span: int,
    prob: float,
    *,
    generator: torch.Generator | None = None,
    seed: int | torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """bool (batch, frames), True = masked: ``frames // span`` non-overlapping spans, each masked
    independently with probability ``prob`` (a trailing partial span never is). 400 ms spans:
    MusicFM p = 0.6, MuseLQ p = 0.2.

    The draw depends only on (seed, row, span index), so one seed gives the same spans at the
    waveform resolution (``span=9600`` samples at 24 kHz) and at the token resolution
    (``span=10`` tokens at 25 Hz). Seeds as in :func:`muse_fast.ops.random_token_mask`.
    """
    batch = check_int("batch", batch, min=0)
    frames = check_int("frames", frames, min=0)
    span = check_int("span", span, min=1)
    prob = check_float("prob", prob, min=0.0, max=1.0)
    dev = draw_device(device, generator)
    s = seed_tensor(seed, generator, dev)
    return _SPAN_MASK(s, batch, frames, span, _span_threshold(prob))


# ---------------------------------------------------------------------------------------------
# span noise
# ---------------------------------------------------------------------------------------------
def span_noise_fill_reference(
    x: torch.Tensor, mask: torch.Tensor, seed: torch.Tensor, noise_std: float
) -> torch.Tensor:
    """x (B, T) or (B, T, D) with masked frames replaced by ``noise_std * z``: z standard normal
    by Box-Muller (float32) from words 0 and 1 of ``philox4x32(seed, t, b, 2, d)`` (d = 0 for
    2-D x), cast to x's dtype."""
    B, T = x.shape[0], x.shape[1]
    D = x.shape[2] if x.dim() == 3 else 1
    dev = x.device
    t = torch.arange(T, device=dev, dtype=torch.int64)[None, :, None]
    b = torch.arange(B, device=dev, dtype=torch.int64)[:, None, None]
    d = torch.arange(D, device=dev, dtype=torch.int64)[None, None, :]
    w0, w1, _, _ = philox4x32(seed, t, b, 2, d)  # (B, T, D) each
    noise = (noise_std * box_muller(w0, w1)).to(x.dtype).reshape(x.shape)
    m = mask if x.dim() == 2 else mask.unsqueeze(-1)
    return torch.where(m, noise, x)


def _span_noise_fill_triton(x, mask, seed, noise_std):
    from ..kernels import span_mask as K

    return K.span_noise_fill(x.contiguous(), mask.contiguous(), seed, noise_std)


def _span_noise_fill_cpu(x, mask, seed, noise_std):
    from .._ext import dtype_name, ext, ptr

    x, mask = x.contiguous(), mask.contiguous()
    B, T = x.shape[0], x.shape[1]
    D = x.shape[2] if x.dim() == 3 else 1
    out = empty(*x.shape, dtype=x.dtype, device="cpu")
    ext().span_noise_fill(
        ptr(x), dtype_name(x), ptr(mask), ptr(seed), B, T, D, float(noise_std), ptr(out)
    )
    return out


def _noise_setup(ctx, inputs, output):
    x, mask, _, _ = inputs
    ctx.save_for_backward(mask)
    ctx.three_d = x.dim() == 3


def _noise_backward(ctx, grad):
    (mask,) = ctx.saved_tensors
    m = mask.unsqueeze(-1) if ctx.three_d else mask
    return grad.masked_fill(m, 0), None, None, None


_SPAN_NOISE_FILL = declare(
    "span_noise_fill",
    reference=span_noise_fill_reference,
    triton=_span_noise_fill_triton,
    cpu=_span_noise_fill_cpu,
    example_inputs=lambda device: (
        (
            torch.randn(4, 24000, device=device),
            torch.zeros(4, 24000, dtype=torch.bool, device=device),
            _zero_seed(device),
            0.1,
        ),
        {},
    ),
    fake=lambda x, mask, seed, noise_std: torch.empty_like(
        x, memory_format=torch.contiguous_format
    ),
    backward=_noise_backward,
    setup_context=_noise_setup,
)


def apply_span_mask(
    x: torch.Tensor,
    mask: torch.Tensor,
    *,
    noise_std: float | None = None,
    mask_embedding: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """x with its masked frames replaced: x (B, T) or (B, T, D) float, mask (B, T) bool.

    Exactly one of:

    * ``noise_std``: N(0, noise_std²) noise (MusicFM: 0.1 on the waveform), drawn from Philox
      counters (t, b, 2, d) with the seed from ``seed`` / ``generator`` / the global RNG (see
      :func:`span_noise_fill_reference`); gradient flows to x at unmasked frames. Fused kernel.
    * ``mask_embedding`` (D,): a learned vector (x must be 3-D); gradient flows to it (summed
      over masked frames) and to x at unmasked frames. A single ``torch.where``, which is
      already one fused pass, so no custom kernel.
    """
    check_tensor("x", x, ndim=(2, 3), dtypes=FLOATING)
    check_tensor("mask", mask, shape=(x.shape[0], x.shape[1]), dtypes=(torch.bool,))
    dev = check_same_device(x=x, mask=mask, mask_embedding=mask_embedding)
    if (noise_std is None) == (mask_embedding is None):
        raise ValueError("noise_std: give exactly one of noise_std and mask_embedding")
    if mask_embedding is not None:
        if x.dim() != 3:
            raise ValueError(
                f"x: a mask_embedding needs x of shape (B, T, D), got {tuple(x.shape)}"
            )
        check_tensor("mask_embedding", mask_embedding, shape=(x.shape[2],), dtypes=FLOATING)
        if seed is not None or generator is not None:
            raise ValueError("seed: a mask_embedding replacement draws no random numbers")
        return torch.where(mask.unsqueeze(-1), mask_embedding.to(x.dtype), x)
    noise_std = check_float("noise_std", noise_std, min=0.0)
    s = seed_tensor(seed, generator, dev)
    return _SPAN_NOISE_FILL(x, mask, s, noise_std)
