"""Myna's training code (ghost-signal/myna ``utils.py``) on muse_fast's fused ops.

``apply_muse_fast_to_myna(utils)`` rebinds, in the module object you pass:

* ``mask_inputs(x, mask_ratio, device)`` → :func:`muse_fast.ops.random_token_mask` +
  :func:`muse_fast.ops.gather_tokens` (kept tokens in random order, as ``randperm``; no CPU
  draw per row);
* ``masked_model_output(x, model, args)`` → the kept patches only, embedded by
  :func:`muse_fast.ops.masked_patch_embed` (the patch LayerNorm folded into the Linear), then
  ``LN → + pos → transformer → mean → to_latent → linear_head`` as Myna;
* ``GCLoss_v1`` → :class:`muse_fast.integrations.libauc.GCLoss_v1`.

Models whose ``to_patch_embedding`` is not ``Rearrange → LN → Linear → LN`` keep Myna's function
for that call (one-time warning).
"""

from __future__ import annotations

import types

import torch
from torch import nn

from .. import ops
from ._util import warn_once
from .libauc import GCLoss_v1

__all__ = ["apply_muse_fast_to_myna", "mask_inputs", "masked_model_output"]


def _ratio_for(n: int, mask_ratio: float) -> float:
    """A ratio for which :func:`muse_fast.ops.random_token_mask` keeps Myna's count,
    ``n - int(mask_ratio · n)`` (5 of 48 at 0.9, where ``int(48 · 0.1)`` would keep 4)."""
    keep = n - int(mask_ratio * n)
    return 0.0 if keep >= n else 1.0 - (keep + 0.5) / n


def mask_inputs(x: torch.Tensor, mask_ratio: float, device=None) -> torch.Tensor:
    """(B, N, D) → the kept ``N - int(mask_ratio · N)`` tokens of each row (B, n_keep, D)."""
    b, n, _ = x.shape
    keep = ops.random_token_mask(b, n, _ratio_for(n, mask_ratio), device=x.device)
    return ops.gather_tokens(x, keep)


def _patch_layout(model: nn.Module):
    seq = model.to_patch_embedding
    if not isinstance(seq, nn.Sequential) or len(seq) != 4:
        return None
    rearr, ln_in, lin, ln_out = seq
    p1 = getattr(rearr, "axes_lengths", {})
    p1 = dict(p1) if not isinstance(p1, dict) else p1
    if not (isinstance(ln_in, nn.LayerNorm) and isinstance(lin, nn.Linear)):
        return None
    if "p1" not in p1 or "p2" not in p1 or "c" in p1 and p1["c"] != 1:
        return None
    return (int(p1["p1"]), int(p1["p2"])), ln_in, lin, ln_out


def masked_model_output(x: torch.Tensor, model: nn.Module, args, _original=None) -> torch.Tensor:
    model = getattr(model, "module", model)  # DDP
    layout = _patch_layout(model)
    if layout is None or x.dim() != 4 or x.shape[1] != 1:
        warn_once("myna-layout", "masked_model_output: unrecognized patch embedding; Myna's path")
        return _original(x, model, args)
    patch, ln_in, lin, ln_out = layout
    spec = x[:, 0]  # (B, H, W)
    grid = (spec.shape[1] // patch[0]) * (spec.shape[2] // patch[1])
    keep = ops.random_token_mask(
        spec.shape[0], grid, _ratio_for(grid, args.mask_ratio), device=x.device
    )
    weight = lin.weight * ln_in.weight  # (D, P): LN(patch) affine folded into the Linear
    bias = lin.bias + (lin.weight * ln_in.bias).sum(dim=1)
    tokens = ops.masked_patch_embed(spec, keep, patch, weight, bias, norm_eps=ln_in.eps)
    tokens = ln_out(tokens)
    pos = model.pos_embedding.to(x.device, dtype=tokens.dtype)
    z = model.transformer(tokens + pos[keep]).mean(dim=1)
    return model.linear_head(model.to_latent(z))


def apply_muse_fast_to_myna(utils: types.ModuleType) -> types.ModuleType:
    """Rebind ``mask_inputs``, ``masked_model_output`` and ``GCLoss_v1`` in Myna's ``utils``."""
    missing = [n for n in ("mask_inputs", "masked_model_output") if not hasattr(utils, n)]
    if missing:
        raise TypeError(
            f"utils: expected Myna's utils module (functions mask_inputs, masked_model_output), "
            f"missing {missing}"
        )
    original = utils.masked_model_output
    utils.mask_inputs = mask_inputs
    utils.masked_model_output = lambda x, model, args: masked_model_output(
        x, model, args, _original=original
    )
    utils.GCLoss_v1 = GCLoss_v1
    return utils
