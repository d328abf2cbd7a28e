"""Dataset adapters on tiny fixture folders (short generated audio), and their error messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from muse_fast.eval import get_task, giantsteps_key, gtzan, magnatagatune, synthetic_task

sf = pytest.importorskip("soundfile")  # not installed on every machine (the GPU one)

SR = 8000


def _tone(path: Path, freq: float, seconds: float = 0.3, sr: int = SR, fmt: str | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr, format=fmt)


def _ids(task):
    return {s: sorted(t.id for t in task.splits[s]) for s in ("train", "valid", "test")}


# ------------------------------------------------------------------------ GiantSteps
KEYS = ["D minor", "Eb major", "a minor", "F# major", "C major", "G minor", "Bb major"]


def _giantsteps(root: Path) -> Path:
    for i, k in enumerate(KEYS):
        _tone(root / "audio" / f"{i}.LOFI.wav", 220 + 20 * i)
        (root / "annotations" / "key").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / "key" / f"{i}.LOFI.key").write_text(k + "\n")
    _tone(root / "audio" / "unlabelled.wav", 300)
    return root


def test_giantsteps_key(tmp_path):
    task = giantsteps_key(_giantsteps(tmp_path))
    assert task.target == "key" and task.output == "multiclass" and task.n_outputs == 24
    tracks = [t for s in ("train", "valid", "test") for t in task.splits[s]]
    assert len(tracks) == len(KEYS)  # the unlabelled file is skipped
    labels = {Path(t.path).name: t.label for t in tracks}
    assert labels["0.LOFI.wav"] == 14 and labels["1.LOFI.wav"] == 3 and labels["2.LOFI.wav"] == 21
    assert task.classes[labels["3.LOFI.wav"]] == "F# major"
    assert min(len(v) for v in task.splits.values()) >= 1
    # the split is a function of split_seed, and the fingerprint follows it
    again = giantsteps_key(tmp_path)
    assert _ids(again) == _ids(task) and again.dataset_id == task.dataset_id
    other = giantsteps_key(tmp_path, split_seed=1)
    assert other.dataset_id != task.dataset_id
    # audio loads mono at the rate asked
    x = tracks[0].load(16000)
    assert x.dtype == np.float32 and x.ndim == 1 and abs(len(x) - 0.3 * 16000) <= 2


def test_giantsteps_split_files(tmp_path):
    root = _giantsteps(tmp_path)
    (root / "train.txt").write_text("0.LOFI\n1.LOFI.wav\naudio/2.LOFI.wav\n3.LOFI\n4.LOFI\n")
    (root / "valid.txt").write_text("# a comment\n5.LOFI\n")
    (root / "test.txt").write_text("6.LOFI\n")
    task = giantsteps_key(root)
    assert [Path(t.path).name for t in task.splits["test"]] == ["6.LOFI.wav"]
    assert len(task.splits["train"]) == 5 and len(task.splits["valid"]) == 1
    (root / "test.txt").write_text("6.LOFI\nmissing-track\n")
    with pytest.raises(ValueError, match=r"test\.txt, line 2: no track 'missing-track'"):
        giantsteps_key(root)
    (root / "test.txt").write_text("6.LOFI\n5.LOFI\n")
    with pytest.raises(ValueError, match=r"test\.txt, line 2: .*already in split 'valid'"):
        giantsteps_key(root)


@pytest.mark.parametrize(
    "content,line",
    [("H minor\n", 1), ("\n# comment\nD dorian\n", 3), ("", 1), ("   \n", 1)],
)
def test_giantsteps_malformed_key_file(tmp_path, content, line):
    root = _giantsteps(tmp_path)
    bad = root / "annotations" / "key" / "3.LOFI.key"
    bad.write_text(content)
    with pytest.raises(ValueError, match=rf"3\.LOFI\.key, line {line}:"):
        giantsteps_key(root)


def test_giantsteps_empty_folders(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        giantsteps_key(tmp_path / "nope")
    _tone(tmp_path / "a.wav", 200)
    with pytest.raises(ValueError, match=r"no \.key annotation files"):
        giantsteps_key(tmp_path)


# ------------------------------------------------------------------------ GTZAN
GENRES = ["blues", "classical", "jazz"]


@pytest.mark.parametrize("layout", ["genres", "genres_original", "."])
def test_gtzan(tmp_path, layout):
    for g, genre in enumerate(GENRES):
        for i in range(2):
            _tone(tmp_path / layout / genre / f"{genre}.{i:05d}.wav", 200 + 50 * g + 10 * i)
    (tmp_path / layout / "README.txt").write_text("not audio")
    task = gtzan(tmp_path)
    assert task.target == "genre" and task.classes == tuple(GENRES)
    tracks = [t for s in ("train", "valid", "test") for t in task.splits[s]]
    assert len(tracks) == 6
    for t in tracks:
        assert task.classes[t.label] == t.id.split("/")[0]
        assert Path(t.path).parent.name == t.id.split("/")[0]
    assert task.handcrafted == "mfcc"


def test_gtzan_filtered_split_files(tmp_path):
    for genre in GENRES:
        for i in range(2):
            _tone(tmp_path / "genres" / genre / f"{genre}.{i:05d}.wav", 220)
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "train_filtered.txt").write_text(
        "blues/blues.00000.wav\nclassical/classical.00000.wav\njazz/jazz.00000.wav\n"
    )
    (splits / "valid_filtered.txt").write_text("blues/blues.00001.wav\n")
    (splits / "test_filtered.txt").write_text(
        "classical/classical.00001.wav\njazz/jazz.00001.wav\n"
    )
    task = gtzan(tmp_path)
    assert _ids(task)["test"] == ["classical/classical.00001.wav", "jazz/jazz.00001.wav"]
    assert _ids(task)["valid"] == ["blues/blues.00001.wav"]


def test_gtzan_skips_unreadable_audio(tmp_path, caplog):
    for genre in GENRES:
        for i in range(2):
            _tone(tmp_path / "genres" / genre / f"{genre}.{i:05d}.wav", 220)
    (tmp_path / "genres" / "jazz" / "jazz.00054.wav").write_bytes(
        b"RIFF....WAVEjunk"
    )  # as in GTZAN
    (tmp_path / "train.txt").write_text("blues.00000.wav\njazz/jazz.00054.wav\nblues.00001.wav\n")
    (tmp_path / "valid.txt").write_text("classical/classical.00000.wav\njazz.00000.wav\n")
    (tmp_path / "test.txt").write_text("classical/classical.00001.wav\njazz.00001.wav\n")
    with caplog.at_level("WARNING", logger="muse_fast.eval"):
        task = gtzan(tmp_path)
    assert "jazz/jazz.00054.wav" in caplog.text
    assert _ids(task)["train"] == ["blues/blues.00000.wav", "blues/blues.00001.wav"]


def test_gtzan_errors(tmp_path):
    _tone(tmp_path / "genres" / "blues" / "blues.00000.wav", 220)
    with pytest.raises(ValueError, match="at least 2 genre folders"):
        gtzan(tmp_path)
    with pytest.raises(ValueError, match="no genre folders"):
        gtzan(tmp_path / "genres" / "blues")


# ------------------------------------------------------------------------ MagnaTagATune
TAGS = ["guitar", "classical", "slow", "techno", "no voice"]


def _mtat(root: Path, rows=None, fmt="MP3") -> Path:
    rows = rows or [
        ("2", "0/clip-a.mp3", [1, 0, 1, 0, 0]),
        ("6", "1/clip-b.mp3", [0, 1, 1, 0, 1]),
        ("9", "b/clip-c.mp3", [1, 1, 0, 1, 0]),
        ("10", "c/clip-d.mp3", [1, 0, 0, 1, 1]),
        ("12", "d/clip-e.mp3", [0, 1, 1, 0, 0]),
        ("15", "f/clip-f.mp3", [1, 0, 1, 1, 1]),
    ]
    lines = ["\t".join(['"clip_id"'] + [f'"{t}"' for t in TAGS] + ['"mp3_path"'])]
    for cid, path, vec in rows:
        lines.append("\t".join([f'"{cid}"'] + [f'"{v}"' for v in vec] + [f'"{path}"']))
        _tone(root / "mp3" / path, 300, seconds=0.5, sr=16000, fmt=fmt)
    root.mkdir(parents=True, exist_ok=True)
    (root / "annotations_final.csv").write_text("\n".join(lines) + "\n")
    return root


def test_magnatagatune_standard_split(tmp_path):
    task = magnatagatune(_mtat(tmp_path), top_n=3)
    assert task.target == "tagging" and task.output == "multilabel"
    # counts: guitar 4, classical 3, slow 4, techno 3, no voice 3 → guitar, slow, then the
    # first of the tied 3s (column order); reported in column order
    assert task.classes == ("guitar", "classical", "slow")
    assert _ids(task) == {
        "train": ["0/clip-a.mp3", "1/clip-b.mp3", "b/clip-c.mp3"],
        "valid": ["c/clip-d.mp3"],
        "test": ["d/clip-e.mp3", "f/clip-f.mp3"],
    }
    a = task.splits["train"][0]
    np.testing.assert_array_equal(a.label, [1, 0, 1])
    x = a.load(16000)  # mp3 decoded by soundfile
    assert x.ndim == 1 and 0.4 * 16000 < len(x) < 0.7 * 16000


def test_magnatagatune_skips_missing_and_empty(tmp_path):
    root = _mtat(tmp_path)
    (root / "mp3" / "1" / "clip-b.mp3").write_bytes(b"")  # MTAT ships a few empty files
    (root / "mp3" / "b" / "clip-c.mp3").unlink()
    task = magnatagatune(root)
    assert _ids(task)["train"] == ["0/clip-a.mp3"]
    assert len(task.classes) == len(TAGS)


@pytest.mark.parametrize(
    "edit,match",
    [
        (
            lambda ls: ls[:2] + ["\t".join(ls[2].split("\t")[:3])] + ls[3:],
            r"line 3: expected 7 tab-separated fields, got 3",
        ),
        (
            lambda ls: ls[:4] + [ls[4].replace('"1"', '"2"', 1)] + ls[5:],
            r"line 5: tag .* has value '2'",
        ),
        (
            lambda ls: [ls[0].replace('"clip_id"', '"id"')] + ls[1:],
            r"line 1: expected a tab-separated header",
        ),
        (
            lambda ls: [ls[0].replace("\t", ",")] + ls[1:],
            r"line 1: expected a tab-separated header",
        ),
        (lambda ls: ls[:1], r"line 2: no clips listed"),
    ],
)
def test_magnatagatune_malformed_csv(tmp_path, edit, match):
    root = _mtat(tmp_path, fmt="WAV")
    csv = root / "annotations_final.csv"
    csv.write_text("\n".join(edit(csv.read_text().splitlines())) + "\n")
    with pytest.raises(ValueError, match=r"annotations_final\.csv, " + match):
        magnatagatune(root)


# ------------------------------------------------------------------------ synthetic + registry
def test_synthetic_tasks_labels():
    key = synthetic_task("key", n_tracks=10, duration_s=3.0)
    beat = synthetic_task("beat", n_tracks=10, duration_s=3.0)
    chord = synthetic_task("chord", n_tracks=10, duration_s=3.0)
    from muse_fast.data import SyntheticMusic

    ds = SyntheticMusic(10, 3.0, 16000, 10_000)
    by_id = {t.id: t for s in key.splits.values() for t in s}
    for i in range(10):
        lab = ds.labels(i)
        assert by_id[f"synthetic-10000-{i}"].label == lab["key"]
    t = beat.splits["train"][0]
    i = int(t.id.rsplit("-", 1)[1])
    np.testing.assert_array_equal(t.label["beats"], ds.labels(i)["beats"])
    assert beat.frame_rate == 50.0 and chord.frame_rate == 10.0 and key.frame_rate is None
    assert chord.n_outputs == 25 and beat.n_outputs == 1
    # audio renders at the rate asked; the same track at two rates has the same length in seconds
    assert len(t.load(8000)) == 3 * 8000 and len(t.load(16000)) == 3 * 16000
    assert key.dataset_id != synthetic_task("key", n_tracks=10, duration_s=3.0, seed=1).dataset_id


def test_get_task_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        get_task("nope")
    with pytest.raises(ValueError, match="--data"):
        get_task("gtzan")
    with pytest.raises(ValueError, match="--data"):
        get_task("synthetic-key", tmp_path)
    with pytest.raises(ValueError, match="split 'valid' is empty|at least 3 tracks"):
        get_task("synthetic-key", n_tracks=2, duration_s=1.0)
    assert get_task("mtat", _mtat(tmp_path, fmt="WAV")).name == "magnatagatune"
