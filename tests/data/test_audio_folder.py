"""AudioFolder (formats, resampling, bad files skipped and counted) and ResumableSampler."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from muse_fast.data import AudioFolder, ResumableSampler, crop_seed, load_audio

sf = pytest.importorskip("soundfile")  # not installed on every machine (the GPU one)


def _tone(sr: int, seconds: float, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    x = 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


@pytest.fixture
def folder(tmp_path):
    """Good files in four formats and rates, plus one corrupt, one too short, one silent."""
    sf.write(tmp_path / "a.wav", _tone(44100, 2.0, 440), 44100)
    sub = tmp_path / "sub"
    sub.mkdir()
    sf.write(sub / "b.flac", _tone(22050, 2.0, 330, channels=2), 22050)
    sf.write(tmp_path / "c.ogg", _tone(16000, 2.0, 550), 16000)
    if "MP3" in sf.available_formats():
        sf.write(tmp_path / "d.mp3", _tone(16000, 2.0, 660), 16000)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF" + os.urandom(500))
    sf.write(tmp_path / "short.wav", _tone(16000, 0.1), 16000)
    sf.write(tmp_path / "silent.wav", np.zeros(32000, np.float32), 16000)
    (tmp_path / "notes.txt").write_text("not audio")
    return tmp_path


def test_formats_resampled_and_scan_counts(folder):
    ds = AudioFolder(folder, 16000, segment_samples=8000, n_views=2, seed=1)
    names = sorted(os.path.basename(p) for p in ds.paths)
    expected = ["a.wav", "b.flac", "c.ogg", "silent.wav"]
    if "MP3" in sf.available_formats():
        expected.append("d.mp3")
    assert names == sorted(expected)
    assert [os.path.basename(p) for p in ds.skipped["corrupt"]] == ["corrupt.wav"]
    assert [os.path.basename(p) for p in ds.skipped["too_short"]] == ["short.wav"]
    assert "1 corrupt" in ds.skip_summary() and "1 too short" in ds.skip_summary()
    # a 44.1 kHz file comes back at 16 kHz, mono, the tone's pitch preserved
    i = next(k for k, p in enumerate(ds.paths) if p.endswith("a.wav"))
    item = ds[(i, 7)]
    assert item["audio"].shape == (2, 8000) and item["audio"].dtype == torch.float32
    spec = torch.fft.rfft(item["audio"][0] * torch.hann_window(8000)).abs()
    assert abs(int(spec.argmax()) * 16000 / 8000 - 440) <= 2
    # stereo flac mixed to mono at 330 Hz
    j = next(k for k, p in enumerate(ds.paths) if p.endswith("b.flac"))
    spec = torch.fft.rfft(ds[(j, 3)]["audio"][1] * torch.hann_window(8000)).abs()
    assert abs(int(spec.argmax()) * 2 - 330) <= 2
    # crops are a function of the key
    assert torch.equal(ds[(i, 7)]["audio"], ds[(i, 7)]["audio"])
    assert not torch.equal(ds[(i, 7)]["audio"], ds[(i, 8)]["audio"])
    full = load_audio(ds.paths[i], 16000)
    assert abs(full.numel() - 32000) <= 1


def test_silent_file_skipped_and_counted_through_dataloader(folder):
    ds = AudioFolder(folder, 16000, segment_samples=8000, seed=0)
    silent = next(k for k, p in enumerate(ds.paths) if p.endswith("silent.wav"))
    sampler = ResumableSampler(len(ds), seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=len(ds), sampler=sampler, num_workers=1)
    it = iter(loader)
    batches = [next(it) for _ in range(3)]
    del it
    for b in batches:
        assert b["audio"].shape == (len(ds), 8000)
        assert silent not in b["index"].tolist()  # replaced by another file
        assert (b["audio"].abs().amax(dim=1) > 0.1).all()
        # each epoch meets the silent file at least once (a replacement may draw it again)
        assert int(b["skipped"].sum()) >= 1
    # replacements are deterministic: the same key gives the same item in a fresh process state
    key = next(k for k in ResumableSampler(len(ds), seed=0) if k[0] == silent)
    a = AudioFolder(folder, 16000, segment_samples=8000)[key]
    b2 = AudioFolder(folder, 16000, segment_samples=8000)
    b2._bad[silent] = "known"  # a worker that already knows the file is bad
    b = b2[key]
    assert a["index"] == b["index"] and torch.equal(a["audio"], b["audio"])


def test_file_corrupted_after_scan_is_replaced(tmp_path):
    sf.write(tmp_path / "a.wav", _tone(16000, 1.0), 16000)
    sf.write(tmp_path / "b.wav", _tone(16000, 1.0, 300), 16000)
    ds = AudioFolder(tmp_path, 16000, segment_samples=4000)
    with open(tmp_path / "b.wav", "r+b") as f:  # truncate the data after the header was read
        f.truncate(200)
    item = ds[(1, 5)]
    assert item["index"] == 0 and item["skipped"] >= 1 and item["audio"].shape == (4000,)


def test_empty_or_useless_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no usable audio"):
        AudioFolder(tmp_path, 16000, segment_samples=8000)
    (tmp_path / "x.wav").write_bytes(b"garbage")
    sf.write(tmp_path / "y.wav", _tone(16000, 0.1), 16000)
    with pytest.raises(ValueError, match=r"2 file\(s\).*1 corrupt, 1 too short"):
        AudioFolder(tmp_path, 16000, segment_samples=8000)
    with pytest.raises(ValueError, match="does not exist"):
        AudioFolder(tmp_path / "nope", 16000)


def test_sampler_shards_like_distributed_sampler_and_resumes():
    n = 10
    s = ResumableSampler(n, seed=3, world_size=3, rank=1)
    ref = torch.utils.data.DistributedSampler(
        range(n), num_replicas=3, rank=1, shuffle=True, seed=3
    )
    for epoch in range(2):
        ref.set_epoch(epoch)
        assert s.epoch_indices(epoch) == list(ref)
    it = iter(s)
    stream = [next(it) for _ in range(11)]  # crosses into the third epoch (4 per rank per epoch)
    assert [k[0] for k in stream[:4]] == s.epoch_indices(0)
    assert stream[5] == (s.epoch_indices(1)[1], crop_seed(3, 1, s.epoch_indices(1)[1]))
    resumed = ResumableSampler(n, seed=3, world_size=3, rank=1, start=6)
    it2 = iter(resumed)
    assert [next(it2) for _ in range(5)] == stream[6:]
    # ranks cover the (padded) epoch without overlap
    cover = sorted(
        i
        for r in range(3)
        for i in ResumableSampler(n, seed=3, world_size=3, rank=r).epoch_indices(0)
    )
    assert sorted(set(cover)) == list(range(n)) and len(cover) == 12
    # crop seeds depend on epoch and index
    assert crop_seed(0, 0, 1) != crop_seed(0, 1, 1) != crop_seed(1, 1, 1)
