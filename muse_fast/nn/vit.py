"""The SimpleViT encoder (lucidrains/vit-pytorch ``simple_vit.Transformer``; Myna, ViT-1D):
``depth`` pre-norm blocks ``x + Attn(x)``, ``x + MLP(x)`` and a final LayerNorm.

Built from the package's one attention and one MLP (:mod:`muse_fast.nn.blocks`):
:class:`~muse_fast.nn.MultiHeadSelfAttention` with its own pre-LayerNorm, no biases and no
positions (SimpleViT adds a fixed 2-D sin-cos embedding to the tokens, :func:`posemb_sincos_2d`),
and :class:`~muse_fast.nn.FeedForward` with GELU. Parameter names per block: ``attn.norm``,
``attn.qkv``, ``attn.out_proj``, ``ff.net.0`` (LN), ``ff.net.1``, ``ff.net.4`` (Linears).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .blocks import FeedForward, MultiHeadSelfAttention, run_blocks

__all__ = ["ViTBlock", "ViTEncoder", "posemb_sincos_2d"]


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


class ViTBlock(nn.Module):
    """``x + Attn(LN(x))`` then ``x + MLP(LN(x))`` (the LayerNorms inside the two modules)."""

    def __init__(self, dim: int, heads: int, dim_head: int, mlp_dim: int) -> None:
        super().__init__()
        self.attn = MultiHeadSelfAttention(
            dim, heads, rotary=False, dim_head=dim_head, bias=False, norm=True
        )
        self.ff = FeedForward(dim, mlp_dim, activation="gelu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.ff(x)


class ViTEncoder(nn.Module):
    """SimpleViT's encoder: ``depth`` :class:`ViTBlock` and a final LayerNorm.

    ``forward(x (B, N, dim), layers=None)`` → (B, N, dim), or ``(out, [outputs of layers])``
    (:func:`~muse_fast.nn.run_blocks`)."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(ViTBlock(dim, heads, dim_head, mlp_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, layers: Sequence[int] | None = None) -> Any:
        return run_blocks(self.layers, self.norm, x, layers)
