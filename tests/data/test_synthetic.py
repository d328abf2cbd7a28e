"""SyntheticMusic: deterministic by seed, labels consistent with the audio, cheap to render."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from muse_fast.data import (
    CHORD_NAMES,
    KEY_NAMES,
    NO_CHORD,
    SyntheticMusic,
    beat_activations,
    chord_class,
    chord_frames,
    crop_labels,
    frame_labels,
)


def _same_labels(a: dict, b: dict) -> bool:
    return (
        a["key"] == b["key"]
        and a["key_name"] == b["key_name"]
        and a["tempo"] == b["tempo"]
        and np.array_equal(a["beats"], b["beats"])
        and a["chords"] == b["chords"]
    )


def test_deterministic_by_seed():
    a = SyntheticMusic(8, 6.0, 8000, seed=3)
    b = SyntheticMusic(8, 6.0, 8000, seed=3)
    c = SyntheticMusic(8, 6.0, 8000, seed=4)
    for i in (0, 5):
        assert np.array_equal(a.track(i), b.track(i))
        assert _same_labels(a.labels(i), b.labels(i))
        assert torch.equal(a[i]["audio"], b[i]["audio"])
    assert not np.array_equal(a.track(0), c.track(0))
    # labels differ somewhere across tracks / seeds
    la = [a.labels(i) for i in range(8)]
    lc = [c.labels(i) for i in range(8)]
    assert not all(_same_labels(x, y) for x, y in zip(la, lc))
    # tracks in one corpus differ from each other
    assert not np.array_equal(a.track(0), a.track(1))


def test_score_does_not_depend_on_sample_rate():
    a = SyntheticMusic(4, 5.0, 16000, seed=2)
    b = SyntheticMusic(4, 5.0, 24000, seed=2)
    for i in range(4):
        assert _same_labels(a.labels(i), b.labels(i))
        pa, pb = a._plan(i), b._plan(i)
        np.testing.assert_array_equal(pa.onset, pb.onset)
        np.testing.assert_array_equal(pa.freq, pb.freq)
        np.testing.assert_array_equal(pa.amp, pb.amp)
    assert b.track(0).shape == (120000,)


def test_window_render_matches_full_track():
    ds = SyntheticMusic(2, 5.0, 16000, seed=1)
    full = ds.track(1)
    assert full.dtype == np.float32 and full.shape == (80000,)
    assert np.isfinite(full).all() and 0.05 < np.abs(full).max() <= 1.0
    for start, n in [(0, 1000), (12345, 20011), (79000, 1000)]:
        np.testing.assert_array_equal(ds.render(1, start, n), full[start : start + n])
    # outside the track: zeros
    tail = ds.render(1, 79500, 1000)
    np.testing.assert_array_equal(tail[500:], 0)


def test_label_contract():
    import mir_eval

    ds = SyntheticMusic(24, 12.0, 8000, seed=0)
    for i in range(len(ds)):
        lab = ds[i]["labels"]
        assert set(lab) == {"key", "key_name", "tempo", "beats", "chords"}
        assert 0 <= lab["key"] < 24 and lab["key_name"] == KEY_NAMES[lab["key"]]
        mir_eval.key.validate_key(lab["key_name"])
        beats = lab["beats"]
        assert beats.dtype == np.float64 and len(beats) >= 2
        assert 0 <= beats[0] and beats[-1] < 12.0
        np.testing.assert_allclose(np.diff(beats), 60.0 / lab["tempo"], rtol=1e-9)
        mir_eval.beat.validate(beats, beats)
        chords = lab["chords"]
        assert chords[0][0] == 0.0 and chords[-1][1] == pytest.approx(12.0)
        for (s0, e0, _), (s1, _, _) in zip(chords, chords[1:]):
            assert e0 == s1 and s0 < e0
        intervals = np.array([[s, e] for s, e, _ in chords])
        mir_eval.util.validate_intervals(intervals)
        mir_eval.chord.validate([c for *_, c in chords], [c for *_, c in chords])
        for *_, c in chords:
            mir_eval.chord.encode(c)
            assert c in CHORD_NAMES
        # the first chord is the tonic triad of the key
        assert chord_class(chords[0][2]) == lab["key"]
        # chords change only on beats
        for s, *_ in chords[1:]:
            assert np.min(np.abs(beats - s)) < 1e-9


def _chroma(x: np.ndarray, sr: int) -> np.ndarray:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    f = np.fft.rfftfreq(len(x), 1 / sr)
    ok = (f > 60) & (f < 2000)
    pc = np.round(12 * np.log2(f[ok] / 440.0) + 69).astype(int) % 12
    return np.bincount(pc, weights=spec[ok] ** 2, minlength=12)


def test_audio_is_in_the_labelled_key():
    """The labelled key's scale holds most of the tonal energy, and the chord sounding in a window
    is the labelled one (its triad's pitch classes are the strongest)."""
    ds = SyntheticMusic(12, 8.0, 8000, seed=5)
    for i in range(len(ds)):
        lab = ds.labels(i)
        x = ds.track(i)
        tonic, minor = lab["key"] % 12, lab["key"] >= 12
        scale = (np.array([0, 2, 3, 5, 7, 8, 10] if minor else [0, 2, 4, 5, 7, 9, 11]) + tonic) % 12
        chroma = _chroma(x, 8000)
        assert chroma[scale].sum() / chroma.sum() > 0.8, (i, lab["key_name"])
        s, e, name = max(lab["chords"], key=lambda c: c[1] - c[0])
        seg = x[int(s * 8000) + 400 : int(e * 8000) - 400]
        ch = _chroma(seg, 8000)
        cls = chord_class(name)
        root = cls % 12
        triad = {root, (root + (3 if cls >= 12 else 4)) % 12, (root + 7) % 12}
        # the triad's pitch classes are among the 4 strongest (the melody adds one more)
        assert triad <= set(np.argsort(ch)[-4:].tolist()), (i, name, ch.round(1))


def test_training_items_and_crops():
    ds = SyntheticMusic(4, 3.0, 8000, seed=0, segment_samples=4000, n_views=2)
    item = ds[(2, 123)]
    assert item["audio"].shape == (2, 4000) and item["index"] == 2 and item["skipped"] == 0
    assert torch.equal(item["audio"], ds[(2, 123)]["audio"])
    assert not torch.equal(item["audio"], ds[(2, 124)]["audio"])
    assert not torch.equal(item["audio"][0], item["audio"][1])  # two different crops
    one = SyntheticMusic(4, 3.0, 8000, seed=0, segment_samples=4000)
    assert one[1]["audio"].shape == (4000,)
    batch = torch.utils.data.default_collate([ds[(i, i)] for i in range(3)])
    assert batch["audio"].shape == (3, 2, 4000) and batch["index"].tolist() == [0, 1, 2]


def test_frame_helpers():
    lab = {
        "key": 0,
        "key_name": "C major",
        "tempo": 120.0,
        "beats": np.array([0.25, 0.75, 1.25, 1.75]),
        "chords": [(0.0, 1.0, "C:maj"), (1.0, 2.0, "A:min")],
    }
    ch = chord_frames(lab, 10, 25)
    assert ch[:10].tolist() == [0] * 10 and ch[10:20].tolist() == [21] * 10
    assert (ch[20:] == NO_CHORD).all()
    b = beat_activations(lab, 10, 20)
    assert np.nonzero(b)[0].tolist() == [2, 7, 12, 17] and b.sum() == 4
    bw = beat_activations(lab, 10, 20, widen=1)
    assert bw[1] == 0.5 and bw[2] == 1.0 and bw[3] == 0.5
    fl = frame_labels(lab, 10, 20)
    assert set(fl) == {"chord", "beat"}
    c = crop_labels(lab, 0.5, 1.5)
    np.testing.assert_allclose(c["beats"], [0.25, 0.75])
    assert c["chords"] == [(0.0, 0.5, "C:maj"), (0.5, 1.0, "A:min")]


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_tracks"):
        SyntheticMusic(0, 1.0)
    with pytest.raises(ValueError, match="segment_samples"):
        SyntheticMusic(2, 1.0, 8000, segment_samples=9000)
    with pytest.raises(IndexError):
        SyntheticMusic(2, 1.0, 8000)[2]
