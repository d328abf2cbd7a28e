"""Pieces shared by the encoders: the SimpleViT transformer, sin-cos positional embeddings,
input checks, the ``use_fused`` switch and the embedding/pooling plumbing.

Layer numbering, used by every model's ``embed(..., layer=k)``: ``k`` in ``[0, depth)`` is the
output of block ``k`` (0-based, negative counts from the end, Python style). The last block's
output is taken after the encoder's final LayerNorm, so ``layer=-1`` is what the default
embedding pools.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._backend import backend

Layer = int | str | None


# --------------------------------------------------------------------------- positional embedding
def posemb_sincos_2d(
    h: int, w: int, dim: int, temperature: float = 10000.0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Fixed 2-D sin-cos positional embedding of an ``h × w`` token grid: (h·w, dim).

    Row-major over the grid (token ``i·w + j`` sits at row ``i``, column ``j``), features
    ``[sin(x·ω), cos(x·ω), sin(y·ω), cos(y·ω)]`` with ``ω_k = temperature^(-k / (dim/4 - 1))`` —
    the layout of SimpleViT (lucidrains/vit-pytorch), which Myna uses.
    """
    if dim % 4 != 0:
        raise ValueError(f"dim: the sin-cos embedding needs a multiple of 4, got {dim}")
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    quarter = dim // 4
    omega = torch.arange(quarter, dtype=torch.float64) / max(quarter - 1, 1)
    omega = 1.0 / (temperature**omega)
    y = y.flatten()[:, None].double() * omega[None, :]
    x = x.flatten()[:, None].double() * omega[None, :]
    pe = torch.cat((x.sin(), x.cos(), y.sin(), y.cos()), dim=1)
    return pe.to(dtype)


# --------------------------------------------------------------------------- SimpleViT transformer
class Attention(nn.Module):
    """Pre-norm multi-head self-attention without biases (SimpleViT), through SDPA."""

    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.to_qkv(self.norm(x))  # (B, N, 3·H·Dh)
        q, k, v = qkv.view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # 3 × (B, H, N, Dh)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, Dh)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class FeedForward(nn.Module):
    """Pre-norm MLP: LN → Linear → GELU → Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, mlp_dim: int) -> None:
        super().__init__()
        self.attn = Attention(dim, heads, dim_head)
        self.ff = FeedForward(dim, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.ff(x)


class Transformer(nn.Module):
    """SimpleViT's encoder: ``depth`` pre-norm blocks and a final LayerNorm."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerBlock(dim, heads, dim_head, mlp_dim) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, layers: Sequence[int] | None = None):
        return run_blocks(self.layers, self.norm, x, layers)


def run_blocks(
    blocks: nn.ModuleList, norm: nn.Module, x: torch.Tensor, layers: Sequence[int] | None = None
) -> Any:
    """``norm(blocks(x))`` (B, N, D); with ``layers`` also the outputs of those blocks (the last
    block's after the final norm), as a list in the order asked: ``(out, [per-layer])``."""
    keep: dict[int, torch.Tensor] = {}
    want = set(layers or ())
    last = len(blocks) - 1
    for i, block in enumerate(blocks):
        x = block(x)
        if i in want and i != last:
            keep[i] = x
    x = norm(x)
    if layers is None:
        return x
    keep[last] = x
    return x, [keep[i] for i in layers]


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
