"""Encoder blocks (docs/design.md, "Models"): Conformer and Branchformer, each with an attention or a SummaryMixing
mixer, and their parts (rotary multi-head self-attention, convolutional gating MLP, Conformer
convolution module, macaron feed-forward).

Masks: every ``forward(x, mask=None)`` takes ``mask`` (B, T) bool, True = valid frame. Padding
cannot leak into valid frames: attention masks padded keys, SummaryMixing averages valid frames
only, and every depthwise convolution sees zeros at padded frames (so a valid frame's output is
the same whatever the padded frames hold and however much padding follows). Values a block
leaves at padded frames are not meaningful.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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
    "run_blocks",
]

_ROTARY = ("qk", "input", "none")


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


def _rename_legacy(state_dict: dict, prefix: str, renames: dict[str, str]) -> None:
    """Checkpoints written before a submodule was renamed: move ``prefix+old`` keys to
    ``prefix+new`` in place (only when no key already uses the new name)."""
    for old, new in renames.items():
        for key in [k for k in state_dict if k.startswith(prefix + old)]:
            target = prefix + new + key[len(prefix + old) :]
            if target not in state_dict:
                state_dict[target] = state_dict.pop(key)


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
    # 1 / base^(2i/d) in float32, written as HF / GPT-NeoX do so that the angles match theirs
    inv_freq = 1.0 / (base ** (torch.arange(0, d, 2, device=x.device).float() / d))
    angles = torch.arange(T, device=x.device, dtype=torch.float32)[:, None] * inv_freq  # (T, d/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, d)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    return x * cos + _rotate_half(x) * sin


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention`` — the one attention
    of the package (Conformer / Branchformer mixer and the SimpleViT encoder).

    ``forward(x (B, T, D), mask=None) -> (B, T, D)``: padded frames are masked as keys and their
    outputs are 0; a row with no valid frame outputs 0 (no NaN).

    Options:
      * ``rotary``: ``True`` / ``"qk"`` rotates q and k after their projection (RoFormer);
        ``"input"`` rotates the input, viewed as ``nhead`` heads, before the q / k projections
        and leaves v unrotated (HF ``Wav2Vec2ConformerSelfAttention``, MusicFM / MuQ);
        ``False`` / ``"none"``: no positions.
      * ``dim_head``: per-head width (default ``d_model // nhead``); the inner width
        ``nhead · dim_head`` may differ from ``d_model`` (SimpleViT).
      * ``bias``: biases on the projections (SimpleViT has none).
      * ``norm``: a pre-LayerNorm inside the module (SimpleViT's layout), else none.
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dropout: float = 0.0,
        rotary: bool | str = True,
        *,
        dim_head: int | None = None,
        bias: bool = True,
        norm: bool = False,
    ):
        super().__init__()
        d_model = check_int("d_model", d_model, min=1)
        nhead = check_int("nhead", nhead, min=1)
        if dim_head is None:
            if d_model % nhead:
                raise ValueError(f"d_model: {d_model} is not divisible by nhead={nhead}")
            dim_head = d_model // nhead
        dim_head = check_int("dim_head", dim_head, min=1)
        if rotary is True:
            rotary = "qk"
        elif rotary is False or rotary is None:
            rotary = "none"
        check_choice("rotary", rotary, _ROTARY)
        if rotary != "none" and dim_head % 2:
            raise ValueError(f"nhead: rotary needs an even head dim, got {dim_head}")
        if rotary == "input" and nhead * dim_head != d_model:
            raise ValueError(
                f"dim_head: rotary='input' rotates the input as heads, so nhead·dim_head must be "
                f"d_model={d_model}, got {nhead}·{dim_head}"
            )
        self.d_model, self.nhead, self.dim_head, self.rotary = d_model, nhead, dim_head, rotary
        self.dropout = _check_dropout(dropout)
        inner = nhead * dim_head
        self.norm = nn.LayerNorm(d_model) if norm else None
        self.qkv = nn.Linear(d_model, 3 * inner, bias=bias)
        self.out_proj = nn.Linear(inner, d_model, bias=bias)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, nhead={self.nhead}, dim_head={self.dim_head}, "
            f"rotary={self.rotary!r}"
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # muse_fast < 0.2 SimpleViT attention named its projections to_qkv / to_out
        _rename_legacy(state_dict, prefix, {"to_qkv.": "qkv.", "to_out.": "out_proj."})
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _qkv(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) → (3, B, H, T, Dh)."""
        B, T, _ = x.shape
        H, Dh = self.nhead, self.dim_head
        if self.rotary == "input":
            # q, k from the rotated input, v from the input: one matmul for q and k
            xr = apply_rotary(x.view(B, T, H, Dh).transpose(1, 2))  # (B, H, T, Dh)
            xr = xr.transpose(1, 2).reshape(B, T, H * Dh)
            w, b = self.qkv.weight, self.qkv.bias
            inner = H * Dh
            qk = F.linear(xr, w[: 2 * inner], None if b is None else b[: 2 * inner])
            v = F.linear(x, w[2 * inner :], None if b is None else b[2 * inner :])
            qkv = torch.cat([qk, v], dim=-1)  # (B, T, 3·H·Dh)
            return qkv.view(B, T, 3, H, Dh).permute(2, 0, 3, 1, 4)
        qkv = self.qkv(x).view(B, T, 3, H, Dh).permute(2, 0, 3, 1, 4)  # (3, B, H, T, Dh)
        if self.rotary == "qk":
            q, k, v = qkv.unbind(0)
            return torch.stack([apply_rotary(q), apply_rotary(k), v])
        return qkv

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        if self.norm is not None:
            x = self.norm(x)
        q, k, v = self._qkv(x).unbind(0)  # (B, H, T, Dh) each
        attn_mask = None
        if mask is not None:
            # rows with no valid key attend everywhere (finite garbage, zeroed below) not NaN
            keys = mask | ~mask.any(dim=1, keepdim=True)
            attn_mask = keys[:, None, None, :]  # (B, 1, 1, T)
        o = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        o = self.out_proj(o.transpose(1, 2).reshape(B, T, -1))  # (B, T, D)
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
        h = F.gelu(self.channel_proj1(x))  # (B, T, C)
        a, g = h.chunk(2, dim=-1)  # (B, T, C/2) each
        g = _zero_padded(self.norm(g), mask)
        g = self.conv(g.transpose(1, 2)).transpose(1, 2)  # depthwise over time
        return self.channel_proj2(self.drop(a * g))


