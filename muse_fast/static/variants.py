"""Configurations the report's paper sizes do not reach, for the AOT compile tests: every pad
mode, log mode and window of mel, fp32 NT-Xent (tf32x3), bf16 quantizer input, SummaryMixing
fp32 without a mask, the patch embed backward into the spectrogram, the token gather forward,
the span noise fill. Small shapes on ``meta`` (the tile configuration is the CUDA one; only
what the launcher compiles matters, not the time)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .cases import BF16, META, Case

Step = Callable[[], object]


def _mel(**kw: object) -> Callable[[], Step]:
    def prepare() -> Step:
        from muse_fast.ops import mel_spectrogram

        wave = torch.empty(3, 24001, device=META)
        return lambda: mel_spectrogram(wave, "musicfm", **kw)

    return prepare


def _nt_xent_fp32() -> Step:
    from muse_fast.ops import nt_xent

    z1 = torch.empty(1000, 128, device=META, requires_grad=True)
    z2 = torch.empty(1000, 128, device=META, requires_grad=True)
    return lambda: nt_xent(z1, z2, 0.1).backward()


def _quantize_bf16() -> Step:
    from muse_fast.ops import random_projection_quantize

    x = torch.empty(1000, 512, device=META, dtype=BF16)
    proj, codes = torch.empty(512, 16, device=META), torch.empty(8192, 16, device=META)
    return lambda: random_projection_quantize(x, proj, codes)


def _summary_mixing_fp32() -> Step:
    from muse_fast.nn import SummaryMixing

    with torch.device(META):
        m = SummaryMixing(96)
    x = torch.empty(3, 77, 96, device=META, requires_grad=True)
    dy = torch.empty(3, 77, 96, device=META)
    return lambda: m(x).backward(dy)


def _patch_embed_spec_grad() -> Step:
    from muse_fast.ops import masked_patch_embed

    spec = torch.empty(7, 128, 96, device=META, dtype=BF16, requires_grad=True)
    keep = torch.empty(7, 5, device=META, dtype=torch.long)
    w = torch.empty(384, 256, device=META, dtype=BF16, requires_grad=True)
    b = torch.empty(384, device=META, dtype=BF16, requires_grad=True)
    pos = torch.empty(48, 384, device=META, dtype=BF16, requires_grad=True)

    def step() -> None:
        out = masked_patch_embed(spec, keep, 16, w, b, pos, norm_eps=1e-6)
        out.backward(torch.empty_like(out))

    return step


def _gather_forward() -> Step:
    from muse_fast.ops import gather_tokens

    x = torch.empty(5, 750, 1024, device=META, dtype=BF16)
    keep = torch.empty(5, 75, device=META, dtype=torch.long)
    return lambda: gather_tokens(x, keep)


def _span_fill() -> Step:
    from muse_fast.ops import apply_span_mask

    x = torch.empty(4, 750, 128, device=META)
    mask = torch.empty(4, 750, device=META, dtype=torch.bool)
    return lambda: apply_span_mask(x, mask, noise_std=0.1, seed=0)


def variants() -> list[Case]:
    mel = [
        Case("mel_spectrogram", f"variant pad_mode={m}", _mel(pad_mode=m))
        for m in ("constant", "reflect", "replicate", "circular")
    ]
    mel += [
        Case("mel_spectrogram", f"variant log={lg} power={p}", _mel(log=lg, power=p))
        for lg, p in ((None, 2.0), ("log", 1.0), ("log1p", 2.0))
    ]
    mel.append(Case("mel_spectrogram", "variant win_length=1200", _mel(win_length=1200)))
    return [
        *mel,
        Case("nt_xent", "variant fp32 (tf32x3)", _nt_xent_fp32),
        Case("random_projection_quantize", "variant bf16 x", _quantize_bf16),
        Case("summary_mixing", "variant fp32, no mask", _summary_mixing_fp32),
        Case("masked_patch_embed", "variant spec grad", _patch_embed_spec_grad),
        Case("gather_tokens", "variant forward", _gather_forward),
        Case("span_mask", "variant noise fill", _span_fill),
    ]
