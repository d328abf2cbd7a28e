"""Training from prepared corpora: `pretrain --data CORPUS`, exact resume, rate mismatch, and the
synthetic default read from its cached corpus."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import TinyContrastive, tiny_overrides

from muse_fast.cli import main
from muse_fast.data import PreparedCorpus, prepare_folder
from muse_fast.train import make_config, train

sf = pytest.importorskip("soundfile")  # not installed on every machine (the GPU one)


def _corpus(tmp_path: Path, rate: int, n: int = 6) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng()
    for i in range(n):
        x = (0.2 * rng.standard_normal(int(rate * rng.uniform(0.5, 1.0)))).astype(np.float32)
        sf.write(src / f"t{i}.wav", x, 44100 if i % 2 else rate)
    return prepare_folder(src, tmp_path / "corpus", rate, shard_bytes=20_000)


def test_pretrain_on_prepared_corpus_resumes_exactly(tmp_path, one_thread):
    corpus = _corpus(tmp_path, 8000)
    init = int(np.random.default_rng().integers(2**31))  # the stand-in's weights, same per run

    def run(out, **kw):
        torch.manual_seed(init)
        cfg = make_config(
            "myna-hybrid",
            overrides=tiny_overrides(
                out, steps=6, ckpt_every=2, warmup_steps=1, **{"data.root": str(corpus)}
            ),
        )
        return train(cfg, model=TinyContrastive(sample_rate=8000, segment_samples=1024), **kw)

    full = run(tmp_path / "full")
    killed = run(tmp_path / "res", stop_at=3)
    assert killed["checkpoint"].endswith("step_00000002")
    resumed = run(tmp_path / "res", resume=True)
    ref = dict(full["losses"])
    assert sorted(ref) == [1, 2, 3, 4, 5, 6]
    assert dict(killed["losses"]) == {k: ref[k] for k in (1, 2, 3)}
    assert [s for s, _ in resumed["losses"]] == [3, 4, 5, 6]
    for step, loss in resumed["losses"]:
        assert loss == pytest.approx(ref[step], abs=1e-6, rel=0), step
    assert full["skipped_at_scan"] == {}


def test_pretrain_cli_recognizes_a_corpus_and_refuses_a_wrong_rate(tmp_path, one_thread, capsys):
    # the tiny Myna-Hybrid crop is ~3 s: 4-s tracks
    src = tmp_path / "long"
    src.mkdir()
    rng = np.random.default_rng()
    for i in range(3):
        sf.write(
            src / f"l{i}.flac", (0.2 * rng.standard_normal(16000 * 4)).astype(np.float32), 16000
        )
    good = prepare_folder(src, tmp_path / "c16", 16000)
    out = tmp_path / "run"
    argv = ["pretrain", "--recipe", "myna-hybrid", "--steps", "1", "--data", str(good)]
    for k, v in tiny_overrides(out, batch_size=2):
        argv += ["--set", f"{k}={v}"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "prepared corpus" in err and "done: step 1" in err
    wrong = prepare_folder(src, tmp_path / "c24", 24000)
    argv[argv.index(str(good))] = str(wrong)
    argv[argv.index(f"out={out}")] = f"out={tmp_path / 'run2'}"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "24000 Hz" in err and "16000 Hz" in err and "muse-fast prepare" in err


def test_synthetic_default_is_rendered_once_into_the_cache(tmp_path, one_thread):
    cache = Path(os.environ["MUSE_FAST_CACHE"])
    overrides = {"data.synthetic_tracks": 5, "data.synthetic_duration_s": 1.0, "steps": 1}
    model = TinyContrastive(sample_rate=8000, segment_samples=1024)
    train(
        make_config("myna-hybrid", overrides=tiny_overrides(tmp_path / "a", **overrides)),
        model=model,
    )
    folders = sorted(cache.glob("synthetic-5x*"))
    assert len(folders) == 1
    stamp = {p.name: p.stat().st_mtime_ns for p in folders[0].iterdir()}
    s = train(
        make_config("myna-hybrid", overrides=tiny_overrides(tmp_path / "b", **overrides)),
        model=model,
    )
    assert s["step"] == 1
    assert {
        p.name: p.stat().st_mtime_ns for p in folders[0].iterdir()
    } == stamp  # read, not rewritten
    c = PreparedCorpus(folders[0])
    assert len(c) == 5 and c.sample_rate == 8000 and c.manifest["synthetic"]["n_tracks"] == 5
