"""Encoder blocks (SPEC §2): Conformer and Branchformer, each with an attention or a SummaryMixing
mixer, and their parts (rotary multi-head self-attention, convolutional gating MLP, Conformer
convolution module, macaron feed-forward).

Masks: every ``forward(x, mask=None)`` takes ``mask`` (B, T) bool, True = valid frame. Padding
cannot leak into valid frames: attention masks padded keys, SummaryMixing averages valid frames
only, and every depthwise convolution sees zeros at padded frames (so a valid frame's output is
the same whatever the padded frames hold and however much padding follows). Values a block
leaves at padded frames are not meaningful.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops._checks import FLOATING, check_choice, check_float, check_int, check_tensor
from .summary_mixing import SummaryMixing

__all__ = [
    "BranchformerBlock",
    "ConformerBlock",
    "ConformerConvModule",
    "ConvolutionalGatingMLP",
    "FeedForward",
    "MultiHeadSelfAttention",
    "apply_rotary",
]


def _check_input(x: object, mask: object, d_model: int) -> None:
    check_tensor("x", x, ndim=3, dtypes=FLOATING)
    B, T, D = x.shape
    if D != d_model:
        raise ValueError(f"x: expected last dim d_model={d_model}, got shape {(B, T, D)}")
    if mask is not None:
        check_tensor("mask", mask, dtypes=(torch.bool,), shape=(B, T))


def _check_dropout(p: object) -> float:
    p = check_float("dropout", p, min=0.0)
    if p >= 1.0:
        raise ValueError(f"dropout: expected a float in [0, 1), got {p}")
    return p


def _zero_padded(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x if mask is None else x.masked_fill(~mask.unsqueeze(-1), 0.0)


# ----------------------------------------------------------------------------------------------
# attention
# ----------------------------------------------------------------------------------------------


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding (Su et al., RoFormer), rotate-half convention.

    ``x`` (..., T, d) with even d; position of frame t is t. Channel pair (i, i + d/2) is rotated
    by the angle ``t · base^(-2i/d)``: ``x·cos + rotate_half(x)·sin`` with
    ``rotate_half([x1, x2]) = [-x2, x1]`` (GPT-NeoX / LLaMA layout). Angles in float32.
    """
    T, d = x.shape[-2], x.shape[-1]
    if d % 2:
        raise ValueError(f"x: rotary embeddings need an even last dim, got {d}")
    inv_freq = base ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)
    angles = torch.arange(T, device=x.device, dtype=torch.float32)[:, None] * inv_freq  # (T, d/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, d)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    return x * cos + _rotate_half(x) * sin


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``, rotary positions.

    ``forward(x (B, T, D), mask=None) -> (B, T, D)``: padded frames are masked as keys and their
    outputs are 0; a row with no valid frame outputs 0 (no NaN).
    """

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0, rotary: bool = True):
        super().__init__()
        d_model = check_int("d_model", d_model, min=1)
        nhead = check_int("nhead", nhead, min=1)
        if d_model % nhead:
            raise ValueError(f"d_model: {d_model} is not divisible by nhead={nhead}")
        if rotary and (d_model // nhead) % 2:
            raise ValueError(f"nhead: rotary needs an even head dim, got {d_model // nhead}")
        self.d_model, self.nhead, self.rotary = d_model, nhead, bool(rotary)
        self.dropout = _check_dropout(dropout)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, nhead={self.nhead}, rotary={self.rotary}"

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        _check_input(x, mask, self.d_model)
        B, T, D = x.shape
        H = self.nhead
        qkv = self.qkv(x).reshape(B, T, 3, H, D // H).permute(2, 0, 3, 1, 4)  # (3, B, H, T, hd)
        q, k, v = qkv.unbind(0)
        if self.rotary:
            q, k = apply_rotary(q), apply_rotary(k)
        attn_mask = None
        if mask is not None:
            # rows with no valid key attend everywhere (finite garbage, zeroed below) not NaN
            keys = mask | ~mask.any(dim=1, keepdim=True)
            attn_mask = keys[:, None, None, :]  # (B, 1, 1, T)
        o = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        o = self.out_proj(o.transpose(1, 2).reshape(B, T, D))
        return _zero_padded(o, mask)


# ----------------------------------------------------------------------------------------------
# convolutional parts
# ----------------------------------------------------------------------------------------------


def _check_kernel(kernel_size: object) -> int:
    k = check_int("kernel_size", kernel_size, min=1)
    if k % 2 == 0:
        raise ValueError(f"kernel_size: expected an odd size ('same' padding), got {k}")
    return k


class ConvolutionalGatingMLP(nn.Module):
    """Branchformer's cgMLP (Sakuma et al.; ESPnet ``ConvolutionalGatingMLP``).

    ``Linear(d → cgmlp_dim)`` → GELU → convolutional spatial gating unit (split the channels in
    halves ``a, g``; ``g ← DepthwiseConv1d_k(LayerNorm(g))`` over time; ``a · g``; dropout) →
    ``Linear(cgmlp_dim/2 → d)``. As in ESPnet the depthwise conv starts at weight ~ N(0, 1e-6),
    bias 1 (the gate starts open). Padded frames are zeroed before the conv.
    """

    def __init__(self, d_model: int, cgmlp_dim: int, kernel_size: int = 31, dropout: float = 0.0):
        super().__init__()
        d_model = check_int("d_model", d_model, min=1)
        cgmlp_dim = check_int("cgmlp_dim", cgmlp_dim, min=2)
        if cgmlp_dim % 2:
            raise ValueError(
                f"cgmlp_dim: expected an even width (split in halves), got {cgmlp_dim}"
            )
        k = _check_kernel(kernel_size)
        self.d_model, self.cgmlp_dim, self.kernel_size = d_model, cgmlp_dim, k
        half = cgmlp_dim // 2
        self.channel_proj1 = nn.Linear(d_model, cgmlp_dim)
        self.norm = nn.LayerNorm(half)
        self.conv = nn.Conv1d(half, half, k, padding=k // 2, groups=half)
        nn.init.normal_(self.conv.weight, std=1e-6)
        nn.init.ones_(self.conv.bias)
        self.channel_proj2 = nn.Linear(half, d_model)
        self.drop = nn.Dropout(_check_dropout(dropout))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        _check_input(x, mask, self.d_model)
        h = F.gelu(self.channel_proj1(x))  # (B, T, C)
        a, g = h.chunk(2, dim=-1)  # (B, T, C/2) each
        g = _zero_padded(self.norm(g), mask)
        g = self.conv(g.transpose(1, 2)).transpose(1, 2)  # depthwise over time
        return self.channel_proj2(self.drop(a * g))


class ConformerConvModule(nn.Module):
    """Conformer convolution module (Gulati et al.; SpeechBrain ``ConvolutionModule``).

    LayerNorm → pointwise (Linear d → 2d) → GLU → depthwise Conv1d (kernel ``kernel_size``) →
    LayerNorm → Swish → pointwise (Linear d → d) → dropout. The normalisation after the depthwise
    conv is a per-frame LayerNorm (as in SpeechBrain) rather than the paper's BatchNorm: batch
    statistics would mix padded frames into valid ones. Padded frames are zeroed before the conv.
    """

    def __init__(self, d_model: int, kernel_size: int = 31, dropout: float = 0.0):
        super().__init__()
        d_model = check_int("d_model", d_model, min=1)
        k = _check_kernel(kernel_size)
        self.d_model, self.kernel_size = d_model, k
        self.norm_in = nn.LayerNorm(d_model)
        self.pointwise1 = nn.Linear(d_model, 2 * d_model)
        self.depthwise = nn.Conv1d(d_model, d_model, k, padding=k // 2, groups=d_model)
        self.norm_conv = nn.LayerNorm(d_model)
        self.pointwise2 = nn.Linear(d_model, d_model)
        self.drop = nn.Dropout(_check_dropout(dropout))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        _check_input(x, mask, self.d_model)
        h = F.glu(self.pointwise1(self.norm_in(x)), dim=-1)  # (B, T, D)
        h = _zero_padded(h, mask)
        h = self.depthwise(h.transpose(1, 2)).transpose(1, 2)
        h = F.silu(self.norm_conv(h))
        return self.drop(self.pointwise2(h))


class FeedForward(nn.Module):
    """Pre-norm feed-forward: LayerNorm → Linear(d → ffn_dim) → Swish → dropout → Linear → dropout."""

    def __init__(self, d_model: int, ffn_dim: int, dropout: float = 0.0):
        super().__init__()
        d_model = check_int("d_model", d_model, min=1)
        ffn_dim = check_int("ffn_dim", ffn_dim, min=1)
        p = _check_dropout(dropout)
        self.net = nn.Sequential(
            nn.LayerNorm(d_model),
            nn.Linear(d_model, ffn_dim),
            nn.SiLU(),
            nn.Dropout(p),
            nn.Linear(ffn_dim, d_model),
            nn.Dropout(p),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _make_mixer(
    mixer: str, d_model: int, nhead: int, dropout: float, mixer_kwargs: dict
) -> nn.Module:
    check_choice("mixer", mixer, ("attention", "summary_mixing"))
    kwargs = {"dropout": dropout, **mixer_kwargs}
    if mixer == "attention":
        return MultiHeadSelfAttention(d_model, nhead, **kwargs)
    return SummaryMixing(d_model, nhead, **kwargs)


# ----------------------------------------------------------------------------------------------
# blocks
# ----------------------------------------------------------------------------------------------


class ConformerBlock(nn.Module):
    """Conformer block (Gulati et al.), pre-norm macaron form (SPEC §2)::

        x = x + ½·FFN(x)
        x = x + dropout(mixer(LN(x), mask))
        x = x + ConvModule(x, mask)
        x = LN(x + ½·FFN(x))

    ``mixer="attention"``: :class:`MultiHeadSelfAttention` (rotary, ``nhead`` heads);
    ``mixer="summary_mixing"``: :class:`~muse_fast.nn.SummaryMixing` with ``nhead`` passed on as
    its number of heads (as SpeechBrain does; SpeechBrain's SummaryMixing recipes use 1).
    ``mixer_kwargs`` go to the mixer's constructor (e.g. ``mode="lite"``, ``rotary=False``);
    the mixer's ``dropout`` defaults to the block's.
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        ffn_dim: int,
        kernel_size: int = 31,
        dropout: float = 0.0,
        mixer: str = "attention",
        **mixer_kwargs,
    ):
        super().__init__()
        self.d_model = check_int("d_model", d_model, min=1)
        p = _check_dropout(dropout)
        self.mixer_type = mixer
        self.ffn1 = FeedForward(d_model, ffn_dim, p)
        self.norm_mixer = nn.LayerNorm(d_model)
        self.mixer = _make_mixer(mixer, d_model, nhead, p, mixer_kwargs)
        self.drop = nn.Dropout(p)
        self.conv = ConformerConvModule(d_model, kernel_size, p)
        self.ffn2 = FeedForward(d_model, ffn_dim, p)
        self.norm_out = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        _check_input(x, mask, self.d_model)
        x = x + 0.5 * self.ffn1(x)
        x = x + self.drop(self.mixer(self.norm_mixer(x), mask))
        x = x + self.conv(x, mask)
        return self.norm_out(x + 0.5 * self.ffn2(x))


