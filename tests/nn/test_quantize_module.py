"""muse_fast.nn.RandomProjectionQuantizer: seeding, buffers, statistics, frame stacking."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from muse_fast.nn import RandomProjectionQuantizer
from muse_fast.ops import random_projection_quantize, random_projection_quantize_reference


def test_buffers_come_from_the_own_generator_not_the_global_rng():
    state = torch.get_rng_state()
    a = RandomProjectionQuantizer(64, codebook_size=100, codebook_dim=8, seed=3)
    assert torch.equal(torch.get_rng_state(), state), "the global RNG was used"
    b = RandomProjectionQuantizer(64, codebook_size=100, codebook_dim=8, seed=3)
    c = RandomProjectionQuantizer(64, codebook_size=100, codebook_dim=8, seed=4)
    assert torch.equal(a.random_projection, b.random_projection)
    assert torch.equal(a.codebook, b.codebook)
    assert not torch.equal(a.codebook, c.codebook)
    assert not torch.equal(a.random_projection, c.random_projection)


def test_seed_142_reproduces_musicfm():
    """MusicFM: torch.manual_seed(142); xavier_normal_(A (d, h)); normal_(C (n, h))."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(142)
        a = nn.init.xavier_normal_(torch.empty(512, 16))
        c = nn.init.normal_(torch.empty(8192, 16))
    m = RandomProjectionQuantizer(512, seed=142)
    assert torch.equal(m.random_projection, a) and torch.equal(m.codebook, c)


def test_initialization_statistics_and_shapes():
    m = RandomProjectionQuantizer(512, codebook_size=4096, codebook_dim=16, seed=0)
    assert m.random_projection.shape == (512, 16) and m.codebook.shape == (4096, 16)
    xavier_std = (2.0 / (512 + 16)) ** 0.5
    assert abs(m.random_projection.std().item() / xavier_std - 1) < 0.05
    assert abs(m.random_projection.mean().item()) < 0.05 * xavier_std
    assert abs(m.codebook.std().item() - 1) < 0.03 and abs(m.codebook.mean().item()) < 0.03
    g = RandomProjectionQuantizer(32, codebook_size=50, codebook_dim=4, num_codebooks=3, seed=1)
    assert g.random_projection.shape == (3, 32, 4) and g.codebook.shape == (3, 50, 4)
    assert not torch.equal(g.codebook[0], g.codebook[1])
    assert g(torch.randn(2, 7, 32)).shape == (2, 7, 3)


def test_buffers_in_state_dict_never_trained():
    m = RandomProjectionQuantizer(24, codebook_size=40, codebook_dim=8, seed=5)
    sd = m.state_dict()
    assert set(sd) == {"random_projection", "codebook", "mean", "std"}
    assert list(m.parameters()) == []
    assert all(not b.requires_grad for b in m.buffers())
    other = RandomProjectionQuantizer(24, codebook_size=40, codebook_dim=8, seed=6)
    x = torch.randn(30, 24)
    assert not torch.equal(other(x), m(x))
    other.load_state_dict(sd)
    assert torch.equal(other(x), m(x))


def test_forward_is_the_op_on_the_buffers():
    m = RandomProjectionQuantizer(40, codebook_size=300, codebook_dim=16, seed=2)
    x = torch.randn(3, 11, 40, requires_grad=True)
    out = m(x)
    assert out.shape == (3, 11) and out.dtype == torch.long and not out.requires_grad
    assert torch.equal(out, random_projection_quantize(x, m.random_projection, m.codebook))
    ref = random_projection_quantize_reference(x.detach(), m.random_projection, m.codebook)
    assert (out == ref).float().mean() > 0.97  # equal but for float32 near-ties
    with pytest.raises(ValueError, match="input_dim"):
        m(torch.randn(3, 39))


def test_buffers_survive_device_and_dtype_moves():
    m = RandomProjectionQuantizer(16, codebook_size=20, codebook_dim=4, seed=0)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.to(torch.bfloat16)
    m.half()
    m.double()
    for k, v in m.state_dict().items():
        assert v.dtype == torch.float32 and torch.equal(v, before[k]), k
    dev = "cuda" if torch.cuda.is_available() else "meta"
    moved = m.to(dev)
    assert all(b.device.type == dev and b.dtype == torch.float32 for b in moved.buffers())


