"""Synthetic audio for the model tests: each track is a few harmonic tones with a per-track pitch
set and tempo, so crops of one track resemble each other and differ from other tracks."""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=32)
def _tracks(n: int, samples: int, sample_rate: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples, dtype=torch.float64) / sample_rate  # (S,)
    t32 = t.float()
    midi = 48 + torch.randint(0, 24, (n, 3, 1), generator=g).double()  # three notes per track
    freqs = 440.0 * 2 ** ((midi - 69) / 12) * torch.tensor([1.0, 2.0, 3.0])  # (n, 3, harmonics)
    amps = torch.tensor([1.0, 0.5, 0.25])
    beat = 60.0 / (80 + 80 * torch.rand(n, 1, generator=g, dtype=torch.float64))  # (n, 1) s
    env = torch.exp(-((t % beat) / (0.3 * beat)))  # a decaying note on every beat: (n, S)
    phase = 2 * torch.pi * freqs.reshape(n, -1, 1).float() * t32  # (n, 9, S)
    out = (torch.sin(phase) * amps.repeat(3)[:, None]).sum(1).double() * env
    out += 0.01 * torch.randn(n, samples, generator=g, dtype=torch.float64)
    out /= out.abs().amax(dim=1, keepdim=True).clamp(min=1e-6)
    return (0.5 * out).float()


def tracks(n: int, samples: int, sample_rate: int, *, seed: int = 0) -> torch.Tensor:
    """(n, samples) float32 waveforms in [-1, 1]."""
    return _tracks(n, samples, sample_rate, seed).clone()


def two_views(n: int, samples: int, sample_rate: int, *, seed: int = 0) -> torch.Tensor:
    """(n, 2, samples): two random crops of each of ``n`` tracks 1.5 × ``samples`` long."""
    g = torch.Generator().manual_seed(seed + 1)
    long = tracks(n, samples * 3 // 2, sample_rate, seed=seed)
    starts = torch.randint(0, long.shape[1] - samples + 1, (n, 2), generator=g)
    return torch.stack(
        [torch.stack([long[i, s : s + samples] for s in starts[i].tolist()]) for i in range(n)]
    )


def batch_for(model, n: int, *, seed: int = 0) -> dict[str, torch.Tensor]:
    s = model.segment_samples
    if model.n_views == 2:
        audio = two_views(n, s, model.sample_rate, seed=seed)
    else:
        audio = tracks(n, s, model.sample_rate, seed=seed)
    return {"audio": audio, "index": torch.arange(n)}
