"""span_mask + apply_span_mask(noise): fused vs the eager reference. MusicFM: 30 s at 24 kHz
(10 s on CPU), 400 ms spans, p = 0.6, N(0, 0.1²) noise; forward only.

    python -m pytest benchmarks/test_bench_span_mask.py --benchmark -q
"""

from __future__ import annotations

import pytest
import torch

import muse_fast
from muse_fast.ops import apply_span_mask, span_mask


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
