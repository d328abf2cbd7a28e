"""masked_patch_embed: fused vs the eager reference vs Myna's order of work (sizes in
``masking_sizes.py``). Rows (given keep_idx on the device):

  fused              gather + LayerNorm + projection + bias + position rows of the kept
                     patches only, spectrogram and weights in one dtype
  fused-fp32spec     (GPU) a float32 spectrogram with bf16 weights, as under autocast: the
                     kernel reads the kept patches in fp32 and casts on load
  reference          ``masked_patch_embed_reference`` (patchify all, gather, LN, linear)
  full-embed+gather  embed every patch (einops-style rearrange, LN, Linear, + pos), then
                     gather the kept tokens: Myna's order of work
``mask+embed`` (one Myna training view: draw the mask, embed the kept patches)
  fused        ``random_token_mask`` + ``masked_patch_embed``
  myna-style   full patch embedding + randperm loop on the CPU + gather on the device

Modes: forward, and fwd+bwd (gradients to the weight, bias and position table; the
spectrogram needs none, as in training).

    python -m pytest benchmarks/test_bench_patch_embed.py --benchmark -q
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from masking_sizes import (
    CPU_BATCHES,
    DIM,
    FRAMES,
    GPU_BATCHES,
    N_MELS,
    PATCHES,
    RATIO,
    bench_dtype,
    myna_keep,
    skip_unless_in_sweep,
)

import muse_fast
from muse_fast.ops import masked_patch_embed, random_token_mask


# ---------------------------------------------------------------------------------------------
# masked_patch_embed
# ---------------------------------------------------------------------------------------------
def _embed_inputs(batch, patch, device):
    ph, pw = patch
    dt = bench_dtype(device)
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
@pytest.mark.parametrize("variant", ["fused", "fused-fp32spec", "reference", "full-embed+gather"])
@pytest.mark.parametrize("patch", list(PATCHES))
@pytest.mark.parametrize("batch", sorted(set(CPU_BATCHES + GPU_BATCHES)))
def test_bench_masked_patch_embed(measure, bench_device, quick, batch, patch, variant, mode):
    skip_unless_in_sweep(batch, bench_device, quick)
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
        backend = "reference" if variant == "reference" else None

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
    skip_unless_in_sweep(batch, bench_device, quick)
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
            keep = myna_keep(batch, n_tokens, bench_device)
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
