"""Deprecated: the masking ops moved to :mod:`muse_fast.ops.token_mask`
(``random_token_mask``, ``gather_tokens``, ``num_kept_tokens``),
:mod:`muse_fast.ops.patch_embed` (``masked_patch_embed``) and :mod:`muse_fast.ops.span_mask`
(``span_mask``, ``apply_span_mask``). Import them from there or from :mod:`muse_fast.ops`;
names read from this module still work and warn (``DeprecationWarning``)."""

from __future__ import annotations

import importlib
import warnings

_MOVED = {
    "token_mask": (
        "random_token_mask", "gather_tokens", "num_kept_tokens", "random_token_mask_reference",
        "gather_tokens_reference", "gather_tokens_backward_reference",
    ),
    "patch_embed": (
        "masked_patch_embed", "masked_patch_embed_reference", "masked_patch_gather_reference",
        "masked_patch_scatter_reference",
    ),
    "span_mask": ("span_mask", "apply_span_mask", "span_mask_reference",
                  "span_noise_fill_reference"),
}  # fmt: skip
_WHERE = {name: module for module, names in _MOVED.items() for name in names}

__all__ = [  # noqa: F822  (provided by __getattr__)
    "random_token_mask",
    "gather_tokens",
    "masked_patch_embed",
    "span_mask",
    "apply_span_mask",
    "num_kept_tokens",
]


def __getattr__(name: str) -> object:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = _WHERE[name]
    warnings.warn(
        f"muse_fast.ops.masking is deprecated: import {name} from muse_fast.ops.{module} "
        "(or muse_fast.ops)",
        DeprecationWarning,
        stacklevel=2,
    )
    return getattr(importlib.import_module(f"muse_fast.ops.{module}"), name)


def __dir__() -> list[str]:
    return sorted(_WHERE)
