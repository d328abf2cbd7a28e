"""Helpers shared by the masking families' tests (token_mask, patch_embed, span_mask)."""

from __future__ import annotations

import muse_fast
from muse_fast.ops import num_kept_tokens, random_token_mask


def ratio(length, n_keep):
    """A mask ratio that keeps exactly n_keep of length tokens."""
    r = max(0.0, 1 - n_keep / length - 1e-9)
    assert num_kept_tokens(length, r) == n_keep
    return r


def run(backend, fn, *args, **kwargs):
    with muse_fast.backend(backend):
        return fn(*args, **kwargs)


def keep_indices(B, L, n, device="cpu", seed=0):
    return random_token_mask(B, L, ratio(L, n), seed=seed, device=device)
