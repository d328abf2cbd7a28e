"""``muse-fast probe`` and encoder loading: checkpoints, random init, errors."""

from __future__ import annotations

import json

import pytest
import torch

from muse_fast.cli import main
from muse_fast.eval import load_encoder, random_init_like


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A Myna-Hybrid tiny checkpoint written by the training code (weights moved away from their
    initialisation, as a run would)."""
    from muse_fast import models
    from muse_fast.train.checkpoint import save_checkpoint
    from muse_fast.train.config import make_config, to_dict

    cfg = make_config("myna-hybrid", overrides={"model": {"size": "tiny"}, "seed": 3})
    torch.manual_seed(cfg.seed)
    model = models.create("myna-hybrid", **cfg.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    out = tmp_path_factory.mktemp("run")
    save_checkpoint(out, 7, model, {"step": 7}, to_dict(cfg))
    return out, model


def test_load_encoder_checkpoint_and_random_twin(checkpoint):
    out, trained = checkpoint
    model, spec = load_encoder(out)
    assert spec.kind == "checkpoint" and spec.model == "myna-hybrid" and spec.step == 7
    assert spec.overrides == {"size": "tiny"} and spec.seed == 3
    for k, v in trained.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    rnd, rspec = random_init_like(spec)
    assert rspec.kind == "random-init" and rspec.seed == 3
    from muse_fast import models

    torch.manual_seed(3)  # what the training loop does before building the model
    initial = models.create("myna-hybrid", size="tiny")
    for k, v in initial.state_dict().items():
        assert torch.equal(rnd.state_dict()[k], v), k
    assert any(not torch.equal(rnd.state_dict()[k], v) for k, v in trained.state_dict().items())


def test_load_encoder_by_name_and_errors(tmp_path):
    a, spec = load_encoder("myna-hybrid", size="tiny", seed=5)  # a model name as the checkpoint
    b, _ = load_encoder(model="myna-hybrid", size="tiny", seed=5)
    assert spec.kind == "random-init" and spec.overrides == {"size": "tiny"}
    for k, v in a.state_dict().items():
        assert torch.equal(b.state_dict()[k], v)
    with pytest.raises(ValueError, match="neither an existing checkpoint path nor a model name"):
        load_encoder(model="no-such-model")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_encoder(tmp_path)
    with pytest.raises(ValueError, match="disagree"):
        load_encoder("myna-hybrid", model="vit1d")


def test_cli_probe_checkpoint(checkpoint, tmp_path, capsys):
    out, _ = checkpoint
    res = tmp_path / "res.json"
    args = ["probe", "--task", "synthetic-key", "--checkpoint", str(out), "--n-tracks", "10",
            "--duration", "2", "--probe", "linear", "--lr", "1e-2", "--weight-decay", "0",
            "--max-epochs", "10", "--cache-dir", str(tmp_path / "cache"), "--out", str(res), "--quiet"]  # fmt: skip
    assert main(args) == 0
    table = capsys.readouterr().out
    for name in ("pretrained", "random-init", "chroma", "test weighted_score"):
        assert name in table
    data = json.loads(res.read_text())
    assert [r["features"] for r in data["rows"]] == ["pretrained", "random-init", "chroma"]
    assert data["encoder"]["kind"] == "checkpoint" and data["encoder"]["step"] == 7
    assert data["splits"] == {"train": 7, "valid": 1, "test": 2}
    for r in data["rows"]:
        assert 0.0 <= r["test"]["weighted_score"] <= 1.0 and r["lr"] == 1e-2
    # the pre-trained and random encoders give different features (different weights hashes)
    assert data["rows"][0]["extractor"] != data["rows"][1]["extractor"]
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 9  # 3 extractors × 3 splits


def test_cli_probe_errors(capsys, tmp_path):
    assert main(["probe", "--task", "nope", "--model", "myna-hybrid"]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err
    assert main(["probe", "--task", "synthetic-key"]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert main(["probe", "--task", "synthetic-key", "--checkpoint", str(tmp_path / "x")]) == 2
    assert "neither an existing checkpoint" in capsys.readouterr().err
    assert main(["probe", "--task", "gtzan", "--model", "myna-hybrid"]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["probe", "--task", "synthetic-key", "--model", "vit1d", "--baselines", "x"]) == 2
    with pytest.raises(SystemExit):
        main(["probe", "--task", "synthetic-key", "--model", "vit1d", "--layer", "top"])


def test_cli_probe_layer_all_random_init(tmp_path, capsys):
    res = tmp_path / "res.json"
    args = ["probe", "--task", "synthetic-key", "--model", "myna-hybrid", "--size", "tiny",
            "--layer", "all", "--baselines", "none", "--n-tracks", "8", "--duration", "1",
            "--probe", "mlp", "--lr", "1e-2", "--weight-decay", "0", "--max-epochs", "3",
            "--no-cache", "--out", str(res), "--quiet"]  # fmt: skip
    assert main(args) == 0
    data = json.loads(res.read_text())
    assert [r["features"] for r in data["rows"]] == ["random-init@L0", "random-init@L1"]
    assert [r["probe"] for r in data["rows"]] == ["mlp", "mlp"]
    assert "layer=0" in data["rows"][0]["extractor"] and "layer=1" in data["rows"][1]["extractor"]
    assert data["encoder"]["kind"] == "random-init" and data["encoder"]["layer"] == "all"


def test_cli_probe_gtzan_folder(tmp_path):
    import numpy as np
    import soundfile as sf

    for g, genre in enumerate(["blues", "metal", "pop"]):
        for i in range(3):
            p = tmp_path / "genres" / genre / f"{genre}.{i:05d}.wav"
            p.parent.mkdir(parents=True, exist_ok=True)
            t = np.arange(11025) / 22050
            sf.write(str(p), 0.3 * np.sin(2 * np.pi * (200 + 100 * g + 7 * i) * t), 22050)
    res = tmp_path / "res.json"
    args = ["probe", "--task", "gtzan", "--data", str(tmp_path), "--model", "myna-hybrid",
            "--size", "tiny", "--baselines", "handcrafted", "--probe", "linear", "--lr", "1e-2",
            "--weight-decay", "0", "--max-epochs", "3", "--no-cache", "--out", str(res), "--quiet"]  # fmt: skip
    assert main(args) == 0
    data = json.loads(res.read_text())
    assert [r["features"] for r in data["rows"]] == ["random-init", "mfcc"]
    assert sum(data["splits"].values()) == 9 and data["primary"] == "accuracy"
    assert all(0.0 <= r["test"]["accuracy"] <= 1.0 for r in data["rows"])
