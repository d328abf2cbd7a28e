"""Philox-4x32-10: the C++ generator against published answers, and the eager-PyTorch and Triton
versions against the C++ one, bit for bit."""

from __future__ import annotations

import random

import pytest
import torch

from muse_fast._ext import ext
from muse_fast.ops._philox import box_muller, philox4x32, seed_tensor, uniform24

# Random123 known-answer vectors for philox4x32_10: (key, counter, output).
KAT = [
    ((0x00000000, 0x00000000), (0, 0, 0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    (
        (0xFFFFFFFF, 0xFFFFFFFF),
        (0xFFFFFFFF,) * 4,
        (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD),
    ),
    (
        (0xA4093822, 0x299F31D0),
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


def _seed64(k0: int, k1: int) -> int:
    return (k1 << 32) | k0


def _as_int64(u: int) -> int:
    return u - 2**64 if u >= 2**63 else u


@pytest.mark.parametrize("key,ctr,want", KAT)
def test_cpp_known_answers(key, ctr, want):
    assert tuple(ext().philox4x32(_seed64(*key), *ctr)) == want


@pytest.mark.parametrize("key,ctr,want", KAT)
def test_eager_known_answers(key, ctr, want):
    seed = torch.tensor(_as_int64(_seed64(*key)))
    words = philox4x32(seed, *(torch.tensor(c) for c in ctr))
    assert tuple(int(w) for w in words) == want
    assert tuple(int(w) for w in philox4x32(_seed64(*key), *ctr)) == want  # int seed too


def _random_cases(n: int):
    rs = random.Random(torch.initial_seed())
    cases = [(rs.randrange(2**64), *(rs.randrange(2**32) for _ in range(4))) for _ in range(n)]
    return cases + [(0, 0, 0, 0, 0), (2**64 - 1,) + (2**32 - 1,) * 4, (2**63, 1, 2, 3, 4)]


def test_eager_matches_cpp_on_random_inputs():
    cases = _random_cases(500)
    want = torch.tensor([ext().philox4x32(*c) for c in cases])
    seeds = torch.tensor([_as_int64(c[0]) for c in cases])  # one key per element, broadcast
    ctr = torch.tensor([c[1:] for c in cases])
    got = torch.stack(philox4x32(seeds, *ctr.unbind(1)), 1)
    assert torch.equal(got, want)
    assert got.dtype == torch.int64 and int(got.min()) >= 0 and int(got.max()) < 2**32


def test_triton_matches_cpp():
    from muse_fast.kernels._philox import philox_words

    cases = _random_cases(40)
    want = torch.tensor([ext().philox4x32(*c) for c in cases])
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: Triton's interpreter
    ctr = torch.tensor([c[1:] for c in cases])
    for s in {c[0] for c in cases[-3:]} | {cases[0][0]}:
        rows = [i for i, c in enumerate(cases) if c[0] == s]
        got = philox_words(torch.tensor(_as_int64(s), device=dev), ctr[rows].to(dev))
        assert torch.equal(got.cpu(), want[rows]), f"seed {s}"
    # one seed, many counters in one launch (several blocks, a ragged tail)
    s = cases[1][0]
    many = ctr.repeat(7, 1)[:257]
    want_many = torch.tensor([ext().philox4x32(s, *map(int, c)) for c in many])
    got = philox_words(torch.tensor(_as_int64(s), device=dev), many.to(dev))
    assert torch.equal(got.cpu(), want_many)


def test_uniform_and_normal_transforms():
    w = torch.tensor([0, 255, 256, 2**32 - 1])
    assert uniform24(w).tolist() == [0.0, 0.0, 2**-24, 1.0 - 2**-24]
    w0, w1, _, _ = philox4x32(7, torch.arange(30_000), 0)
    z = box_muller(w0, w1)
    assert z.dtype == torch.float32 and torch.isfinite(z).all()
    assert abs(z.mean().item()) < 0.02 and abs(z.std().item() - 1) < 0.02  # fixed seed
    # fourth moment of a normal is 3
    assert abs((z**4).mean().item() - 3) < 0.1


def test_seed_tensor_sources():
    dev = torch.device("cpu")
    assert int(seed_tensor(5, None, dev)) == 5
    assert int(seed_tensor(2**64 - 1, None, dev)) == -1  # taken modulo 2**64, two's complement
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert int(seed_tensor(None, g1, dev)) == int(seed_tensor(None, g2, dev))
    assert int(seed_tensor(None, g1, dev)) != int(seed_tensor(None, g2.manual_seed(4), dev))
    torch.manual_seed(11)
    a = int(seed_tensor(None, None, dev))
    torch.manual_seed(11)
    assert int(seed_tensor(None, None, dev)) == a
    with pytest.raises(ValueError, match="seed"):
        seed_tensor(1, g1, dev)
    with pytest.raises(TypeError, match="seed"):
        seed_tensor(1.5, None, dev)
    with pytest.raises(TypeError, match="generator"):
        seed_tensor(None, 3, dev)
