"""random_token_mask and gather_tokens: reference semantics pinned independently, every kernel
against the reference (bit for bit), gradients (atomic and unique-index backward), awkward
shapes, the CUDA tile configurations, bad inputs."""

from __future__ import annotations

import itertools

import pytest
import torch
from masking_helpers import keep_indices, ratio, run
from muse_fast.kernels._utils import record_launches, tiles

import muse_fast
from muse_fast._ext import ext
from muse_fast.nn import TokenMasker
from muse_fast.ops import gather_tokens, num_kept_tokens, random_token_mask, span_mask
from muse_fast.ops.token_mask import gather_tokens_reference
from muse_fast.testing import assert_close, kernel_cases


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
    keep = run("reference", random_token_mask, 64, 37, 0.6, seed=3)
    assert keep.dtype == torch.int64 and keep.shape == (64, num_kept_tokens(37, 0.6))
    assert (keep[:, 1:] > keep[:, :-1]).all()  # strictly ascending: sorted and unique
    assert int(keep.min()) >= 0 and int(keep.max()) < 37
    assert len({tuple(r) for r in keep.tolist()}) > 60  # rows are independent draws


def test_reference_matches_a_scalar_philox_recomputation():
    """The convention written out with the C++ Philox scalar by scalar (independent of the torch
    implementation): keep the n_keep smallest (key << 32 | l), key = word0 >> 1."""
    seed, B, L, n_keep = 987654321987, 3, 11, 4
    keep = run("reference", random_token_mask, B, L, ratio(L, n_keep), seed=seed)
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
    keep = torch.cat([random_token_mask(1000, L, ratio(L, n_keep), seed=s) for s in range(6)])
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
        want = run("reference", random_token_mask, batch, length, ratio, seed=seed, device=device)
        got = run(backend, random_token_mask, batch, length, ratio, seed=seed, device=device)
        assert torch.equal(got, want), f"seed {seed}"


