"""NTXentLoss and GlobalContrastiveLoss modules (single process; two ranks: tests/distributed)."""

from __future__ import annotations

import io
import math

import pytest
import torch

import muse_fast
from muse_fast.nn import GlobalContrastiveLoss, NTXentLoss
from muse_fast.ops import global_contrastive_loss_reference, nt_xent_reference
from muse_fast.testing import assert_within_eager_error


def test_ntxent_module_is_the_op():
    z1, z2 = torch.randn(6, 16), torch.randn(6, 16)
    for module, args in (
        (NTXentLoss(temperature=0.3), (0.3,)),
        (NTXentLoss(temperature=2.0, normalize=False, gather_distributed=False), (2.0, False)),
    ):
        loss = module(z1, z2)
        assert torch.equal(loss, muse_fast.ops.nt_xent(z1, z2, *args))  # the op, nothing else
        want = nt_xent_reference(z1.double(), z2.double(), *args)
        eager = nt_xent_reference(z1, z2, *args)
        # the rule; floor: float32 ulps of the logits and log 2N, the terms that cancel in the loss
        z = torch.cat([z1, z2]).double()  # (2N, D)
        zn = torch.nn.functional.normalize(z, dim=1) if len(args) == 1 else z
        terms = float((zn @ zn.T).abs().max()) / args[0] + math.log(z.shape[0])
        assert_within_eager_error(
            loss, eager, want, atol=8 * torch.finfo(torch.float32).eps * terms
        )
    assert "temperature=0.3" in repr(NTXentLoss(temperature=0.3))


def test_ntxent_module_bad_arguments():
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(temperature=0.0)
    with pytest.raises(TypeError, match="normalize"):
        NTXentLoss(normalize=1)
    with pytest.raises(ValueError, match="z1"):
        NTXentLoss()(torch.randn(1, 4), torch.randn(1, 4))


def test_gcl_module_updates_u_as_specified():
    torch.manual_seed(0)
    # init="batch": a new sample in a mixed batch starts at its batch estimate (the libauc
    # default is tested against libauc in tests/integrations/test_libauc.py)
    m = GlobalContrastiveLoss(dataset_size=10, temperature=0.2, gamma=0.9, init="batch")
    assert m.log_u.shape == (10,) and torch.isneginf(m.log_u).all()
    assert (m.u == 0).all()
    idx1 = torch.tensor([3, 7, 1])
    idx2 = torch.tensor([7, 0, 3])  # 7 and 3 seen, 0 new
    z = [torch.randn(3, 8, dtype=torch.float64) for _ in range(4)]
    loss1 = m(z[0], z[1], idx1)
    want1, lu1 = global_contrastive_loss_reference(
        z[0], z[1], torch.full((3,), -math.inf, dtype=torch.float64), 0.9, 0.2
    )
    torch.testing.assert_close(loss1.double(), want1)
    torch.testing.assert_close(m.log_u[idx1], lu1.float())
    untouched = [i for i in range(10) if i not in (3, 7, 1)]
    assert torch.isneginf(m.log_u[untouched]).all()
    loss2 = m(z[2], z[3], idx2)
    prev = torch.tensor([lu1[1], -math.inf, lu1[0]], dtype=torch.float64)
    want2, lu2 = global_contrastive_loss_reference(z[2], z[3], prev, 0.9, 0.2)
    torch.testing.assert_close(loss2.double(), want2, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(m.log_u[idx2], lu2.float())
    torch.testing.assert_close(m.log_u[1], lu1[2].float())  # not in batch 2: unchanged
    # the EMA by hand for sample 7 (seen): u = (1-γ) u_old + γ · mean of the two views' g
    g = torch.exp(torch.logsumexp(_neg_logits(z[2], z[3], 0.2), dim=1)) / 4
    u7 = (1 - 0.9) * math.exp(lu1[1]) + 0.9 * (g[0] + g[3]) / 2
    assert m.u[7].item() == pytest.approx(u7.item(), rel=1e-5)


def _neg_logits(z1, z2, tau):
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    m, n = z.shape[0], z1.shape[0]
    s = z @ z.T / tau
    ar = torch.arange(m)
    mask = (ar[:, None] == ar[None, :]) | (ar[None, :] == (ar[:, None] + n) % m)
    return s.masked_fill(mask, -math.inf)


def test_gcl_module_eval_mode_does_not_update():
    m = GlobalContrastiveLoss(dataset_size=5).eval()
    m(torch.randn(3, 4), torch.randn(3, 4), torch.tensor([0, 1, 2]))
    assert torch.isneginf(m.log_u).all()


def test_gcl_module_state_is_checkpointable():
    m = GlobalContrastiveLoss(dataset_size=6, temperature=0.1)
    z1, z2, idx = torch.randn(4, 8), torch.randn(4, 8), torch.tensor([5, 0, 2, 4])
    m(z1, z2, idx)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    m2 = GlobalContrastiveLoss(dataset_size=6, temperature=0.1)
    m2.load_state_dict(torch.load(buf))
    assert torch.equal(m2.log_u, m.log_u)
    a, b = m(z1, z2, idx), m2(z1, z2, idx)  # same state, same next step
    torch.testing.assert_close(a, b)
    assert "log_u" in dict(m.named_buffers())
    m.reset()
    assert torch.isneginf(m.log_u).all()


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gcl_module_backward(backend):
    m = GlobalContrastiveLoss(dataset_size=8, temperature=0.2)
    z1 = torch.randn(4, 6, requires_grad=True)
    z2 = torch.randn(4, 6, requires_grad=True)
    with muse_fast.backend(backend):
        loss = m(z1, z2, torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert torch.isfinite(z1.grad).all() and z1.grad.abs().sum() > 0


def test_gcl_module_bad_arguments():
    with pytest.raises(ValueError, match="dataset_size"):
        GlobalContrastiveLoss(dataset_size=0)
    with pytest.raises(ValueError, match="gamma"):
        GlobalContrastiveLoss(dataset_size=4, gamma=0.0)
    m = GlobalContrastiveLoss(dataset_size=4)
    z = torch.randn(3, 5)
    with pytest.raises(ValueError, match="index"):
        m(z, z, torch.tensor([0, 1, 4]))
    with pytest.raises(ValueError, match="index"):
        m(z, z, torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="index"):
        m(z, z, torch.tensor([0.0, 1.0, 2.0]))
