"""``GCLoss_v1`` drop-in and ``GlobalContrastiveLoss`` (libauc rule) against the real
``libauc.losses.GCLoss_v1`` (pip ``libauc``, installed without its heavy dependencies)."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch

libauc_losses = pytest.importorskip("libauc.losses")

from muse_fast.integrations.libauc import GCLoss_v1  # noqa: E402
from muse_fast.nn import GlobalContrastiveLoss  # noqa: E402

N_DATA, DIM, TAU = 12, 8, 0.2
# batches mixing seen and unseen samples, as soon as the second one
BATCHES = [[0, 1, 2, 3], [2, 3, 4, 5], [6, 0, 7, 5], [8, 9, 1, 4]]


def _libauc(**kw):
    with contextlib.redirect_stdout(io.StringIO()):  # libauc prints its schedule
        return libauc_losses.GCLoss_v1(N=N_DATA, tau=TAU, device="cpu", **kw)


def _views(n):
    z = [torch.randn(n, DIM) for _ in range(2)]  # libauc stores float32 u
    return [t.requires_grad_() for t in z]


def _run(loss_fn, zs, idx):
    out = []
    for (z1, z2), i in zip(zs, idx):
        loss = loss_fn(z1, z2, i)
        g1, g2 = torch.autograd.grad(loss, (z1, z2))
        out.append((loss.detach(), g1, g2))
    return out


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_gcloss_v1_matches_libauc(schedule):
    kw = dict(gamma=0.9, gamma_schedule=schedule)
    if schedule == "cosine":
        kw["gamma_decay_epochs"] = 4
    ref, ours = _libauc(**kw), GCLoss_v1(N=N_DATA, tau=TAU, device="cpu", **kw)
    zs = [_views(4) for _ in BATCHES]
    idx = [torch.tensor(b) for b in BATCHES]
    for epoch in (0, 1):
        with contextlib.redirect_stdout(io.StringIO()):
            ref.adjust_gamma(epoch)
        ours.adjust_gamma(epoch)
        assert ours.gamma == pytest.approx(ref.gamma)
        for (l1, *g1), (l2, *g2) in zip(_run(ref, zs, idx), _run(ours, zs, idx)):
            torch.testing.assert_close(l2, l1, rtol=1e-5, atol=1e-6)
            for a, b in zip(g2, g1):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(ours.u, ref.u.float(), rtol=1e-5, atol=0)
    assert ours.u.shape == (N_DATA, 1) and ours.u.device.type == "cpu"
    ours.u = torch.zeros(N_DATA, 1)
    assert (ours.u == 0).all()
    with pytest.raises(ValueError, match=r"\(12, 1\)"):
        ours.u = torch.zeros(N_DATA)


def test_gcloss_v1_refuses_isogclr_and_distributed():
    with pytest.raises(NotImplementedError, match="iSogCLR"):
        GCLoss_v1(N=4, enable_isogclr=True)
    with pytest.raises(NotImplementedError, match="GlobalContrastiveLoss"):
        GCLoss_v1(N=4, distributed=True)


def test_global_contrastive_loss_default_follows_libauc():
    ref = _libauc(gamma=0.9)
    ours = GlobalContrastiveLoss(N_DATA, temperature=TAU, gamma=0.9)
    zs = [_views(4) for _ in BATCHES]
    idx = [torch.tensor(b) for b in BATCHES]
    for (l1, *g1), (l2, *g2) in zip(_run(ref, zs, idx), _run(ours, zs, idx)):
        torch.testing.assert_close(l2, l1, rtol=1e-5, atol=1e-6)
        for a, b in zip(g2, g1):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ours.u, ref.u[:, 0].float(), rtol=1e-5, atol=0)
    # the other rule differs exactly where a batch mixes seen and unseen samples
    other = GlobalContrastiveLoss(N_DATA, temperature=TAU, gamma=0.9, init="batch")
    _run(other, zs, idx)
    assert not torch.allclose(other.u, ours.u, rtol=1e-3)