# =============================================================================================
# gather_tokens
# =============================================================================================
@pytest.mark.parametrize("backend,device", kernel_cases("gather_tokens"))
@pytest.mark.parametrize(
    "B,L,n,D", [(1, 1, 1, 1), (3, 48, 4, 384), (2, 37, 11, 5), (4, 9, 9, 130), (64, 48, 4, 384)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_gather_tokens_kernels(backend, device, B, L, n, D, dtype):
    x = torch.randn(B, L, D, device=device).to(dtype).requires_grad_()
    keep = keep_indices(B, L, n, device)
    ref = gather_tokens_reference(x, keep)
    out = run(backend, gather_tokens, x, keep)
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
    out = run(backend, gather_tokens, x, keep)
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


def test_random_token_mask_bad_inputs():
    with pytest.raises(ValueError, match="mask_ratio"):
        random_token_mask(2, 10, -0.1)
    with pytest.raises(ValueError, match="length"):
        random_token_mask(2, 0)
    with pytest.raises(ValueError, match="seed"):
        random_token_mask(2, 10, seed=1, generator=torch.Generator())
    with pytest.raises(TypeError, match="unique_indices"):
        gather_tokens(torch.randn(2, 5, 3), torch.zeros(2, 1, dtype=torch.long), unique_indices=1)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
@pytest.mark.parametrize("unique", [False, True])
def test_empty_inputs(backend, unique):
    with muse_fast.backend(backend):
        keep = random_token_mask(0, 10, 0.5, seed=1)
        assert keep.shape == (0, 5)
        x = torch.randn(0, 10, 3, requires_grad=True)
        gather_tokens(x, keep, unique_indices=unique).sum().backward()
        assert x.grad.shape == x.shape


def test_token_masker_module():
    tm = TokenMasker(0.75)
    x = torch.randn(3, 8, 5)
    kept, keep = tm(x, seed=1)
    assert kept.shape == (3, 2, 5) and torch.equal(kept, gather_tokens_reference(x, keep))
    assert torch.equal(tm.eval()(x)[0], x)


def _gather_grads(backend, x, keep, g, unique):
    x = x.detach().requires_grad_()
    with muse_fast.backend(backend):
        out = gather_tokens(x, keep, unique_indices=unique)
        (gx,) = torch.autograd.grad(out, x, g)
    return out, gx


@pytest.mark.parametrize("backend,device", kernel_cases("gather_tokens"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gather_backward_unique_path_matches_the_atomic_path(backend, device, dtype):
    """unique_indices=True (one pass of row writes, no atomics) gives the reference gradient for
    random_token_mask's indices, exactly (each output row is one gradient row or zeros)."""
    B, L, n, D = 5, 37, 9, 130
    x = torch.randn(B, L, D, device=device).to(dtype)
    keep = keep_indices(B, L, n, device, seed=int(torch.randint(0, 2**31, ())))
    g = torch.randn(B, n, D, device=device).to(dtype)
    ref = torch.zeros(B, L, D, dtype=dtype, device=device).scatter_(
        1, keep[..., None].expand(-1, -1, D), g
    )
    for unique in (True, False):
        out, gx = _gather_grads(backend, x, keep, g, unique)
        assert torch.equal(out, gather_tokens_reference(x, keep))
        assert gx.dtype == dtype and torch.equal(gx, ref), f"unique_indices={unique}"


@pytest.mark.parametrize("backend,device", kernel_cases("gather_tokens"))
def test_gather_backward_repeated_indices_take_the_atomic_path(backend, device):
    x = torch.randn(3, 6, 7, device=device)
    keep = torch.tensor([[0, 0, 5, 0], [2, 3, 2, 1], [4, 4, 4, 4]], device=device)
    g = torch.randn(3, 4, 7, device=device)
    _, gx = _gather_grads(backend, x, keep, g, False)
    _, want = _gather_grads("reference", x.double(), keep, g.double(), False)
    assert_close(gx, want.float())  # repeated rows add up


_TILE_SHAPES = [(1, 1, 1, 1), (3, 37, 11, 5), (9, 48, 12, 130), (2, 3000, 300, 1)]


@pytest.mark.parametrize("B,L,n,D", _TILE_SHAPES)
def test_cuda_tile_configuration(B, L, n, D):
    """The block sizes, warps and loop bounds the launchers pick on a GPU, under the
    interpreter, forward and backward (both backward paths) against the reference. L = 3000
    runs a row longer than the 2048-element tile alone (the wide-warp branch); D = 130 needs two
    128-wide column blocks; 108 rows need several 32-row programs."""
    seed = int(torch.randint(-(2**62), 2**62, ()))
    with tiles("cuda"):
        keep = run("triton", random_token_mask, B, L, ratio(L, n), seed=seed)
        assert torch.equal(keep, run("reference", random_token_mask, B, L, ratio(L, n), seed=seed))
        x = torch.randn(B, L, D)
        g = torch.randn(B, n, D)
        _, want = _gather_grads("reference", x, keep, g, False)
        for unique in (True, False):
            out, gx = _gather_grads("triton", x, keep, g, unique)
            assert torch.equal(out, gather_tokens_reference(x, keep))
            assert torch.equal(gx, want), f"unique_indices={unique}"
        rep = keep.flip(1).clone()
        rep[:, 0] = rep[:, -1]  # a repeated index in every row (n > 1): atomics add them
        _, gx = _gather_grads("triton", x, rep, g, False)
        _, want = _gather_grads("reference", x.double(), rep, g.double(), False)
        assert_close(gx, want.float())


def test_launchers_run_on_meta_tensors_at_the_papers_sizes():
    """What the static sm_90 report does: the Triton backends at Myna's sizes (B = 4096, 48
    tokens, 4 kept, D = 384 bf16) on meta tensors, recorded and not run: no host sync."""
    from muse_fast._backend import get_op

    seed = torch.zeros((), dtype=torch.int64, device="meta")
    x = torch.empty(4096, 48, 384, dtype=torch.bfloat16, device="meta")
    keep = torch.empty(4096, 4, dtype=torch.int64, device="meta")
    g = torch.empty(4096, 4, 384, dtype=torch.bfloat16, device="meta")
    with record_launches(dry=True) as launches, tiles("cuda"):
        get_op("random_token_mask").impl("triton")(seed, 4096, 48, 4)
        get_op("gather_tokens").impl("triton")(x, keep)
        for unique in (False, True):
            get_op("gather_tokens_backward").impl("triton")(g, keep, 48, unique)
    names = [rec.name for rec in launches]
    assert names == [
        "_token_mask_kernel", "_gather_kernel", "_scatter_add_kernel", "_scatter_rows_kernel"
    ]  # fmt: skip
    rows = launches[3]
    assert rows.constexprs == {"BLOCK_R": 32, "BLOCK_D": 128} and rows.grid == (6144, 3)
