"""Helpers for the training tests: config overrides for tiny CPU runs, and a tiny stand-in with
the muse_fast.models interface (sample_rate, segment_samples, n_views, loss(batch),
embed(audio)) for loop tests that must not depend on a real model."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class TinyContrastive(torch.nn.Module):
    def __init__(self, sample_rate=8000, segment_samples=2048, n_views=2, dim=16, frame=128):
        super().__init__()
        self.sample_rate = sample_rate
        self.segment_samples = segment_samples
        self.n_views = n_views
        self.frame = frame
        self.proj = torch.nn.Linear(frame, dim)
        self.mlp = torch.nn.Sequential(
            torch.nn.GELU(), torch.nn.Dropout(0.1), torch.nn.Linear(dim, dim)
        )
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def _encode(self, audio: torch.Tensor) -> torch.Tensor:  # (B, samples) -> (B, T, dim)
        b = audio.shape[0]
        frames = audio[:, : audio.shape[1] // self.frame * self.frame].reshape(b, -1, self.frame)
        return self.mlp(self.proj(frames))

    def embed(self, audio: torch.Tensor, layer=None) -> torch.Tensor:
        return self._encode(audio).mean(1)

    def loss(self, batch: dict) -> torch.Tensor:
        audio = batch["audio"]
        self.calls += 1
        if audio.dim() == 2:
            audio = audio[:, None]
        views = []
        for v in range(audio.shape[1]):
            h = self._encode(audio[:, v])
            keep = torch.rand(h.shape[:2], device=h.device) < 0.5  # global RNG: tests resume
            views.append((h * keep[..., None]).sum(1) / keep.sum(1, keepdim=True).clamp(min=1))
        if len(views) == 1:
            return views[0].pow(2).mean()
        z = F.normalize(torch.cat(views), dim=-1)
        n = audio.shape[0]
        sim = z @ z.t() / 0.1
        sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
        return F.cross_entropy(sim, target)


def tiny_overrides(out, **kw):
    base = {
        "out": str(out),
        "model.size": "tiny",
        "batch_size": 4,
        "log_every": 1,
        "num_workers": 0,
        "progress": False,
        "tensorboard": False,
        "data.synthetic_tracks": 16,
        "data.synthetic_duration_s": 4.0,
        "device": "cpu",
    }
    base.update(kw)
    return list(base.items())
