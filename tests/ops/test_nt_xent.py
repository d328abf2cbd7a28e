"""nt_xent and global_contrastive_loss: reference semantics, every kernel against it."""

from __future__ import annotations

import math
import sys

import pytest
import torch
import torch.nn.functional as F

import muse_fast
from muse_fast.ops import (
    global_contrastive_loss,
    global_contrastive_loss_reference,
    nt_xent,
    nt_xent_reference,
)
from muse_fast.ops.nt_xent import nt_xent_rows
from muse_fast.testing import assert_close, assert_within_eager_error, kernel_cases

KERNELS = kernel_cases("nt_xent")
ALL = [pytest.param("reference", "cpu", id="reference"), *KERNELS]


def _naive_nt_xent(z1, z2, tau, normalize=True):
    """Loops over Python floats: an implementation that shares nothing with the reference."""
    rows = [list(map(float, r)) for r in torch.cat([z1, z2]).tolist()]
    if normalize:
        rows = [[v / max(math.sqrt(sum(x * x for x in r)), 1e-12) for v in r] for r in rows]
    m, n = len(rows), len(rows) // 2
    total = 0.0
    for i in range(m):
        sims = [sum(a * b for a, b in zip(rows[i], rows[k])) / tau for k in range(m)]
        others = [sims[k] for k in range(m) if k != i]
        top = max(others)
        total += -sims[(i + n) % m] + top + math.log(sum(math.exp(s - top) for s in others))
    return total / m


def _away_from_zero(z):
    """Rows rescaled to norms in [1, 2]: the normalization's backward scales fp32 rounding by
    1/‖z‖, which would make fixed tolerances flaky for a row that happens to be tiny."""
    return z / z.norm(dim=1, keepdim=True).clamp(min=1e-6) * (1 + torch.rand_like(z[:, :1]))


def _loss_and_grads(fn, z1, z2, *args):
    z1 = z1.detach().requires_grad_(True)
    z2 = z2.detach().requires_grad_(True)
    loss = fn(z1, z2, *args)
    g1, g2 = torch.autograd.grad(loss, (z1, z2))
    return loss.detach(), g1, g2


def _run(backend, fn, *args):
    with muse_fast.backend(backend):
        return fn(*args)


EPS32 = torch.finfo(torch.float32).eps


def _within_eager(got, eager, ref, what: str = "", scale: float | None = None) -> None:
    """The precision rule: error vs the float64 reference <= 2 x eager float32 PyTorch's own error
    on the same input, plus a floor of a few float32 ulps of the output's scale (``scale``, or
    max |ref|) where values vanish."""
    s = float(ref.abs().max()) if scale is None else scale
    assert_within_eager_error(
        got.double(), eager.double(), ref.double(), atol=8 * EPS32 * s, msg=f"{what}: "
    )


def _term_scales(z1, z2, tau: float, normalize: bool) -> tuple[float, float]:
    """Sizes of the terms that cancel in the loss (the logits and log 2N) and in a gradient entry
    (one similarity's weight 1/(τ·2N) times an embedding entry, times 1/‖z‖ through the
    normalization; the weight exp(logit − lse) carries the logit's rounding, eps·|logit|, so
    that term grows with the logits): the floors of the rule are a few float32 ulps of these."""
    z = torch.cat([z1, z2]).double()  # (2N, D)
    zn = F.normalize(z, dim=1) if normalize else z
    logit = float((zn @ zn.T).abs().max()) / tau
    rn = float(1 / z.norm(dim=1).min().clamp(min=1e-12)) if normalize else 1.0
    grad = float(zn.abs().max()) * rn / (tau * z.shape[0]) * max(1.0, logit)
    return logit + math.log(z.shape[0]), grad


