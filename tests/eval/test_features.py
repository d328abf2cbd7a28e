"""Feature extraction: chunking, averaging, frame alignment, caching, hand-crafted baselines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from muse_fast.eval import EncoderFeatures, HandcraftedFeatures, Task, Track, extract
from muse_fast.eval.features import n_label_frames, resample_frames, state_hash


class RampEncoder(nn.Module):
    """A stand-in encoder: ``embed`` = per-chunk (mean, first sample, layer); ``embed_frames`` =
    the mean of each ``frame_hop`` block, so a ramp input gives each frame its centre time."""

    sample_rate = 1000
    segment_samples = 400
    frame_hop = 50

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.calls = 0

    def embed(self, audio, layer=None):
        self.calls += 1
        lay = torch.full_like(audio[:, 0], float(layer or 0))
        return torch.stack([audio.mean(1), audio[:, 0], lay], 1) * self.scale

    def embed_frames(self, audio, layer=None):
        self.calls += 1
        b, n = audio.shape
        return (
            audio.view(b, n // self.frame_hop, self.frame_hop).mean(-1, keepdim=True) * self.scale
        )


def _task(level="global", frame_rate=None, tracks=()):
    target = "key" if level == "global" else "beat"
    tr = list(tracks) or [Track("x", 0, source=lambda sr: np.zeros(sr, np.float32))]
    return Task(
        "t", target, {"train": tr, "valid": tr, "test": tr}, (), "chroma", "fixture", frame_rate
    )


def _ramp(n, sr=1000):
    return (np.arange(n, dtype=np.float32) + 0.5) / sr  # sample i sits at (i + ½) / sr seconds


def test_global_chunking_and_average():
    enc = RampEncoder()
    fx = EncoderFeatures(enc, batch_size=2)
    a = _ramp(1000)  # 2.5 chunks of 400: [0, 400), [400, 800) and the tail aligned: [600, 1000)
    f = fx.global_features(a)
    starts = [0, 400, 600]
    np.testing.assert_allclose(f[0], np.mean([a[s : s + 400].mean() for s in starts]), rtol=1e-6)
    np.testing.assert_allclose(f[1], np.mean([a[s] for s in starts]), rtol=1e-6)
    assert enc.calls == 2  # 3 chunks in batches of 2
    # exactly two chunks: no tail; shorter than one chunk: zero-padded
    np.testing.assert_allclose(fx.global_features(a[:800])[1], (a[0] + a[400]) / 2, rtol=1e-6)
    np.testing.assert_allclose(fx.global_features(a[:100])[0], a[:100].sum() / 400, rtol=1e-6)
    # max_chunks: evenly spaced chunks
    fx3 = EncoderFeatures(enc, max_chunks=2)
    np.testing.assert_allclose(
        fx3.global_features(_ramp(2000))[1], (_ramp(2000)[0] + _ramp(2000)[1600]) / 2
    )


def test_layer_is_passed_and_keys_the_cache(tmp_path):
    enc = RampEncoder()
    task = _task()
    tracks = task.splits["train"]
    f2 = extract(EncoderFeatures(enc, layer=1), task, tracks, cache_dir=tmp_path)
    assert f2[0][2] == 1.0
    f0 = extract(EncoderFeatures(enc, layer=None), task, tracks, cache_dir=tmp_path)
    assert f0[0][2] == 0.0
    with pytest.raises(TypeError, match="layer"):
        EncoderFeatures(enc, layer="all")


@pytest.mark.parametrize("seconds", [1.0, 0.93])
def test_frame_features_align_to_label_frames(seconds):
    enc = RampEncoder()  # frames at 20 per s; labels at 50 per s
    fx = EncoderFeatures(enc)
    a = _ramp(int(seconds * 1000))
    n = n_label_frames(len(a), 1000, 50.0)
    f = fx.frame_features(a, 50.0, n)
    assert f.shape == (n, 1)
    centres = (np.arange(n) + 0.5) / 50.0
    inner = (centres > 0.025) & (centres < (len(a) // 50) * 0.05 - 0.025)  # inside the frame grid
    np.testing.assert_allclose(f[inner, 0], centres[inner], atol=1e-5)


def test_frame_features_irregular_hop():
    """``steps · frame_hop != segment_samples`` (e.g. Myna's 96 frames of 512 for 48 640
    samples): frames placed chunk by chunk."""

    class Irregular(RampEncoder):
        segment_samples = 390

        def embed_frames(self, audio, layer=None):
            b, n = audio.shape
            x = torch.nn.functional.pad(audio, (0, 400 - n))
            return x.view(b, 8, 50).mean(-1, keepdim=True)

    a = _ramp(780)
    f = EncoderFeatures(Irregular()).frame_features(a, 50.0, 39)
    # chunk 1 frame 0 is centred at 390 + 25 samples and averages the ramp there
    t = (np.arange(39) + 0.5) / 50
    expected = np.interp(
        t, [(390 + 25) / 1000, (390 + 75) / 1000], [(390 + 25) / 1000, (390 + 75) / 1000]
    )
    sel = (t > 0.415) & (t < 0.465)
    np.testing.assert_allclose(f[sel, 0], expected[sel], atol=1e-5)


def test_resample_frames():
    f = np.arange(10, dtype=np.float32)[:, None]
    np.testing.assert_allclose(resample_frames(f, 10.0, 10, 10.0), f)
    up = resample_frames(f, 10.0, 20, 20.0)  # target centres (j + ½)/20 → source index j/2 - ¼
    np.testing.assert_allclose(up[1:-1, 0], np.arange(1, 19) / 2 - 0.25, atol=1e-6)
    assert up[0, 0] == 0.0 and up[-1, 0] == 9.0  # held at the edges
    with pytest.raises(ValueError, match="features"):
        resample_frames(np.zeros((0, 3)), 10.0, 5, 10.0)


def test_cache_round_trip(tmp_path):
    enc = RampEncoder()
    tracks = [Track(f"t{i}", i, source=lambda sr, i=i: _ramp(500 + 100 * i)) for i in range(3)]
    task = _task("frame", 20.0, tracks)
    first = extract(EncoderFeatures(enc), task, tracks, cache_dir=tmp_path)
    calls = enc.calls
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    again = extract(EncoderFeatures(enc), task, tracks, cache_dir=tmp_path)
    assert enc.calls == calls  # read from the cache
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert [len(f) for f in again] == [10, 12, 14]
    # new weights → new hash → recomputed
    with torch.no_grad():
        enc.scale.fill_(2.0)
    new = extract(EncoderFeatures(enc), task, tracks, cache_dir=tmp_path)
    assert enc.calls > calls and len(list(tmp_path.glob("*.safetensors"))) == 2
    np.testing.assert_allclose(new[0], 2 * first[0])
    # a corrupt cache file is recomputed, not trusted
    for p in tmp_path.glob("*.safetensors"):
        p.write_bytes(b"garbage")
    np.testing.assert_allclose(
        extract(EncoderFeatures(enc), task, tracks, cache_dir=tmp_path)[0], new[0]
    )


def test_state_hash_tracks_weights():
    a, b = RampEncoder(), RampEncoder()
    assert state_hash(a) == state_hash(b)
    with torch.no_grad():
        b.scale.add_(1e-3)
    assert state_hash(a) != state_hash(b)


def test_handcrafted_features():
    sr = 22050
    t = np.arange(sr) / sr
    a440 = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    chroma = HandcraftedFeatures("chroma")
    g = chroma.global_features(a440)
    assert g.shape == (24,) and int(np.argmax(g[:12])) == 9  # pitch class A
    fr = chroma.frame_features(a440, 10.0, 10)
    assert fr.shape == (10, 12) and (fr.argmax(1) == 9).all()
    # onset strength peaks at clicks, with ±3 frames of context
    clicks = np.zeros(sr, np.float32)
    clicks[[5512, 16537]] = 1.0
    on = HandcraftedFeatures("onset").frame_features(clicks, 50.0, 50)
    assert on.shape == (50, 7)
    peaks = set(np.argsort(on[:, 3])[-2:].tolist())
    assert peaks <= {11, 12, 13, 36, 37, 38}, peaks  # clicks at 0.25 s and 0.75 s
    assert HandcraftedFeatures("mfcc").global_features(a440).shape == (40,)
    with pytest.raises(ValueError, match="kind"):
        HandcraftedFeatures("spectral")
