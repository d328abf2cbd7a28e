"""ViT-1D (Kong, Meseguer-Brocal, Lostanlen, Lagrange & Hennequin, ISMIR 2025): a small vision
transformer on one-dimensional (128 × 1) mel patches, trained with NT-Xent on its class token.

* Patches: one token per mel frame — ``Conv1d(128 → 192, kernel 1)`` over frames.
* Class token (position 0): a learnable vector plus the mean of the sequence tokens.
* Fixed 2-D sinusoidal positional encoding over the 1 × (frames + 1) token row (SimpleViT's
  layout, :func:`posemb_sincos_2d`), added to every token including the class token.
* 12 pre-norm blocks, 3 heads of 64, dim 192, MLP 768 (4 × dim), a final LayerNorm.
* Loss: NT-Xent (τ = 0.1) between the class tokens of two 4 s segments of the same track
  (no projection head). Segments: the ``myna`` mel preset (16 kHz, hop 512), 64 000 samples →
  ``1 + 64000 // 512 = 126`` frames, 128 × 126.
* Embeddings: ``pooling="cls"`` (class token), ``"mean"`` (mean of all tokens, class token
  included — better for global tasks in the paper) and ``embed_frames`` (sequence tokens, one per
  mel frame, for local tasks such as beats and chords).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import nn as mnn
from . import _common as C

__all__ = ["VIT1D_SIZES", "ViT1D", "ViT1DConfig"]

VIT1D_SIZES: dict[str, dict[str, int]] = {
    "base": dict(dim=192, depth=12, heads=3, dim_head=64, mlp_dim=768),
    "tiny": dict(dim=64, depth=2, heads=2, dim_head=32, mlp_dim=128),
}


@dataclass
class ViT1DConfig:
    size: str = "base"
    dim: int = 192
    depth: int = 12
    heads: int = 3
    dim_head: int = 64
    mlp_dim: int = 768
    n_mels: int = 128
    n_frames: int = 126  # frames per training segment
    sample_rate: int = 16000
    segment_samples: int = 64000  # 4 s → 1 + 64000 // 512 = 126 frames
    temperature: float = 0.1
    pooling: str = "cls"  # default embedding: "cls" | "mean" (all tokens)
    use_fused: bool = True
    hop_length: int = 512  # mel geometry (``myna`` preset), passed to the model's mel
    n_fft: int = 2048

    def __post_init__(self) -> None:
        if self.pooling not in ("cls", "mean"):
            raise ValueError(f"pooling: expected 'cls' or 'mean', got {self.pooling!r}")
        if self.dim % 4:
            raise ValueError(f"dim: the sin-cos embedding needs a multiple of 4, got {self.dim}")
        frames = 1 + self.segment_samples // self.hop_length
        if frames < self.n_frames:
            raise ValueError(
                f"segment_samples: {self.segment_samples} samples give {frames} mel frames, "
                f"fewer than n_frames={self.n_frames}"
            )


class ViT1D(C.EncoderModel):
    """ViT-1D encoder + NT-Xent on the class token. See the module docstring."""

    n_views = 2

    def __init__(self, config: ViT1DConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or ViT1DConfig()
        self.sample_rate = cfg.sample_rate
        self.segment_samples = cfg.segment_samples
        self.mel = mnn.MelSpectrogram(
            "myna", n_mels=cfg.n_mels, hop_length=cfg.hop_length, n_fft=cfg.n_fft
        )
        self.frame_hop = self.mel.hop_length
        self.embed_dim = cfg.dim
        self.to_patch = nn.Conv1d(cfg.n_mels, cfg.dim, kernel_size=1)  # 128 × 1 patches
        self.cls_token = nn.Parameter(torch.randn(cfg.dim) * 0.02)
        self.transformer = C.Transformer(cfg.dim, cfg.depth, cfg.heads, cfg.dim_head, cfg.mlp_dim)
        self.criterion = mnn.NTXentLoss(temperature=cfg.temperature)
        self.register_buffer(
            "pos", C.posemb_sincos_2d(1, cfg.n_frames + 1, cfg.dim), persistent=False
        )

    def _encode(self, spec: torch.Tensor, layers: list[int] | None = None) -> Any:
        """spec (B, n_mels, T) → tokens (B, 1 + T, D), class token first."""
        x = self.to_patch(spec).transpose(1, 2)  # (B, T, D)
        cls = self.cls_token.to(x.dtype) + x.mean(dim=1, keepdim=True)  # (B, 1, D)
        x = torch.cat([cls, x], dim=1)
        n = x.shape[1]
        pos = self.pos if n == self.pos.shape[0] else C.posemb_sincos_2d(1, n, x.shape[-1])
        x = x + pos.to(device=x.device, dtype=x.dtype)
        return self.transformer(x, layers)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """NT-Xent between the class tokens of the two views; ``batch["audio"]`` (B, 2, samples)."""
        cfg = self.config
        views, b = C.two_view_batch(batch, cfg.segment_samples)  # (2B, S)
        with self._backend():
            # class tokens (2B, D), bf16 under autocast: the loss kernels accumulate in fp32
            z = self._encode(self.spectrogram(views, cfg.n_frames))[:, 0]
            return self.criterion(z[:b], z[b:]).float()  # the scalar in fp32

    forward = loss

    def _hidden(self, audio, layer, sample_rate):
        C.check_sample_rate(sample_rate, self.sample_rate)
        # more than n_fft // 2 samples for the reflect padding
        C.check_audio("audio", audio, ndim=2, min_samples=self.mel.n_fft // 2 + 1)
        layers, as_list = C.resolve_layers(layer, self.config.depth)
        with self._backend():
            _, outs = self._encode(self.spectrogram(audio), layers)
        return outs, as_list

    def embed(
        self,
        audio: torch.Tensor,
        layer: C.Layer = None,
        *,
        pooling: str | None = None,
        sample_rate: int | None = None,
    ) -> torch.Tensor | list[torch.Tensor]:
        """(B, samples) → (B, D): the class token (``pooling="cls"``) or the mean of all tokens
        (``"mean"``) of the chosen layer (default ``config.pooling``, last layer)."""
        pooling = pooling or self.config.pooling
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling: expected 'cls' or 'mean', got {pooling!r}")
        outs, as_list = self._hidden(audio, layer, sample_rate)
        pooled = [o[:, 0] if pooling == "cls" else o.mean(dim=1) for o in outs]
        return pooled if as_list else pooled[0]

    def embed_frames(
        self, audio: torch.Tensor, layer: C.Layer = None, *, sample_rate: int | None = None
    ) -> torch.Tensor | list[torch.Tensor]:
        """Sequence tokens (B, T, D), one per mel frame (``frame_hop`` samples, 32 ms by default)."""
        outs, as_list = self._hidden(audio, layer, sample_rate)
        seq = [o[:, 1:] for o in outs]
        return seq if as_list else seq[0]


def vit1d_config(size: str = "base", **overrides: Any) -> ViT1DConfig:
    if size not in VIT1D_SIZES:
        raise ValueError(f"size: expected one of {list(VIT1D_SIZES)} for ViT-1D, got {size!r}")
    base = dict(size=size, **VIT1D_SIZES[size])
    base.update(overrides)
    return ViT1DConfig(**base)
