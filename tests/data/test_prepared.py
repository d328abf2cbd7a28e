"""`muse-fast prepare` and PreparedCorpus: bytes, resumption, bad files, tampering, crops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from muse_fast.cli import main
from muse_fast.data import (
    CorpusError,
    CropBatches,
    PreparedCorpus,
    merge_parts,
    prepare_folder,
)

sf = pytest.importorskip("soundfile")  # not installed on every machine (the GPU one)

SR = 16000


def _make_folder(root: Path, n: int = 6) -> Path:
    """``n`` noise tracks of 0.6-1.4 s (44.1 kHz stereo or 22.05 kHz mono, wav or flac) in two
    sub-folders: fresh random content every run."""
    rng = np.random.default_rng()
    for i in range(n):
        rate, ch = (44100, 2) if i % 2 == 0 else (22050, 1)
        x = (0.2 * rng.standard_normal((int(rate * rng.uniform(0.6, 1.4)), ch))).astype(np.float32)
        sub = root / f"sub{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        sf.write(sub / f"t{i:02d}.{'wav' if i % 3 else 'flac'}", x, rate)
    return root


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix in (".bin", ".idx")
    }


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def test_prepared_crop_equals_torchaudio_resampled_source(tmp_path):
    import torchaudio

    src = _make_folder(tmp_path / "src", n=3)
    out = prepare_folder(src, tmp_path / "c", SR)
    c = PreparedCorpus(out)
    assert len(c) == 3 and c.sample_rate == SR
    rng = np.random.default_rng()
    for i, t in enumerate(c.tracks):
        x, rate = sf.read(src / t["path"], dtype="float32", always_2d=True)
        mono = torch.from_numpy(x.mean(1))
        ref = torchaudio.functional.resample(mono.double(), rate, SR)
        # prepare resamples in float32: allow twice float32's own resampling error
        eager = float((torchaudio.functional.resample(mono, rate, SR) - ref).abs().max())
        assert t["samples"] == ref.numel() == int(c.samples[i])
        length = int(rng.integers(1, ref.numel()))
        start = int(rng.integers(0, ref.numel() - length + 1))
        got = c.read(i, start, length)
        assert got.dtype == torch.float32 and got.shape == (length,)
        # int16 rounding (half a step of 1/32768) on top of the float32 resampling
        span = ref[start : start + length].clamp(-1, 32767 / 32768)
        err = float((got.double() - span).abs().max())
        assert err <= 0.5 / 32768 + 2 * eager + 1e-9, (err, eager)
        assert abs(t["peak"] - float(ref.abs().max())) <= 2 * eager + 1e-9


def test_bad_files_skipped_with_reasons_and_empty_result_is_an_error(tmp_path, monkeypatch):
    src = _make_folder(tmp_path / "src", n=2)
    rng = np.random.default_rng()
    sf.write(src / "silent.wav", np.zeros(SR, np.float32), SR)
    sf.write(src / "short.wav", (0.1 * rng.standard_normal(100)).astype(np.float32), SR)
    (src / "corrupt.flac").write_bytes(b"fLaC" + bytes(300))
    sf.write(src / "full.flac", (0.3 * rng.standard_normal(3 * SR)).astype(np.float32), SR)
    data = (src / "full.flac").read_bytes()
    (src / "truncated.flac").write_bytes(data[: len(data) // 3])  # header fine, stream cut
    (src / "full.flac").unlink()
    (src / "old.mp3").write_bytes(b"ID3" + bytes(100))
    import soundfile

    real_info = soundfile.info

    def info(path, *a, **k):  # a libsndfile older than 1.1 has no mp3: what it raises then
        if str(path).endswith(".mp3"):
            raise soundfile.LibsndfileError(1, "Format not recognised.")
        return real_info(path, *a, **k)

    monkeypatch.setattr(soundfile, "info", info)
    c = PreparedCorpus(prepare_folder(src, tmp_path / "c", SR, min_samples=SR // 10))
    reasons = {Path(s["path"]).name: s["reason"] for s in c.skipped}
    assert reasons == {"silent.wav": "silent", "short.wav": "too_short",
                       "corrupt.flac": "corrupt", "truncated.flac": "corrupt",
                       "old.mp3": "unsupported"}  # fmt: skip
    assert len(c) == 2 and c.skip_summary() == "2 corrupt, 1 unsupported, 1 too short, 1 silent"
    # a folder where every file is bad: an error, and nothing written
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.wav").write_bytes(b"RIFF" + bytes(40))
    sf.write(bad / "silent.flac", np.zeros(SR, np.float32), SR)
    with pytest.raises(CorpusError, match="no usable audio"):
        prepare_folder(bad, tmp_path / "c2", SR)
    assert not any(p.suffix in (".bin", ".idx", ".json") for p in (tmp_path / "c2").iterdir())
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no audio")
    assert main(["prepare", "--data", str(empty), "--out", str(tmp_path / "c3")]) == 2
    assert not (tmp_path / "c3").exists()


_SLOW_PREPARE = """
import sys, time
import muse_fast.data.prepare as P
decode = P._decode
def slow(job):
    time.sleep(0.15)
    return decode(job)
