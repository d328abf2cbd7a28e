"""SpeechBrain / lightly / pytorch-metric-learning drop-ins against the real packages."""

from __future__ import annotations

import warnings

import pytest
import torch

from muse_fast.integrations import apply_muse_fast


def test_speechbrain_quantizer_tokens_identical():
    quantisers = pytest.importorskip("speechbrain.nnet.quantisers")
    ref = quantisers.RandomProjectionQuantizer(40, 16, 300)
    ours = apply_muse_fast(quantisers.RandomProjectionQuantizer(40, 16, 300))
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert list(ours.state_dict()) == list(ref.state_dict())
    x = torch.randn(3, 57, 40)
    assert torch.equal(ours(x), ref(x))


def test_lightly_ntxent_matches():
    lightly_loss = pytest.importorskip("lightly.loss")
    ref = lightly_loss.NTXentLoss(temperature=0.3)
    ours = apply_muse_fast(lightly_loss.NTXentLoss(temperature=0.3))
    z1, z2 = torch.randn(6, 16, requires_grad=True), torch.randn(6, 16, requires_grad=True)
    l_ref, l_ours = ref(z1, z2), ours(z1, z2)
    torch.testing.assert_close(l_ours, l_ref, rtol=1e-5, atol=1e-6)
    g_ref = torch.autograd.grad(l_ref, (z1, z2))
    g_ours = torch.autograd.grad(l_ours, (z1, z2))
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    banked = apply_muse_fast(lightly_loss.NTXentLoss(memory_bank_size=(8, 16)))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert torch.isfinite(banked(z1, z2))  # falls back to lightly's own path


def test_pml_ntxent_matches_simclr_labels():
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    ref = losses.NTXentLoss(temperature=0.2)
    ours = apply_muse_fast(losses.NTXentLoss(temperature=0.2))
    n = 5
    emb = torch.randn(2 * n, 12, requires_grad=True)
    labels = torch.randperm(n).repeat(2)[torch.randperm(2 * n)]
    torch.testing.assert_close(ours(emb, labels), ref(emb, labels), rtol=1e-5, atol=1e-6)
    three = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3, 3, 4])  # a label on three rows: fallback
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        torch.testing.assert_close(ours(emb, three), ref(emb, three))


def test_unsupported_object_is_refused():
    with pytest.raises(TypeError, match="MusicFM25Hz"):
        apply_muse_fast(torch.nn.Identity())
