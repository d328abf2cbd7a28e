"""The training loop: exact resumption, checkpoints, bad data, schedules."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from train_helpers import TinyContrastive, tiny_overrides

from muse_fast.train import checkpoint as ckpt
from muse_fast.train import lr_lambda, make_config, train

sf = pytest.importorskip("soundfile")  # not installed on every machine (the GPU one)


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_resume_is_exact_real_model(tmp_path, one_thread):
    """Killed after step 3 (last checkpoint: step 2), resumed with DataLoader workers: the same
    losses and weights as a run that never stopped (Myna-Hybrid tiny, synthetic corpus)."""

    def cfg(out, workers):
        return make_config(
            "myna-hybrid",
            overrides=tiny_overrides(
                out, steps=5, ckpt_every=2, warmup_steps=1, num_workers=workers, tensorboard=True
            ),
        )

    full = train(cfg(tmp_path / "full", 0))
    killed = train(cfg(tmp_path / "res", 0), stop_at=3)
    assert killed["step"] == 3 and killed["checkpoint"].endswith("step_00000002")
    resumed = train(cfg(tmp_path / "res", 2), resume=True)

    ref = dict(full["losses"])
    assert sorted(ref) == [1, 2, 3, 4, 5]
    assert dict(killed["losses"]) == {k: ref[k] for k in (1, 2, 3)}
    for step, loss in resumed["losses"]:
        assert step >= 3
        assert loss == pytest.approx(ref[step], abs=1e-6, rel=0), step
    # the log holds each step once (the killed run's step 3 was replaced)
    rows = _csv(tmp_path / "res" / "log.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5]
    assert [float(r["loss"]) for r in rows] == pytest.approx(
        [ref[k] for k in range(1, 6)], abs=1e-6
    )
    a = _weights(ckpt.latest_checkpoint(tmp_path / "full"))
    b = _weights(ckpt.latest_checkpoint(tmp_path / "res"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    assert (tmp_path / "res" / "tb").is_dir() and (tmp_path / "res" / "summary.json").is_file()


def test_checkpoints_keep_last_atomic_and_resume_rules(tmp_path, one_thread):
    out = tmp_path / "run"
    torch.manual_seed(0)
    cfg = make_config(
        "myna-hybrid", overrides=tiny_overrides(out, steps=5, ckpt_every=1, keep_last=2)
    )
    train(cfg, model=TinyContrastive(sample_rate=8000, segment_samples=1024))
    steps = [s for s, _ in ckpt.list_checkpoints(out)]
    assert steps == [4, 5]
    files = sorted(p.name for p in (out / "checkpoints" / "step_00000005").iterdir())
    assert files == ["config.json", "model.safetensors", "state.pt"]  # no temporary files left
    st = ckpt.load_state(out / "checkpoints" / "step_00000005")
    assert st["step"] == 5 and st["consumed"] == 20 and len(st["rng"]) == 1
    assert set(st["rng"][0]) == {"torch", "cuda", "numpy", "python"}
    # a half-written checkpoint (no state.pt) is never picked
    partial = ckpt.checkpoint_path(out, 9)
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"partial")
    assert ckpt.latest_checkpoint(out).name == "step_00000005"
    assert ckpt.resolve_checkpoint(out).name == "step_00000005"
    # a fresh run refuses to overwrite a run folder with checkpoints
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, model=TinyContrastive(sample_rate=8000, segment_samples=1024))
    # resuming a finished run does no more steps
    s = train(cfg, model=TinyContrastive(sample_rate=8000, segment_samples=1024), resume=True)
    assert s["step"] == 5 and s["losses"] == []


def test_empty_folder_fails_before_training(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "readme.txt").write_text("no audio here")
    cfg = make_config(
        "myna-hybrid",
        overrides=tiny_overrides(
            tmp_path / "run", steps=2, **{"data.root": str(tmp_path / "data")}
        ),
    )
    with pytest.raises(ValueError, match="no usable audio"):
        train(cfg, model=TinyContrastive())
    assert not (tmp_path / "run" / "log.csv").exists()


def test_bad_files_skipped_and_counted(tmp_path, one_thread):
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        sf.write(data / f"good{i}.wav", (0.1 * rng.standard_normal(8000)).astype(np.float32), 8000)
    sf.write(data / "silent.wav", np.zeros(8000, np.float32), 8000)
    (data / "corrupt.flac").write_bytes(b"fLaC" + bytes(300))
    sf.write(data / "short.wav", np.ones(100, np.float32), 8000)
    cfg = make_config(
        "myna-hybrid",
        overrides=tiny_overrides(
            tmp_path / "run", steps=3, batch_size=4, **{"data.root": str(data)}
        ),
    )
    torch.manual_seed(0)
    s = train(cfg, model=TinyContrastive(sample_rate=8000, segment_samples=2048))
    assert s["step"] == 3
    assert s["skipped_at_scan"] == {"corrupt": 1, "unsupported": 0, "too_short": 1}
    assert s["skipped_reads"] >= 3  # the silent file is in every batch of 4 out of 4 files
    rows = _csv(tmp_path / "run" / "log.csv")
    assert int(rows[-1]["skipped_reads"]) == s["skipped_reads"]


def test_lr_schedule_warmup_then_cosine():
    cfg = make_config("muselq-branchformer", overrides=[("steps", 110), ("warmup_steps", 10)])
    f = lr_lambda(cfg)
    lrs = [cfg.lr * f(s) for s in range(110)]
    assert lrs[0] == pytest.approx(1e-5) and lrs[9] == pytest.approx(1e-4)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert cfg.lr * f(110) == pytest.approx(1e-5)  # cosine ends at min_lr
    assert cfg.lr * f(60) == pytest.approx(
        1e-5 + (1e-4 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 0.5))
    )
    auto = make_config("myna-hybrid", overrides=[("steps", 300)])
    assert lr_lambda(auto)(0) == pytest.approx(1 / 15)  # auto warm-up: 5 % of the steps