def test_set_stats_normalizes_inputs():
    m = RandomProjectionQuantizer(32, codebook_size=64, codebook_dim=8, seed=0)
    x = 3.0 + 2.5 * torch.randn(50, 32)
    plain = m(x)
    mean, std = torch.randn(32), 0.5 + torch.rand(32)
    assert m.set_stats(mean, std) is m and m.normalize_input
    assert torch.equal(
        m(x), random_projection_quantize((x - mean) / std, m.random_projection, m.codebook)
    )
    m.set_stats(3.0, 2.5)  # scalars broadcast (MusicFM's global statistics)
    assert torch.equal(m.mean, torch.full((32,), 3.0)) and torch.equal(
        m.std, torch.full((32,), 2.5)
    )
    assert torch.equal(
        m(x), random_projection_quantize((x - 3.0) / 2.5, m.random_projection, m.codebook)
    )
    assert not torch.equal(m(x), plain)  # the offset 3 moves x A; normalization must matter
    with pytest.raises(ValueError, match="std"):
        m.set_stats(0.0, 0.0)
    with pytest.raises(ValueError, match="mean"):
        m.set_stats(torch.zeros(31), 1.0)
    sd = m.state_dict()
    fresh = RandomProjectionQuantizer(32, codebook_size=64, codebook_dim=8, normalize_input=True)
    fresh.load_state_dict(sd)
    assert torch.equal(fresh(x), m(x))


def test_estimate_and_fit_stats():
    batches = [1.5 + 2.0 * torch.randn(4, 25, 12) for _ in range(3)]
    flat = torch.cat([b.reshape(-1, 12) for b in batches]).double()
    mean, std = RandomProjectionQuantizer.estimate_stats(batches)
    assert mean.shape == () and std.shape == ()
    torch.testing.assert_close(mean.double(), flat.mean(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(std.double(), flat.std(unbiased=False), rtol=1e-6, atol=1e-6)
    mean_f, std_f = RandomProjectionQuantizer.estimate_stats(iter(batches), per_feature=True)
    torch.testing.assert_close(mean_f.double(), flat.mean(0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(std_f.double(), flat.std(0, unbiased=False), rtol=1e-6, atol=1e-6)
    m = RandomProjectionQuantizer(12, codebook_size=10, codebook_dim=4).fit_stats(batches[0])
    assert m.normalize_input and torch.allclose(m.mean, batches[0].mean().expand(12))
    with pytest.raises(ValueError, match="data"):
        RandomProjectionQuantizer.estimate_stats([])


def test_stack_frames_and_quantize_mel():
    from muse_fast.ops.mel import stack_frames

    mel = torch.randn(2, 8, 23)  # T = 23: the last 3 frames do not fill a group of 4
    stacked = RandomProjectionQuantizer.stack_frames(mel, 4)
    assert torch.equal(stacked, stack_frames(mel, 4))  # the canonical helper, not a copy
    # frame t of the output = input frames 4t, 4t+1, 4t+2, 4t+3 concatenated in that order
    assert stacked.shape == (2, 32, 5)
    assert torch.equal(stacked[1, :, 2], torch.cat([mel[1, :, 8 + s] for s in range(4)]))
    m = RandomProjectionQuantizer(32, codebook_size=77, codebook_dim=16, seed=9)
    codes = m.quantize_mel(mel, factor=4)
    assert codes.shape == (2, 5)
    assert torch.equal(codes, m(stacked.transpose(1, 2)))


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"input_dim": 0}, ValueError, "input_dim"),
        ({"input_dim": 8, "codebook_size": 0}, ValueError, "codebook_size"),
        ({"input_dim": 8, "codebook_dim": 1.5}, TypeError, "codebook_dim"),
        ({"input_dim": 8, "num_codebooks": 0}, ValueError, "num_codebooks"),
        ({"input_dim": 8, "seed": -1}, ValueError, "seed"),
        ({"input_dim": 8, "normalize_input": 1}, TypeError, "normalize_input"),
    ],
)
def test_bad_constructor_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        RandomProjectionQuantizer(**kwargs)
