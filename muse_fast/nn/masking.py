"""MAE-style token masking and span masking: modules over :mod:`muse_fast.ops.token_mask`
and :mod:`muse_fast.ops.span_mask`."""

from __future__ import annotations

import torch
from torch import nn

from ..ops import apply_span_mask, gather_tokens, random_token_mask, span_mask
from ..ops._checks import check_float, check_int

__all__ = ["TokenMasker", "SpanMasker"]


class TokenMasker(nn.Module):
    """Keep a random ``1 - mask_ratio`` of the tokens of each row (MAE / Myna).

    ``forward(x (B, L, D), *, generator=None, seed=None) -> (kept (B, n_keep, D), keep_idx)``.
    In eval mode (or with ``mask_ratio=0``) every token is kept, in order.
    """

    def __init__(self, mask_ratio: float = 0.9) -> None:
        super().__init__()
        self.mask_ratio = check_float("mask_ratio", mask_ratio, min=0.0, max=1.0)

    def forward(
        self,
        x: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        seed: int | torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        B, L = x.shape[0], x.shape[1]
        if not self.training or self.mask_ratio == 0.0:
            keep = torch.arange(L, device=x.device).expand(B, L)
            return x, keep
        keep = random_token_mask(
            B, L, self.mask_ratio, generator=generator, seed=seed, device=x.device
        )
        return gather_tokens(x, keep, unique_indices=True), keep  # a random subset: no repeats

    def extra_repr(self) -> str:
        return f"mask_ratio={self.mask_ratio}"


class SpanMasker(nn.Module):
    """Mask non-overlapping spans of ``span`` frames, each with probability ``prob`` (BEST-RQ /
    MusicFM / MuseLQ), and replace them by N(0, noise_std²) noise or by a learned embedding.

    ``SpanMasker(span, prob, noise_std=0.1)`` (MusicFM, on the waveform) or
    ``SpanMasker(span, prob, dim=D)`` (a learned ``mask_embedding`` of size D, x (B, T, D)).
    ``forward(x, *, generator=None, seed=None, force=False) -> (x_masked, mask (B, T) bool)``; in
    eval mode nothing is masked unless ``force`` (a model's validation loss masks in eval mode). Use the same ``seed`` with :func:`muse_fast.ops.span_mask` at another
    resolution to get the matching mask (e.g. the token-level targets of waveform masking).
    """

    def __init__(
        self,
        span: int,
        prob: float,
        *,
        noise_std: float | None = None,
        dim: int | None = None,
    ) -> None:
        super().__init__()
        self.span = check_int("span", span, min=1)
        self.prob = check_float("prob", prob, min=0.0, max=1.0)
        if (noise_std is None) == (dim is None):
            raise ValueError("noise_std: give exactly one of noise_std and dim")
        self.noise_std = None if noise_std is None else check_float("noise_std", noise_std, min=0.0)
        if dim is not None:
            dim = check_int("dim", dim, min=1)
            self.mask_embedding = nn.Parameter(torch.empty(dim).normal_(std=0.02))
        else:
            self.register_parameter("mask_embedding", None)

    def forward(
        self,
        x: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        seed: int | torch.Tensor | None = None,
        force: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        B, T = x.shape[0], x.shape[1]
        if not (self.training or force):
            return x, torch.zeros(B, T, dtype=torch.bool, device=x.device)
        mask = span_mask(
            B, T, self.span, self.prob, generator=generator, seed=seed, device=x.device
        )
        if self.mask_embedding is not None:
            return apply_span_mask(x, mask, mask_embedding=self.mask_embedding), mask
        # the noise uses other Philox counters than the mask, so one seed serves both
        y = apply_span_mask(x, mask, noise_std=self.noise_std, generator=generator, seed=seed)
        return y, mask

    def extra_repr(self) -> str:
        extra = (
            f"noise_std={self.noise_std}"
            if self.noise_std is not None
            else f"dim={self.mask_embedding.shape[0]}"
        )
        return f"span={self.span}, prob={self.prob}, {extra}"
