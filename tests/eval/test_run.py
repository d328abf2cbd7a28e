"""End to end on the built-in synthetic tasks with hand-crafted features (fast), and scoring."""

from __future__ import annotations

import numpy as np
import pytest

from muse_fast.eval import HandcraftedFeatures, Track, format_table, get_task, probe_task, score
from muse_fast.eval.run import stack
from muse_fast.eval.task import Task

ONE = {"lr": (1e-2,), "weight_decay": (0.0,)}


def test_synthetic_beat_with_onset_strength(tmp_path):
    task = get_task("synthetic-beat", n_tracks=12, duration_s=3.0)
    res = probe_task(
        task, [HandcraftedFeatures("onset")], probes=("linear",), grid=ONE, cache_dir=tmp_path
    )
    (row,) = res["rows"]
    assert res["primary"] == "f_measure" and row["features"] == "onset" and row["dim"] == 7
    # drums put an onset on every beat: a linear probe on onset strength finds most of them
    assert row["test"]["f_measure"] > 0.5, row
    assert row["test"]["threshold"] == row["valid"]["threshold"]  # chosen on validation
    table = format_table(res)
    assert "test f_measure" in table and "onset" in table


def test_synthetic_chord_with_chroma():
    task = get_task("synthetic-chord", n_tracks=12, duration_s=3.0)
    res = probe_task(task, [HandcraftedFeatures("chroma")], probes=("linear",), grid=ONE)
    (row,) = res["rows"]
    assert set(row["test"]) == {"majmin", "root"}
    assert row["test"]["majmin"] > 0.15  # chance is about 1 / 24
    assert row["test"]["root"] >= row["test"]["majmin"]


def test_stack_frame_targets():
    task = get_task("synthetic-beat", n_tracks=4, duration_s=2.0)
    tracks = task.splits["train"][:2]
    feats = [np.zeros((100, 3), np.float32), np.zeros((100, 3), np.float32)]
    x, y = stack(task, tracks, feats)
    assert x.shape == (200, 3) and y.shape == (200,)
    beats = tracks[0].label["beats"]
    np.testing.assert_array_equal(np.nonzero(y[:100] == 1.0)[0], np.floor(beats * 50).astype(int))


def test_score_global_tasks():
    key = get_task("synthetic-key", n_tracks=6, duration_s=1.0)
    tracks = key.splits["train"]
    onehot = [np.eye(24)[t.label] for t in tracks]
    assert score(key, tracks, onehot) == {"weighted_score": 1.0, "accuracy": 1.0}
    genre = Task(
        "g", "genre", {"train": tracks, "valid": tracks, "test": tracks}, ("a",) * 24, "mfcc", "x"
    )
    assert score(genre, tracks, [np.eye(24)[0]] * len(tracks)) == {
        "accuracy": float(np.mean([t.label == 0 for t in tracks]))
    }
    tagging = [Track(str(i), np.array([i % 2, 1 - i % 2, 1], np.float32)) for i in range(4)]
    t = Task(
        "tags",
        "tagging",
        {"train": tagging, "valid": tagging, "test": tagging},
        ("a", "b", "c"),
        "mfcc",
        "x",
    )
    out = score(t, tagging, [tr.label for tr in tagging])
    assert out["roc_auc"] == 1.0 and out["n_tags_scored"] == 2


def test_probe_task_rejects_unknown_probe():
    task = get_task("synthetic-key", n_tracks=6, duration_s=1.0)
    with pytest.raises(ValueError, match="probes"):
        probe_task(task, [], probes=("svm",))
