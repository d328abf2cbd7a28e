"""``muse-fast prepare``: decode a folder of audio once into a prepared corpus.

Every file (sorted by path) is decoded with soundfile, mixed to mono and resampled with
torchaudio (:func:`muse_fast.data.load_audio`, the same code :class:`AudioFolder` reads
with), then rounded to int16 and appended to the shards in that sorted order. Worker processes
decode in parallel but results are consumed in order (``imap``), so the bytes written are a
function of the sorted file list only — not of the worker count or of which worker finished
first. Combined with the per-shard commits of :class:`~muse_fast.data.corpus_format.CorpusWriter`
this makes ``prepare`` idempotent (files already in the manifest with the same size and mtime
are not read again), resumable (a killed run continues at the first uncommitted file and writes
the same bytes) and incremental (new files go to new shards).

``num_shards=K, shard_index=i`` prepares every K-th file from the i-th into
``OUT/part-i-of-K/`` (a corpus of its own); :func:`merge_parts` writes ``OUT/manifest.json``
over all K parts without copying a byte. :func:`prepare_synthetic` renders
:class:`SyntheticMusic` into a cached corpus the same way.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from .audio_folder import AUDIO_EXTENSIONS, list_audio, load_audio, probe_audio
from .corpus_format import (
    FORMAT,
    MANIFEST,
    VERSION,
    CorpusError,
    CorpusWriter,
    read_manifest,
    write_json_atomic,
)

__all__ = ["cache_dir", "merge_parts", "prepare_folder", "prepare_synthetic", "to_int16"]

DEFAULT_SHARD_BYTES = 1 << 30


def to_int16(x: np.ndarray) -> np.ndarray:
    """float in [-1, 1] -> int16 ``round(x * 32768)`` clipped to [-32768, 32767]."""
    return np.clip(np.rint(np.asarray(x, np.float32) * 32768.0), -32768, 32767).astype("<i2")


@contextlib.contextmanager
def _locked(folder: Path):
    """An exclusive lock on ``folder`` (one writer at a time; a second one waits)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # one thread per decoder: the same sums in every process


def _ordered_map(fn: Callable, items: list, workers: int) -> Iterator:
    """``map(fn, items)`` in order, over ``workers`` processes (0 or 1: this process)."""
    if workers <= 1:
        import torch

        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield from map(fn, items)
        finally:
            torch.set_num_threads(n)
        return
    import multiprocessing as mp

    # fork where there is one: "spawn" re-imports the caller's __main__, and a script without
    # a main guard would then run (and here: wait on the folder lock) in every worker
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(workers, initializer=_worker_init) as pool:
        yield from pool.imap(fn, items, chunksize=1)


def _write(
    folder: Path,
    sample_rate: int,
    shard_bytes: int,
    manifest: dict | None,
    results: Iterable,
    total: int,
    progress: bool,
    extra: dict,
) -> dict:
    """Feed ``(meta, pcm | None)`` results to a :class:`CorpusWriter`; skips have ``pcm=None``."""
    from tqdm import tqdm

    writer = CorpusWriter(folder, sample_rate, shard_bytes, manifest)
    bar = tqdm(total=total, unit="file", disable=not progress, desc=f"prepare {folder.name}")
    try:
        for meta, pcm in results:
            if pcm is None:
                writer.add_skip(meta)
            else:
                writer.add_track(meta, pcm)
            bar.update(1)
        return writer.finish(extra)
    except BaseException:
        writer.abort()  # a full disk, a kill: the last committed manifest stays
        raise
    finally:
        bar.close()


