"""span_mask and apply_span_mask: reference semantics pinned scalar by scalar, every kernel
against the reference (bit for bit for the mask), the noise replacement, gradients, the CUDA
tile configurations, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
from masking_helpers import run
from muse_fast.kernels._utils import tiles

import muse_fast
from muse_fast._ext import ext
from muse_fast.nn import SpanMasker
from muse_fast.ops import apply_span_mask, span_mask
from muse_fast.ops.span_mask import span_noise_fill_reference
from muse_fast.testing import assert_close, kernel_cases


# =============================================================================================
# span_mask and apply_span_mask
# =============================================================================================
def test_span_mask_reference_semantics():
    B, T, span = 64, 107, 10
    m = run("reference", span_mask, B, T, span, 0.4, seed=5)
    assert m.dtype == torch.bool and m.shape == (B, T)
    assert not m[:, 100:].any()  # the trailing partial span is never masked
    spans = m[:, :100].reshape(B, 10, span)
    assert (spans == spans[..., :1]).all()  # constant within each span
    frac = spans[..., 0].float().mean().item()
    assert abs(frac - 0.4) < 0.06  # 640 spans, fixed seed; sd 0.019
    for b, s in [(0, 0), (3, 7), (63, 9)]:  # the convention, scalar by scalar
        w = ext().philox4x32(5, s, b, 1, 0)[0]
        assert bool(m[b, s * span]) == ((w >> 8) * 2**-24 < 0.4)
    assert not span_mask(4, 50, 10, 0.0, seed=1).any()
    full = span_mask(4, 55, 10, 1.0, seed=1)
    assert full[:, :50].all() and not full[:, 50:].any()
    assert not span_mask(3, 9, 10, 1.0, seed=1).any()  # shorter than one span


def test_span_mask_is_consistent_across_resolutions():
    """One seed, the same spans at 24 kHz waveform resolution (9600 samples) and at 25 Hz token
    resolution (10 tokens)."""
    wav = span_mask(3, 96_000 + 500, 9600, 0.6, seed=42)
    tok = span_mask(3, 100 + 3, 10, 0.6, seed=42)
    assert torch.equal(wav[:, :96_000:9600], tok[:, :100:10])


@pytest.mark.parametrize("backend,device", kernel_cases("span_mask"))
@pytest.mark.parametrize("B,T,span,p", [(1, 1, 1, 0.5), (3, 107, 10, 0.6), (2, 48_000, 9600, 0.2),
                                        (5, 33, 4, 1.0), (2, 20, 3, 0.0), (2, 70_000, 9600, 0.5),
                                        (3, 360_000, 9600, 0.6)])  # fmt: skip
def test_span_mask_kernels_exact(backend, device, B, T, span, p):
    if B * T > 1_000_000 and backend == "triton" and device == "cpu":
        pytest.skip("this size is for the C++ OpenMP path; too slow for the interpreter")
    for seed in (0, 2**64 - 1, 123456789):
        want = run("reference", span_mask, B, T, span, p, seed=seed, device=device)
        got = run(backend, span_mask, B, T, span, p, seed=seed, device=device)
        assert torch.equal(got, want)


def test_apply_span_mask_noise_reference_semantics():
    x = torch.randn(2, 15_000)  # below torch's intra-op grain: single-threaded eager ops
    m = span_mask(2, 15_000, 150, 0.5, seed=1)
    y = run("reference", apply_span_mask, x, m, noise_std=0.1, seed=2)
    assert torch.equal(y[~m], x[~m])
    noise = y[m]
    assert noise.numel() > 10_000
    assert abs(noise.mean().item()) < 0.003 and abs(noise.std().item() - 0.1) < 0.003
    assert torch.equal(y, run("reference", apply_span_mask, x, m, noise_std=0.1, seed=2))
    y3 = run("reference", apply_span_mask, x[:1, :2400], m[:1, :2400], noise_std=0.1, seed=3)
    assert not torch.equal(y[:1, :2400], y3)
    # the convention for one element (t = 7 of row 0 must be masked here)
    t, b = int(m[0].nonzero()[0]), 0
    w0, w1, _, _ = ext().philox4x32(2, t, b, 2, 0)
    z = math.sqrt(-2 * math.log(((w0 >> 8) + 1) * 2**-24)) * math.cos(
        2 * math.pi * (w1 >> 8) * 2**-24
    )
    assert abs(y[b, t].item() - 0.1 * z) < 1e-6


@pytest.mark.parametrize("backend,device", kernel_cases("span_noise_fill"))
@pytest.mark.parametrize("shape", [(1, 1), (3, 1001), (2, 50, 7), (2, 9, 130), (2, 12_000)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_apply_span_mask_noise_kernels(backend, device, shape, dtype):
    if math.prod(shape) > 10_000 and dtype != torch.float32:
        pytest.skip("the large shape (the C++ OpenMP path) runs in float32 only")
    x = torch.randn(*shape, device=device).to(dtype).requires_grad_()
    m = span_mask(shape[0], shape[1], 3, 0.5, seed=4, device=device)
    want = run("reference", apply_span_mask, x, m, noise_std=0.1, seed=11)
    got = run(backend, apply_span_mask, x, m, noise_std=0.1, seed=11)
    assert got.dtype == dtype
    mm = m if x.dim() == 2 else m[..., None].expand_as(x)
    assert torch.equal(got[~mm], x[~mm])
    # Box-Muller's log / cos differ by an ulp or so between libm, SLEEF and CUDA
    assert_close(
        got,
        want,
        atol=1e-6 if dtype != torch.bfloat16 else None,
        rtol=1e-5 if dtype != torch.bfloat16 else None,
    )
    g = torch.randn_like(got)
    (gx,) = torch.autograd.grad(got, x, g)
    assert torch.equal(gx, g.masked_fill(mm, 0))


def test_apply_span_mask_noncontiguous_x():
    x = torch.randn(40, 3).t()  # (3, 40) strided
    m = span_mask(3, 40, 4, 0.5, seed=0)
    for backend in ("reference", "cpu", "triton"):
        got = run(backend, apply_span_mask, x, m, noise_std=1.0, seed=1)
        assert_close(got, span_noise_fill_reference(x.contiguous(), m, torch.tensor(1), 1.0))


def test_apply_span_mask_embedding():
    x = torch.randn(2, 12, 4, dtype=torch.float64, requires_grad=True)
    e = torch.randn(4, dtype=torch.float64, requires_grad=True)
    m = span_mask(2, 12, 3, 0.5, seed=8)
    y = apply_span_mask(x, m, mask_embedding=e)
    assert torch.equal(y[m], e.detach().expand(int(m.sum()), 4))
    assert torch.equal(y[~m], x.detach()[~m])
    assert torch.autograd.gradcheck(lambda a, b: apply_span_mask(a, m, mask_embedding=b), (x, e))
    g = torch.randn_like(y)
    gx, ge = torch.autograd.grad(y, (x, e), g)
    assert_close(ge, g[m].sum(0))
    assert torch.equal(gx, g.masked_fill(m[..., None], 0))


def test_span_bad_inputs():
    x, m = torch.randn(2, 10), torch.zeros(2, 10, dtype=torch.bool)
    with pytest.raises(ValueError, match="noise_std"):
        apply_span_mask(x, m)
    with pytest.raises(ValueError, match="noise_std"):
        apply_span_mask(x[..., None], m, noise_std=0.1, mask_embedding=torch.zeros(1))
    with pytest.raises(ValueError, match="noise_std"):
        apply_span_mask(x, m, noise_std=-1.0)
    with pytest.raises(ValueError, match="x"):
        apply_span_mask(x, m, mask_embedding=torch.zeros(10))
    with pytest.raises(ValueError, match="mask_embedding"):
        apply_span_mask(x[..., None], m, mask_embedding=torch.zeros(2))
    with pytest.raises(TypeError, match="mask"):
        apply_span_mask(x, m.float(), noise_std=0.1)
    with pytest.raises(ValueError, match="mask"):
        apply_span_mask(x, m[:, :5], noise_std=0.1)
    with pytest.raises(ValueError, match="prob"):
        span_mask(2, 10, 3, 1.5)
    with pytest.raises(ValueError, match="span"):
        span_mask(2, 10, 0, 0.5)
    with pytest.raises(TypeError, match="frames"):
        span_mask(2, 10.0, 3, 0.5)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_empty_inputs(backend):
    with muse_fast.backend(backend):
        assert span_mask(0, 10, 3, 0.5, seed=1).shape == (0, 10)
        assert span_mask(2, 0, 3, 0.5, seed=1).shape == (2, 0)
        empty = torch.zeros(0, 5, dtype=torch.bool)
        assert apply_span_mask(torch.randn(0, 5), empty, noise_std=1.0, seed=1).shape == (0, 5)


def test_span_masker_module():
    sm = SpanMasker(4, 0.5, noise_std=0.1)
    y, m = sm(torch.zeros(2, 40), seed=3)
    assert torch.equal(m, span_mask(2, 40, 4, 0.5, seed=3)) and (y[~m] == 0).all()
    se = SpanMasker(4, 0.5, dim=6)
    y, m = se(torch.zeros(2, 40, 6), seed=3)
    assert torch.equal(y[m], se.mask_embedding.detach().expand(int(m.sum()), 6))
    with pytest.raises(ValueError, match="noise_std"):
        SpanMasker(4, 0.5)


@pytest.mark.parametrize("B,T,span,shape", [(1, 1, 1, (1, 1)), (3, 2051, 10, (2, 1001, 3)),
                                            (2, 1025, 7, (3, 1025))])  # fmt: skip
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_tile_configuration(B, T, span, shape, dtype):
    """The GPU launch configuration (1024-element blocks: several per row here) under the
    interpreter against the reference, mask bit for bit, noise forward and backward."""
    seed = int(torch.randint(-(2**62), 2**62, ()))
    with tiles("cuda"):
        want = run("reference", span_mask, B, T, span, 0.5, seed=seed)
        assert torch.equal(run("triton", span_mask, B, T, span, 0.5, seed=seed), want)
        x = torch.randn(*shape).to(dtype).requires_grad_()
        m = span_mask(shape[0], shape[1], 3, 0.5, seed=seed)
        got = run("triton", apply_span_mask, x, m, noise_std=0.1, seed=seed + 1)
        ref = run("reference", apply_span_mask, x, m, noise_std=0.1, seed=seed + 1)
        assert_close(got, ref, atol=1e-6 if dtype == torch.float32 else None,
                     rtol=1e-5 if dtype == torch.float32 else None)  # fmt: skip
        gy = torch.randn_like(got)
        (gx,) = torch.autograd.grad(got, x, gy)
        mm = m if x.dim() == 2 else m[..., None].expand_as(x)
        assert torch.equal(gx, gy.masked_fill(mm, 0))


def test_launchers_run_on_meta_tensors_at_the_papers_sizes():
    """MusicFM: 30 s at 24 kHz, 400 ms spans, on meta tensors (recorded, not run)."""
    from muse_fast.kernels._utils import record_launches

    from muse_fast._backend import get_op

    seed = torch.zeros((), dtype=torch.int64, device="meta")
    x = torch.empty(64, 720_000, device="meta")
    mask = torch.empty(64, 720_000, dtype=torch.bool, device="meta")
    with record_launches(dry=True) as launches, tiles("cuda"):
        get_op("span_mask").impl("triton")(seed, 64, 720_000, 9600, 1 << 23)
        get_op("span_noise_fill").impl("triton")(x, mask, seed, 0.1)
    assert [rec.grid for rec in launches] == [(64, 704), (64, 704)]