def _compare(fn_ref, fn, backend, z1, z2, *args, tau: float, normalize: bool = True):
    """Loss and gradients of ``fn`` on ``backend`` against the rule (float64 and float32 eager)."""
    want = _loss_and_grads(fn_ref, z1.double(), z2.double(), *args)
    eager = _loss_and_grads(fn_ref, z1.float(), z2.float(), *args)
    got = _run(backend, _loss_and_grads, fn, z1, z2, *args)
    loss_scale, grad_scale = _term_scales(z1, z2, tau, normalize)
    for g, e, w, name in zip(got, eager, want, ("loss", "dz1", "dz2")):
        assert torch.isfinite(g).all(), name
        scale = loss_scale if name == "loss" else max(grad_scale, float(w.abs().max()))
        _within_eager(g, e, w, name, scale=scale)
    return got


# ------------------------------------------------------------------------------------------
# the reference, pinned independently
# ------------------------------------------------------------------------------------------
def test_reference_two_pair_case_by_hand():
    # z = [e1, e2, (e1+e2)/√2, (e1−e2)/√2] after normalization, tau = 0.5
    z1 = torch.tensor([[2.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    z2 = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    c = 1 / math.sqrt(2)
    # similarity rows (k = 0..3); row i's positive is i ± 2
    s = [[1, 0, c, c], [0, 1, c, -c], [c, c, 1, 0], [c, -c, 0, 1]]
    tau = 0.5
    expect = 0.0
    for i in range(4):
        denom = sum(math.exp(s[i][k] / tau) for k in range(4) if k != i)
        expect += -s[i][(i + 2) % 4] / tau + math.log(denom)
    expect /= 4
    assert nt_xent_reference(z1, z2, tau).item() == pytest.approx(expect, rel=1e-12)
    assert _naive_nt_xent(z1, z2, tau) == pytest.approx(expect, rel=1e-12)


@pytest.mark.parametrize("normalize", [True, False])
def test_reference_matches_loops(normalize):
    z1, z2 = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    got = nt_xent_reference(z1, z2, 0.3, normalize).item()
    assert got == pytest.approx(_naive_nt_xent(z1, z2, 0.3, normalize), rel=1e-10)


def test_reference_gradients_are_finite_and_correct():
    z1, z2 = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda a, b: nt_xent_reference(a, b, 0.2), (z1.requires_grad_(), z2.requires_grad_())
    )


# ------------------------------------------------------------------------------------------
# kernels (and the dispatched reference path) against the reference
# ------------------------------------------------------------------------------------------
SHAPES = [(2, 1), (3, 7), (5, 33), (40, 100), (9, 300)]  # N=40: several row/column blocks


@pytest.mark.parametrize("backend,device", ALL)
@pytest.mark.parametrize("n,d", SHAPES)
@pytest.mark.parametrize("normalize", [True, False])
def test_matches_reference_forward_backward(backend, device, n, d, normalize):
    z1 = _away_from_zero(torch.randn(n, d, device=device))
    # correlated views, like real positives
    z2 = _away_from_zero(z1 + 0.5 * torch.randn(n, d, device=device))
    tau = 0.2 if normalize else 2.0 * d
    _compare(
        nt_xent_reference, nt_xent, backend, z1, z2, tau, normalize, tau=tau, normalize=normalize
    )


@pytest.mark.parametrize("backend,device", ALL)
@pytest.mark.parametrize("tau", [0.01, 10.0])
def test_extreme_temperatures_do_not_overflow(backend, device, tau):
    z1 = torch.randn(6, 24, device=device)
    z2 = torch.randn(6, 24, device=device)
    _compare(nt_xent_reference, nt_xent, backend, z1, z2, tau, tau=tau)


@pytest.mark.parametrize("backend,device", ALL)
def test_large_unnormalized_logits(backend, device):
    z1 = 30 * torch.randn(4, 16, device=device)
    z2 = 30 * torch.randn(4, 16, device=device)  # logits of order 1e5: online max must hold
    want = nt_xent_reference(z1.double(), z2.double(), 0.1, False)
    eager = nt_xent_reference(z1, z2, 0.1, False)
    got = _run(backend, nt_xent, z1, z2, 0.1, False)
    assert torch.isfinite(got)
    _within_eager(got, eager, want, "loss", scale=_term_scales(z1, z2, 0.1, False)[0])


@pytest.mark.parametrize("backend,device", ALL)
@pytest.mark.parametrize("normalize", [True, False])
def test_identical_embeddings(backend, device, normalize):
    n = 5
    z = torch.randn(1, 8, device=device).expand(n, 8)
    tau = 0.1
    got = _run(backend, _loss_and_grads, nt_xent, z, z.clone(), tau, normalize)
    eager = _loss_and_grads(nt_xent_reference, z, z.clone(), tau, normalize)
    exact = (torch.tensor(math.log(2 * n - 1), dtype=torch.float64), *[torch.zeros(n, 8)] * 2)
    # every row equally attracted and repelled: zero gradient (the floor is its terms' scale)
    scales = _term_scales(z, z, tau, normalize)
    for g, e, w, what in zip(got, eager, exact, ("loss", "dz1", "dz2")):
        assert torch.isfinite(g).all()
        _within_eager(g, e, w, what, scale=scales[what != "loss"])


@pytest.mark.parametrize("backend,device", KERNELS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_within_eager_error(backend, device, dtype):
    z1 = torch.randn(24, 40, device=device)
    z2 = z1 + torch.randn(24, 40, device=device)
    ref = _loss_and_grads(nt_xent_reference, z1.double(), z2.double(), 0.1)
    eager = _loss_and_grads(nt_xent_reference, z1.to(dtype), z2.to(dtype), 0.1)
    got = _run(backend, _loss_and_grads, nt_xent, z1.to(dtype), z2.to(dtype), 0.1)
    assert got[0].dtype == dtype and got[1].dtype == dtype
    for g, e, r, what in zip(got, eager, ref, ("loss", "dz1", "dz2")):
        # floor: one ulp of the output dtype at the output's scale (the output is rounded to it)
        floor = torch.finfo(dtype).eps * float(r.abs().max())
        assert_within_eager_error(g, e, r, atol=floor, msg=f"{what}: ")


TRITON = [p for p in KERNELS if p.id == "triton"]
# (n, d): one pair block; M = 80 (forward: 1 row block, 2 column splits; backward: 2 row blocks, 2
# splits); D = 300 > the CUDA BLOCK_D (the chunked-D path); D = 1
CUDA_TILE_SHAPES = [(3, 7), (40, 300), (2, 1)]


@pytest.mark.parametrize("backend,device", TRITON)
@pytest.mark.parametrize("n,d", CUDA_TILE_SHAPES)
@pytest.mark.parametrize("loss", ["nt_xent", "gcl"])
def test_cuda_tiles_forward_backward(backend, device, n, d, loss):
    """The Triton kernels with the GPU's tile configuration (block sizes, warps, column splits),
    forward and backward, on awkward shapes."""
    from muse_fast.kernels._utils import tiles

    z1 = _away_from_zero(torch.randn(n, d, device=device))
    z2 = _away_from_zero(z1 + 0.5 * torch.randn(n, d, device=device))
    with tiles("cuda"):
        if loss == "nt_xent":
            _compare(nt_xent_reference, nt_xent, backend, z1, z2, 0.2, tau=0.2)
        else:
            log_u = torch.where(torch.rand(n) < 0.3, -math.inf, torch.randn(n) + 2).to(device)

            def gcl(fn):
                return lambda a, b: fn(a, b, log_u.to(a.dtype), 0.9, 0.1)[0]

            ref, fused = gcl(global_contrastive_loss_reference), gcl(global_contrastive_loss)
            _compare(ref, fused, backend, z1, z2, tau=0.1)


@pytest.mark.parametrize("backend,device", TRITON)
def test_cuda_tiles_rank_share_with_inactive_row_blocks(backend, device):
    """One rank's share under the GPU tiles: M = 140 rows in 3 row blocks of 64, the middle one
    with no active row (its loop visits only the active rows' column blocks)."""
    from muse_fast.kernels._utils import tiles

    n, share = 70, (60, 8)
    z = torch.randn(2 * n, 16, device=device)
    zr = z.double().requires_grad_(True)
    ze = z.detach().requires_grad_(True)
    zk = z.detach().requires_grad_(True)
    with muse_fast.backend("reference"):  # eager PyTorch: float64, and float32 (the yardstick)
        want = nt_xent_rows(zr, n, 0.3, True, *share)
        eager = nt_xent_rows(ze, n, 0.3, True, *share)
    with tiles("cuda"), muse_fast.backend(backend):
        got = nt_xent_rows(zk, n, 0.3, True, *share)
    for out in (want, eager, got):
        out.backward()
    scales = _term_scales(z[:n], z[n:], 0.3, True)
    _within_eager(got, eager, want, "loss", scale=scales[0])
    _within_eager(zk.grad, ze.grad, zr.grad, "dz", scale=max(scales[1], float(zr.grad.abs().max())))


@pytest.mark.parametrize("backend,device", ALL)
def test_non_contiguous_inputs(backend, device):
    base = torch.randn(7, 26, device=device)
    z1 = base[:, ::2]  # column stride 2
    z2 = torch.randn(13, 7, device=device).T  # transposed view
    _compare(nt_xent_reference, nt_xent, backend, z1, z2, 0.1, tau=0.1)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck_float64(backend):
    z1 = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    with muse_fast.backend(backend):
        assert torch.autograd.gradcheck(lambda a, b: nt_xent(a, b, 0.3), (z1, z2))
        assert torch.autograd.gradcheck(lambda a, b: nt_xent(a, b, 2.0, False), (z1, z2))


@pytest.mark.parametrize("backend,device", ALL)
def test_rank_shares_add_up_to_the_global_loss(backend, device):
    """nt_xent_rows (one rank's rows against all negatives), as NTXentLoss uses it."""
    n = 7
    z = torch.randn(2 * n, 12, device=device)
    zr = z.double().requires_grad_(True)
    full = nt_xent_reference(zr[:n], zr[n:], 0.3)
    (g_full,) = torch.autograd.grad(full, zr)
    ze = z.detach().requires_grad_(True)
    eager = nt_xent_reference(ze[:n], ze[n:], 0.3)  # float32
    (g_eager,) = torch.autograd.grad(eager, ze)
    zk = z.detach().requires_grad_(True)
    with muse_fast.backend(backend):
        shares = [(0, 2), (2, 4), (6, 1)]
        total = sum(nt_xent_rows(zk, n, 0.3, True, a, c) * c for a, c in shares) / n
    (g,) = torch.autograd.grad(total, zk)
    scales = _term_scales(z[:n], z[n:], 0.3, True)
    _within_eager(total, eager, full, "loss", scale=scales[0])
    _within_eager(g, g_eager, g_full, "dz", scale=max(scales[1], float(g_full.abs().max())))


@pytest.mark.parametrize("variant", ["symmetric", "row-block"])
def test_cpp_variants(monkeypatch, variant):
    """The C++ kernels' two schedules on a batch big enough for several threads and tiles: the
    symmetric one (each similarity tile once, per-thread accumulators; full batches) and the
    row-block one (row subsets, and full batches whose accumulators would be too large)."""
    if not any(p.id == "cpp" for p in KERNELS):
        pytest.skip("the C++ extension is not built")
    ops_mod = sys.modules["muse_fast.ops._contrastive"]
    if variant == "row-block":
        monkeypatch.setattr(ops_mod, "_sym_threads", lambda *a: 0)
    z1 = torch.randn(150, 64, dtype=torch.float64)
    z2 = torch.randn(150, 64, dtype=torch.float64)
    want = _loss_and_grads(nt_xent_reference, z1, z2, 0.1)
    got = _run("cpu", _loss_and_grads, nt_xent, z1, z2, 0.1)
    for g, w in zip(got, want):
        assert_close(g, w)
    lu = torch.randn(150, dtype=torch.float64)
    want = global_contrastive_loss_reference(z1, z2, lu, 0.9, 0.1)
    got = _run("cpu", global_contrastive_loss, z1, z2, lu, 0.9, 0.1)
    for g, w in zip(got, want):
        assert_close(g, w)


def test_under_torch_compile():
    z1 = torch.randn(6, 20, requires_grad=True)
    z2 = torch.randn(6, 20, requires_grad=True)
    fn = torch.compile(lambda a, b: nt_xent(a, b, 0.2) * 2, fullgraph=True, backend="eager")
    got = fn(z1, z2)
    g = torch.autograd.grad(got, (z1, z2))
    eager = _loss_and_grads(lambda a, b: nt_xent_reference(a, b, 0.2) * 2, z1, z2)
    want = _loss_and_grads(lambda a, b: nt_xent_reference(a, b, 0.2) * 2, z1.double(), z2.double())
    scales = _term_scales(z1, z2, 0.2, True)
    for a, e, w, what in zip((got, *g), eager, want, ("loss", "dz1", "dz2")):
        _within_eager(
            a.detach(), e, w, what, scale=2 * max(scales[what != "loss"], float(w.abs().max()))
        )


def test_fake_tensors_give_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        z1 = torch.empty(4, 8, dtype=torch.bfloat16)
        out = nt_xent(z1, torch.empty(4, 8, dtype=torch.bfloat16))
        assert out.shape == () and out.dtype == torch.bfloat16


def test_custom_ops_pass_opcheck():
    from muse_fast.ops._contrastive import CONTRASTIVE_GRAD
    from muse_fast.ops.nt_xent import GLOBAL_CONTRASTIVE_LOSS, NT_XENT

    z = torch.randn(8, 5, requires_grad=True)
    utils = ("test_schema", "test_faketensor", "test_autograd_registration")
    torch.library.opcheck(NT_XENT.library, (z, 4, 0.2, True, 1, 2), test_utils=utils)
    torch.library.opcheck(
        GLOBAL_CONTRASTIVE_LOSS.library,
        (z, torch.randn(4), 4, 0.2, 0.9, True, 1e-8, 0, 4),
        test_utils=utils,
    )
    args = (z.detach(), torch.rand(8) + 3, torch.tensor(0.3), 4, 0.2, True, 0, 4, False)
    torch.library.opcheck(CONTRASTIVE_GRAD.library, args, test_utils=utils)


def test_registered_names_are_the_public_ones():
    from muse_fast.ops import registered_ops

    ops = registered_ops()
    for name in ("nt_xent", "global_contrastive_loss", "contrastive_grad"):
        assert name in ops and ops[name].library is not None, name
        assert hasattr(torch.ops.muse_fast, name), name
    assert ops["nt_xent"].library._qualname == "muse_fast::nt_xent"


def test_bad_inputs_name_the_argument():
    z = torch.randn(4, 8)
    with pytest.raises(ValueError, match="z1.*N >= 2"):
        nt_xent(z[:1], z[:1])
    with pytest.raises(ValueError, match="z2"):
        nt_xent(z, z[:3])
    with pytest.raises(TypeError, match="z2"):
        nt_xent(z, z.double())
    with pytest.raises(TypeError, match="z1"):
        nt_xent(z.long(), z.long())
    with pytest.raises(ValueError, match="z1"):
        nt_xent(z[0], z[0])
    with pytest.raises(TypeError, match="z1"):
        nt_xent(z.tolist(), z)
    for bad in (0.0, -1.0, math.inf):
        with pytest.raises(ValueError, match="temperature"):
            nt_xent(z, z, bad)
    with pytest.raises(TypeError, match="normalize"):
        nt_xent(z, z, 0.1, "yes")
    with pytest.raises(ValueError, match="z1"):
        nt_xent(torch.randn(4, 0), torch.randn(4, 0))


def test_backends_say_why_they_refuse():
    from muse_fast.ops import available_backends

    z = torch.randn(8, 4, dtype=torch.float64)
    for name, args in (
        ("nt_xent", (z, 4, 0.1, True, 0, 4)),
        ("contrastive_grad", (z, torch.zeros(8), torch.tensor(1.0), 4, 0.1, True, 0, 4, False)),
    ):
        why = available_backends(name, *args)
        assert "float64" in why["triton"] and why["cpu"] is None


# ------------------------------------------------------------------------------------------
# SogCLR global contrastive loss
# ------------------------------------------------------------------------------------------
def _libauc_gcl(h1, h2, u_old, gamma, tau, eps=1e-8):
    """libauc GCLoss_v1.forward (single process), restated: linear-space u, 1e9 diagonal mask,
    batch-level initialization when every stored u of the batch is zero."""
    h1, h2 = F.normalize(h1, p=2, dim=1), F.normalize(h2, p=2, dim=1)
    b = h1.shape[0]
    labels = F.one_hot(torch.arange(b), b * 2).to(h1.dtype)
    masks = F.one_hot(torch.arange(b), b).to(h1.dtype)
    aa = h1 @ h1.T - masks * 1e9
    bb = h2 @ h2.T - masks * 1e9
    l1 = torch.cat([h1 @ h2.T, aa], 1)
    l2 = torch.cat([h2 @ h1.T, bb], 1)
    n1 = torch.exp(l1 / tau) * (1 - labels)
    n2 = torch.exp(l2 / tau) * (1 - labels)
    g1 = n1.sum(1, keepdim=True) / (2 * (b - 1))
    g2 = n2.sum(1, keepdim=True) / (2 * (b - 1))
    if u_old.sum() == 0:
        u1, u2 = g1, g2
    else:
        u1 = (1 - gamma) * u_old[:, None] + gamma * g1
        u2 = (1 - gamma) * u_old[:, None] + gamma * g2
    u_new = ((u1 + u2) / 2).squeeze(1).detach()
    w1 = (n1 / u1.clamp(min=eps)).detach()
    w2 = (n2 / u2.clamp(min=eps)).detach()

    def ce(lg, w):
        return -torch.sum(labels * (lg - torch.sum(w * lg, 1, keepdim=True) / (2 * (b - 1))), 1)

    return (ce(l1, w1) + ce(l2, w2)).mean(), u_new


def _log(u):
    return torch.where(u == 0, -math.inf, u.log())


@pytest.mark.parametrize("seen", [False, True])
def test_gcl_reference_matches_libauc(seen):
    n = 6
    z1 = torch.randn(n, 10, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(n, 10, dtype=torch.float64, requires_grad=True)
    u_old = torch.rand(n, dtype=torch.float64) * 20 + 0.5 if seen else torch.zeros(n).double()
    want, u_want = _libauc_gcl(z1, z2, u_old, 0.9, 0.2)
    gw = torch.autograd.grad(want, (z1, z2))
    got, log_u = global_contrastive_loss_reference(z1, z2, _log(u_old), 0.9, 0.2)
    gg = torch.autograd.grad(got, (z1, z2))
    assert got.item() == pytest.approx(want.item(), rel=1e-10, abs=1e-12)
    assert_close(log_u.exp(), u_want)
    for a, b in zip(gg, gw):
        assert_close(a, b)


def test_gcl_moving_average_rule_by_hand():
    # u_new = ((1-γ)u + γ g1 + (1-γ)u + γ g2) / 2 with g the mean exp(s/τ) over the negatives
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    z2 = torch.tensor([[1.0, 1.0], [-1.0, 1.0]], dtype=torch.float64)
    c, tau, gamma = 1 / math.sqrt(2), 0.5, 0.9
    # negatives: row 0 (e1): e2 and z2[1]=(-1,1)/√2 -> sims 0, -c ; row 2 (z2[0]=(1,1)/√2): e2, z2[1]
    g = [
        (math.exp(0 / tau) + math.exp(-c / tau)) / 2,  # row 0
        (math.exp(0 / tau) + math.exp(c / tau)) / 2,  # row 1 (e2): e1, z2[0]
        (math.exp(c / tau) + math.exp(0 / tau)) / 2,  # row 2: e2 (c), z2[1] (0)
        (math.exp(-c / tau) + math.exp(0 / tau)) / 2,  # row 3 ((-1,1)/√2): e1 (-c), z2[0] (0)
    ]
    u_old = torch.tensor([0.0, 3.0], dtype=torch.float64)  # sample 0 new, sample 1 seen
    _, log_u = global_contrastive_loss_reference(z1, z2, _log(u_old), gamma, tau)
    u0 = (g[0] + g[2]) / 2
    u1 = ((1 - gamma) * 3.0 + gamma * g[1] + (1 - gamma) * 3.0 + gamma * g[3]) / 2
    assert log_u.exp().tolist() == pytest.approx([u0, u1], rel=1e-12)


@pytest.mark.parametrize("backend,device", ALL)
@pytest.mark.parametrize("n,d", [(2, 3), (5, 33), (40, 64)])
def test_gcl_matches_reference(backend, device, n, d):
    z1 = _away_from_zero(torch.randn(n, d, device=device))
    z2 = _away_from_zero(z1 + torch.randn(n, d, device=device))
    log_u = torch.where(torch.rand(n) < 0.3, -math.inf, torch.randn(n) + 2).to(device)
    zr1, zr2 = (z1.double().requires_grad_(), z2.double().requires_grad_())
    want, lu_want = global_contrastive_loss_reference(zr1, zr2, log_u.double(), 0.9, 0.1)
    gw = torch.autograd.grad(want, (zr1, zr2))
    z1.requires_grad_(True)
    z2.requires_grad_(True)
    with muse_fast.backend(backend):
        got, lu = global_contrastive_loss(z1, z2, log_u, 0.9, 0.1)
    gg = torch.autograd.grad(got, (z1, z2))
    ze1, ze2 = (z1.detach().requires_grad_(), z2.detach().requires_grad_())
    eager, lu_eager = global_contrastive_loss_reference(ze1, ze2, log_u, 0.9, 0.1)  # float32
    ge = torch.autograd.grad(eager, (ze1, ze2))
    scales = _term_scales(z1, z2, 0.1, True)
    _within_eager(got.detach(), eager.detach(), want.detach(), "loss", scale=scales[0])
    _within_eager(lu, lu_eager, lu_want, "log_u", scale=scales[0])
    for a, e, b, what in zip(gg, ge, gw, ("dz1", "dz2")):
        _within_eager(a, e, b, what, scale=max(scales[1], float(b.abs().max())))


@pytest.mark.parametrize("backend,device", ALL)
def test_gcl_small_temperature_stays_finite(backend, device):
    base = torch.randn(1, 8, device=device)
    z1 = base + 0.05 * torch.randn(4, 8, device=device)  # negatives nearly as close as
    z2 = base + 0.05 * torch.randn(4, 8, device=device)  # positives: exp(s/τ) ≈ e^200
    log_u = torch.full((4,), -math.inf, device=device)
    with muse_fast.backend(backend):
        loss, lu = global_contrastive_loss(z1, z2, log_u, 0.9, 0.005)
        loss2, lu2 = global_contrastive_loss(z1, z2, lu, 0.9, 0.005)
    assert torch.isfinite(loss) and torch.isfinite(loss2)
    assert torch.isfinite(lu).all() and lu.max() > 100  # u = exp(log_u) > 1e43: fp32 overflow


def test_gcl_bad_inputs():
    z = torch.randn(4, 8)
    lu = torch.zeros(4)
    with pytest.raises(ValueError, match="log_u"):
        global_contrastive_loss(z, z, torch.zeros(3))
    with pytest.raises(ValueError, match="gamma"):
        global_contrastive_loss(z, z, lu, gamma=0.0)
    with pytest.raises(ValueError, match="gamma"):
        global_contrastive_loss(z, z, lu, gamma=1.5)
    with pytest.raises(ValueError, match="z1"):
        global_contrastive_loss(z[:1], z[:1], lu[:1])


# ------------------------------------------------------------------------------------------
# the Triton kernels also compile for a real GPU (the interpreter accepts more than the compiler)
# ------------------------------------------------------------------------------------------
_AOT_SCRIPT = """
import torch
from muse_fast.kernels import nt_xent as K
from muse_fast.kernels._utils import record_launches, tiles
from muse_fast.static.sass import compile_launch

# the launchers' own launches at the papers' size (B = 4096 pairs, D = 128), on meta tensors
for dt in (torch.bfloat16, torch.float32):
    B = 4096
    z = torch.empty(2 * B, 128, dtype=dt, device="meta")
    c, alpha = torch.empty(2 * B, device="meta"), torch.empty(1, device="meta")
    with record_launches(dry=True) as launches, tiles("cuda"):
        rn = K.row_rnorm(z, 1e-12)
        K.contrastive_fwd(z, rn, B, 10.0, 0, B, True, True)
        K.contrastive_bwd(z, rn, c, alpha, B, 10.0, 0, B, False, 1e-12)
    for lc in launches:
        if lc.name not in ("_fwd_kernel", "_bwd_kernel"):
            continue
        info, _ = compile_launch(lc, use_cache=False)
        main = max(info.loops, key=lambda lp: lp.counts.get("mma", 0))
        print(lc.name, str(dt)[6:], info.tensor_core.replace(" ", "_"), info.smem_bytes,
              main.counts.get("ldgsts", 0), main.counts.get("ldg", 0), info.spill_instructions,
              lc.num_warps, lc.constexprs["BLOCK_M"], lc.grid[-1])
"""


def test_triton_kernels_compile_for_h100():
    """Ahead-of-time compile of the forward and backward kernels for sm_90 as their launchers
    start them at B = 4096, D = 128 (no GPU needed; a subprocess without TRITON_INTERPRET): both
    dots on the tensor cores (wgmma), shared memory within an H100's 228 KB, the column loop
    software-pipelined (its column loads are LDGSTS, asynchronous copies), no spills in bf16, one
    warpgroup per 64 rows (no warpgroup computing a duplicate of another's tile), and the
    columns split where the row blocks alone are under two waves of 132 SMs."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-c", _AOT_SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0 and "ptxas" in proc.stderr.lower() and "not found" in proc.stderr:
        pytest.skip("no ptxas in this triton install")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln.split() for ln in proc.stdout.strip().splitlines()]
    assert len(lines) == 4, proc.stdout
    for _name, dt, tc, smem, ldgsts, _ldg, spills, warps, block_m, split in lines:
        assert tc.startswith("wgmma") and int(smem) <= 228 * 1024, proc.stdout
        assert int(ldgsts) > 0, proc.stdout  # pipelined: the column tiles arrive by cp.async
        assert dt != "bfloat16" or int(spills) == 0, proc.stdout
        assert int(warps) * 16 == int(block_m), proc.stdout  # 4 warps per 64 rows
        assert int(split) > 1, proc.stdout  # B = 4096: 64 / 128 row blocks < 264 programs