# ---------------------------------------------------------------------- a folder of audio
def _decode(job: tuple) -> tuple[dict, np.ndarray | None]:
    path, rel, sample_rate, min_samples, threshold = job
    st = os.stat(path)
    meta = {"path": rel, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    info, reason = probe_audio(path)
    if info is None:
        return {**meta, "reason": reason}, None
    try:
        x = load_audio(path, sample_rate).numpy()
    except Exception as e:
        return {**meta, "reason": "corrupt", "detail": f"{type(e).__name__}: {e}"}, None
    if not np.isfinite(x).all():
        return {**meta, "reason": "corrupt", "detail": "non-finite samples"}, None
    if x.size < max(min_samples, 1):
        return {**meta, "reason": "too_short", "detail": f"{x.size} < {min_samples} samples"}, None
    peak = float(np.abs(x).max())
    if peak < threshold:
        return {**meta, "reason": "silent", "detail": f"peak {peak:.3g} < {threshold}"}, None
    meta.update(
        source_rate=int(info.samplerate),
        channels=int(info.channels),
        samples=int(x.size),
        duration_s=x.size / sample_rate,
        peak=peak,
    )
    return meta, to_int16(x)


def _todo(files: list[Path], root: Path, manifest: dict | None) -> list[Path]:
    """Files not yet in ``manifest`` (as a track or a skip) with the same size and mtime."""
    if manifest is None:
        return files
    seen = {(e["path"], e["size"], e["mtime_ns"]) for e in manifest["tracks"] + manifest["skipped"]}
    todo = []
    for p in files:
        st = p.stat()
        if (str(p.relative_to(root)), st.st_size, st.st_mtime_ns) not in seen:
            todo.append(p)
    return todo


def prepare_folder(
    data: str | os.PathLike,
    out: str | os.PathLike,
    sample_rate: int,
    *,
    workers: int = 0,
    min_samples: int = 1,
    silence_threshold: float = 1e-4,
    num_shards: int = 1,
    shard_index: int = 0,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    extensions: tuple[str, ...] = AUDIO_EXTENSIONS,
    progress: bool = False,
) -> Path:
    """Prepare (or continue, or extend) the corpus of ``data`` in ``out``; returns its folder
    (``out/part-i-of-K`` when ``num_shards > 1``)."""
    root = Path(data).resolve()
    if not root.is_dir():
        raise ValueError(f"data: folder {str(data)!r} does not exist or is not a folder")
    if int(sample_rate) < 1000:
        raise ValueError(f"sample_rate: expected >= 1000 Hz, got {sample_rate}")
    if not (num_shards >= 1 and 0 <= shard_index < num_shards):
        raise ValueError(
            f"shard_index: expected 0 <= i < num_shards, got {shard_index} of {num_shards}"
        )
    folder = Path(out)
    if num_shards > 1:
        folder = folder / f"part-{shard_index:05d}-of-{num_shards:05d}"
    files = list_audio(root, extensions)[shard_index::num_shards]
    if not files:
        raise ValueError(
            f"data: no audio files ({', '.join(extensions)}) under {str(root)!r}"
            + (f" for part {shard_index} of {num_shards}" if num_shards > 1 else "")
        )
    with _locked(folder):
        manifest = read_manifest(folder) if (folder / MANIFEST).is_file() else None
        if manifest is not None and manifest["sample_rate"] != int(sample_rate):
            raise CorpusError(
                f"{folder} holds a corpus at {manifest['sample_rate']} Hz, not {sample_rate} Hz; "
                f"prepare into another --out"
            )
        todo = _todo(files, root, manifest)
        if manifest is not None and not todo and manifest.get("complete"):
            return folder  # nothing new
        jobs = [(str(p), str(p.relative_to(root)), int(sample_rate), int(min_samples),
                 float(silence_threshold)) for p in todo]  # fmt: skip
        extra = {"source": str(root), "num_shards": num_shards, "shard_index": shard_index}
        _write(folder, int(sample_rate), shard_bytes, manifest,
               _ordered_map(_decode, jobs, workers), len(jobs), progress, extra)  # fmt: skip
    return folder


# ---------------------------------------------------------------------- many machines
def merge_parts(out: str | os.PathLike) -> Path:
    """Write ``out/manifest.json`` over every ``out/part-i-of-K`` corpus (all K must be there
    and complete); the shards stay where they are."""
    out = Path(out)
    parts = sorted(out.glob("part-*-of-*"))
    if not parts:
        raise ValueError(f"out: no part-i-of-K folders under {str(out)!r} to merge")
    ks = {p.name.rsplit("-", 1)[1] for p in parts}
    if len(ks) != 1:
        raise ValueError(f"out: parts of different splits under {str(out)!r}: {sorted(ks)}")
    k = int(ks.pop())
    names = {f"part-{i:05d}-of-{k:05d}" for i in range(k)}
    missing = sorted(names - {p.name for p in parts})
    if missing:
        raise CorpusError(f"cannot merge {out}: missing part(s) {', '.join(missing)}")
    merged: dict = {}
    for part in sorted(out / n for n in names):
        m = read_manifest(part)
        if not m.get("complete"):
            raise CorpusError(f"cannot merge {out}: {part.name} is not complete (re-run its job)")
        if not merged:
            merged = {**m, "shards": [], "tracks": [], "skipped": [], "parts": k}
        if m["sample_rate"] != merged["sample_rate"]:
            raise CorpusError(f"cannot merge {out}: {part.name} is at {m['sample_rate']} Hz")
        base = len(merged["shards"])
        for s in m["shards"]:
            merged["shards"].append({**s, "name": f"{part.name}/{s['name']}",
                                     "index": f"{part.name}/{s['index']}"})  # fmt: skip
        merged["tracks"] += [{**t, "shard": t["shard"] + base} for t in m["tracks"]]
        merged["skipped"] += m["skipped"]
    merged.pop("shard_index", None)
    write_json_atomic(out / MANIFEST, merged)
    return out


# ---------------------------------------------------------------------- the synthetic corpus
def cache_dir() -> Path:
    """``$MUSE_FAST_CACHE``, else ``~/.cache/muse_fast``."""
    env = os.environ.get("MUSE_FAST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "muse_fast"


def _render(job: tuple) -> tuple[dict, np.ndarray]:
    from .synthetic import SyntheticMusic

    n_tracks, duration_s, sample_rate, seed, index = job
    x = SyntheticMusic(n_tracks, duration_s, sample_rate, seed).track(index)
    meta = {"path": f"synthetic:{index}", "size": 0, "mtime_ns": 0, "samples": int(x.size),
            "duration_s": x.size / sample_rate, "peak": float(np.abs(x).max())}  # fmt: skip
    return meta, to_int16(x)


def prepare_synthetic(
    n_tracks: int,
    duration_s: float,
    sample_rate: int,
    seed: int,
    *,
    root: str | os.PathLike | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> Path:
    """Render :class:`SyntheticMusic` ``(n_tracks, duration_s, sample_rate, seed)`` once into a
    corpus under ``root`` (default :func:`cache_dir`), in a folder named by those settings; later
    calls (and other processes, which wait on its lock) reuse it."""
    settings = {"n_tracks": int(n_tracks), "duration_s": float(duration_s),
                "sample_rate": int(sample_rate), "seed": int(seed), "format": VERSION}  # fmt: skip
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    name = f"synthetic-{n_tracks}x{duration_s:g}s-{sample_rate}hz-seed{seed}-{key}"
    folder = Path(root) if root is not None else cache_dir()
    folder = folder / name
    with _locked(folder):
        manifest = None
        if (folder / MANIFEST).is_file():
            manifest = read_manifest(folder)
            if manifest.get("complete"):
                return folder
        done = len(manifest["tracks"]) if manifest else 0
        jobs = [(n_tracks, duration_s, sample_rate, seed, i) for i in range(done, n_tracks)]
        if workers is None:  # a small corpus renders faster than worker processes start
            big = len(jobs) * duration_s > 600
            workers = min(len(jobs), os.cpu_count() or 1) if big else 0
        _write(folder, int(sample_rate), DEFAULT_SHARD_BYTES // 4, manifest,
               _ordered_map(_render, jobs, workers), len(jobs), progress,
               {"source": "synthetic", "synthetic": settings})  # fmt: skip
    return folder


def is_prepared(path: str | os.PathLike | None) -> bool:
    """Whether ``path`` is a folder holding a prepared corpus manifest."""
    if not path:
        return False
    p = Path(path) / MANIFEST
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text()).get("format") == FORMAT
    except (OSError, json.JSONDecodeError):
        return False
