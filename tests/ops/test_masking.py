"""Token masking ops: reference semantics pinned independently, every kernel against the
reference (bit for bit for the random ops), gradients, awkward shapes, low precision,
non-contiguous inputs, bad inputs, and one small model under torch.compile."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import muse_fast
from muse_fast._ext import ext
from muse_fast.nn import SpanMasker, TokenMasker
from muse_fast.ops import (
    apply_span_mask,
    gather_tokens,
    masked_patch_embed,
    num_kept_tokens,
    random_token_mask,
    span_mask,
)
from muse_fast.ops.masking import (
    gather_tokens_reference,
    masked_patch_embed_reference,
    span_noise_fill_reference,
)
from muse_fast.testing import assert_close, assert_within_eager_error, kernel_cases


def _ratio(length, n_keep):
    """A mask ratio that keeps exactly n_keep of length tokens."""
    r = max(0.0, 1 - n_keep / length - 1e-9)
    assert num_kept_tokens(length, r) == n_keep
    return r


def _run(backend, fn, *args, **kwargs):
    with muse_fast.backend(backend):
        return fn(*args, **kwargs)


# =============================================================================================
# random_token_mask
# =============================================================================================
@pytest.mark.parametrize(
    "length,ratio,want",
    [(48, 0.9, 4), (100, 0.9, 9), (10, 0.0, 10), (10, 1.0, 1), (1, 0.9, 1), (1, 0.0, 1),
     (7, 0.5, 3), (196, 0.75, 49)],
)  # fmt: skip
def test_num_kept_formula(length, ratio, want):
    assert num_kept_tokens(length, ratio) == want == max(1, int(length * (1 - ratio)))
    assert random_token_mask(2, length, ratio, seed=0).shape == (2, want)


def test_reference_semantics_sorted_unique_in_range():
    keep = _run("reference", random_token_mask, 64, 37, 0.6, seed=3)
    assert keep.dtype == torch.int64 and keep.shape == (64, num_kept_tokens(37, 0.6))
    assert (keep[:, 1:] > keep[:, :-1]).all()  # strictly ascending: sorted and unique
    assert int(keep.min()) >= 0 and int(keep.max()) < 37
    assert len({tuple(r) for r in keep.tolist()}) > 60  # rows are independent draws


def test_reference_matches_a_scalar_philox_recomputation():
    """The convention written out with the C++ Philox scalar by scalar (independent of the torch
    implementation): keep the n_keep smallest (key << 32 | l), key = word0 >> 1."""
    seed, B, L, n_keep = 987654321987, 3, 11, 4
    keep = _run("reference", random_token_mask, B, L, _ratio(L, n_keep), seed=seed)
    for b in range(B):
        packed = sorted(((ext().philox4x32(seed, l, b, 0, 0)[0] >> 1) << 32) | l for l in range(L))
        assert keep[b].tolist() == sorted(p & 0xFFFFFFFF for p in packed[:n_keep])


def test_reproducible_and_seed_dependent():
    a = random_token_mask(8, 48, seed=1)
    assert torch.equal(a, random_token_mask(8, 48, seed=1))
    assert not torch.equal(a, random_token_mask(8, 48, seed=2))
    g = torch.Generator().manual_seed(5)
    b = random_token_mask(8, 48, generator=g)
    assert torch.equal(b, random_token_mask(8, 48, generator=torch.Generator().manual_seed(5)))
    assert not torch.equal(b, random_token_mask(8, 48, generator=g))  # the generator advanced
    torch.manual_seed(9)
    c = random_token_mask(8, 48)
    torch.manual_seed(9)
    assert torch.equal(c, random_token_mask(8, 48))
    # a seed tensor (the 64 key bits, as a model draws it on the device) is the same key
    assert torch.equal(a, random_token_mask(8, 48, seed=torch.tensor(1)))
    assert torch.equal(
        span_mask(3, 40, 4, 0.5, seed=2**64 - 5), span_mask(3, 40, 4, 0.5, seed=torch.tensor(-5))
    )


def test_uniform_over_subsets():
    """Every 2-subset of 6 tokens equally likely: chi-square over 15 cells from 6000 rows drawn
    with fixed seeds (deterministic; a biased rule fails by far: chi2 ~ hundreds)."""
    L, n_keep = 6, 2
    keep = torch.cat([random_token_mask(1000, L, _ratio(L, n_keep), seed=s) for s in range(6)])
    cells = {c: i for i, c in enumerate(itertools.combinations(range(L), n_keep))}
    counts = torch.bincount(torch.tensor([cells[tuple(r)] for r in keep.tolist()]), minlength=15)
    expected = keep.shape[0] / len(cells)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 40.0, f"chi2 {chi2:.1f} with 14 dof (p < 1e-3 at 36.1); counts {counts.tolist()}"
    # and every position is kept n_keep / L of the time
    freq = torch.bincount(keep.flatten(), minlength=L) / keep.shape[0]
    assert (freq - n_keep / L).abs().max() < 0.03


@pytest.mark.parametrize("backend,device", kernel_cases("random_token_mask"))
@pytest.mark.parametrize(
    "batch,length,ratio", [(1, 1, 0.9), (3, 48, 0.9), (5, 37, 0.5), (2, 300, 0.75), (4, 7, 0.0),
                           (33, 16, 0.9), (2, 1500, 0.9), (40, 600, 0.9)]
)  # fmt: skip
def test_kernels_reproduce_reference_exactly(backend, device, batch, length, ratio):
    big = batch * length > 10_000  # the C++ OpenMP path; one seed is enough there
    for seed in (0,) if big else (0, -(2**63), 2**63 + 12345):
        want = _run("reference", random_token_mask, batch, length, ratio, seed=seed, device=device)
        got = _run(backend, random_token_mask, batch, length, ratio, seed=seed, device=device)
        assert torch.equal(got, want), f"seed {seed}"


# =============================================================================================
# gather_tokens
# =============================================================================================
def _keep(B, L, n, device="cpu", seed=0):
    return random_token_mask(B, L, _ratio(L, n), seed=seed, device=device)


@pytest.mark.parametrize("backend,device", kernel_cases("gather_tokens"))
@pytest.mark.parametrize(
    "B,L,n,D", [(1, 1, 1, 1), (3, 48, 4, 384), (2, 37, 11, 5), (4, 9, 9, 130), (64, 48, 4, 384)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_gather_tokens_kernels(backend, device, B, L, n, D, dtype):
    x = torch.randn(B, L, D, device=device).to(dtype).requires_grad_()
    keep = _keep(B, L, n, device)
    ref = gather_tokens_reference(x, keep)
    out = _run(backend, gather_tokens, x, keep)
    assert out.dtype == dtype and torch.equal(out, ref)  # a copy: exact in every dtype
    g = torch.randn_like(out)
    (gx,) = torch.autograd.grad(out, x, g)
    (gx_ref,) = torch.autograd.grad(ref, x, g)
    assert torch.equal(gx, gx_ref)


@pytest.mark.parametrize("backend,device", kernel_cases("gather_tokens"))
def test_gather_tokens_noncontiguous_and_repeated_indices(backend, device):
    base = torch.randn(6, 4, 20, device=device)
    x = base.transpose(0, 2)[:7].transpose(0, 1).requires_grad_()  # (4, 7, 6) strided view
    assert not x.is_contiguous()
    keep = torch.tensor([[0, 0, 6], [3, 1, 3], [2, 2, 2], [5, 4, 0]], device=device)
    out = _run(backend, gather_tokens, x, keep)
    assert torch.equal(out, gather_tokens_reference(x, keep))
    g = torch.randn_like(out, dtype=torch.float64).float()
    (gx,) = torch.autograd.grad(out, x, g)
    (gx_ref,) = torch.autograd.grad(gather_tokens_reference(x, keep), x, g)
    assert_close(gx, gx_ref)  # repeated rows add up (order of the sums may differ)


@pytest.mark.parametrize(
    "backend", ["reference"] + [p.values[0] for p in kernel_cases("gather_tokens")]
)
def test_gather_tokens_gradcheck(backend):
    x = torch.randn(2, 7, 3, dtype=torch.float64, requires_grad=True)
    keep = torch.tensor([[1, 4, 6], [0, 0, 5]])
    with muse_fast.backend(backend):
        assert torch.autograd.gradcheck(lambda t: gather_tokens(t, keep), (x,), fast_mode=True)


def test_gather_tokens_bad_inputs():
    x = torch.randn(2, 5, 3)
    keep = torch.tensor([[0, 1], [2, 4]])
    with pytest.raises(ValueError, match="x"):
        gather_tokens(x[0], keep)
    with pytest.raises(TypeError, match="x"):
        gather_tokens(x.long(), keep)
    with pytest.raises(TypeError, match="keep_idx"):
        gather_tokens(x, keep.int())
    with pytest.raises(ValueError, match="keep_idx"):
        gather_tokens(x, keep[:1])
    with pytest.raises(ValueError, match="keep_idx.*\\[0, 5\\)"):
        gather_tokens(x, torch.tensor([[0, 5], [1, 2]]))
    with pytest.raises(ValueError, match="keep_idx"):
        gather_tokens(x, torch.tensor([[0, -1], [1, 2]]))


# =============================================================================================
# masked_patch_embed
# =============================================================================================
def _patchify_by_hand(spec, ph, pw):
    """Patch vectors written out element by element: einops
    'b c (h p1) (w p2) -> b (h w) (p1 p2 c)' (Myna / SimpleViT)."""
    s = spec if spec.dim() == 4 else spec[:, None]
    B, C, H, W = s.shape
    gh, gw = H // ph, W // pw
    out = torch.empty(B, gh * gw, ph * pw * C, dtype=s.dtype)
    for i, j, p1, p2, c in itertools.product(range(gh), range(gw), range(ph), range(pw), range(C)):
        out[:, i * gw + j, (p1 * pw + p2) * C + c] = s[:, c, i * ph + p1, j * pw + p2]
    return out


def test_masked_patch_embed_reference_layout_and_formula():
    B, C, H, W, ph, pw, D = 2, 3, 8, 6, 4, 2, 5
    spec = torch.randn(B, C, H, W, dtype=torch.float64)
    N, K = (H // ph) * (W // pw), ph * pw * C
    keep = _keep(B, N, 3)
    w, b, pos = (torch.randn(D, K, dtype=torch.float64), torch.randn(D, dtype=torch.float64),
                 torch.randn(N, D, dtype=torch.float64))  # fmt: skip
    patches = _patchify_by_hand(spec, ph, pw)
    for eps in (None, 1e-5):
        v = torch.stack([patches[i, keep[i]] for i in range(B)])
        if eps is not None:
            v = (v - v.mean(-1, keepdim=True)) / torch.sqrt(
                v.var(-1, unbiased=False, keepdim=True) + eps
            )
        want = v @ w.T + b + pos[keep]
        got = _run("reference", masked_patch_embed, spec, keep, (ph, pw), w, b, pos, norm_eps=eps)
        assert_close(got, want)
    # a 3-D spec is one channel
    got = masked_patch_embed_reference(spec[:, 0], keep, (ph, pw), w[:, ::C].contiguous())
    want = torch.stack([_patchify_by_hand(spec[:, 0], ph, pw)[i, keep[i]] for i in range(B)])
    assert_close(got, want @ w[:, ::C].T)


def _mpe_inputs(B, C, H, W, ph, pw, D, dtype=torch.float32, device="cpu", three_d=False):
    N, K = (H // ph) * (W // pw), ph * pw * (1 if three_d else C)
    shape = (B, H, W) if three_d else (B, C, H, W)
    spec = (torch.randn(*shape, device=device) * 2 + 1).to(dtype)
    w = (torch.randn(D, K, device=device) / math.sqrt(K)).to(dtype)
    b = torch.randn(D, device=device).to(dtype)
    pos = torch.randn(N, D, device=device).to(dtype)
    keep = _keep(B, N, max(1, N // 4), device)
    return spec, keep, w, b, pos


def _mpe_grads(backend, spec, keep, patch, w, b, pos, eps, g):
    ins = [t.detach().requires_grad_() if t is not None else None for t in (spec, w, b, pos)]
    with muse_fast.backend(backend):
        out = masked_patch_embed(ins[0], keep, patch, ins[1], ins[2], ins[3], norm_eps=eps)
    grads = torch.autograd.grad(out, [t for t in ins if t is not None], g.to(out.dtype))
    return out.detach(), grads


@pytest.mark.parametrize("backend,device", kernel_cases("masked_patch_embed"))
@pytest.mark.parametrize(
    "B,C,H,W,ph,pw,D,eps,bias,three_d",
    [
        (2, 1, 32, 24, 16, 8, 48, 1e-5, True, True),  # Myna-like, small
        (3, 1, 16, 12, 16, 2, 24, None, False, True),  # 'vertical' patches (full height)
        (2, 3, 9, 10, 3, 5, 20, 1e-6, True, False),  # odd everything, channels
        (1, 2, 4, 4, 1, 1, 17, 1e-5, False, False),  # 1x1 patches, K = C
        (64, 1, 64, 64, 16, 16, 32, 1e-5, True, True),  # enough rows for the OpenMP paths
    ],
)  # fmt: skip
def test_masked_patch_embed_kernels(backend, device, B, C, H, W, ph, pw, D, eps, bias, three_d):
    spec, keep, w, b, pos = _mpe_inputs(B, C, H, W, ph, pw, D, device=device, three_d=three_d)
    b = b if bias else None
    pos = pos if bias else None  # also exercise the path without the position table
    g = torch.randn(B, keep.shape[1], D, device=device)
    out_ref, grads_ref = _mpe_grads("reference", spec.double(), keep, (ph, pw), w.double(),
                                    None if b is None else b.double(),
                                    None if pos is None else pos.double(), eps, g)  # fmt: skip
    out, grads = _mpe_grads(backend, spec, keep, (ph, pw), w, b, pos, eps, g)
    out32, grads32 = _mpe_grads("reference", spec, keep, (ph, pw), w, b, pos, eps, g)
    assert_within_eager_error(out, out32, out_ref, atol=1e-5, msg="out: ")
    for name, a, e, r in zip(["spec", "weight", "bias", "pos"], grads, grads32, grads_ref):
        assert_within_eager_error(a, e, r, atol=1e-5, msg=f"grad {name}: ")


@pytest.mark.parametrize("backend,device", kernel_cases("masked_patch_embed"))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_masked_patch_embed_half(backend, device, dtype):
    spec, keep, w, b, pos = _mpe_inputs(3, 1, 32, 24, 16, 8, 64, device=device, three_d=True)
    g = torch.randn(3, keep.shape[1], 64, device=device)
    out_ref, grads_ref = _mpe_grads("reference", spec.double(), keep, (16, 8),
                                    w.double(), b.double(), pos.double(), 1e-5, g)  # fmt: skip
    lo = [t.to(dtype) for t in (spec, w, b, pos)]
    out_e, grads_e = _mpe_grads("reference", lo[0], keep, (16, 8), *lo[1:], 1e-5, g)
    out, grads = _mpe_grads(backend, lo[0], keep, (16, 8), *lo[1:], 1e-5, g)
    assert out.dtype == dtype
    assert_within_eager_error(out, out_e, out_ref, atol=1e-2, msg="out: ")
    for name, a, e, r in zip(["spec", "weight", "bias", "pos"], grads, grads_e, grads_ref):
        assert_within_eager_error(a, e, r, atol=1e-2, msg=f"grad {name}: ")


@pytest.mark.parametrize("backend,device", kernel_cases("masked_patch_embed"))
def test_masked_patch_embed_noncontiguous_inputs(backend, device):
    spec, keep, w, b, pos = _mpe_inputs(2, 2, 8, 12, 4, 3, 16, device=device)
    spec_t = spec.transpose(2, 3).contiguous().transpose(2, 3)  # same values, other strides
    w_t = w.t().contiguous().t()
    pos_t = pos.t().contiguous().t()
    keep_t = keep.t().contiguous().t()
    assert not any(t.is_contiguous() for t in (spec_t, w_t, pos_t, keep_t))
    g = torch.randn(2, keep.shape[1], 16, device=device)
    out, grads = _mpe_grads(backend, spec_t, keep_t, (4, 3), w_t, b, pos_t, 1e-5, g)
    out_r, grads_r = _mpe_grads("reference", spec, keep, (4, 3), w, b, pos, 1e-5, g)
    assert_close(out, out_r, atol=1e-4, rtol=1e-4)
    for a, r in zip(grads, grads_r):
        assert_close(a, r, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_masked_patch_embed_gradcheck(backend):
    spec, keep, w, b, pos = (t.double() if t.is_floating_point() else t
                             for t in _mpe_inputs(2, 2, 4, 6, 2, 3, 5))  # fmt: skip
    keep = torch.tensor([[0, 3], [2, 2]])  # a repeated patch: its gradients add up
    ins = [t.requires_grad_() for t in (spec, w, b, pos)]
    fn = lambda s, w_, b_, p_: masked_patch_embed(s, keep, (2, 3), w_, b_, p_, norm_eps=1e-3)
    with muse_fast.backend(backend):
        assert torch.autograd.gradcheck(fn, ins, fast_mode=True)


def test_masked_patch_embed_triton_refuses_float64_with_a_reason():
    spec, keep, w, b, pos = (t.double() if t.is_floating_point() else t
                             for t in _mpe_inputs(1, 1, 4, 4, 2, 2, 4, three_d=True))  # fmt: skip
    why = muse_fast.ops.available_backends(
        "masked_patch_embed", spec, keep, (2, 2), w, b, pos, None
    )["triton"]
    assert why is not None and "float64" in why


def test_masked_patch_embed_under_autocast():
    spec, keep, w, b, pos = _mpe_inputs(2, 1, 16, 12, 8, 4, 32, three_d=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = masked_patch_embed(spec, keep, (8, 4), w, b, pos, norm_eps=1e-5)
    assert out.dtype == torch.bfloat16  # like F.linear under autocast
    want = masked_patch_embed_reference(spec, keep, (8, 4), w, b, pos, 1e-5)
    assert_close(out, want, torch.bfloat16, atol=5e-2)


def test_masked_patch_embed_bad_inputs():
    spec, keep, w, b, pos = _mpe_inputs(2, 1, 8, 6, 4, 2, 5, three_d=True)
    call = lambda **kw: masked_patch_embed(
        **{"spec": spec, "keep_idx": keep, "patch_size": (4, 2), "weight": w, "bias": b,
           "pos_embed": pos, **kw}
    )  # fmt: skip
    with pytest.raises(ValueError, match="patch_size"):
        call(patch_size=(5, 2))
    with pytest.raises(ValueError, match="patch_size"):
        call(patch_size=(4, 2, 1))
    with pytest.raises(ValueError, match="spec"):
        call(spec=spec[0])
    with pytest.raises(ValueError, match="weight"):
        call(weight=w[:, :-1])
    with pytest.raises(TypeError, match="weight"):
        call(weight=w.double())
    with pytest.raises(ValueError, match="bias"):
        call(bias=b[:-1])
    with pytest.raises(ValueError, match="pos_embed"):
        call(pos_embed=pos[:-1])
    with pytest.raises(ValueError, match="keep_idx"):
        call(keep_idx=torch.tensor([[0, 6], [1, 2]]))  # 6 patches: 0..5
    with pytest.raises(ValueError, match="keep_idx"):
        call(keep_idx=keep[:1])
    with pytest.raises(ValueError, match="norm_eps"):
        call(norm_eps=0.0)


# =============================================================================================
# span_mask and apply_span_mask
# =============================================================================================
def test_span_mask_reference_semantics():
    B, T, span = 64, 107, 10
    m = _run("reference", span_mask, B, T, span, 0.4, seed=5)
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
        want = _run("reference", span_mask, B, T, span, p, seed=seed, device=device)
        got = _run(backend, span_mask, B, T, span, p, seed=seed, device=device)
        assert torch.equal(got, want)


def test_apply_span_mask_noise_reference_semantics():
    x = torch.randn(2, 15_000)  # below torch's intra-op grain: single-threaded eager ops
    m = span_mask(2, 15_000, 150, 0.5, seed=1)
    y = _run("reference", apply_span_mask, x, m, noise_std=0.1, seed=2)
    assert torch.equal(y[~m], x[~m])
    noise = y[m]
    assert noise.numel() > 10_000
    assert abs(noise.mean().item()) < 0.003 and abs(noise.std().item() - 0.1) < 0.003
    assert torch.equal(y, _run("reference", apply_span_mask, x, m, noise_std=0.1, seed=2))
    y3 = _run("reference", apply_span_mask, x[:1, :2400], m[:1, :2400], noise_std=0.1, seed=3)
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
    want = _run("reference", apply_span_mask, x, m, noise_std=0.1, seed=11)
    got = _run(backend, apply_span_mask, x, m, noise_std=0.1, seed=11)
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
        got = _run(backend, apply_span_mask, x, m, noise_std=1.0, seed=1)
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
    with pytest.raises(ValueError, match="mask_ratio"):
        random_token_mask(2, 10, -0.1)
    with pytest.raises(ValueError, match="length"):
        random_token_mask(2, 0)
    with pytest.raises(ValueError, match="seed"):
        random_token_mask(2, 10, seed=1, generator=torch.Generator())


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_empty_inputs(backend):
    with muse_fast.backend(backend):
        keep = random_token_mask(0, 10, 0.5, seed=1)
        assert keep.shape == (0, 5)
        assert span_mask(0, 10, 3, 0.5, seed=1).shape == (0, 10)
        assert span_mask(2, 0, 3, 0.5, seed=1).shape == (2, 0)
        x = torch.randn(0, 10, 3, requires_grad=True)
        gather_tokens(x, keep).sum().backward()
        assert x.grad.shape == x.shape
        spec = torch.randn(0, 8, 8, requires_grad=True)
        w = torch.randn(4, 16, requires_grad=True)
        out = masked_patch_embed(spec, keep[:, :2], 4, w, norm_eps=1e-5)
        out.sum().backward()
        assert out.shape == (0, 2, 4) and not w.grad.any() and spec.grad.shape == spec.shape
        empty = torch.zeros(0, 5, dtype=torch.bool)
        assert apply_span_mask(torch.randn(0, 5), empty, noise_std=1.0, seed=1).shape == (0, 5)


# =============================================================================================
# modules and torch.compile
# =============================================================================================
def test_modules():
    tm = TokenMasker(0.75)
    x = torch.randn(3, 8, 5)
    kept, keep = tm(x, seed=1)
    assert kept.shape == (3, 2, 5) and torch.equal(kept, gather_tokens_reference(x, keep))
    assert torch.equal(tm.eval()(x)[0], x)
    sm = SpanMasker(4, 0.5, noise_std=0.1)
    y, m = sm(torch.zeros(2, 40), seed=3)
    assert torch.equal(m, span_mask(2, 40, 4, 0.5, seed=3)) and (y[~m] == 0).all()
    se = SpanMasker(4, 0.5, dim=6)
    y, m = se(torch.zeros(2, 40, 6), seed=3)
    assert torch.equal(y[m], se.mask_embedding.detach().expand(int(m.sum()), 6))
    with pytest.raises(ValueError, match="noise_std"):
        SpanMasker(4, 0.5)


class _TinyMaskedEncoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(16, 32) * 0.1)
        self.bias = torch.nn.Parameter(torch.zeros(16))
        self.pos = torch.nn.Parameter(torch.randn(12, 16))
        self.head = torch.nn.Linear(16, 4)

    def forward(self, spec):
        B = spec.shape[0]
        keep = random_token_mask(B, 12, 0.5, seed=1234, device=spec.device)
        t = masked_patch_embed(spec, keep, (4, 8), self.weight, self.bias, self.pos, norm_eps=1e-5)
        t = gather_tokens(t, random_token_mask(B, 6, 0.5, seed=99, device=spec.device))
        m = span_mask(B, 3, 1, 0.5, seed=7, device=spec.device)
        t = apply_span_mask(t, m, noise_std=0.1, seed=8)
        return self.head(t).mean(1)


def test_small_model_compiles_fullgraph_on_cpu():
    model = _TinyMaskedEncoder()
    spec = torch.randn(2, 16, 24)
    compiled = torch.compile(model, fullgraph=True)
    y = compiled(spec)
    y.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    y_eager = model(spec)
    y_eager.sum().backward()
    assert_close(y, y_eager)
    for g, p in zip(grads, model.parameters()):
        assert_close(g, p.grad)
