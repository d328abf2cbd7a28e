"""Where training batches come from, behind one interface (:class:`BatchSource`).

* a prepared corpus (``--data CORPUS`` with a ``manifest.json``, and the synthetic default,
  rendered once into a cached corpus): :class:`~muse_fast.data.CropBatches` — whole batches
  gathered from memory-mapped int16 shards, no DataLoader workers;
* a folder of audio files, or a ``dataset=`` passed to :func:`~muse_fast.train.train`: a
  DataLoader over :class:`~muse_fast.data.ResumableSampler` keys.

Both resume exactly from the number of batches a rank has consumed.
"""

from __future__ import annotations

import time

import torch

from .config import TrainConfig
from .runtime import auto_workers

__all__ = ["BatchSource", "build_dataset", "open_source"]


def build_dataset(cfg: TrainConfig, model: torch.nn.Module):
    """The data ``cfg.data.root`` names (a prepared corpus or a folder of audio), else the
    synthetic corpus rendered once into the cache (:func:`muse_fast.data.prepare_synthetic`)."""
    from ..data import AudioFolder, PreparedCorpus, is_prepared, prepare_synthetic

    sr, seg, views = int(model.sample_rate), int(model.segment_samples), int(model.n_views)
    if cfg.data.root and is_prepared(cfg.data.root):
        return check_rate(PreparedCorpus(cfg.data.root), sr, cfg.data.root)
    if cfg.data.root:
        return AudioFolder(
            cfg.data.root,
            sr,
            seg,
            views,
            extensions=tuple(cfg.data.extensions),
            seed=cfg.seed,
            silence_threshold=cfg.data.silence_threshold,
        )
    duration = max(cfg.data.synthetic_duration_s, 2.0 * seg / sr)
    path = prepare_synthetic(
        cfg.data.synthetic_tracks, duration, sr, cfg.seed, progress=cfg.progress
    )
    return PreparedCorpus(path)


def check_rate(corpus, model_rate: int, where: str):
    if corpus.sample_rate != model_rate:
        raise ValueError(
            f"data: corpus {where!r} is prepared at {corpus.sample_rate} Hz but the model needs "
            f"{model_rate} Hz; prepare it again at that rate: `muse-fast prepare --data "
            f"{corpus.manifest.get('source', 'SOURCE')} --out NEW_FOLDER --sample-rate {model_rate}`"
        )
    return corpus


def describe(ds) -> str:
    from ..data import AudioFolder, PreparedCorpus, SyntheticMusic

    if isinstance(ds, PreparedCorpus):
        src = ds.manifest.get("synthetic")
        what = "synthetic corpus (cached)" if src else "prepared corpus"
        return f"{what}: {ds!r}"
    if isinstance(ds, AudioFolder):
        return f"{len(ds)} files in {ds.root} (skipped at scan: {ds.skip_summary()})"
    if isinstance(ds, SyntheticMusic):
        return (
            f"synthetic corpus: {ds.n_tracks} tracks x {ds.duration_s:g} s at "
            f"{ds.sample_rate} Hz, seed {ds.seed}"
        )
    return repr(ds)


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)


class BatchSource:
    """``next()`` -> ``{"audio", "index", "skipped"}`` on the host; ``close()`` joins threads and
    worker processes. ``wait_s`` accumulates the time spent waiting for batches."""

    def __init__(self, iterator, dataset, workers: int, closer=None):
        self.dataset = dataset
        self.workers = workers
        self._it = iterator
        self._closer = closer
        self.wait_s = 0.0
        self.items = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def next(self) -> dict:
        t = time.perf_counter()
        batch = next(self._it)
        self.wait_s += time.perf_counter() - t
        self.items += int(batch["audio"].shape[0])
        return batch

    def describe(self) -> str:
        return describe(self.dataset)

    @property
    def skipped_at_scan(self) -> dict[str, int]:
        from ..data import PreparedCorpus

        if isinstance(self.dataset, PreparedCorpus):
            counts: dict[str, int] = {}
            for s in self.dataset.skipped:
                counts[s["reason"]] = counts.get(s["reason"], 0) + 1
            return counts
        return {k: len(v) for k, v in getattr(self.dataset, "skipped", {}).items()}

    def close(self) -> None:
        if self._closer is not None:
            self._closer()
            self._closer = None
        # a DataLoader iterator shuts its worker processes down (and joins them) when deleted
        self._it = None


def open_source(cfg, dataset, model, *, rank: int, world: int, device, step: int) -> BatchSource:
    """The batch stream of this rank, positioned after ``step`` batches."""
    from ..data import CropBatches, PreparedCorpus, ResumableSampler

    if isinstance(dataset, PreparedCorpus):
        check_rate(dataset, int(model.sample_rate), str(dataset.path))
        stream = CropBatches(
            dataset,
            cfg.batch_size,
            int(model.segment_samples),
            int(model.n_views),
            seed=cfg.seed,
            rank=rank,
            world_size=world,
            start_batch=step,
            prefetch=2 if device.type == "cuda" else 1,
        )
        return BatchSource(stream, dataset, 0, closer=stream.close)
    workers = cfg.num_workers if cfg.num_workers is not None else auto_workers(device, world)
    sampler = ResumableSampler(
        len(dataset), seed=cfg.seed, rank=rank, world_size=world, start=step * cfg.batch_size
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=workers > 0,
        worker_init_fn=_worker_init if workers > 0 else None,
        generator=torch.Generator().manual_seed(cfg.seed),  # never draws from the global RNG
    )
    it = iter(loader)

    def close() -> None:
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:  # join the worker processes now, not in a finalizer at exit
            shutdown()

    return BatchSource(it, dataset, workers, closer=close)
