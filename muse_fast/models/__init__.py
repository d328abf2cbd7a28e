"""The papers' encoders and pre-training objectives, built on muse_fast ops (docs/design.md, "Models").

>>> import muse_fast.models as M
>>> M.list_models()
['bestrq-conformer', 'muselq-branchformer', 'myna-base', 'myna-hybrid', 'myna-vertical', 'vit1d']
>>> model = M.create("myna-hybrid", size="tiny")
>>> loss = model.loss({"audio": audio, "index": index})   # audio (B, 2, model.segment_samples)
>>> emb = model.embed(clip)                               # clip (B, samples) → (B, D)

Every model has ``.config`` (a dataclass; :func:`config_for` builds one), ``.sample_rate``,
``.segment_samples`` (audio samples per crop), ``.n_views`` (2 contrastive, 1 BEST-RQ),
``.embed_dim``, ``.frame_hop`` (samples per ``embed_frames`` step), ``.loss(batch)`` (also
``forward``), ``.embed(audio, layer=None)`` and ``.embed_frames(audio, layer=None)``. Config
``use_fused=False`` runs every op on its eager reference (``muse_fast.backend("reference")``).

Sizes (``size=``): Myna ``vit-s`` (default, ≈ 22 M), ``vit-b`` (≈ 85 M), ``tiny``; ViT-1D
``base`` (default), ``tiny``; BEST-RQ / MuseLQ ``large`` (default, 12 × 1024), ``small`` (alias
``base``, 4 × 768), ``musicfm`` (MusicFM's published layout: HF Conformer blocks, 4096 codes),
``tiny`` (dim 64, 2 layers). :func:`from_musicfm` / :func:`from_myna` load the public checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._common import posemb_sincos_2d
from .bestrq import BestRQ, BestRQConfig, bestrq_config
from .loaders import from_musicfm, from_myna
from .myna import Myna, MynaConfig, myna_config
from .vit1d import ViT1D, ViT1DConfig, vit1d_config

__all__ = [
    "BestRQ",
    "BestRQConfig",
    "Myna",
    "MynaConfig",
    "ViT1D",
    "ViT1DConfig",
    "config_for",
    "create",
    "from_musicfm",
    "from_myna",
    "list_models",
    "posemb_sincos_2d",
    "register_model",
]

# name → (config factory (size=..., **overrides), model class)
_REGISTRY: dict[str, tuple[Callable[..., Any], type[nn.Module]]] = {}


def register_model(name: str, config_fn: Callable[..., Any], cls: type[nn.Module]) -> None:
    """Add a model: ``config_fn(size=..., **overrides)`` returns its config, ``cls(config)``
    builds it."""
    _REGISTRY[name] = (config_fn, cls)


def _preset(fn: Callable[..., Any], **defaults: Any) -> Callable[..., Any]:
    """``fn`` with default keywords that the caller's keywords override."""
    return lambda **kw: fn(**{**defaults, **kw})


register_model("myna-base", _preset(myna_config, patch="base"), Myna)
register_model("myna-vertical", _preset(myna_config, patch="vertical"), Myna)
register_model("myna-hybrid", _preset(myna_config, patch="hybrid"), Myna)
register_model("vit1d", vit1d_config, ViT1D)
register_model(
    "bestrq-conformer", _preset(bestrq_config, encoder="conformer", mixer="attention"), BestRQ
)
register_model(
    "muselq-branchformer",
    _preset(bestrq_config, encoder="branchformer", mixer="summary_mixing"),
    BestRQ,
)


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def _lookup(name: str) -> tuple[Callable[..., Any], type[nn.Module]]:
    if name not in _REGISTRY:
        raise ValueError(f"name: unknown model {name!r}; known models: {list_models()}")
    return _REGISTRY[name]


def config_for(name: str, **overrides: Any) -> Any:
    """The config dataclass of model ``name``; ``size=`` picks a preset, other keywords override
    single fields (unknown fields → TypeError naming them)."""
    config_fn, _ = _lookup(name)
    try:
        return config_fn(**overrides)
    except TypeError as e:
        raise TypeError(f"{name}: {e}") from None


def create(name: str, *, device: torch.device | str | None = None, **overrides: Any) -> nn.Module:
    """Build model ``name`` (see :func:`list_models`) with its config and ``overrides``."""
    _, cls = _lookup(name)
    model = cls(config_for(name, **overrides))
    return model.to(device) if device is not None else model