P._decode = slow
P.prepare_folder(sys.argv[1], sys.argv[2], 16000, shard_bytes=int(sys.argv[3]))
"""


def test_killed_prepare_resumes_to_identical_bytes(tmp_path):
    src = _make_folder(tmp_path / "src", n=14)
    shard = 40_000  # bytes: one shard per ~1.3 tracks
    ref = prepare_folder(src, tmp_path / "ref", SR, shard_bytes=shard)
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_PREPARE, str(src), str(out), str(shard)])
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if (out / "manifest.json").is_file() and len(_manifest(out)["shards"]) >= 2:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "prepare finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    m = _manifest(out)
    assert not m["complete"] and 2 <= len(m["shards"]) < len(_manifest(ref)["shards"])
    with pytest.raises(CorpusError, match="incomplete"):
        PreparedCorpus(out)
    prepare_folder(src, out, SR, shard_bytes=shard)  # the same command again
    assert _files(out) == _files(ref)
    assert not list(out.glob("*.tmp"))
    a, b = _manifest(out), _manifest(ref)
    assert a["tracks"] == b["tracks"] and a["skipped"] == b["skipped"] and a["complete"]


def test_same_bytes_for_any_worker_count_and_incremental_add(tmp_path):
    src = _make_folder(tmp_path / "src", n=5)
    one = prepare_folder(src, tmp_path / "w0", SR, workers=0, shard_bytes=50_000)
    two = prepare_folder(src, tmp_path / "w2", SR, workers=2, shard_bytes=50_000)
    assert _files(one) == _files(two)
    assert _manifest(one)["tracks"] == _manifest(two)["tracks"]
    before = {p.name: p.stat().st_mtime_ns for p in one.glob("shard_*")}
    prepare_folder(src, one, SR, shard_bytes=50_000)  # nothing new: nothing rewritten
    assert {p.name: p.stat().st_mtime_ns for p in one.glob("shard_*")} == before
    sf.write(
        src / "new.wav", (0.1 * np.random.default_rng().standard_normal(SR)).astype(np.float32), SR
    )
    prepare_folder(src, one, SR, shard_bytes=50_000)
    after = {p.name: p.stat().st_mtime_ns for p in one.glob("shard_*")}
    assert {k: after[k] for k in before} == before and len(after) > len(before)
    c = PreparedCorpus(one)
    assert len(c) == 6 and c.tracks[-1]["path"] == "new.wav"


def test_tampered_missing_or_truncated_shard_is_refused_by_name(tmp_path):
    src = _make_folder(tmp_path / "src", n=4)
    out = prepare_folder(src, tmp_path / "c", SR, shard_bytes=30_000)
    PreparedCorpus(out)
    name = _manifest(out)["shards"][1]["name"]
    p = out / name
    data = bytearray(p.read_bytes())
    st = p.stat()
    # one flipped byte, mtime put back: the sampled checksum (all of a small shard) sees it
    k = int(np.random.default_rng().integers(len(data)))
    data[k] ^= 0x41
    p.write_bytes(bytes(data))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(CorpusError, match=name):
        PreparedCorpus(out)
    data[k] ^= 0x41
    p.write_bytes(bytes(data))  # the right bytes, a new mtime (a copy): accepted after a full CRC
    PreparedCorpus(out)
    p.write_bytes(bytes(data[:-2]))
    with pytest.raises(CorpusError, match=f"{name}.*truncated"):
        PreparedCorpus(out)
    p.unlink()
    with pytest.raises(CorpusError, match=f"{name}.*missing"):
        PreparedCorpus(out)


def test_two_shard_jobs_merge_into_one_corpus(tmp_path):
    src = _make_folder(tmp_path / "src", n=7)
    single = PreparedCorpus(prepare_folder(src, tmp_path / "one", SR))
    out = tmp_path / "split"
    prepare_folder(src, out, SR, num_shards=2, shard_index=1)
    with pytest.raises(CorpusError, match="part-00000-of-00002"):
        merge_parts(out)
    assert main(["prepare", "--data", str(src), "--out", str(out), "--num-shards", "2",
                 "--shard-index", "0", "--sample-rate", str(SR), "--min-duration", "0"]) == 0  # fmt: skip
    assert main(["prepare", "--out", str(out), "--merge"]) == 0
    merged = PreparedCorpus(out)
    assert len(merged) == len(single) == 7
    by_path = {t["path"]: i for i, t in enumerate(single.tracks)}
    for i, t in enumerate(merged.tracks):
        j = by_path[t["path"]]
        assert torch.equal(merged.read(i), single.read(j))


def test_sample_crops_vectorized_deterministic_and_independent_views(tmp_path):
    src = _make_folder(tmp_path / "src", n=5)
    c = PreparedCorpus(prepare_folder(src, tmp_path / "c", SR, shard_bytes=30_000))
    seed = int(np.random.default_rng().integers(2**31))
    length = 4000
    audio, track, start = c.sample_crops(300, length, 2, seed=seed)
    assert audio.shape == (300, 2, length) and audio.dtype == torch.int16
    assert track.shape == (300,) and start.shape == (300, 2)
    for b in range(0, 300, 37):
        for v in range(2):
            ref = c.read(int(track[b]), int(start[b, v]), length)
            assert torch.equal(audio[b, v].float() / 32768, ref)
    assert (start[:, 0] != start[:, 1]).float().mean() > 0.9  # two independent crops
    again, t2, s2 = c.sample_crops(300, length, 2, seed=seed)
    assert torch.equal(again, audio) and torch.equal(t2, track) and torch.equal(s2, start)
    one, _, _ = c.sample_crops(3, length, 1, seed=seed)
    assert one.shape == (3, length)
    # the same crops with one OpenMP thread in a fresh process (the kernel splits by thread)
    code = (
        "import sys, hashlib; from muse_fast.data import PreparedCorpus\n"
        f"a, _, _ = PreparedCorpus(sys.argv[1]).sample_crops(300, {length}, 2, seed={seed})\n"
        "print(hashlib.sha256(a.numpy().tobytes()).hexdigest())"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-c", code, str(c.path)], env=env, capture_output=True, text=True
    )
    import hashlib

    assert r.stdout.strip() == hashlib.sha256(audio.numpy().tobytes()).hexdigest(), r.stderr
    with pytest.raises(ValueError, match="length"):
        c.sample_crops(2, 10**9, 1, seed=0)


def test_crop_batches_ranks_disjoint_and_resumable(tmp_path):
    src = _make_folder(tmp_path / "src", n=8)
    c = PreparedCorpus(prepare_folder(src, tmp_path / "c", SR))
    per_rank = 4  # 8 tracks over 2 ranks
    r0 = CropBatches(c, per_rank, 2000, 2, seed=5, rank=0, world_size=2, prefetch=0)
    r1 = CropBatches(c, per_rank, 2000, 2, seed=5, rank=1, world_size=2, prefetch=2)
    try:
        b0, b1 = next(r0), next(r1)
        assert not set(b0["index"].tolist()) & set(b1["index"].tolist())
        assert sorted(b0["index"].tolist() + b1["index"].tolist()) == list(range(8))
        later = [next(r1) for _ in range(3)]
    finally:
        r0.close()
        r1.close()
    resumed = CropBatches(
        c, per_rank, 2000, 2, seed=5, rank=1, world_size=2, start_batch=2, prefetch=1
    )
    try:
        again = next(resumed)
    finally:
        resumed.close()
    assert torch.equal(again["audio"], later[1]["audio"])
    assert torch.equal(again["index"], later[1]["index"])


_FULL_DISK = """
import resource, signal, sys
import muse_fast.data.prepare as P
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), int(sys.argv[3])))
P.prepare_folder(sys.argv[1], sys.argv[2], 16000, shard_bytes=10**6)
"""


def test_full_disk_keeps_the_last_complete_state_and_the_next_run_continues(tmp_path):
    src = _make_folder(tmp_path / "src", n=3)
    ref = prepare_folder(src, tmp_path / "ref", SR, shard_bytes=10**6)
    out = prepare_folder(src, tmp_path / "c", SR, shard_bytes=10**6)
    before = (out / "manifest.json").read_bytes()
    rng = np.random.default_rng()
    for i in range(3):
        sf.write(src / f"new{i}.wav", (0.1 * rng.standard_normal(SR)).astype(np.float32), SR)
    # files may not grow past 40 kB: the new shard (~100 kB) cannot be written
    r = subprocess.run([sys.executable, "-c", _FULL_DISK, str(src), str(out), "40000"],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode != 0 and "File too large" in r.stderr, r.stderr[-2000:]
    assert (out / "manifest.json").read_bytes() == before
    assert not list(out.glob("*.tmp"))
    assert len(PreparedCorpus(out)) == 3
    prepare_folder(src, out, SR, shard_bytes=10**6)
    prepare_folder(src, ref, SR, shard_bytes=10**6)
    assert _files(out) == _files(ref) and len(PreparedCorpus(out)) == 6
