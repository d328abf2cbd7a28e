"""``SummaryMixing``, the linear-time replacement of self-attention (docs/design.md).

Parcollet et al., "SummaryMixing: a linear-complexity alternative to self-attention" (2023);
public implementation SpeechBrain ``speechbrain/nnet/summary_mixing.py``. The mixing step runs
through :func:`muse_fast.ops.summary_mixing` (split combiner weight: the summary is projected
once per utterance); ``with muse_fast.backend("reference"):`` runs the same module, with the same
weights, the public way (repeat the summary T times + concat).

The Branchformer / Conformer blocks that use it live in :mod:`muse_fast.nn.blocks` and are
re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..ops._checks import FLOATING, check_choice, check_float, check_int, check_tensor
from ..ops.summary_mixing import masked_mean, summary_mixing

__all__ = ["SummaryMixing"]


def _dims(name: str, v: object) -> tuple[int, ...]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = (v,)
    if not isinstance(v, Sequence) or isinstance(v, str):
        raise TypeError(f"{name}: expected a sequence of ints, got {type(v).__name__}")
    return tuple(check_int(f"{name}[{i}]", d, min=1) for i, d in enumerate(v))


class _BlockDiagLinear(nn.Module):
    """``nhead`` independent Linear maps, one per head: weight (h, in/h, out/h), bias (h, out/h).

    Acts on the (h, N, in/h) layout (heads first) so a stack of them needs no transposes; this is
    SpeechBrain's ``ParallelLinear`` (a block-diagonal Linear).
    """

    def __init__(self, in_features: int, out_features: int, nhead: int):
        super().__init__()
        self.nhead = nhead
        self.weight = nn.Parameter(torch.empty(nhead, in_features // nhead, out_features // nhead))
        self.bias = nn.Parameter(torch.zeros(nhead, out_features // nhead))
        bound = 1.0 / math.sqrt(in_features // nhead)  # nn.Linear's default, per head
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (h, N, i) -> (h, N, o)
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight)

    def extra_repr(self) -> str:
        h, i, o = self.weight.shape
        return f"nhead={h}, in_features={h * i}, out_features={h * o}"


class _HeadMLP(nn.Module):
    """Linear + GELU after every layer (the last included); block-diagonal when nhead > 1."""

    def __init__(self, in_dim: int, dims: Sequence[int], nhead: int):
        super().__init__()
        self.nhead = nhead
        sizes = [in_dim, *dims]
        if nhead == 1:
            self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(sizes[:-1], sizes[1:]))
            for lin in self.layers:
                nn.init.zeros_(lin.bias)
        else:
            self.layers = nn.ModuleList(
                _BlockDiagLinear(i, o, nhead) for i, o in zip(sizes[:-1], sizes[1:])
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.nhead == 1:
            for lin in self.layers:
                x = F.gelu(lin(x))
            return x
        B, T, D = x.shape
        h = self.nhead
        x = x.reshape(B * T, h, D // h).transpose(0, 1)  # (h, N, D/h)
        for lin in self.layers:
            x = F.gelu(lin(x))
        return x.transpose(0, 1).reshape(B, T, -1)  # (B, T, out)


class SummaryMixing(nn.Module):
    """SummaryMixing: ``y_t = GELU(W_c · dropout([f(x_t) ; s̄]) + b_c)``, 0 at padding.

    ``f`` (local) and ``s`` (summary) are MLPs of Linear layers with a GELU after every layer
    (block-diagonal per head when ``nhead > 1``); ``s̄ = Σ_t m_t s(x_t) / Σ_t m_t`` is the mean of
    ``s`` over the valid frames. All biases start at zero.

    Args:
        d_model: input and output width D.
        nhead: heads of the local / summary MLPs (``mixing``, ``lite``): each layer is ``nhead``
            independent Linear maps on ``1/nhead`` of the features (SpeechBrain's
            ``ParallelLinear``); every width must be divisible by ``nhead``. ``fast`` has one
            dense projection and ignores ``nhead`` (as SpeechBrain does).
        local_proj_hid_dim: hidden widths of ``f`` (an int or a sequence; ``()`` = one layer).
        local_proj_out_dim: output width Dl of ``f`` (default ``d_model``).
        summary_hid_dim: hidden widths of ``s``.
        summary_out_dim: output width Ds of ``s`` (default ``d_model``; must be ``d_model`` in
            ``lite``).
        mode: ``"mixing"`` (above); ``"lite"`` — SpeechBrain's *SummaryMixing-lite*: no local
            branch and no combiner, ``y_t = s̄`` at every valid frame (0 at padded ones);
            ``"fast"`` — SpeechBrain's *SummaryMixing-fast*: one Linear ``D → 2·Dl`` + GELU whose
            halves are ``f`` and ``s``, then the combiner ``2·Dl → D``.
        dropout: dropout on ``[f ; s̄]`` before the combiner (``f`` per frame, ``s̄`` once per
            utterance; see :mod:`muse_fast.ops.summary_mixing`). Unused in ``lite``.

    ``forward(x (B, T, D), mask=None (B, T) bool, True = valid) -> (B, T, D)``. Padded frames
    output 0 and cannot influence valid ones; a row with no valid frame outputs 0.

    Differences from SpeechBrain's module, on purpose: output width is always ``d_model``; no
    LayerNorm on ``f`` and ``s̄`` (the paper has none; newer SpeechBrain versions add
    ``local_norm``/``summary_norm``); dropout placement as above; outputs are zeroed at padded
    frames; a row with no valid frame gives 0 instead of NaN.
    """

    def __init__(
        self,
        d_model: int,
        nhead: int = 1,
        local_proj_hid_dim: Sequence[int] | int = (512,),
        local_proj_out_dim: int | None = None,
        summary_hid_dim: Sequence[int] | int = (512,),
        summary_out_dim: int | None = None,
        mode: str = "mixing",
        dropout: float = 0.0,
    ):
        super().__init__()
        d_model = check_int("d_model", d_model, min=1)
        nhead = check_int("nhead", nhead, min=1)
        mode = check_choice("mode", mode, ("mixing", "lite", "fast"))
        p = check_float("dropout", dropout, min=0.0)
        if p >= 1.0:
            raise ValueError(f"dropout: expected a float in [0, 1), got {p}")
        local_hid = _dims("local_proj_hid_dim", local_proj_hid_dim)
        summary_hid = _dims("summary_hid_dim", summary_hid_dim)
        d_local = d_model if local_proj_out_dim is None else local_proj_out_dim
        d_local = check_int("local_proj_out_dim", d_local, min=1)
        d_summary = d_model if summary_out_dim is None else summary_out_dim
        d_summary = check_int("summary_out_dim", d_summary, min=1)

        self.d_model, self.nhead, self.mode, self.dropout = d_model, nhead, mode, p
        self.d_local, self.d_summary = d_local, d_summary

        if mode != "fast" and nhead > 1:
            named = [("d_model", d_model), ("summary_out_dim", d_summary)]
            named += [(f"summary_hid_dim[{i}]", d) for i, d in enumerate(summary_hid)]
            if mode == "mixing":
                named += [("local_proj_out_dim", d_local)]
                named += [(f"local_proj_hid_dim[{i}]", d) for i, d in enumerate(local_hid)]
            for name, d in named:
                if d % nhead:
                    raise ValueError(f"{name}: {d} is not divisible by nhead={nhead}")

        if mode == "lite":
            if d_summary != d_model:
                raise ValueError(
                    f"summary_out_dim: mode='lite' outputs s̄ itself, so it must equal "
                    f"d_model={d_model}, got {d_summary}"
                )
            self.summary_proj = _HeadMLP(d_model, [*summary_hid, d_summary], nhead)
        elif mode == "mixing":
            self.local_proj = _HeadMLP(d_model, [*local_hid, d_local], nhead)
            self.summary_proj = _HeadMLP(d_model, [*summary_hid, d_summary], nhead)
            self.summary_local_merging = nn.Linear(d_local + d_summary, d_model)
        else:  # fast
            self.global_proj = nn.Linear(d_model, 2 * d_local)
            nn.init.zeros_(self.global_proj.bias)
            self.summary_local_merging = nn.Linear(2 * d_local, d_model)
        if mode != "lite":
            nn.init.zeros_(self.summary_local_merging.bias)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, nhead={self.nhead}, mode={self.mode!r}, "
            f"d_local={self.d_local}, d_summary={self.d_summary}, dropout={self.dropout}"
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        check_tensor("x", x, ndim=3, dtypes=FLOATING)
        B, T, D = x.shape
        if D != self.d_model:
            raise ValueError(f"x: expected last dim d_model={self.d_model}, got shape {(B, T, D)}")
        if mask is not None:
            check_tensor("mask", mask, dtypes=(torch.bool,), shape=(B, T))
        if self.mode == "lite":
            s = self.summary_proj(x)
            sbar = masked_mean(s, mask)  # (B, D)
            y = sbar.unsqueeze(1).expand(B, T, D)
            return y if mask is None else y.masked_fill(~mask.unsqueeze(-1), 0.0)
        if self.mode == "mixing":
            local, summary = self.local_proj(x), self.summary_proj(x)
        else:
            g = F.gelu(self.global_proj(x))
            local, summary = g.split(self.d_local, dim=-1)  # views; the op takes strides
        lin = self.summary_local_merging
        return summary_mixing(
            local,
            summary,
            lin.weight,
            lin.bias,
            mask,
            dropout=self.dropout,
            training=self.training,
        )


def __getattr__(name: str):
    # the blocks used to be re-exported here; they live in muse_fast.nn.blocks (which imports
    # this module), so old imports resolve lazily instead of through an import cycle
    from . import blocks

    if name in blocks.__all__:
        return getattr(blocks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