class BranchformerBlock(nn.Module):
    """Branchformer block (Peng et al. 2022; SPEC §2)::

        x1 = dropout(mixer(LN₁(x), mask))              global branch
        x2 = dropout(cgMLP(LN₂(x), mask))              local branch (depthwise conv, kernel 31)
        x  = x + dropout(Linear_{2d → d}([x1 ; x2]))   concat merge

    ``cgmlp_dim`` defaults to ``6 · d_model`` (Linear d → 6d, gating, Linear 3d → d).
    ``mixer`` / ``nhead`` / ``mixer_kwargs`` as in :class:`ConformerBlock`.
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        cgmlp_dim: int | None = None,
        kernel_size: int = 31,
        dropout: float = 0.0,
        mixer: str = "attention",
        **mixer_kwargs,
    ):
        super().__init__()
        self.d_model = check_int("d_model", d_model, min=1)
        p = _check_dropout(dropout)
        self.mixer_type = mixer
        self.norm_mixer = nn.LayerNorm(d_model)
        self.mixer = _make_mixer(mixer, d_model, nhead, p, mixer_kwargs)
        self.norm_cgmlp = nn.LayerNorm(d_model)
        self.cgmlp = ConvolutionalGatingMLP(
            d_model, 6 * d_model if cgmlp_dim is None else cgmlp_dim, kernel_size, p
        )
        self.merge_proj = nn.Linear(2 * d_model, d_model)
        self.drop = nn.Dropout(p)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        _check_input(x, mask, self.d_model)
        x1 = self.drop(self.mixer(self.norm_mixer(x), mask))
        x2 = self.drop(self.cgmlp(self.norm_cgmlp(x), mask))
        return x + self.drop(self.merge_proj(torch.cat([x1, x2], dim=-1)))
