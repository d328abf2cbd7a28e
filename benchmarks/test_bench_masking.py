"""Token masking: fused vs the eager reference vs what Myna's public code does.

Myna-like sizes: a 128 x 96 log-mel crop, 16 x 16 patches (Myna-Base, 8 x 6 = 48 tokens) or
128 x 2 patches (Myna-Vertical, 1 x 48 = 48 tokens), D = 384 (vit-s), 90 % masking: 4 of 48
tokens kept. Batch up to 4096 on GPU (the paper's per-device batch), smaller on CPU.

Ops and variants (``measure`` rows; "fused" is the dispatcher's default path: Triton on CUDA,
the C++ kernels on CPU — the Triton interpreter is never timed):

``random_token_mask+gather`` (x (B, 48, 384) → the kept tokens)
  fused        ``random_token_mask`` (Philox on the device) + ``gather_tokens``
  reference    the same ops forced onto their eager references
  myna-style   ``torch.stack([torch.randperm(N) for _ in range(B)])`` on the CPU, the kept
               columns copied to the device, ``x.gather`` (Myna's ``mask_inputs``)
``masked_patch_embed`` (given keep_idx on the device)
  fused              gather + LayerNorm + projection + bias + position rows of the kept
                     patches only
  reference          ``masked_patch_embed_reference`` (patchify all, gather, LN, linear)
  full-embed+gather  embed every patch (einops-style rearrange, LN, Linear, + pos), then
                     gather the kept tokens: Myna's order of work
``mask+embed`` (one Myna training view: draw the mask, embed the kept patches)
  fused        ``random_token_mask`` + ``masked_patch_embed``
  myna-style   full patch embedding + randperm loop on the CPU + gather on the device
``span_mask+noise`` (MusicFM: 30 s at 24 kHz (10 s on CPU), 400 ms spans, p = 0.6,
N(0, 0.1²) noise)
  fused / reference

Modes: forward, and fwd+bwd (gradients to x, or to the embedding's weight, bias and position
table; the spectrogram needs none, as in training).

    python -m pytest benchmarks/test_bench_masking.py --benchmark -q
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import muse_fast
from muse_fast.ops import (
    apply_span_mask,
    gather_tokens,
    masked_patch_embed,
    num_kept_tokens,
    random_token_mask,
    span_mask,
)

N_MELS, FRAMES, DIM, RATIO = 128, 96, 384, 0.9
PATCHES = {"16x16": (16, 16), "128x2": (128, 2)}
CPU_BATCHES = [64, 256]
GPU_BATCHES = [256, 1024, 4096]


def _batches(device: torch.device, quick: bool) -> list[int]:
    sizes = GPU_BATCHES if device.type == "cuda" else CPU_BATCHES
    return sizes[:1] if quick else sizes


def _skip_unless_in_sweep(batch, device, quick):
    if batch not in _batches(device, quick):
        pytest.skip(f"B={batch} is not in the {device.type} sweep")


def _dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def _myna_keep(batch: int, n_tokens: int, device: torch.device) -> torch.Tensor:
    """Myna's ``mask_inputs``: a CPU randperm per sample, the kept columns copied to the device.
    (Myna keeps ``N - int(0.9 * N)`` = 5 of 48; we keep ``num_kept_tokens`` = 4 here as in the
    fused rows, so both sides do the same amount of work.)"""
    n_keep = num_kept_tokens(n_tokens, RATIO)
    indices = torch.stack([torch.randperm(n_tokens) for _ in range(batch)])
    return indices[:, n_tokens - n_keep :].to(device)


# ---------------------------------------------------------------------------------------------
# random_token_mask + gather
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["forward", "fwd+bwd"])
@pytest.mark.parametrize("variant", ["fused", "reference", "myna-style"])
@pytest.mark.parametrize("batch", sorted(set(CPU_BATCHES + GPU_BATCHES)))
def test_bench_token_mask_gather(measure, bench_device, quick, batch, variant, mode):
    _skip_unless_in_sweep(batch, bench_device, quick)
    n_tokens = (N_MELS // 16) * (FRAMES // 16)
    x = torch.randn(batch, n_tokens, DIM, device=bench_device, dtype=_dtype(bench_device))
    x.requires_grad_(mode == "fwd+bwd")
    g = torch.randn(
        batch, num_kept_tokens(n_tokens, RATIO), DIM, device=bench_device, dtype=x.dtype
    )

    def finish(out):
        if mode == "fwd+bwd":
            out.backward(g)
        return out

    if variant == "myna-style":

        def fn():
            x.grad = None  # time the op, not the accumulation into x.grad
            keep = _myna_keep(batch, n_tokens, bench_device)
            return finish(x.gather(1, keep.unsqueeze(-1).expand(-1, -1, DIM)))

    else:
        backend = None if variant == "fused" else "reference"

        def fn():
            x.grad = None
            with muse_fast.backend(backend):
                keep = random_token_mask(batch, n_tokens, RATIO, device=bench_device)
                return finish(gather_tokens(x, keep))

    measure(
        fn,
        op="random_token_mask+gather",
        variant=variant,
        params={"B": batch, "L": n_tokens, "D": DIM, "ratio": RATIO, "dtype": str(x.dtype)[6:]},
        mode=mode,
    )


# ---------------------------------------------------------------------------------------------
# masked_patch_embed
# ---------------------------------------------------------------------------------------------
def _embed_inputs(batch, patch, device):
    ph, pw = patch
    dt = _dtype(device)
    gen = torch.Generator().manual_seed(0)
    n_tokens, K = (N_MELS // ph) * (FRAMES // pw), ph * pw
    spec = torch.randn(batch, N_MELS, FRAMES, generator=gen).to(device, dt)
    w = (torch.randn(DIM, K, generator=gen) / K**0.5).to(device, dt).requires_grad_()
    b = torch.zeros(DIM).to(device, dt).requires_grad_()
    pos = torch.randn(n_tokens, DIM, generator=gen).to(device, dt).requires_grad_()
    return spec, w, b, pos, n_tokens


def _full_embed_then_gather(spec, keep, patch, w, b, pos, eps):
    """Myna: Rearrange('b c (h p1) (w p2) -> b (h w) (p1 p2 c)') → LayerNorm → Linear → + pos for
    every patch, then gather the kept tokens."""
    ph, pw = patch
    B, H, W = spec.shape
    p = spec.reshape(B, H // ph, ph, W // pw, pw).permute(0, 1, 3, 2, 4).reshape(B, -1, ph * pw)
    x = F.linear(F.layer_norm(p, (ph * pw,), eps=eps), w, b) + pos
    return x.gather(1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


@pytest.mark.parametrize("mode", ["forward", "fwd+bwd"])
@pytest.mark.parametrize("variant", ["fused", "reference", "full-embed+gather"])
@pytest.mark.parametrize("patch", list(PATCHES))
@pytest.mark.parametrize("batch", sorted(set(CPU_BATCHES + GPU_BATCHES)))
def test_bench_masked_patch_embed(measure, bench_device, quick, batch, patch, variant, mode):
    _skip_unless_in_sweep(batch, bench_device, quick)
    ps = PATCHES[patch]
    spec, w, b, pos, n_tokens = _embed_inputs(batch, ps, bench_device)
    keep = random_token_mask(batch, n_tokens, RATIO, seed=0, device=bench_device)

    def finish(out):
        if mode == "fwd+bwd":
            out.float().sum().backward()
        return out

    if variant == "full-embed+gather":

        def fn():
            return finish(_full_embed_then_gather(spec, keep, ps, w, b, pos, 1e-5))

    else:
        backend = None if variant == "fused" else "reference"

        def fn():
            with muse_fast.backend(backend):
                return finish(masked_patch_embed(spec, keep, ps, w, b, pos, norm_eps=1e-5))

    measure(
        fn,
        op="masked_patch_embed",
        variant=variant,
        params={"B": batch, "patch": patch, "D": DIM, "ratio": RATIO, "dtype": str(spec.dtype)[6:]},
        mode=mode,
    )


# ---------------------------------------------------------------------------------------------
# one Myna view: draw the mask and embed the kept patches
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["fused", "myna-style"])
@pytest.mark.parametrize("batch", sorted(set(CPU_BATCHES + GPU_BATCHES)))
def test_bench_mask_and_embed(measure, bench_device, quick, batch, variant):
    _skip_unless_in_sweep(batch, bench_device, quick)
    ps = PATCHES["16x16"]
    spec, w, b, pos, n_tokens = _embed_inputs(batch, ps, bench_device)
    if variant == "fused":

        def fn():
            keep = random_token_mask(batch, n_tokens, RATIO, device=bench_device)
            out = masked_patch_embed(spec, keep, ps, w, b, pos, norm_eps=1e-5)
            out.float().sum().backward()
            return out

    else:

        def fn():
            keep = _myna_keep(batch, n_tokens, bench_device)
            out = _full_embed_then_gather(spec, keep, ps, w, b, pos, 1e-5)
            out.float().sum().backward()
            return out

    measure(
        fn,
        op="mask+embed",
        variant=variant,
        params={
            "B": batch,
            "patch": "16x16",
            "D": DIM,
            "ratio": RATIO,
            "dtype": str(spec.dtype)[6:],
        },
        mode="fwd+bwd",
    )


# ---------------------------------------------------------------------------------------------
# span mask + noise on the waveform (MusicFM)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["fused", "reference"])
def test_bench_span_mask_noise(measure, bench_device, quick, variant):
    sr = 24_000
    if bench_device.type == "cuda":
        batch, seconds = (8 if quick else 64), 30
    else:  # the eager reference draws Philox with ~100 int64 tensor ops per sample
        batch, seconds = (1 if quick else 4), 10
    x = torch.randn(batch, sr * seconds, device=bench_device)
    backend = None if variant == "fused" else "reference"

    def fn():
        with muse_fast.backend(backend):
            m = span_mask(batch, x.shape[1], 9600, 0.6, device=bench_device)
            return apply_span_mask(x, m, noise_std=0.1)

    measure(
        fn,
        op="span_mask+noise",
        variant=variant,
        params={"B": batch, "samples": x.shape[1], "span": 9600, "p": 0.6},
        mode="forward",
        rounds=3 if variant == "reference" and bench_device.type == "cpu" else 7,
    )
