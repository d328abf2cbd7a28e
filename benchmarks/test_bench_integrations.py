"""Integrations: a MusicFM training step patched by ``apply_muse_fast`` vs the same model
unpatched, and SpeechBrain's ``RandomProjectionQuantizer`` vs its muse_fast drop-in.

The MusicFM model is the test stand-in (``tests/integrations/_musicfm_ref.py``: HF
``Wav2Vec2ConformerEncoder`` from ``transformers`` + MusicFM's mel / quantizer / masking
pipeline), at a small size that a 2-core CPU times in seconds: dim 64, 2 layers, 4 heads, FFN 128,
conv kernel 31, 4096 codes, batch 2 × 4 s (100 tokens). Variants: ``fused`` (patched) and
``unpatched``; mode ``train`` = forward + backward of the masked-token loss.

    python -m pytest benchmarks/test_bench_integrations.py --benchmark -q
"""

from __future__ import annotations

import copy
import importlib.util
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _ref_module():
    path = Path(__file__).resolve().parent.parent / "tests" / "integrations" / "_musicfm_ref.py"
    spec = importlib.util.spec_from_file_location("_musicfm_ref", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("variant", ["fused", "unpatched"])
def test_musicfm_train_step(measure, bench_device, variant):
    pytest.importorskip("transformers")
    from muse_fast.integrations import apply_muse_fast, musicfm_config

    config = musicfm_config(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128
    )
    model = _ref_module().MusicFM25Hz(config, conv_dim=16, codebook_size=4096)
    if variant == "fused":
        model = apply_muse_fast(copy.deepcopy(model))
    model = model.to(bench_device).train()
    audio = 0.3 * torch.randn(2, 4 * 24000, device=bench_device)

    def step():
        model.zero_grad(set_to_none=True)
        _, _, losses, _ = model(audio)
        losses["melspec_2048"].backward()

    measure(
        step,
        op="musicfm_step",
        variant=variant,
        params={"B": 2, "seconds": 4, "dim": 64, "layers": 2},
        mode="train",
        rounds=5,
    )


@pytest.mark.parametrize("variant", ["fused", "speechbrain"])
def test_speechbrain_quantizer(measure, bench_device, quick, variant):
    quantisers = pytest.importorskip("speechbrain.nnet.quantisers")
    from muse_fast.integrations import apply_muse_fast

    b, t, vocab = (4, 50, 8192) if quick else (4, 200, 8192)
    q = quantisers.RandomProjectionQuantizer(512, 16, vocab)
    if variant == "fused":
        q = apply_muse_fast(q)
    q = q.to(bench_device)
    x = torch.randn(b, t, 512, device=bench_device)

    def run():
        with torch.no_grad():
            return q(x)

    measure(
        run,
        op="speechbrain_rpq",
        variant=variant,
        params={"B": b, "T": t, "V": vocab, "d": 16},
        rounds=5,
    )
