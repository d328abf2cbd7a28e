"""Metrics: key parsing and mir_eval scores, peak picking, chord intervals, tagging."""

from __future__ import annotations

import numpy as np
import pytest

from muse_fast.eval import metrics as M


@pytest.mark.parametrize(
    "text,cls",
    [
        ("C major", 0),
        ("D minor", 14),
        ("Eb major", 3),
        ("eb minor", 15),
        ("F# minor", 18),
        ("Gb major", 6),
        ("Bb min", 22),
        ("A:min", 21),
        ("Am", 21),
        ("B", 11),
        ("Cb major", 11),
    ],
)
def test_parse_key(text, cls):
    assert M.parse_key(text) == cls


@pytest.mark.parametrize("text", ["H minor", "D dorian", "", "C# major extra", "12"])
def test_parse_key_rejects(text):
    with pytest.raises(ValueError, match="key"):
        M.parse_key(text)


def test_key_names_round_trip_mir_eval():
    import mir_eval

    for c in range(24):
        name = M.key_name(c)
        mir_eval.key.validate_key(name)
        assert M.parse_key(name) == c


def test_key_weighted_score_mir_eval_weights():
    c_major, g_major, a_minor, c_minor, f_sharp = 0, 7, 21, 12, 6
    ref = [c_major] * 5
    est = [c_major, g_major, a_minor, c_minor, f_sharp]
    # exact 1, fifth 0.5, relative 0.3, parallel 0.2, other 0
    assert M.key_weighted_score(ref, est) == pytest.approx((1 + 0.5 + 0.3 + 0.2 + 0) / 5)
    with pytest.raises(ValueError, match="reference"):
        M.key_weighted_score([0, 1], [0])


def test_pick_peaks_and_beat_f_measure():
    rate = 50.0
    beats = np.array([0.31, 0.83, 1.35, 1.87, 2.39])
    act = np.zeros(150)
    idx = np.floor(beats * rate).astype(int)
    act[idx] = 0.9
    act[idx - 1] = 0.4
    act[idx + 1] = 0.4
    act[75] = 0.15  # below threshold: not a beat
    est = M.pick_peaks(act, rate, threshold=0.3)
    assert len(est) == len(beats)
    assert np.abs(est - beats).max() < 0.5 / rate + 1e-9
    assert M.beat_f_measure([beats], [est]) == 1.0
    # halving the estimate: precision 1, recall 3/5
    f = M.beat_f_measure([beats], [est[::2]])
    assert f == pytest.approx(2 * 1 * 0.6 / 1.6)
    assert len(M.pick_peaks(act, rate, threshold=0.95)) == 0


def test_pick_peaks_min_interval_and_plateau():
    act = np.zeros(100)
    act[10:13] = 1.0  # plateau: one peak, at its first frame
    act[20] = 0.8
    act[22] = 0.9  # within 0.1 s (5 frames) of 20: only the larger survives
    est = M.pick_peaks(act, 50.0, threshold=0.5, min_interval_s=0.1)
    assert len(est) == 2
    assert 10.5 / 50 - 1e-9 <= est[0] <= 12.5 / 50  # inside the plateau
    assert est[1] == pytest.approx(22.5 / 50, abs=0.01)


def test_frames_to_intervals():
    iv, lab = M.frames_to_intervals(np.array([0, 0, 0, 21, 21, 24]), 10.0)
    np.testing.assert_allclose(iv, [[0.0, 0.3], [0.3, 0.5], [0.5, 0.6]])
    assert lab == ["C:maj", "A:min", "N"]


def test_chord_weighted_accuracy():
    ref = (np.array([[0.0, 1.0], [1.0, 2.0]]), ["C:maj", "A:min"])
    perfect = M.frames_to_intervals(np.array([0] * 10 + [21] * 10), 10.0)
    assert M.chord_weighted_accuracy([ref], [perfect]) == pytest.approx(1.0)
    half = M.frames_to_intervals(np.array([0] * 10 + [9] * 10), 10.0)  # A:maj for A:min
    assert M.chord_weighted_accuracy([ref], [half]) == pytest.approx(0.5)
    assert M.chord_weighted_accuracy([ref], [half], "root") == pytest.approx(1.0)
    # a short estimate is padded with N (wrong) to the reference's span
    short = M.frames_to_intervals(np.array([0] * 10), 10.0)
    assert M.chord_weighted_accuracy([ref], [short]) == pytest.approx(0.5)
    # pooled over tracks, weighted by duration
    ref2 = (np.array([[0.0, 2.0]]), ["G:maj"])
    wrong2 = M.frames_to_intervals(np.array([0] * 20), 10.0)
    assert M.chord_weighted_accuracy([ref, ref2], [perfect, wrong2]) == pytest.approx(0.5)


def test_tagging_scores():
    y = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 1], [0, 0, 1]])
    s = y * 0.8 + 0.1
    out = M.tagging_scores(y, s)
    assert out["roc_auc"] == 1.0 and out["average_precision"] == 1.0
    assert out["n_tags_scored"] == 2  # the always-on tag cannot be scored
    out = M.tagging_scores(y, 1 - s)
    assert out["roc_auc"] == 0.0
    with pytest.raises(ValueError, match="no tag"):
        M.tagging_scores(np.ones((3, 2)), np.ones((3, 2)))


def test_accuracy():
    assert M.accuracy([1, 2, 3, 4], [1, 2, 0, 0]) == 0.5
