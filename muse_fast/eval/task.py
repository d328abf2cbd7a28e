"""Tasks and tracks: what a probing task is (:class:`Task`, :class:`Track`) and the helpers the
folder adapters in :mod:`~muse_fast.eval.datasets` share (audio listing, readability, split
files, seeded random splits, fingerprints)."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["AUDIO_EXTENSIONS", "SPLITS", "TARGETS", "Task", "Track"]

log = logging.getLogger("muse_fast.eval")


AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
SPLITS = ("train", "valid", "test")

# target → (probe output kind, level)
TARGETS = {
    "key": ("multiclass", "global"),
    "genre": ("multiclass", "global"),
    "tagging": ("multilabel", "global"),
    "beat": ("binary", "frame"),
    "chord": ("multiclass", "frame"),
}


@dataclass(frozen=True)
class Track:
    """One labelled track. ``label``: a class id (key, genre), a multi-hot float vector (tags), or
    for frame-level tasks a dict with ``"duration"`` (s) and ``"beats"`` (s) or ``"chords"``
    (``[(start, end, "C:maj"), ...]``). Audio comes from ``path`` or, for generated tracks, from
    ``source(sample_rate)``."""

    id: str
    label: Any
    path: str | None = None
    source: Callable[[int], np.ndarray] | None = field(default=None, compare=False, repr=False)

    def load(self, sample_rate: int) -> np.ndarray:
        """Mono float32 audio at ``sample_rate``."""
        if self.source is not None:
            return np.asarray(self.source(int(sample_rate)), dtype=np.float32)
        from ..data import load_audio

        try:
            x = load_audio(self.path, int(sample_rate))
        except Exception as e:
            raise RuntimeError(f"cannot read audio file {self.path!r}: {e}") from e
        return x.numpy().astype(np.float32, copy=False)


@dataclass
class Task:
    """A probing task: splits of tracks, the target, and how to score it."""

    name: str
    target: str  # one of TARGETS
    splits: dict[str, list[Track]]
    classes: tuple[str, ...]  # class names (key, genre, chord) or tag names; () for beat
    handcrafted: str  # "chroma" | "onset" | "mfcc": the hand-crafted baseline features
    dataset_id: str  # fingerprint of the data and labels (cache key)
    frame_rate: float | None = None  # label frame rate of frame-level tasks
    description: str = ""

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"target: expected one of {sorted(TARGETS)}, got {self.target!r}")
        for s in SPLITS:
            if not self.splits.get(s):
                raise ValueError(
                    f"task {self.name!r}: split {s!r} is empty ({self._sizes()}); "
                    f"add more tracks or give split files"
                )
        if self.level == "frame" and not self.frame_rate:
            raise ValueError(f"task {self.name!r}: a frame-level task needs frame_rate")

    @property
    def output(self) -> str:
        return TARGETS[self.target][0]

    @property
    def level(self) -> str:
        return TARGETS[self.target][1]

    @property
    def n_outputs(self) -> int:
        return 1 if self.output == "binary" else len(self.classes)

    def _sizes(self) -> str:
        return ", ".join(f"{s}: {len(self.splits.get(s, []))}" for s in SPLITS)

    def __repr__(self) -> str:
        return f"Task({self.name!r}, target={self.target!r}, {self._sizes()})"


# ------------------------------------------------------------------------------ helpers
def _fingerprint(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _file_stamp(path: str) -> tuple[str, int, int]:
    st = os.stat(path)
    return (path, st.st_size, int(st.st_mtime))


def _audio_files(root: Path) -> list[Path]:
    return sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS
    )


def _readable(path: Path) -> bool:
    """Whether soundfile can read the file's header (GTZAN ships a corrupt jazz.00054.wav)."""
    import soundfile as sf

    try:
        return sf.info(str(path)).frames > 0
    except Exception:
        return False


def _warn_skipped(task: str, bad: list[str]) -> None:
    if bad:
        more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
        log.warning(
            "%s: %d unreadable audio files skipped: %s%s", task, len(bad), ", ".join(bad[:3]), more
        )


def _check_root(root: str | os.PathLike) -> Path:
    r = Path(root).expanduser()
    if not r.is_dir():
        raise ValueError(f"data folder {str(r)!r} does not exist or is not a folder")
    return r


def _random_split(n: int, seed: int, fractions=(0.7, 0.1, 0.2)) -> dict[str, list[int]]:
    """Seeded permutation cut into train / valid / test (each at least one item when n >= 3)."""
    if n < 3:
        raise ValueError(f"need at least 3 tracks to split into train / valid / test, got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    n_valid = max(1, int(round(fractions[1] * n)))
    n_test = max(1, int(round(fractions[2] * n)))
    n_train = n - n_valid - n_test
    return {
        "train": sorted(perm[:n_train].tolist()),
        "valid": sorted(perm[n_train : n_train + n_valid].tolist()),
        "test": sorted(perm[n_train + n_valid :].tolist()),
    }


def _find_split_files(root: Path) -> dict[str, Path] | None:
    for folder in (root, root / "splits"):
        for suffix in ("", "_filtered"):
            files = {s: folder / f"{s}{suffix}.txt" for s in SPLITS}
            if all(f.is_file() for f in files.values()):
                return files
    return None


def _read_split_files(
    files: dict[str, Path], names: Sequence[Sequence[str]], skipped: Sequence[str] = ()
) -> dict[str, list[int]]:
    """Resolve each line of each split file to a track: ``names[i]`` are the strings track ``i``
    answers to (relative path, file name, stem)."""
    lookup: dict[str, int] = {}
    for i, ns in enumerate(names):
        for n in ns:
            lookup.setdefault(n.replace("\\", "/"), i)
    out: dict[str, list[int]] = {}
    seen: dict[int, str] = {}
    for split, f in files.items():
        idx = []
        with open(f, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                entry = line.strip()
                if not entry or entry.startswith("#"):
                    continue
                entry = entry.split("\t")[0].strip().replace("\\", "/")
                i = lookup.get(entry, lookup.get(entry.rsplit("/", 1)[-1]))
                if i is None and (entry in skipped or entry.rsplit("/", 1)[-1] in skipped):
                    continue  # an unreadable file, already reported
                if i is None:
                    raise ValueError(f"{f}, line {lineno}: no track {entry!r} in the data folder")
                if i in seen:
                    raise ValueError(
                        f"{f}, line {lineno}: track {entry!r} is already in split {seen[i]!r}"
                    )
                seen[i] = split
                idx.append(i)
        out[split] = idx
    return out


def _splits(
    root: Path,
    tracks: list[Track],
    names: Sequence[Sequence[str]],
    split_seed: int,
    skipped: Sequence[str] = (),
) -> tuple[dict[str, list[Track]], str]:
    files = _find_split_files(root)
    if files is not None:
        idx = _read_split_files(files, names, skipped)
        how = "split files " + ", ".join(str(f) for f in files.values())
        stamp = [_file_stamp(str(f)) for f in files.values()]
    else:
        idx = _random_split(len(tracks), split_seed)
        how = f"random 70/10/20 split (split_seed={split_seed})"
        stamp = [split_seed]
    return {s: [tracks[i] for i in idx[s]] for s in SPLITS}, how + repr(stamp)