class ConformerConvModule(nn.Module):
    """Conformer convolution module (Gulati et al.; SpeechBrain ``ConvolutionModule``).

    LayerNorm → pointwise (Linear d → 2d) → GLU → depthwise Conv1d (kernel ``kernel_size``) →
    norm → Swish → pointwise (Linear d → d) → dropout. Padded frames are zeroed before the conv.

    ``norm="layer"`` (default): a per-frame LayerNorm after the depthwise conv (SpeechBrain),
    which never mixes frames; ``norm="batch"``: BatchNorm1d over (batch, time) as in the paper
    and HF ``Wav2Vec2ConformerConvolutionModule`` (MusicFM / MuQ) — its batch statistics include
    padded frames, so use it with unpadded batches. ``bias=False`` drops the pointwise and
    depthwise biases (HF's layout).
    """

    def __init__(
        self,
        d_model: int,
        kernel_size: int = 31,
        dropout: float = 0.0,
        *,
        norm: str = "layer",
        bias: bool = True,
    ):
        super().__init__()
        d_model = check_int("d_model", d_model, min=1)
        k = _check_kernel(kernel_size)
        check_choice("norm", norm, ("layer", "batch"))
        self.d_model, self.kernel_size, self.norm_type = d_model, k, norm
        self.norm_in = nn.LayerNorm(d_model)
        self.pointwise1 = nn.Linear(d_model, 2 * d_model, bias=bias)
        self.depthwise = nn.Conv1d(d_model, d_model, k, padding=k // 2, groups=d_model, bias=bias)
        self.norm_conv = nn.LayerNorm(d_model) if norm == "layer" else nn.BatchNorm1d(d_model)
        self.pointwise2 = nn.Linear(d_model, d_model, bias=bias)
        self.drop = nn.Dropout(_check_dropout(dropout))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = F.glu(self.pointwise1(self.norm_in(x)), dim=-1)  # (B, T, D)
        h = _zero_padded(h, mask)
        h = self.depthwise(h.transpose(1, 2))  # (B, D, T)
        if self.norm_type == "batch":
            h = self.norm_conv(h).transpose(1, 2)
        else:
            h = self.norm_conv(h.transpose(1, 2))
        return self.drop(self.pointwise2(F.silu(h)))


_ACTIVATIONS = {"silu": nn.SiLU, "gelu": nn.GELU}


class FeedForward(nn.Module):
    """Pre-norm feed-forward — the one MLP of the package: LayerNorm → Linear(d → ffn_dim) →
    activation → dropout → Linear → dropout. ``activation="silu"`` (Swish: Conformer) or
    ``"gelu"`` (SimpleViT / Myna)."""

    def __init__(
        self, d_model: int, ffn_dim: int, dropout: float = 0.0, *, activation: str = "silu"
    ):
        super().__init__()
        d_model = check_int("d_model", d_model, min=1)
        ffn_dim = check_int("ffn_dim", ffn_dim, min=1)
        check_choice("activation", activation, tuple(_ACTIVATIONS))
        p = _check_dropout(dropout)
        self.net = nn.Sequential(
            nn.LayerNorm(d_model),
            nn.Linear(d_model, ffn_dim),
            _ACTIVATIONS[activation](),
            nn.Dropout(p),
            nn.Linear(ffn_dim, d_model),
            nn.Dropout(p),
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # muse_fast < 0.2 SimpleViT MLP had no dropout: its second Linear was net.3 (a Dropout,
        # without parameters, now)
        _rename_legacy(state_dict, prefix, {"net.3.": "net.4."})
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

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
    """Conformer block (Gulati et al.), pre-norm macaron form (docs/design.md, "Models")::

        x = x + ½·FFN(x)
        x = x + dropout(mixer(LN(x), mask))
        x = x + ConvModule(x, mask)
        x = LN(x + ½·FFN(x))

    ``mixer="attention"``: :class:`MultiHeadSelfAttention` (rotary, ``nhead`` heads);
    ``mixer="summary_mixing"``: :class:`~muse_fast.nn.SummaryMixing` with ``nhead`` passed on as
    its number of heads (as SpeechBrain does; SpeechBrain's SummaryMixing recipes use 1).
    ``mixer_kwargs`` go to the mixer's constructor (e.g. ``mode="lite"``, ``rotary="input"``);
    the mixer's ``dropout`` defaults to the block's. ``conv_norm`` / ``conv_bias``: the conv
    module's ``norm`` / ``bias`` (``"batch"`` / ``False`` with ``rotary="input"`` is HF's
    ``Wav2Vec2ConformerEncoderLayer``, MusicFM's block).

    Inputs are checked here, at the block's entry, not again in its parts.
    """

    def __init__(
        self,
        d_model: int,
        nhead: int,
        ffn_dim: int,
        kernel_size: int = 31,
        dropout: float = 0.0,
        mixer: str = "attention",
        *,
        conv_norm: str = "layer",
        conv_bias: bool = True,
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
        self.conv = ConformerConvModule(d_model, kernel_size, p, norm=conv_norm, bias=conv_bias)
        self.ffn2 = FeedForward(d_model, ffn_dim, p)
        self.norm_out = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        _check_input(x, mask, self.d_model)
        x = x + 0.5 * self.ffn1(x)
        x = x + self.drop(self.mixer(self.norm_mixer(x), mask))
        x = x + self.conv(x, mask)
        return self.norm_out(x + 0.5 * self.ffn2(x))


class BranchformerBlock(nn.Module):
    """Branchformer block (Peng et al. 2022; docs/design.md, "Models")::

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
