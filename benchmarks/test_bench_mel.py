"""mel_spectrogram (``musicfm`` preset: 24 kHz, n_fft 2048, hop 240, 128 mels, dB): fused vs the
eager reference vs torchaudio.

Batches of B clips of 30 s (720 000 samples each, 3001 frames). GPU sweep B = 1, 4, 16, 64, 256;
CPU sweep B = 1, 4, 16 (a 2-core CPU runs torchaudio at ~0.1-0.2 s per clip).

Variants (``measure`` rows):
  fused                  the dispatcher's default: Triton + cuFFT on CUDA, C++ + MKL FFT on CPU
  reference              ``mel_spectrogram_reference`` (torch.stft + abs().pow + dense matmul +
                         log10: torchaudio's code path, our eager baseline)
  torchaudio             ``torchaudio.transforms.MelSpectrogram`` + ``AmplitudeToDB`` modules
  nnAudio                ``nnAudio.features.MelSpectrogram`` + 10·log10 (skipped when nnAudio is
                         not installed; it is not a dependency)

Forward only, under ``torch.inference_mode()`` (mel extraction is a preprocessing step).

    python -m pytest benchmarks/test_bench_mel.py --benchmark -q [--benchmark-quick]
"""

from __future__ import annotations

import pytest
import torch

from muse_fast.ops import mel_spectrogram, mel_spectrogram_reference

SR, SECONDS = 24000, 30
CPU_BATCHES = [1, 4, 16]
GPU_BATCHES = [1, 4, 16, 64, 256]
VARIANTS = ["fused", "reference", "torchaudio", "nnAudio"]
_CACHE: dict = {}


def _batches(device: torch.device, quick: bool) -> list[int]:
    b = GPU_BATCHES if device.type == "cuda" else CPU_BATCHES
    return b[:1] if quick else b


def _audio(batch: int, device: torch.device) -> torch.Tensor:
    key = (batch, str(device))
    if key not in _CACHE:
        _CACHE.clear()
        g = torch.Generator().manual_seed(0)
        _CACHE[key] = (0.1 * torch.randn(batch, SR * SECONDS, generator=g)).to(device)
    return _CACHE[key]


def _torchaudio(device: torch.device):
    import torchaudio

    mel = torchaudio.transforms.MelSpectrogram(SR, n_fft=2048, hop_length=240, n_mels=128)
    db = torchaudio.transforms.AmplitudeToDB()
    mel, db = mel.to(device), db.to(device)
    return lambda x: db(mel(x))


def _nnaudio(device: torch.device):
    try:
        from nnAudio.features.mel import MelSpectrogram
    except ImportError:
        pytest.skip("nnAudio is not installed (not a dependency): variant not measured")
    m = MelSpectrogram(
        sr=SR, n_fft=2048, hop_length=240, n_mels=128, htk=True, norm=None, verbose=False
    ).to(device)
    return lambda x: 10.0 * torch.log10(torch.clamp(m(x), min=1e-10))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("batch", sorted(set(CPU_BATCHES + GPU_BATCHES)))
def test_bench_mel_spectrogram(measure, bench_device, quick, variant, batch):
    if batch not in _batches(bench_device, quick):
        pytest.skip(f"B={batch} is not in the {bench_device.type} sweep")
    x = _audio(batch, bench_device)
    if variant == "fused":
        run = lambda x: mel_spectrogram(x, "musicfm")  # noqa: E731
    elif variant == "reference":
        run = lambda x: mel_spectrogram_reference(x, "musicfm")  # noqa: E731
    elif variant == "torchaudio":
        run = _torchaudio(bench_device)
    else:
        run = _nnaudio(bench_device)

    def fn():
        with torch.inference_mode():
            return run(x)

    slow = bench_device.type == "cpu" and batch >= 4
    measure(
        fn,
        op="mel_spectrogram",
        variant=variant,
        params={"B": batch, "seconds": SECONDS, "sr": SR, "n_fft": 2048, "hop": 240, "n_mels": 128},
        mode="forward",
        rounds=3 if slow else 7,
        warmup=1,
    )
