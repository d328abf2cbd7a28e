"""``GCLoss_v1``: libauc's SogCLR loss (``libauc.losses.contrastive.GCLoss_v1``) with the same
constructor, update rule and state, on :func:`muse_fast.ops.global_contrastive_loss`.

libauc's rule, reproduced exactly: ``u`` (N, 1) float32 on the CPU starts at 0; a batch uses
``γ = 1`` while ``self.gamma > gamma_min`` (schedule ``"constant"`` before ``adjust_gamma(e > 0)``)
and every ``u[index]`` is still 0, else ``γ = self.gamma`` (or ``gamma_min``); then
``u ← (1 − γ) u + γ g`` for every row — a never-seen sample in a mixed batch gets ``γ g``, not
``g``. ``index`` may be a CPU tensor with CUDA embeddings (as Myna's ``utils.py`` passes it).
iSogCLR (``enable_isogclr=True``) and ``distributed=True`` raise ``NotImplementedError``
(:class:`muse_fast.nn.GlobalContrastiveLoss` gathers across ranks).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import ops

__all__ = ["GCLoss_v1"]

# log of "u = 0 but seen": finite, so the op applies (1 − γ)·0 + γ·g instead of its first-visit g
_LOG_ZERO = -1e30


class GCLoss_v1(nn.Module):  # noqa: N801  (libauc's name)
    def __init__(
        self,
        N: int = 100000,  # noqa: N803
        tau: float = 0.1,
        gamma: float = 0.9,
        eps: float = 1e-8,
        device: torch.device | str | None = None,
        distributed: bool = False,
        enable_isogclr: bool = False,
        tau_min: float = 0.05,
        tau_max: float = 0.7,
        rho: float = 0.3,
        eta: float = 0.01,
        beta: float = 0.9,
        gamma_schedule: str = "constant",
        gamma_decay_epochs: int = -1,
    ) -> None:
        super().__init__()
        if enable_isogclr:
            raise NotImplementedError(
                "enable_isogclr: iSogCLR (learned per-sample temperatures) is not implemented; "
                "use libauc.losses.GCLoss_v1"
            )
        if distributed:
            raise NotImplementedError(
                "distributed: use muse_fast.nn.GlobalContrastiveLoss, which gathers across ranks"
            )
        if gamma_schedule not in ("constant", "cosine"):
            raise ValueError(
                f"gamma_schedule: expected 'constant' or 'cosine', got {gamma_schedule!r}"
            )
        if gamma_schedule == "cosine" and gamma_decay_epochs <= 0:
            raise ValueError("gamma_decay_epochs: the cosine schedule needs a positive value")
        self.device = torch.device(device) if device else None
        self.N = int(N)
        self.u = torch.zeros(self.N).reshape(-1, 1)
        self.tau = float(tau)
        self.gamma_min = float(gamma)
        self.gamma = 1.0
        self.distributed = False
        self.eps = float(eps)
        self.enable_isogclr = False
        self.gamma_schedule = gamma_schedule
        self.gamma_decay_epochs = gamma_decay_epochs

    @property
    def u(self) -> torch.Tensor:
        """The moving averages (N, 1), CPU float32 (libauc's attribute; assignable)."""
        return self._u

    @u.setter
    def u(self, value: torch.Tensor) -> None:
        value = torch.as_tensor(value, dtype=torch.float32).cpu()
        if value.shape != (self.N, 1):
            raise ValueError(f"u: expected shape ({self.N}, 1), got {tuple(value.shape)}")
        self._u = value

    def adjust_gamma(self, epoch: int) -> None:
        """libauc's schedule: constant (1 at epoch 0, then ``gamma``) or cosine from 1 to it."""
        if self.gamma_schedule == "constant":
            self.gamma = 1.0 if epoch == 0 else self.gamma_min
        elif epoch < self.gamma_decay_epochs:
            cos = 0.5 * (1 + math.cos(math.pi * epoch / self.gamma_decay_epochs))
            self.gamma = (1 - self.gamma_min) * cos + self.gamma_min
        else:
            self.gamma = self.gamma_min

    def forward(self, hidden1: torch.Tensor, hidden2: torch.Tensor, index: torch.Tensor):
        idx = torch.as_tensor(index).long().cpu()
        u_old = self._u[idx, 0]  # (B,) CPU
        if self.gamma_schedule == "constant" and self.gamma > self.gamma_min:
            gamma = 1.0 if float(u_old.sum()) == 0 else self.gamma_min
        else:
            gamma = self.gamma
        log_u = torch.where(u_old > 0, u_old.log(), torch.full_like(u_old, _LOG_ZERO))
        loss, log_u_new = ops.global_contrastive_loss(
            hidden1, hidden2, log_u.to(hidden1.device), gamma, self.tau, True, self.eps
        )
        self._u[idx, 0] = log_u_new.detach().exp().float().cpu()
        return loss
