"""Drop-in acceleration of code people already run (MusicFM / MuQ, Myna, SpeechBrain, lightly,
pytorch-metric-learning, libauc) with muse_fast's fused ops. Third-party packages are imported
only when the matching integration is used (``pip install muse_fast[integrations]``).

>>> from muse_fast.integrations import apply_muse_fast
>>> apply_muse_fast(model)        # MusicFM25Hz / MuQModel / SpeechBrain RPQ / NTXentLoss
"""

from __future__ import annotations

from torch import nn

from .dropins import apply_muse_fast_to
from .libauc import GCLoss_v1
from .musicfm import apply_muse_fast_to_musicfm, is_musicfm, musicfm_config
from .myna import apply_muse_fast_to_myna

__all__ = [
    "GCLoss_v1",
    "apply_muse_fast",
    "apply_muse_fast_to_musicfm",
    "apply_muse_fast_to_myna",
    "musicfm_config",
]


def apply_muse_fast(obj: nn.Module, **kwargs) -> nn.Module:
    """Patch ``obj`` in place (its ``state_dict`` keys unchanged) and return it: a MusicFM25Hz /
    MuQModel, or a SpeechBrain ``RandomProjectionQuantizer`` / lightly or pytorch-metric-learning
    ``NTXentLoss``. Anything else → TypeError naming what is supported."""
    if is_musicfm(obj):
        return apply_muse_fast_to_musicfm(obj, **kwargs)
    patched = apply_muse_fast_to(obj)
    if patched is not None:
        return patched
    raise TypeError(
        "obj: expected a MusicFM25Hz or MuQModel, a speechbrain RandomProjectionQuantizer, or a "
        f"lightly / pytorch_metric_learning NTXentLoss; got {type(obj).__module__}."
        f"{type(obj).__name__} (Myna: apply_muse_fast_to_myna(utils))"
    )
