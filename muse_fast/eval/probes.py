"""Probes on frozen features: linear or one hidden layer (512, dropout 0.25), in torch.

Training: features standardised with the training split's mean and std; Adam with weight decay;
minibatches shuffled from a seeded generator; early stopping on the validation loss (the best
epoch's weights are restored). A small grid of learning rates and weight decays is searched and
the configuration is chosen on the validation split only, by the task's own metric (``select``).
Everything (initialisation, dropout, shuffling) is a function of ``seed``; the global RNG state is
left as it was.

Outputs: ``"multiclass"`` (cross-entropy over ``n_outputs`` classes), ``"multilabel"`` (binary
cross-entropy per tag) and ``"binary"`` (one logit per frame, soft targets allowed: beat
activations).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["GRID", "Probe", "ProbeSettings", "fit_probe", "train_probe"]

OUTPUTS = ("multiclass", "multilabel", "binary")
GRID = {"lr": (1e-3, 1e-2), "weight_decay": (0.0, 1e-3)}


@dataclass
class ProbeSettings:
    """``hidden``: 0 = linear probe, else one hidden layer of that width (ReLU + dropout)."""

    hidden: int = 0
    dropout: float = 0.25
    max_epochs: int = 200
    patience: int = 10
    batch_size: int = 64

    @classmethod
    def linear(cls, **kw) -> ProbeSettings:
        return cls(hidden=0, **kw)

    @classmethod
    def mlp(cls, **kw) -> ProbeSettings:
        return cls(hidden=512, **kw)

    @property
    def kind(self) -> str:
        return "linear" if self.hidden == 0 else f"mlp{self.hidden}"


class Probe(nn.Module):
    """Standardisation (buffers ``mean``, ``std``) followed by a linear layer or an MLP."""

    def __init__(self, in_dim: int, n_outputs: int, hidden: int = 0, dropout: float = 0.25):
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("std", torch.ones(in_dim))
        if hidden:
            self.net = nn.Sequential(
                nn.Linear(in_dim, hidden),
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Linear(hidden, n_outputs),
            )
        else:
            self.net = nn.Linear(in_dim, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)

    @torch.no_grad()
    def predict(self, x: np.ndarray, output: str, batch_size: int = 8192) -> np.ndarray:
        """Class probabilities (multiclass, (N, C)), tag / beat probabilities ((N, C) / (N,))."""
        self.eval()
        xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
        outs = []
        for i in range(0, len(xt), batch_size):
            z = self(xt[i : i + batch_size])
            outs.append(z.softmax(-1) if output == "multiclass" else torch.sigmoid(z))
        p = torch.cat(outs).numpy() if outs else np.zeros((0, self.net_out))
        return p[:, 0] if output == "binary" else p

    @property
    def net_out(self) -> int:
        last = self.net[-1] if isinstance(self.net, nn.Sequential) else self.net
        return last.out_features


def _loss_fn(output: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if output == "multiclass":
        return nn.functional.cross_entropy
    return nn.functional.binary_cross_entropy_with_logits


def _targets(y: np.ndarray, output: str) -> torch.Tensor:
    if output == "multiclass":
        return torch.as_tensor(np.asarray(y), dtype=torch.long)
    t = torch.as_tensor(np.asarray(y, dtype=np.float32))
    return t[:, None] if output == "binary" else t


@contextlib.contextmanager
def _threads(n: int):
    """Run with ``n`` intra-op threads (restored afterwards)."""
    old = torch.get_num_threads()
    if n >= old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# Minibatches smaller than this (multiply-adds) run single-threaded: thread start-up and spinning
# cost more than they save, and on a loaded CPU far more (30x measured on 2 shared cores).
_SMALL_BATCH_MACS = 2e7


def train_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_valid: np.ndarray,
    y_valid: np.ndarray,
    *,
    output: str,
    n_outputs: int,
    settings: ProbeSettings | None = None,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
) -> tuple[Probe, dict]:
    """Train one probe with early stopping on the validation loss.

    Returns the probe (best epoch's weights) and ``{"epochs", "best_epoch", "valid_loss"}``.
    """
    if output not in OUTPUTS:
        raise ValueError(f"output: expected one of {OUTPUTS}, got {output!r}")
    s = settings or ProbeSettings()
    xtr = torch.as_tensor(np.asarray(x_train, dtype=np.float32))
    xva = torch.as_tensor(np.asarray(x_valid, dtype=np.float32))
    if xtr.ndim != 2 or xva.ndim != 2 or xtr.shape[1] != xva.shape[1]:
        raise ValueError(
            f"x_train/x_valid: expected (N, D) arrays of one D, got {tuple(xtr.shape)} / {tuple(xva.shape)}"
        )
    if len(xtr) == 0 or len(xva) == 0:
        raise ValueError("x_train/x_valid: empty split")
    ytr, yva = _targets(y_train, output), _targets(y_valid, output)
    if len(ytr) != len(xtr) or len(yva) != len(xva):
        raise ValueError(
            f"y_train/y_valid: {len(ytr)}/{len(yva)} labels for {len(xtr)}/{len(xva)} rows"
        )
    loss_fn = _loss_fn(output)
    n_out = 1 if output == "binary" else n_outputs
    width = s.hidden or n_out
    macs = s.batch_size * (xtr.shape[1] * width + (s.hidden * n_out if s.hidden else 0))
    with (
        _threads(1 if macs < _SMALL_BATCH_MACS else torch.get_num_threads()),
        torch.random.fork_rng(devices=[]),
    ):
        torch.manual_seed(seed)
        probe = Probe(xtr.shape[1], n_out, s.hidden, s.dropout)
        probe.mean.copy_(xtr.mean(0))
        probe.std.copy_(xtr.std(0, unbiased=False).clamp_min(1e-6))
        opt = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=weight_decay)
        gen = torch.Generator().manual_seed(seed)
        best, best_state, best_epoch, bad = float("inf"), None, -1, 0
        epoch = 0
        for epoch in range(s.max_epochs):
            probe.train()
            for idx in torch.randperm(len(xtr), generator=gen).split(s.batch_size):
                opt.zero_grad(set_to_none=True)
                loss_fn(probe(xtr[idx]), ytr[idx]).backward()
                opt.step()
            probe.eval()
            with torch.no_grad():
                vl = float(
                    sum(
                        loss_fn(probe(xva[i : i + 8192]), yva[i : i + 8192]).item()
                        * len(xva[i : i + 8192])
                        for i in range(0, len(xva), 8192)
                    )
                    / len(xva)
                )
            if vl < best - 1e-6:
                best, best_state, best_epoch, bad = vl, copy.deepcopy(probe.state_dict()), epoch, 0
            else:
                bad += 1
                if bad >= s.patience:
                    break
        probe.load_state_dict(best_state)
        probe.eval()
    return probe, {"epochs": epoch + 1, "best_epoch": best_epoch + 1, "valid_loss": best}


def fit_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_valid: np.ndarray,
    y_valid: np.ndarray,
    *,
    output: str,
    n_outputs: int,
    select: Callable[[Probe], float],
    settings: ProbeSettings | None = None,
    grid: dict[str, Sequence[float]] | None = None,
    seed: int = 0,
) -> tuple[Probe, dict]:
    """Grid search over ``lr`` × ``weight_decay``; ``select(probe)`` scores a trained probe on the
    validation split (higher is better). Returns the best probe and a record of the search:
    ``{"lr", "weight_decay", "valid_score", "grid": [...], "settings": {...}}``."""
    g = {**GRID, **(grid or {})}
    s = settings or ProbeSettings()
    best_probe, best_rec, records = None, None, []
    for lr, wd in itertools.product(g["lr"], g["weight_decay"]):
        probe, info = train_probe(
            x_train, y_train, x_valid, y_valid, output=output, n_outputs=n_outputs,
            settings=s, lr=lr, weight_decay=wd, seed=seed,
        )  # fmt: skip
        score = float(select(probe))
        rec = {"lr": lr, "weight_decay": wd, "valid_score": score, **info}
        records.append(rec)
        if best_rec is None or score > best_rec["valid_score"]:
            best_probe, best_rec = probe, rec
    return best_probe, {**best_rec, "grid": records, "settings": asdict(s)}
