"""Probes: they learn, early-stop, are seeded, and the grid is chosen on validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from muse_fast.eval.probes import GRID, ProbeSettings, fit_probe, train_probe


def _rng() -> np.random.Generator:
    """Fresh data every session: drawn from NumPy's global state, which the harness seeds per
    test from the session seed (MUSE_FAST_TEST_SEED replays it)."""
    return np.random.default_rng(np.random.randint(2**31))


def _blobs(n, d=8, k=3, noise=0.3):
    rng = _rng()
    centres = rng.normal(size=(k, d)) * 2
    y = rng.integers(k, size=n)
    return (centres[y] + noise * rng.normal(size=(n, d))).astype(np.float32) * 5 + 3, y


FAST = dict(max_epochs=60, patience=5, batch_size=32)


@pytest.mark.parametrize(
    "settings", [ProbeSettings.linear(**FAST), ProbeSettings.mlp(**FAST)], ids=["linear", "mlp"]
)
def test_multiclass_probe_learns(settings):
    xtr, ytr = _blobs(200)
    probe, info = train_probe(
        xtr, ytr, xtr[:60], ytr[:60], output="multiclass", n_outputs=3, settings=settings, lr=1e-2
    )
    p = probe.predict(xtr, "multiclass")
    assert p.shape == (200, 3)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5)
    assert (p.argmax(1) == ytr).mean() > 0.95
    assert 1 <= info["best_epoch"] <= info["epochs"] <= settings.max_epochs
    # hidden layer of 512 with dropout 0.25 in the MLP probe
    if settings.hidden:
        assert probe.net[0].out_features == 512 and probe.net[2].p == 0.25


def test_probe_is_seeded_and_leaves_global_rng():
    xtr, ytr = _blobs(80)
    s = ProbeSettings.mlp(max_epochs=5, patience=5, batch_size=16)
    seed = int(np.random.randint(2**31))
    state = torch.get_rng_state()
    a, _ = train_probe(xtr, ytr, xtr, ytr, output="multiclass", n_outputs=3, settings=s, seed=seed)
    assert torch.equal(state, torch.get_rng_state())
    b, _ = train_probe(xtr, ytr, xtr, ytr, output="multiclass", n_outputs=3, settings=s, seed=seed)
    c, _ = train_probe(
        xtr, ytr, xtr, ytr, output="multiclass", n_outputs=3, settings=s, seed=seed + 1
    )
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    assert not torch.equal(a.net[0].weight, c.net[0].weight)


def test_early_stopping_on_validation_loss():
    rng = _rng()
    x = rng.normal(size=(64, 16)).astype(np.float32)
    y = rng.integers(3, size=64)  # labels unrelated to x: validation loss only gets worse
    xv = rng.normal(size=(64, 16)).astype(np.float32)
    yv = rng.integers(3, size=64)
    s = ProbeSettings.mlp(max_epochs=500, patience=4, batch_size=16)
    _, info = train_probe(x, y, xv, yv, output="multiclass", n_outputs=3, settings=s, lr=1e-2)
    assert info["epochs"] < 100
    assert info["epochs"] - info["best_epoch"] == 4


def test_multilabel_and_binary_outputs():
    rng = _rng()
    x = rng.normal(size=(300, 6)).astype(np.float32)
    tags = (x[:, :3] > 0).astype(np.float32)  # tag j = sign of feature j
    s = ProbeSettings.linear(max_epochs=80, patience=10, batch_size=64)
    probe, _ = train_probe(x, tags, x, tags, output="multilabel", n_outputs=3, settings=s, lr=1e-2)
    p = probe.predict(x, "multilabel")
    assert p.shape == (300, 3) and ((p > 0.5) == tags).mean() > 0.95
    soft = np.where(x[:, 0] > 1, 1.0, np.where(x[:, 0] > 0.8, 0.5, 0.0)).astype(np.float32)
    probe, _ = train_probe(x, soft, x, soft, output="binary", n_outputs=1, settings=s, lr=1e-2)
    p = probe.predict(x, "binary")
    assert p.shape == (300,)
    assert p[x[:, 0] > 1.5].mean() > 0.7 and p[x[:, 0] < 0].mean() < 0.1


def test_fit_probe_chooses_on_validation():
    xtr, ytr = _blobs(100)
    s = ProbeSettings.linear(max_epochs=3, patience=3, batch_size=32)
    seen = []

    def select(probe):  # a validation score that prefers the second grid point
        seen.append(probe)
        return float(len(seen) == 2)

    probe, rec = fit_probe(
        xtr, ytr, xtr, ytr, output="multiclass", n_outputs=3, select=select, settings=s
    )
    assert len(rec["grid"]) == len(GRID["lr"]) * len(GRID["weight_decay"]) == len(seen)
    assert probe is seen[1]
    assert (rec["lr"], rec["weight_decay"]) == (
        rec["grid"][1]["lr"],
        rec["grid"][1]["weight_decay"],
    )
    assert rec["valid_score"] == 1.0 and rec["settings"]["hidden"] == 0
    _, rec = fit_probe(
        xtr, ytr, xtr, ytr, output="multiclass", n_outputs=3, select=lambda p: 0.0,
        settings=s, grid={"lr": (0.5,), "weight_decay": (0.1,)},
    )  # fmt: skip
    assert (rec["lr"], rec["weight_decay"], len(rec["grid"])) == (0.5, 0.1, 1)


def test_probe_input_errors():
    x, y = _blobs(10)
    with pytest.raises(ValueError, match="output"):
        train_probe(x, y, x, y, output="regression", n_outputs=3)
    with pytest.raises(ValueError, match="x_train/x_valid"):
        train_probe(x, y, x[:, :4], y, output="multiclass", n_outputs=3)
    with pytest.raises(ValueError, match="y_train/y_valid"):
        train_probe(x, y[:5], x, y, output="multiclass", n_outputs=3)
