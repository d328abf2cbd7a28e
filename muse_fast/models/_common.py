"""Pieces shared by the encoders: input checks, the ``use_fused`` switch, the float32
``spectrogram`` and the embedding/pooling plumbing (the SimpleViT encoder is
:mod:`muse_fast.nn.vit`).

Layer numbering, used by every model's ``embed(..., layer=k)``: ``k`` in ``[0, depth)`` is the
output of block ``k`` (0-based, negative counts from the end, Python style). The last block's
output is taken after the encoder's final LayerNorm, so ``layer=-1`` is what the default
embedding pools.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import fields, replace
from typing import Any

import torch
from torch import nn

from .._backend import backend
from ..nn.blocks import run_blocks
from ..nn.vit import ViTBlock, ViTEncoder, posemb_sincos_2d

__all__ = ["EncoderModel", "Transformer", "TransformerBlock", "posemb_sincos_2d", "run_blocks"]

Layer = int | str | None


# The SimpleViT encoder lives in muse_fast.nn.vit; these names stay for the models' imports.
Transformer = ViTEncoder
TransformerBlock = ViTBlock


# --------------------------------------------------------------------------- checks
def check_sample_rate(sample_rate: int | None, expected: int) -> None:
    if sample_rate is not None and int(sample_rate) != expected:
        raise ValueError(
            f"sample_rate: this model takes {expected} Hz audio, got {sample_rate} Hz; resample "
            f"first (torchaudio.functional.resample(audio, {sample_rate}, {expected}))"
        )


def check_audio(
    name: str, audio: object, *, ndim: int, min_samples: int, n_views: int | None = None
) -> torch.Tensor:
    """``audio`` a floating tensor of ``ndim`` dims (``(B, samples)`` or ``(B, views, samples)``)
    with at least ``min_samples`` samples (and ``n_views`` views)."""
    if not isinstance(audio, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of audio, got {type(audio).__name__}")
    if not audio.is_floating_point():
        raise TypeError(f"{name}: expected floating-point audio, got dtype {audio.dtype}")
    layout = "(batch, samples)" if ndim == 2 else "(batch, views, samples)"
    if audio.dim() != ndim:
        hint = " (add a batch dimension: audio[None])" if audio.dim() == ndim - 1 else ""
        raise ValueError(f"{name}: expected shape {layout}, got {tuple(audio.shape)}{hint}")
    if n_views is not None and audio.shape[1] != n_views:
        raise ValueError(
            f"{name}: expected {n_views} views per item {layout}, got {audio.shape[1]} "
            f"(shape {tuple(audio.shape)})"
        )
    if audio.shape[0] == 0:
        raise ValueError(f"{name}: empty batch, shape {tuple(audio.shape)}")
    if audio.shape[-1] < min_samples:
        raise ValueError(
            f"{name}: expected at least {min_samples} samples, got {audio.shape[-1]} "
            f"(shape {tuple(audio.shape)})"
        )
    return audio


def get_audio(batch: object, *, name: str = "batch") -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    if not isinstance(batch, dict) or "audio" not in batch:
        raise TypeError(
            f"{name}: expected a dict with key 'audio' (and 'index'), got {batch!r:.80}"
        )
    return batch["audio"]


def two_view_batch(batch: object, segment_samples: int) -> tuple[torch.Tensor, int]:
    """Contrastive batch ``batch["audio"]`` (B, 2, samples) → both views stacked (2B, S) with
    S = ``segment_samples`` (views [0..B) then [B..2B)), and B."""
    audio = check_audio(
        "batch['audio']", get_audio(batch), ndim=3, min_samples=segment_samples, n_views=2
    )
    views = torch.cat([audio[:, 0], audio[:, 1]])[:, :segment_samples]  # (2B, S)
    return views, audio.shape[0]


def resolve_layers(layer: Layer, depth: int) -> tuple[list[int], bool]:
    """``layer`` → (block indices to keep, whether a list is returned)."""
    if layer is None:
        return [depth - 1], False
    if isinstance(layer, str):
        if layer != "all":
            raise ValueError(f"layer: expected None, an int or 'all', got {layer!r}")
        return list(range(depth)), True
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise TypeError(f"layer: expected None, an int or 'all', got {type(layer).__name__}")
    if not -depth <= layer < depth:
        raise ValueError(f"layer: expected an int in [{-depth}, {depth}), got {layer}")
    return [layer % depth], False


# --------------------------------------------------------------------------- base class
class EncoderModel(nn.Module):
    """Shared behaviour: ``config``, ``use_fused`` (eager references when False), sample-rate
    checks, ``num_parameters``."""

    config: Any
    sample_rate: int
    segment_samples: int
    n_views: int

    @contextlib.contextmanager
    def _backend(self) -> Iterator[None]:
        """Every op inside runs on its eager reference when ``config.use_fused`` is False."""
        if self.config.use_fused:
            yield
        else:
            with backend("reference"):
                yield

    def spectrogram(self, audio: torch.Tensor, frames: int | None = None) -> torch.Tensor:
        """(N, samples) → the model's mel (``self.mel``) in float32 (autocast off: the dB / log
        of a half-precision power spectrum loses the quiet bands), cropped to ``frames``."""
        with torch.autocast(audio.device.type, enabled=False):
            spec = self.mel(audio.float())
        return spec if frames is None else spec[..., :frames].contiguous()

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def apply_overrides(config: Any, overrides: dict[str, Any]) -> Any:
    names = {f.name for f in fields(config)}
    bad = sorted(set(overrides) - names)
    if bad:
        raise TypeError(
            f"{type(config).__name__}: unknown field(s) {bad}; fields are {sorted(names)}"
        )
    return replace(config, **overrides)
