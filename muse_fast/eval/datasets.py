"""Evaluation datasets: adapters for user-provided folders in the usual layouts, and built-in
synthetic tasks.

Every adapter returns a :class:`Task`: the tracks of each split (``train`` / ``valid`` /
``test``), what a label is, the label frame rate for frame-level tasks, which hand-crafted
features make its baseline, and a fingerprint of the data (for the embedding cache).

Folder layouts (``root`` is what ``muse-fast probe --data`` names):

* **GiantSteps key** (:func:`giantsteps_key`): audio files (wav / flac / ogg / mp3, anywhere under
  ``root``) and ``.key`` files with the same stem (``1234.LOFI.mp3`` ↔ ``1234.LOFI.key``, e.g. in
  ``annotations/key/``) holding one key such as ``D minor`` or ``Eb major``.
* **GTZAN** (:func:`gtzan`): ``genres/<genre>/*.wav`` (also ``genres_original/``,
  ``Data/genres_original/`` or the genre folders directly in ``root``).
* **MagnaTagATune** (:func:`magnatagatune`): ``annotations_final.csv`` (tab-separated: ``clip_id``,
  one 0/1 column per tag, ``mp3_path``) with the audio under ``root`` (or ``root/mp3``,
  ``root/audio``); the ``top_n`` most frequent tags (50 by default).

Splits: files ``train.txt`` / ``valid.txt`` / ``test.txt`` (or ``*_filtered.txt``, the GTZAN
fault-filtered split) in ``root`` or ``root/splits`` listing one track per line (a path relative
to the audio folder, a file name or a stem) are used when present. Otherwise MagnaTagATune uses
its standard split by folder (``0``–``b`` train, ``c`` valid, ``d``–``f`` test) and the others a
seeded random 70 / 10 / 20 split (``split_seed``, independent of the probe seed).

Malformed annotation files raise ``ValueError`` naming the file and the line.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import CHORD_LABELS, KEY_NAMES
from .task import (
    AUDIO_EXTENSIONS,
    SPLITS,
    TARGETS,
    Task,
    Track,
    _audio_files,
    _check_root,
    _file_stamp,
    _find_split_files,
    _fingerprint,
    _random_split,
    _readable,
    _splits,
    _warn_skipped,
)

__all__ = [
    "AUDIO_EXTENSIONS",
    "SPLITS",
    "TARGETS",
    "TASKS",
    "Task",
    "Track",
    "get_task",
    "giantsteps_key",
    "gtzan",
    "magnatagatune",
    "synthetic_task",
]

log = logging.getLogger("muse_fast.eval")


# ------------------------------------------------------------------------------ GiantSteps
def _read_key_file(path: Path) -> int:
    from .metrics import parse_key

    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            text = text.split("\t")[0].strip()
            try:
                return parse_key(text)
            except ValueError as e:
                raise ValueError(f"{path}, line {lineno}: {e}") from None
    raise ValueError(f"{path}, line 1: empty key file (expected a key such as 'D minor')")


def giantsteps_key(root: str | os.PathLike, *, split_seed: int = 0) -> Task:
    """GiantSteps key (or GiantSteps-MTG key): audio + ``.key`` files matched by stem."""
    r = _check_root(root)
    keys = {p.stem: p for p in sorted(r.rglob("*.key")) if p.is_file()}
    if not keys:
        raise ValueError(
            f"{r}: no .key annotation files found (GiantSteps layout: audio + .key files)"
        )
    tracks, names, stamps, bad = [], [], [], []
    unlabelled = 0
    for a in _audio_files(r):
        kf = keys.get(a.stem)
        if kf is None:
            unlabelled += 1
            continue
        label = _read_key_file(kf)
        rel = a.relative_to(r).as_posix()
        if not _readable(a):
            bad += [rel, a.name, a.stem]
            continue
        tracks.append(Track(id=rel, label=label, path=str(a)))
        names.append((rel, a.name, a.stem))
        stamps.append((_file_stamp(str(a)), label))
    if not tracks:
        raise ValueError(
            f"{r}: no audio file has a matching .key file ({len(keys)} .key files found)"
        )
    if unlabelled:
        log.warning("giantsteps-key: %d audio files without a .key file skipped", unlabelled)
    _warn_skipped("giantsteps-key", bad[::3])
    splits, how = _splits(r, tracks, names, split_seed, bad)
    return Task(
        name="giantsteps-key",
        target="key",
        splits=splits,
        classes=KEY_NAMES,
        handcrafted="chroma",
        dataset_id=_fingerprint("giantsteps-key", stamps, how),
        description=f"GiantSteps key from {r} ({how.split('[')[0].strip()})",
    )


# ------------------------------------------------------------------------------ GTZAN
def _gtzan_root(r: Path) -> Path:
    for cand in (r / "genres", r / "genres_original", r / "Data" / "genres_original", r):
        if cand.is_dir() and any(
            d.is_dir() and any(f.suffix.lower() in AUDIO_EXTENSIONS for f in d.iterdir())
            for d in cand.iterdir()
        ):
            return cand
    raise ValueError(f"{r}: no genre folders with audio found (GTZAN layout: genres/<genre>/*.wav)")


def gtzan(root: str | os.PathLike, *, split_seed: int = 0) -> Task:
    """GTZAN genre: one folder per genre holding its audio files."""
    r = _check_root(root)
    groot = _gtzan_root(r)
    genres = sorted(
        d.name
        for d in groot.iterdir()
        if d.is_dir() and any(f.suffix.lower() in AUDIO_EXTENSIONS for f in d.iterdir())
    )
    if len(genres) < 2:
        raise ValueError(f"{groot}: need at least 2 genre folders, found {genres}")
    tracks, names, stamps, bad = [], [], [], []
    for gi, g in enumerate(genres):
        for a in sorted((groot / g).iterdir()):
            if not (a.is_file() and a.suffix.lower() in AUDIO_EXTENSIONS):
                continue
            rel = f"{g}/{a.name}"
            if not _readable(a):
                bad += [rel, a.name, a.stem]
                continue
            tracks.append(Track(id=rel, label=gi, path=str(a)))
            names.append((rel, a.name, a.stem))
            stamps.append(_file_stamp(str(a)))
    _warn_skipped("gtzan", bad[::3])
    splits, how = _splits(r, tracks, names, split_seed, bad)
    return Task(
        name="gtzan",
        target="genre",
        splits=splits,
        classes=tuple(genres),
        handcrafted="mfcc",
        dataset_id=_fingerprint("gtzan", genres, stamps, how),
        description=f"GTZAN genre from {groot} ({len(genres)} genres)",
    )


# ------------------------------------------------------------------------------ MagnaTagATune
_MTAT_SPLIT = {**{c: "train" for c in "0123456789ab"}, "c": "valid", **{c: "test" for c in "def"}}


def _find_file(r: Path, name: str) -> Path:
    for cand in (r / name, r / "annotations" / name):
        if cand.is_file():
            return cand
    found = sorted(r.rglob(name))
    if found:
        return found[0]
    raise ValueError(
        f"{r}: {name} not found (MagnaTagATune layout: annotations_final.csv + mp3 folders)"
    )


def _read_mtat_csv(path: Path) -> tuple[list[str], list[tuple[int, str, np.ndarray]]]:
    """→ (tag names, [(line number, mp3_path, 0/1 vector), ...])."""
    rows = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        header_line = fh.readline()
        header = [h.strip().strip('"') for h in header_line.rstrip("\r\n").split("\t")]
        if len(header) < 3 or header[0] != "clip_id" or header[-1] != "mp3_path":
            raise ValueError(
                f"{path}, line 1: expected a tab-separated header 'clip_id<TAB>tag...<TAB>mp3_path', "
                f"got {header_line.strip()[:80]!r}"
            )
        tags = header[1:-1]
        for lineno, line in enumerate(fh, 2):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            f = [x.strip().strip('"') for x in line.split("\t")]
            if len(f) != len(header):
                raise ValueError(
                    f"{path}, line {lineno}: expected {len(header)} tab-separated fields, got {len(f)}"
                )
            bad = [(tags[j], v) for j, v in enumerate(f[1:-1]) if v not in ("0", "1")]
            if bad:
                raise ValueError(
                    f"{path}, line {lineno}: tag {bad[0][0]!r} has value {bad[0][1]!r} (expected 0 or 1)"
                )
            if not f[-1]:
                raise ValueError(f"{path}, line {lineno}: empty mp3_path")
            rows.append((lineno, f[-1], np.array([v == "1" for v in f[1:-1]], dtype=np.float32)))
    if not rows:
        raise ValueError(f"{path}, line 2: no clips listed")
    return tags, rows


def magnatagatune(root: str | os.PathLike, *, top_n: int = 50, split_seed: int = 0) -> Task:
    """MagnaTagATune auto-tagging with the ``top_n`` most frequent tags."""
    r = _check_root(root)
    csv = _find_file(r, "annotations_final.csv")
    tags, rows = _read_mtat_csv(csv)
    counts = np.sum([v for _, _, v in rows], axis=0)
    order = np.argsort(-counts, kind="stable")[: min(top_n, len(tags))]
    order = np.sort(order)  # keep the CSV's column order among the chosen tags
    top = tuple(tags[j] for j in order)
    audio_root = next(
        (d for d in (r, r / "mp3", r / "audio", csv.parent) if (d / rows[0][1]).exists()),
        None,
    )
    if audio_root is None:
        audio_root = next((d for d in (r / "mp3", r / "audio") if d.is_dir()), r)
    tracks, names, stamps, missing = [], [], [], 0
    for _lineno, rel, vec in rows:
        p = audio_root / rel
        if not p.is_file() or p.stat().st_size == 0:  # MTAT ships a few empty mp3s
            missing += 1
            continue
        tracks.append(Track(id=rel, label=vec[order], path=str(p)))
        names.append((rel, p.name, p.stem))
        stamps.append(_file_stamp(str(p)))
    if not tracks:
        raise ValueError(
            f"{csv}: none of the {len(rows)} listed audio files exist under {audio_root}"
        )
    if missing:
        log.warning("magnatagatune: %d listed clips missing or empty, skipped", missing)
    files = _find_split_files(r)
    first = [t.id.split("/")[0].lower() for t in tracks]
    if files is None and all(f in _MTAT_SPLIT for f in first):
        splits = {s: [t for t, f in zip(tracks, first) if _MTAT_SPLIT[f] == s] for s in SPLITS}
        how = "standard folder split (0-b train, c valid, d-f test)"
    else:
        splits, how = _splits(r, tracks, names, split_seed)
    return Task(
        name="magnatagatune",
        target="tagging",
        splits=splits,
        classes=top,
        handcrafted="mfcc",
        dataset_id=_fingerprint("mtat", top, _file_stamp(str(csv)), stamps, how),
        description=f"MagnaTagATune top-{len(top)} tags from {r}",
    )


# ------------------------------------------------------------------------------ synthetic
@functools.lru_cache(maxsize=8)
def _synthetic(n_tracks: int, duration_s: float, sample_rate: int, seed: int):
    from ..data import SyntheticMusic

    return SyntheticMusic(n_tracks, duration_s, sample_rate, seed)


def _render(
    n_tracks: int, duration_s: float, seed: int, index: int, sample_rate: int
) -> np.ndarray:
    return _synthetic(n_tracks, duration_s, sample_rate, seed).track(index)


SYNTHETIC_FRAME_RATES = {"beat": 50.0, "chord": 10.0}


def synthetic_task(
    target: str,
    *,
    n_tracks: int = 200,
    duration_s: float = 10.0,
    seed: int = 10_000,
    frame_rate: float | None = None,
) -> Task:
    """A task on :class:`muse_fast.data.SyntheticMusic` tracks: ``target`` ``"key"`` (24 classes),
    ``"beat"`` (frame-level beat activation, ``frame_rate`` 50 by default) or ``"chord"``
    (25 frame-level classes incl. no-chord, 10 frames/s by default). ``seed`` defaults to a
    corpus other than the pre-training default (seed 0); split 70 / 10 / 20 by index."""
    if target not in ("key", "beat", "chord"):
        raise ValueError(f"target: synthetic tasks are 'key', 'beat' and 'chord', got {target!r}")
    if target != "key":
        frame_rate = float(frame_rate or SYNTHETIC_FRAME_RATES[target])
    ds = _synthetic(
        int(n_tracks), float(duration_s), 16000, int(seed)
    )  # labels do not depend on sr
    tracks = []
    for i in range(int(n_tracks)):
        lab = ds.labels(i)
        if target == "key":
            label: Any = int(lab["key"])
        elif target == "beat":
            label = {"beats": lab["beats"], "duration": float(duration_s)}
        else:
            label = {"chords": lab["chords"], "duration": float(duration_s)}
        src = functools.partial(_render, int(n_tracks), float(duration_s), int(seed), i)
        tracks.append(Track(id=f"synthetic-{seed}-{i}", label=label, source=src))
    idx = _random_split(len(tracks), 0)
    return Task(
        name=f"synthetic-{target}",
        target=target,
        splits={s: [tracks[i] for i in idx[s]] for s in SPLITS},
        classes={"key": KEY_NAMES, "beat": (), "chord": CHORD_LABELS}[target],
        handcrafted={"key": "chroma", "beat": "onset", "chord": "chroma"}[target],
        dataset_id=_fingerprint("synthetic", target, n_tracks, duration_s, seed, frame_rate),
        frame_rate=frame_rate,
        description=f"SyntheticMusic(n_tracks={n_tracks}, duration_s={duration_s}, seed={seed})",
    )


# ------------------------------------------------------------------------------ registry
TASKS: dict[str, tuple[str, Callable[..., Task]]] = {
    "synthetic-key": ("key detection on the synthetic corpus (24 keys)", functools.partial(synthetic_task, "key")),
    "synthetic-beat": ("beat tracking on the synthetic corpus", functools.partial(synthetic_task, "beat")),
    "synthetic-chord": ("chord recognition (maj/min) on the synthetic corpus", functools.partial(synthetic_task, "chord")),
    "giantsteps-key": ("GiantSteps key: audio + .key files (--data)", giantsteps_key),
    "gtzan": ("GTZAN genre: genres/<genre>/*.wav (--data)", gtzan),
    "magnatagatune": ("MagnaTagATune top-50 tagging: annotations_final.csv (--data)", magnatagatune),
}  # fmt: skip
_ALIASES = {
    "key": "giantsteps-key",
    "genre": "gtzan",
    "mtat": "magnatagatune",
    "tagging": "magnatagatune",
}
_SYNTHETIC_OPTIONS = ("n_tracks", "duration_s", "seed", "frame_rate")


def get_task(name: str, data: str | os.PathLike | None = None, **options: Any) -> Task:
    """Build task ``name`` (see :data:`TASKS`); folder tasks need ``data``. ``options`` go to the
    adapter (``split_seed``, ``top_n``; for synthetic tasks ``n_tracks``, ``duration_s``,
    ``seed``, ``frame_rate``); ``None`` values are ignored."""
    key = _ALIASES.get(name, name)
    if key not in TASKS:
        raise ValueError(f"task: unknown task {name!r}; tasks are {', '.join(TASKS)}")
    options = {k: v for k, v in options.items() if v is not None}
    make = TASKS[key][1]
    if key.startswith("synthetic-"):
        if data is not None:
            raise ValueError(f"--data: task {key!r} is generated and reads no folder")
        return make(**{k: v for k, v in options.items() if k in _SYNTHETIC_OPTIONS})
    if data is None:
        raise ValueError(
            f"--data: task {key!r} reads a user-provided folder; name it with --data DIR"
        )
    allowed = ("split_seed", "top_n") if key == "magnatagatune" else ("split_seed",)
    return make(data, **{k: v for k, v in options.items() if k in allowed})
