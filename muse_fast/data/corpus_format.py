"""The on-disk format of a prepared corpus, and the writer that builds one atomically.

A prepared corpus is a folder::

    manifest.json          format, version, sample rate, shards, tracks, skipped files
    shard_00000.bin        int16 little-endian PCM, mono, the tracks back to back
    shard_00000.idx        int64 little-endian (n_tracks_in_shard, 2): sample offset, length

(the pattern of Megatron's indexed datasets: one flat binary per shard plus an offset index).
The manifest is the commit point: a shard exists for readers once the manifest lists it, and
it is only listed after its ``.bin`` and ``.idx`` were written under temporary names, flushed
to disk and renamed. A writer that dies (killed, disk full) leaves the last committed manifest
and at most an orphan ``*.tmp`` file, which the next run removes.

Per shard the manifest stores its size, mtime, the CRC-32 of its bytes, a CRC-32 of 16
sampled 64 KiB blocks and the SHA-256 of its index; :func:`check_shard` uses them to refuse a
shard that is missing, truncated or modified.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import zlib
from pathlib import Path

import numpy as np

__all__ = [
    "FORMAT",
    "MANIFEST",
    "VERSION",
    "CorpusError",
    "CorpusWriter",
    "check_shard",
    "read_manifest",
    "write_json_atomic",
]

FORMAT = "muse_fast.prepared_corpus"
VERSION = 1
MANIFEST = "manifest.json"
_BLOCK = 1 << 16
_N_BLOCKS = 16


class CorpusError(ValueError):
    """A prepared corpus that cannot be used (missing, damaged or incompatible)."""


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be fsync'ed
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json_atomic(path: Path, obj: dict) -> None:
    """Write ``obj`` to ``path`` through ``path.tmp`` + fsync + rename."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def read_manifest(folder: str | os.PathLike) -> dict:
    """The manifest of the corpus in ``folder``; :class:`CorpusError` if it is not one."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise CorpusError(f"{str(folder)!r} is not a prepared corpus (no {MANIFEST})")
    try:
        m = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CorpusError(f"{path}: unreadable manifest ({e})") from e
    if m.get("format") != FORMAT:
        raise CorpusError(f"{path}: not a muse_fast prepared corpus (format {m.get('format')!r})")
    if m.get("version") != VERSION:
        raise CorpusError(
            f"{path}: corpus format version {m.get('version')}, this muse_fast reads {VERSION}; "
            f"re-run `muse-fast prepare`"
        )
    return m


def sampled_crc(path: Path, size: int) -> int:
    """CRC-32 of ``_N_BLOCKS`` blocks of 64 KiB spread evenly over the file (all of a small one)."""
    crc = 0
    with open(path, "rb") as f:
        if size <= _BLOCK * _N_BLOCKS:
            return zlib.crc32(f.read())
        for k in range(_N_BLOCKS):
            f.seek((size - _BLOCK) * k // (_N_BLOCKS - 1))
            crc = zlib.crc32(f.read(_BLOCK), crc)
    return crc


def _file_crc(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    return crc


def check_shard(folder: Path, entry: dict, full: bool = False) -> None:
    """Raise :class:`CorpusError` naming the shard if it is missing or differs from ``entry``.

    Always: the size, the sampled CRC and the index's SHA-256. The CRC of every byte too when
    ``full``, or when the mtime moved (a copy keeps the bytes but not always the mtime, so a new
    mtime alone is not an error)."""
    name = entry["name"]
    bin_path, idx_path = folder / name, folder / entry["index"]
    hint = "re-run `muse-fast prepare` on the source folder into a new --out"
    for p in (bin_path, idx_path):
        if not p.is_file():
            raise CorpusError(f"corpus {str(folder)!r}: shard file {p.name!r} is missing; {hint}")
    st = bin_path.stat()
    if st.st_size != entry["bytes"]:
        raise CorpusError(
            f"corpus {str(folder)!r}: shard {name!r} is {st.st_size} bytes, the manifest says "
            f"{entry['bytes']} (truncated or modified after it was written); {hint}"
        )
    idx_sha = hashlib.sha256(idx_path.read_bytes()).hexdigest()
    bad = idx_sha != entry["index_sha256"]
    bad = bad or sampled_crc(bin_path, st.st_size) != entry["sampled_crc32"]
    if not bad and (full or st.st_mtime_ns != entry["mtime_ns"]):
        bad = _file_crc(bin_path) != entry["crc32"]
    if bad:
        raise CorpusError(
            f"corpus {str(folder)!r}: shard {name!r} (or its index) was modified after the "
            f"manifest was written (checksum mismatch); {hint}"
        )


class CorpusWriter:
    """Appends tracks to a corpus folder shard by shard, committing the manifest per shard.

    ``manifest``: the folder's current manifest (continue it) or ``None`` (a new corpus).
    A shard closes once it holds ``shard_bytes`` bytes; the files processed up to then are
    committed with it, so a run killed at any point resumes at the first uncommitted file and
    makes the same shards an uninterrupted run makes."""

    def __init__(self, folder: Path, sample_rate: int, shard_bytes: int, manifest: dict | None):
        self.folder = Path(folder)
        self.shard_bytes = int(shard_bytes)
        self.manifest = manifest or {
            "format": FORMAT,
            "version": VERSION,
            "sample_rate": int(sample_rate),
            "dtype": "int16",
            "complete": False,
            "shards": [],
            "tracks": [],
            "skipped": [],
        }
        self._pending_tracks: list[dict] = []
        self._pending_skips: list[dict] = []
        self._bin = None
        self._index: list[tuple[int, int]] = []
        self._crc = 0
        self._samples = 0
        for tmp in self.folder.glob("*.tmp"):  # leftovers of a killed run
            tmp.unlink()

    @property
    def n_tracks(self) -> int:
        return len(self.manifest["tracks"]) + len(self._pending_tracks)

    def _shard_name(self) -> str:
        return f"shard_{len(self.manifest['shards']):05d}"

    def add_track(self, meta: dict, pcm: np.ndarray) -> None:
        """Append one track (int16 samples) with its manifest entry ``meta``."""
        if pcm.dtype != np.dtype("<i2") or pcm.ndim != 1:
            raise TypeError(f"pcm: expected int16 (samples,), got {pcm.dtype} {pcm.shape}")
        if self._bin is None:
            self._bin = open(self.folder / (self._shard_name() + ".bin.tmp"), "wb")
        data = pcm.tobytes()
        self._bin.write(data)
        self._crc = zlib.crc32(data, self._crc)
        self._index.append((self._samples, pcm.size))
        self._pending_tracks.append(
            {**meta, "shard": len(self.manifest["shards"]), "offset": self._samples}
        )
        self._samples += pcm.size
        if 2 * self._samples >= self.shard_bytes:
            self._close_shard()

    def add_skip(self, entry: dict) -> None:
        """Record a skipped file (``{"path", "reason", ...}``); committed with the next shard."""
        self._pending_skips.append(entry)

    def _close_shard(self) -> None:
        name = self._shard_name()
        bin_tmp = self.folder / (name + ".bin.tmp")
        idx_tmp = self.folder / (name + ".idx.tmp")
        self._bin.flush()
        os.fsync(self._bin.fileno())
        self._bin.close()
        self._bin = None
        idx = np.asarray(self._index, dtype="<i8").reshape(-1, 2)  # (tracks, [offset, length])
        with open(idx_tmp, "wb") as f:
            f.write(idx.tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(idx_tmp, self.folder / (name + ".idx"))
        os.replace(bin_tmp, self.folder / (name + ".bin"))
        st = (self.folder / (name + ".bin")).stat()
        self.manifest["shards"].append(
            {
                "name": name + ".bin",
                "index": name + ".idx",
                "tracks": len(self._index),
                "samples": self._samples,
                "bytes": st.st_size,
                "mtime_ns": st.st_mtime_ns,
                "crc32": self._crc,
                "sampled_crc32": sampled_crc(self.folder / (name + ".bin"), st.st_size),
                "index_sha256": hashlib.sha256(idx.tobytes()).hexdigest(),
            }
        )
        self._index, self._crc, self._samples = [], 0, 0
        self._commit(complete=False)

    def _commit(self, complete: bool) -> None:
        self.manifest["tracks"] += self._pending_tracks
        self.manifest["skipped"] += self._pending_skips
        self._pending_tracks, self._pending_skips = [], []
        self.manifest["complete"] = complete
        write_json_atomic(self.folder / MANIFEST, self.manifest)

    def finish(self, extra: dict | None = None) -> dict:
        """Close the last shard and commit a complete manifest. An empty corpus is an error
        and writes nothing."""
        if self.n_tracks == 0:
            self.abort()
            raise CorpusError("no usable audio: every file was skipped")
        if self._bin is not None:
            self._close_shard()
        self.manifest.update(extra or {})
        self._commit(complete=True)
        return self.manifest

    def abort(self) -> None:
        """Drop the shard in progress (its temporary files); the manifest stays as committed."""
        if self._bin is not None:
            self._bin.close()
            self._bin = None
        for tmp in self.folder.glob("*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()
