"""Contrastive loss modules: :class:`NTXentLoss` (SimCLR) and :class:`GlobalContrastiveLoss` (SogCLR).

Both take the two views' embeddings ``z1, z2`` (N, D) of one (per-rank) batch.

Distributed training (``torch.distributed`` initialized, world size ``W > 1``, ``gather_distributed``)
-----------------------------------------------------------------------------------------------
The views are gathered from every rank with ``torch.distributed.nn.functional.all_gather``
(gradients flow back to the rank that produced them), so every row's negatives are the whole
global batch of ``W·N`` pairs — as if one process had seen it. Each rank computes the loss rows of
its own pairs only (cost ``∝ N·W·N`` instead of ``(W·N)²``), against all negatives.

Convention (the one SimCLR / libauc use, and the one DDP needs): each rank's loss *graph* is the
mean over its own rows, so that after ``all_gather``'s backward (a sum over ranks) the gradient a
rank receives for its local embeddings is ``W ×`` the single-process gradient of the global
loss — and DDP's *averaging* of parameter gradients over the ``W`` ranks then yields exactly the
single-process gradient of the global loss. The *value* returned is the global loss (the mean over
ranks, one ``all_reduce`` of a scalar), identical on every rank, for logging. If you reduce
parameter gradients with a *sum* instead of DDP's average, divide the loss by ``W``.

All ranks must pass batches of the same size (``all_gather``'s requirement).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from ..ops._checks import check_float, check_int, check_same_device, check_tensor
from ..ops.nt_xent import (
    check_pair,
    global_contrastive_loss_rows,
    nt_xent,
    nt_xent_rows,
)

__all__ = ["GlobalContrastiveLoss", "NTXentLoss"]


def _world() -> tuple[int, int]:
    """(rank, world size) when a process group with more than one rank is active, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather_views(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Stacked global batch ``[z1 of all ranks; z2 of all ranks]`` with gradients."""
    from torch.distributed.nn.functional import all_gather

    z1_all = torch.cat(all_gather(z1.contiguous()), dim=0)
    z2_all = torch.cat(all_gather(z2.contiguous()), dim=0)
    return torch.cat([z1_all, z2_all], dim=0)


def _global_value(local: torch.Tensor, world: int) -> torch.Tensor:
    """``local`` for the gradient, the mean over ranks for the value."""
    total = local.detach().clone()
    dist.all_reduce(total)
    return local + (total / world - local.detach())


class NTXentLoss(nn.Module):
    """SimCLR NT-Xent loss (:func:`muse_fast.ops.nt_xent`) with negatives from all ranks.

    Args:
        temperature: τ (default 0.1, as Myna and ViT-1D).
        normalize: L2-normalize the embeddings first (cosine similarity).
        gather_distributed: under an initialized process group of more than one rank, gather the
            views from all ranks (see the module docstring for the gradient convention).

    ``forward(z1, z2)`` → scalar loss.
    """

    def __init__(
        self, temperature: float = 0.1, normalize: bool = True, gather_distributed: bool = True
    ):
        super().__init__()
        self.temperature = check_float("temperature", temperature, min=0.0, min_open=True)
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize: expected a bool, got {type(normalize).__name__}")
        self.normalize = normalize
        self.gather_distributed = bool(gather_distributed)

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, normalize={self.normalize}, "
            f"gather_distributed={self.gather_distributed}"
        )

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        rank, world = _world() if self.gather_distributed else (0, 1)
        if world == 1:
            return nt_xent(z1, z2, self.temperature, self.normalize)
        n = check_pair(z1, z2, self.temperature, self.normalize, min_pairs=1)
        z = _gather_views(z1, z2)  # (2·W·N, D)
        local = nt_xent_rows(z, n * world, self.temperature, self.normalize, rank * n, n)
        return _global_value(local, world)


class GlobalContrastiveLoss(nn.Module):
    """SogCLR global contrastive loss (libauc ``GCLoss_v1``, what Myna's public code trains with).

    Keeps, per dataset sample, a moving average ``u`` (γ = 0.9) of the mean ``exp(s/τ)`` over its
    negatives, and weighs the negatives by ``1/u`` instead of the batch's own normalizer, so small
    batches optimize the global contrastive objective (Yuan et al. 2022). Exact formula:
    :func:`muse_fast.ops.global_contrastive_loss_reference`.

    The averages live in the buffer ``log_u`` (``dataset_size``,) float32 — ``log u``, ``−inf`` for
    samples never seen — on the module's device, saved in ``state_dict`` (checkpointable) and
    updated in place by ``forward`` in training mode (not in eval mode). ``u`` is ``exp(log_u)``.
    Log space keeps small temperatures from overflowing ``u`` (libauc's ``u`` overflows float32
    below τ ≈ 0.012).

    Args:
        dataset_size: number of samples the ``index`` passed to ``forward`` can address.
        temperature: τ (default 0.1). gamma: weight of the new estimate (libauc's convention,
            default 0.9). normalize: L2-normalize the embeddings. eps: lower clamp of ``u``.
        gather_distributed: under a process group of more than one rank, negatives (and the
            indices, to update every rank's ``log_u`` identically) come from all ranks; gradient
            convention as :class:`NTXentLoss`.
        init: how a never-seen sample's ``u`` starts. ``"libauc"`` (default, libauc's rule):
            ``u`` is zero-initialized and always updated as ``u = (1 − γ) u + γ g``, except that
            a batch whose samples are all unseen uses γ = 1 (libauc's first batches with its
            constant schedule) — so an unseen sample in a batch with seen ones starts at
            ``γ g``. ``"batch"``: an unseen sample starts at its batch estimate ``g`` whatever
            the rest of the batch (the two agree whenever batches are all-new or all-seen).

    ``forward(z1, z2, index)``: ``index`` (N,) int64 dataset indices of the pairs → scalar loss.
    Duplicate indices in one global batch: the last update wins, as in libauc.
    """

    def __init__(
        self,
        dataset_size: int,
        temperature: float = 0.1,
        gamma: float = 0.9,
        normalize: bool = True,
        eps: float = 1e-8,
        gather_distributed: bool = True,
        init: str = "libauc",
    ):
        super().__init__()
        if init not in ("libauc", "batch"):
            raise ValueError(f"init: expected 'libauc' or 'batch', got {init!r}")
        self.init = init
        self.dataset_size = check_int("dataset_size", dataset_size, min=1)
        self.temperature = check_float("temperature", temperature, min=0.0, min_open=True)
        self.gamma = check_float("gamma", gamma, min=0.0, max=1.0, min_open=True)
        self.eps = check_float("eps", eps, min=0.0, min_open=True)
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize: expected a bool, got {type(normalize).__name__}")
        self.normalize = normalize
        self.gather_distributed = bool(gather_distributed)
        self.register_buffer("log_u", torch.full((self.dataset_size,), -math.inf))

    @property
    def u(self) -> torch.Tensor:
        """The moving averages ``u`` (0 for samples never seen), as libauc stores them."""
        return self.log_u.exp()

    def reset(self) -> None:
        """Forget every moving average."""
        self.log_u.fill_(-math.inf)

    def extra_repr(self) -> str:
        return (
            f"dataset_size={self.dataset_size}, temperature={self.temperature}, "
            f"gamma={self.gamma}, normalize={self.normalize}, init={self.init!r}"
        )

    def forward(self, z1: torch.Tensor, z2: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        rank, world = _world() if self.gather_distributed else (0, 1)
        n = check_pair(z1, z2, self.temperature, self.normalize, min_pairs=2 if world == 1 else 1)
        check_tensor("index", index, shape=(n,), dtypes=(torch.int64, torch.int32))
        check_same_device(z1=z1, index=index, log_u=self.log_u)
        if index.device.type == "cpu" and index.numel():
            lo, hi = int(index.min()), int(index.max())
            if lo < 0 or hi >= self.dataset_size:
                raise ValueError(
                    f"index: expected values in [0, {self.dataset_size}), got [{lo}, {hi}]"
                )
        index = index.long()
        log_u = self.log_u[index]
        if self.init == "libauc":
            # an unseen sample in a batch with seen ones: u = 0, not "unseen" — a finite
            # stand-in for log 0 makes the op apply (1 − γ)·0 + γ·g (device-side: no host sync)
            mixed = torch.isfinite(log_u).any()
            if world > 1:  # "mixed" is a property of the global batch
                mixed = mixed.to(torch.int32)
                dist.all_reduce(mixed, op=dist.ReduceOp.MAX)
                mixed = mixed.bool()
            log_u = torch.where(torch.isneginf(log_u) & mixed, torch.full_like(log_u, -1e30), log_u)
        if world == 1:
            z = torch.cat([z1, z2], dim=0)
            loss, log_u_new = global_contrastive_loss_rows(
                z, log_u, n, self.gamma, self.temperature, self.normalize, self.eps, 0, n
            )
            if self.training:
                with torch.no_grad():
                    self.log_u[index] = log_u_new.to(self.log_u.dtype)
            return loss
        z = _gather_views(z1, z2)
        local, log_u_new = global_contrastive_loss_rows(
            z, log_u, n * world, self.gamma, self.temperature, self.normalize, self.eps,
            rank * n, n,
        )  # fmt: skip
        if self.training:
            with torch.no_grad():
                idx_all = [torch.empty_like(index) for _ in range(world)]
                dist.all_gather(idx_all, index.contiguous())
                u_all = [torch.empty_like(log_u_new) for _ in range(world)]
                dist.all_gather(u_all, log_u_new.contiguous())
                self.log_u[torch.cat(idx_all)] = torch.cat(u_all).to(self.log_u.dtype)
        return _global_value(local, world)
