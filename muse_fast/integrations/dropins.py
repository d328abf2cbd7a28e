"""Class drop-ins: SpeechBrain's ``RandomProjectionQuantizer``, lightly's and
pytorch-metric-learning's ``NTXentLoss``, on muse_fast's fused ops.

``apply_muse_fast_to(obj)`` swaps the instance's class for a subclass whose ``forward`` uses the
op (state, buffers and ``state_dict`` untouched); the subclasses can also be built directly
(``SpeechBrainRandomProjectionQuantizer(input_dim, cb_dim, cb_vocab)``, same signatures). Cases
the op does not cover fall back to the original ``forward`` with a one-time warning.
"""

from __future__ import annotations

from functools import cache

import torch

from .. import ops
from ._util import warn_once

# the drop-in classes (LightlyNTXentLoss, PMLNTXentLoss, SpeechBrainRandomProjectionQuantizer)
# are built on first access (module __getattr__), when their package is imported
__all__ = ["apply_muse_fast_to"]


@cache
def _speechbrain_cls() -> type:
    from speechbrain.nnet.quantisers import RandomProjectionQuantizer as Base

    class SpeechBrainRandomProjectionQuantizer(Base):
        """SpeechBrain's quantizer; ``forward`` through the fused op — the code word nearest in
        angle to ``x P`` (SpeechBrain: the Euclidean nearest of the normalized vectors, the same
        index) without its (B, V, T, d) distance tensor."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.dim() != 3:
                warn_once("sb-rpq-dim", "RandomProjectionQuantizer: not (B, T, D); original path")
                return super().forward(x)
            with torch.no_grad():
                return ops.random_projection_quantize(x, self.P, self.CB)

    return SpeechBrainRandomProjectionQuantizer


@cache
def _lightly_cls() -> type:
    from lightly.loss import NTXentLoss as Base

    class LightlyNTXentLoss(Base):
        """lightly's NT-Xent; the SimCLR case (no memory bank, one process) through
        :func:`muse_fast.ops.nt_xent`."""

        def forward(self, out0: torch.Tensor, out1: torch.Tensor) -> torch.Tensor:
            world = (
                torch.distributed.get_world_size()
                if torch.distributed.is_available() and torch.distributed.is_initialized()
                else 1
            )
            if self.memory_bank is not None or (self.gather_distributed and world > 1):
                warn_once("lightly-ntx", "NTXentLoss: memory bank / gathering; original path")
                return super().forward(out0, out1)
            return ops.nt_xent(out0, out1, self.temperature, True)

    return LightlyNTXentLoss


def _simclr_pairs(labels: torch.Tensor) -> torch.Tensor | None:
    """Row pairs (N, 2) when every label occurs exactly twice, else None (a host sync)."""
    if labels.dim() != 1 or labels.numel() % 2:
        return None
    order = torch.argsort(labels, stable=True)
    pairs = order.view(-1, 2)
    lab = labels[pairs]
    if not bool((lab[:, 0] == lab[:, 1]).all()) or torch.unique(lab[:, 0]).numel() != len(pairs):
        return None
    return pairs


@cache
def _pml_cls() -> type:
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.losses import NTXentLoss as Base
    from pytorch_metric_learning.reducers import MeanReducer

    class PMLNTXentLoss(Base):
        """pytorch-metric-learning's NT-Xent; SimCLR labels (each label on exactly two rows, no
        ``indices_tuple`` / ``ref_emb``, cosine distance, mean reducer) through
        :func:`muse_fast.ops.nt_xent`."""

        def forward(
            self, embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None
        ):
            pairs = None
            plain = (
                indices_tuple is None
                and ref_emb is None
                and labels is not None
                and type(self.distance) is CosineSimilarity
                and type(self.reducer) is MeanReducer
                and not self.embedding_regularizer
            )
            if plain:
                pairs = _simclr_pairs(labels)
            if pairs is None:
                warn_once("pml-ntx", "NTXentLoss: not SimCLR labels; original path")
                return super().forward(embeddings, labels, indices_tuple, ref_emb, ref_labels)
            pairs = pairs.to(embeddings.device)
            return ops.nt_xent(
                embeddings[pairs[:, 0]], embeddings[pairs[:, 1]], self.temperature, True
            )

    return PMLNTXentLoss


def __getattr__(name: str):
    lookup = {
        "SpeechBrainRandomProjectionQuantizer": _speechbrain_cls,
        "LightlyNTXentLoss": _lightly_cls,
        "PMLNTXentLoss": _pml_cls,
    }
    if name in lookup:
        return lookup[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _module_of(obj: object) -> str:
    return type(obj).__module__ or ""


def apply_muse_fast_to(obj: torch.nn.Module) -> torch.nn.Module | None:
    """Swap ``obj``'s class for its drop-in; None if ``obj`` is none of the three."""
    name, mod = type(obj).__name__, _module_of(obj)
    if name == "RandomProjectionQuantizer" and mod.startswith("speechbrain"):
        obj.__class__ = _speechbrain_cls()
    elif name == "NTXentLoss" and mod.startswith("lightly"):
        obj.__class__ = _lightly_cls()
    elif name == "NTXentLoss" and mod.startswith("pytorch_metric_learning"):
        obj.__class__ = _pml_cls()
    else:
        return None
    return obj
