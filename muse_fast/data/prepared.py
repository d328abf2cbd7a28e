"""Reading a prepared corpus: random crops of whole batches straight from memory-mapped shards.

:class:`PreparedCorpus` maps every shard (``np.memmap``, int16) and checks it against the
manifest when opened. :meth:`PreparedCorpus.sample_crops` draws a batch of crops in a few
numpy calls — tracks uniformly, each view's start uniformly in ``[0, samples - length]``, all
from ``numpy.random.default_rng(seed)`` — and copies them with one call of the C++ kernel
``_C.gather_crops_i16`` (OpenMP over crops) into a contiguous int16 buffer, pinned when CUDA is
available. The random draws happen before the copy, so a seed gives the same crops whatever the
thread count; the views of one track are independent crops.

:class:`CropBatches` is the training stream: the track order of
:class:`~muse_fast.data.ResumableSampler` (a permutation per epoch, ``rank::world_size``, so
ranks draw disjoint tracks), crop starts from ``(seed, rank, batch number)``; batch ``b`` is a
pure function of those, so a resumed run reads the same crops. A background thread gathers
the next batches while the step runs; :meth:`CropBatches.close` joins it.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import numpy as np
import torch

from .corpus_format import CorpusError, check_shard, read_manifest

__all__ = ["CropBatches", "PreparedCorpus"]


def _ext():
    try:
        from .._ext import ext

        return ext()
    except ImportError:
        return None


class PreparedCorpus:
    """A corpus written by ``muse-fast prepare`` (see :mod:`muse_fast.data.corpus_format`).

    ``verify="fast"`` (default) checks each shard's size, sampled checksum and index hash (and
    every byte when its mtime changed); ``"full"`` checksums every byte; ``"none"`` trusts it."""

    def __init__(self, path: str | Path, *, verify: str = "fast"):
        if verify not in ("fast", "full", "none"):
            raise ValueError(f"verify: expected 'fast', 'full' or 'none', got {verify!r}")
        self.path = Path(path)
        self.threads = 0  # copy threads of the gather kernel; 0: the OpenMP default
        m = read_manifest(self.path)
        if not m.get("complete"):
            raise CorpusError(
                f"corpus {str(self.path)!r} is incomplete (its prepare was interrupted); "
                f"run the same `muse-fast prepare` again to finish it"
            )
        self.manifest = m
        self.sample_rate = int(m["sample_rate"])
        self.tracks: list[dict] = m["tracks"]
        self.skipped: list[dict] = m.get("skipped", [])
        self._shards: list[np.memmap] = []
        offsets, lengths, shard_of = [], [], []
        for k, entry in enumerate(m["shards"]):
            if verify != "none":
                check_shard(self.path, entry, full=verify == "full")
            idx = np.fromfile(self.path / entry["index"], dtype="<i8").reshape(-1, 2)
            self._shards.append(np.memmap(self.path / entry["name"], dtype="<i2", mode="r"))
            offsets.append(idx[:, 0])
            lengths.append(idx[:, 1])
            shard_of.append(np.full(len(idx), k, np.int64))
        offsets_a = np.concatenate(offsets) if offsets else np.zeros(0, np.int64)
        if len(offsets_a) != len(self.tracks):
            raise CorpusError(
                f"corpus {str(self.path)!r}: the shard indexes hold {len(offsets_a)} tracks, "
                f"the manifest {len(self.tracks)}; re-run `muse-fast prepare`"
            )
        # manifest order is shard order; tracks may reference any shard after a merge
        by_shard = np.array([t["shard"] for t in self.tracks], np.int64)
        order = np.argsort(by_shard, kind="stable")
        self.shard_of = np.empty(len(order), np.int64)
        self.offset = np.empty(len(order), np.int64)
        self.samples = np.empty(len(order), np.int64)
        self.shard_of[order] = np.concatenate(shard_of)
        self.offset[order] = offsets_a
        self.samples[order] = np.concatenate(lengths)
        self._shard_ptrs = np.array([s.ctypes.data for s in self._shards], np.int64)
        self._shard_sizes = np.array([s.size for s in self._shards], np.int64)

    def __len__(self) -> int:
        return len(self.tracks)

    def __repr__(self) -> str:
        hours = float(self.samples.sum()) / self.sample_rate / 3600
        return (
            f"PreparedCorpus({str(self.path)!r}, {len(self)} tracks, {hours:.2f} h at "
            f"{self.sample_rate} Hz, {len(self._shards)} shard(s), {len(self.skipped)} skipped)"
        )

    def skip_summary(self) -> str:
        counts: dict[str, int] = {}
        for s in self.skipped:
            counts[s["reason"]] = counts.get(s["reason"], 0) + 1
        return ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items()) or "none skipped"

    # ------------------------------------------------------------------ crops
    def read(self, track: int, start: int = 0, length: int | None = None) -> torch.Tensor:
        """Samples ``[start, start + length)`` of ``track`` as float32 in [-1, 1)."""
        track = int(track)
        if not 0 <= track < len(self):
            raise IndexError(f"track {track} out of range for {len(self)} tracks")
        n = int(self.samples[track])
        length = n - start if length is None else int(length)
        if start < 0 or length < 0 or start + length > n:
            raise ValueError(
                f"start/length: [{start}, {start + length}) is outside track {track} ({n} samples)"
            )
        off = int(self.offset[track]) + start
        x = np.asarray(self._shards[self.shard_of[track]][off : off + length], np.float32)
        return torch.from_numpy(x / np.float32(32768.0))

    def eligible(self, length: int) -> np.ndarray:
        """Ids of the tracks at least ``length`` samples long."""
        return np.nonzero(self.samples >= length)[0]

    def gather(
        self, track: np.ndarray, start: np.ndarray, length: int, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """int16 crops ``(*start.shape, length)``: ``out[..., :] = track[...]'s samples from
        start`` (``track`` broadcast over ``start``'s trailing axis)."""
        start = np.asarray(start, np.int64)
        tr = np.broadcast_to(
            np.asarray(track, np.int64).reshape(start.shape[:1] + (1,) * (start.ndim - 1)),
            start.shape,
        )
        if (start < 0).any() or (start + length > self.samples[tr]).any():
            raise ValueError("start: a crop runs past the end of its track")
        shard = np.ascontiguousarray(self.shard_of[tr].reshape(-1))
        offs = np.ascontiguousarray((self.offset[tr] + start).reshape(-1))
        shape = (*start.shape, length)
        if out is None:
            out = torch.empty(shape, dtype=torch.int16, pin_memory=torch.cuda.is_available())
        elif tuple(out.shape) != shape or out.dtype != torch.int16 or not out.is_contiguous():
            raise ValueError(f"out: expected a contiguous int16 tensor of shape {shape}")
        C = _ext()
        if C is not None and hasattr(C, "gather_crops_i16"):
            C.gather_crops_i16(self._shard_ptrs.ctypes.data, self._shard_sizes.ctypes.data,
                               len(self._shards), shard.ctypes.data, offs.ctypes.data,
                               shard.size, int(length), out.data_ptr(), self.threads)  # fmt: skip
        else:
            flat = out.numpy().reshape(-1, length)
            for k, s in enumerate(self._shards):
                sel = np.nonzero(shard == k)[0]
                flat[sel] = s[offs[sel, None] + np.arange(length)]
        return out

    def draw_starts(
        self, track: np.ndarray, length: int, n_views: int, rng: np.random.Generator
    ) -> np.ndarray:
        """Independent uniform starts ``(len(track), n_views)``, one per view."""
        high = self.samples[np.asarray(track, np.int64)] - length + 1
        return rng.integers(0, high[:, None], size=(len(high), n_views))

    def sample_crops(
        self,
        batch: int,
        length: int,
        n_views: int = 1,
        seed: int = 0,
        *,
        out: torch.Tensor | None = None,
    ):
        """``(audio, track, start)``: int16 ``(batch, n_views, length)`` (``(batch, length)`` for
        one view), int64 ``(batch,)`` and ``(batch, n_views)``; tracks drawn uniformly (with
        replacement) among those at least ``length`` long."""
        if batch < 1 or length < 1 or n_views < 1:
            raise ValueError(
                f"batch, length, n_views: expected >= 1, got {batch}, {length}, {n_views}"
            )
        ok = self.eligible(length)
        if ok.size == 0:
            raise ValueError(f"length: no track of {self.path} is {length} samples long")
        rng = np.random.default_rng(seed)
        track = ok[rng.integers(0, ok.size, size=batch)]
        start = self.draw_starts(track, length, n_views, rng)
        audio = self.gather(track, start, length, out)
        if n_views == 1:
            audio = audio.view(batch, length)
        return audio, torch.from_numpy(track), torch.from_numpy(start)


class CropBatches:
    """An endless, resumable stream of training batches ``{"audio", "index", "skipped"}`` from
    ``corpus``; ``start_batch`` batches of this rank are skipped without being read."""

    def __init__(self, corpus: PreparedCorpus, batch: int, length: int, n_views: int, *, seed: int = 0,
                 rank: int = 0, world_size: int = 1, start_batch: int = 0, prefetch: int = 2):  # fmt: skip
        self.corpus, self.batch, self.length, self.n_views = (
            corpus,
            int(batch),
            int(length),
            int(n_views),
        )
        self.seed, self.rank, self.world = int(seed), int(rank), int(world_size)
        self.ids = corpus.eligible(self.length)
        if self.ids.size == 0:
            raise ValueError(
                f"no track of {corpus.path} is as long as one crop ({self.length} samples = "
                f"{self.length / corpus.sample_rate:.2f} s)"
            )
        self.per_rank = -(-self.ids.size // self.world)
        self.next_batch = int(start_batch)
        self._epochs: dict[int, np.ndarray] = {}
        self._prefetch = int(prefetch)
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def _epoch(self, e: int) -> np.ndarray:
        """This rank's track ids in epoch ``e`` (DistributedSampler's padding and striding)."""
        if e not in self._epochs:
            perm = self.ids[np.random.default_rng((self.seed, e)).permutation(self.ids.size)]
            total = self.per_rank * self.world
            perm = np.resize(perm, total)  # pads by repeating the head
            self._epochs = {e: perm[self.rank : total : self.world]}
        return self._epochs[e]

    def tracks_of(self, b: int) -> np.ndarray:
        pos = np.arange(b * self.batch, (b + 1) * self.batch)
        epoch, off = np.divmod(pos, self.per_rank)
        out = np.empty(self.batch, np.int64)
        for e in np.unique(epoch):
            sel = epoch == e
            out[sel] = self._epoch(int(e))[off[sel]]
        return out

    def make(self, b: int) -> dict:
        """Batch ``b`` of this rank."""
        track = self.tracks_of(b)
        rng = np.random.default_rng((self.seed, self.rank, b))
        start = self.corpus.draw_starts(track, self.length, self.n_views, rng)
        audio = self.corpus.gather(track, start, self.length)
        if self.n_views == 1:
            audio = audio.view(self.batch, self.length)
        return {
            "audio": audio,
            "index": torch.from_numpy(track),
            "skipped": torch.zeros(self.batch, dtype=torch.long),
        }

    def _put(self, item) -> bool:
        """Queue ``item`` unless asked to stop first."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        b = self.next_batch
        try:
            while self._put(self.make(b)):
                b += 1
        except BaseException as e:  # surfaced in __next__
            self._put(e)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._prefetch <= 0:
            item = self.make(self.next_batch)
        else:
            if self._thread is None:
                self._queue = queue.Queue(maxsize=self._prefetch)
                self._thread = threading.Thread(
                    target=self._produce, name="muse-fast-crops", daemon=True
                )
                self._thread.start()
            item = self._queue.get()
            if isinstance(item, BaseException):
                raise item
        self.next_batch += 1
        return item

    def close(self) -> None:
        """Stop and join the prefetch thread (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
