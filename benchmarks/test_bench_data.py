"""Data sources: items/s per core and bytes/s for the crops each recipe trains on.

Sources, one process, one thread (per core):

* ``AudioFolder`` over 44.1 kHz stereo PCM16 WAV, and over MP3 (written by libsndfile's own
  MP3 encoder, when it has one): per item, read the frames of each crop, mix, resample;
* ``SyntheticMusic``: per item, render each crop;
* ``PreparedCorpus.sample_crops``: a whole batch — numpy draws, one C++ gather from the
  memory-mapped int16 shards (``threads=1``; the kernel's own thread count is a parameter).

Crops: Myna — 2 views x 50 000 samples at 16 kHz; MusicFM — 1 view x 30 s at 24 kHz.
Batches 256 and 4096 for PreparedCorpus (its cost is per batch); the per-item sources are
timed on a few dozen items (their cost is per item, so items/s does not depend on the batch).
``bytes/s`` counts the output: float32 for the per-item sources, int16 for PreparedCorpus
(what goes to the device). The training-step rows (items/s a recipe's step consumes at its
paper batch) need a GPU and are recorded as "not measured" without one.

    python -m pytest benchmarks/test_bench_data.py --benchmark -q [--benchmark-quick]
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf
import torch

CROPS = {"myna": (16000, 50000, 2), "musicfm": (24000, 30 * 24000, 1)}  # rate, samples, views
_ITEMS_S: dict[tuple[str, str], float] = {}  # (source, crop) -> items/s, for the ratio note


def _rows_note(row, items: int, bytes_per_item: int) -> float:
    if not row.median_ms:
        return 0.0
    ips = items / (row.median_ms / 1e3)
    row.extra.update(items_per_s=ips, bytes_per_s=ips * bytes_per_item, threads=1)
    row.note = f"{ips:,.0f} items/s/core, {ips * bytes_per_item / 2**20:,.0f} MiB/s"
    return ips


@pytest.fixture(scope="module")
def one_core():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def sources(tmp_path_factory, quick):
    """WAV and MP3 folders (44.1 kHz stereo, 40 s tracks) and prepared corpora at 16 / 24 kHz."""
    from muse_fast.data import prepare_synthetic

    root = tmp_path_factory.mktemp("bench_data")
    n_files = 4 if quick else 8
    rng = np.random.default_rng()
    out = {"wav": root / "wav", "mp3": root / "mp3"}
    for d in out.values():
        d.mkdir()
    mp3_ok = "MP3" in sf.available_formats()
    for i in range(n_files):
        t = np.arange(44100 * 40) / 44100
        x = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 1000) * t)[:, None]
        x = (x + 0.05 * rng.standard_normal((t.size, 2))).astype(np.float32)
        sf.write(out["wav"] / f"t{i}.wav", x, 44100, subtype="PCM_16")
        if mp3_ok:
            sf.write(out["mp3"] / f"t{i}.mp3", x, 44100, format="MP3")
    if not mp3_ok:
        out["mp3"] = None
    tracks = 32 if quick else 128
    for name, (rate, _, _) in CROPS.items():
        out[f"corpus-{name}"] = prepare_synthetic(tracks, 40.0, rate, 0, root=root)
    return out


def _bench_items(measure, ds, crop, source, n_items, rounds):
    rate, length, views = CROPS[crop]
    keys = [(i % len(ds), 1000 + i) for i in range(n_items)]

    def run():
        for k in keys:
            ds[k]

    row = measure(run, op="data", variant=source, params={"crop": crop, "items": n_items},
                  mode="load", rounds=rounds, warmup=1, memory=False)  # fmt: skip
    _ITEMS_S[(source, crop)] = _rows_note(row, n_items, views * length * 4)


@pytest.mark.parametrize("crop", list(CROPS))
@pytest.mark.parametrize("source", ["AudioFolder-wav", "AudioFolder-mp3", "SyntheticMusic"])
def test_bench_per_item_sources(measure, sources, one_core, quick, source, crop):
    from muse_fast.data import AudioFolder, SyntheticMusic

    rate, length, views = CROPS[crop]
    if source == "SyntheticMusic":
        ds = SyntheticMusic(64, 40.0, rate, 0, segment_samples=length, n_views=views)
    else:
        folder = sources[source.split("-")[1]]
        if folder is None:
            pytest.skip("this libsndfile has no MP3 encoder: the MP3 rows are not measured")
        ds = AudioFolder(folder, rate, length, views)
    n = 8 if quick else (16 if crop == "musicfm" else 32)
    _bench_items(measure, ds, crop, source, n, rounds=3)


@pytest.mark.parametrize("batch", [256, 4096])
@pytest.mark.parametrize("crop", list(CROPS))
def test_bench_prepared_corpus(measure, sources, one_core, quick, crop, batch):
    from muse_fast.data import PreparedCorpus

    rate, length, views = CROPS[crop]
    if quick and batch > 256:
        pytest.skip("--benchmark-quick: batch 256 only")
    out_bytes = batch * views * length * 2
    if out_bytes > 2 * 2**30:
        pytest.skip(f"batch {batch} of {crop} crops is {out_bytes / 2**30:.1f} GiB of int16: "
                    "not run on this shared machine")  # fmt: skip
    corpus = PreparedCorpus(sources[f"corpus-{crop}"])
    corpus.threads = 1
    buf = torch.empty((batch, views, length), dtype=torch.int16)
    seeds = iter(range(10**6))
    corpus.sample_crops(batch, length, views, seed=0, out=buf)  # fault the shards in

    def run():
        corpus.sample_crops(batch, length, views, seed=next(seeds), out=buf)

    row = measure(run, op="data", variant="PreparedCorpus", params={"crop": crop, "B": batch},
                  mode="load", rounds=5, warmup=1, memory=False)  # fmt: skip
    ips = _rows_note(row, batch, views * length * 2)
    base = _ITEMS_S.get(("AudioFolder-wav", crop))
    if base:
        row.extra["vs_audiofolder_wav"] = ips / base
        row.note += f"; {ips / base:,.0f}x AudioFolder (WAV) per core"


# items a recipe's training step consumes at its paper batch, measured on a GPU
PAPER_BATCH = {"myna-hybrid": 4096, "vit1d": 256, "bestrq-conformer": 64, "muselq-branchformer": 64}


@pytest.mark.parametrize("recipe", list(PAPER_BATCH))
def test_bench_step_consumption(measure, bench_device, recipe):
    from muse_fast.benchmark import Row  # noqa: F401  (rows are recorded through `measure`)

    batch = PAPER_BATCH[recipe]
    if bench_device.type != "cuda":
        row = measure(lambda: None, op="data", variant="train step", mode="consume",
                      params={"recipe": recipe, "B": batch}, rounds=1, warmup=0, memory=False)  # fmt: skip
        row.median_ms = row.p20_ms = row.p80_ms = None
        row.note = "not measured (no GPU)"
        return
    from muse_fast.benchmark import make_train_step

    size = {"myna-hybrid": "vit-s", "vit1d": "base"}.get(recipe, "small")
    step, model, _ = make_train_step(recipe, device=bench_device, batch_size=batch, seed=0,
                                     model={"size": size})  # fmt: skip
    row = measure(step, op="data", variant="train step", mode="consume",
                  params={"recipe": recipe, "B": batch}, rounds=5, warmup=2, memory=False)  # fmt: skip
    if row.median_ms:
        ips = batch / (row.median_ms / 1e3)
        row.extra["items_per_s"] = ips
        row.note = f"the step consumes {ips:,.0f} items/s"
    del step, model
    torch.cuda.empty_cache()


def test_bench_load_average(measure):
    """Record the machine's load around the data rows (the CPU is shared)."""
    row = measure(lambda: None, op="data", variant="load average", mode="env", params={},
                  rounds=1, warmup=0, memory=False)  # fmt: skip
    row.median_ms = row.p20_ms = row.p80_ms = None
    row.note = "1/5/15-min load: " + " / ".join(f"{x:.2f}" for x in os.getloadavg())
