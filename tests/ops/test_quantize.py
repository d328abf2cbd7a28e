"""random_projection_quantize: reference semantics, Triton (interpreter) and C++ kernels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import muse_fast
from muse_fast import BackendUnavailableError, FallbackWarning
from muse_fast.ops import quantize as Q
from muse_fast.ops import random_projection_quantize, random_projection_quantize_reference
from muse_fast.testing import kernel_cases

KERNELS = kernel_cases("random_projection_quantize")


def _inputs(lead, d, n, h, groups=None, dtype=torch.float32):
    x = torch.randn(*lead, d).to(dtype)
    if groups is None:
        a = torch.randn(d, h) * (2.0 / (d + h)) ** 0.5
        c = torch.randn(n, h)
    else:
        a = torch.randn(groups, d, h) * (2.0 / (d + h)) ** 0.5
        c = torch.randn(groups, n, h)
    return x, a, c


def _scores64(x, a, c):
    """float64 cosine scores <C_i/||C_i||, normalize(x A)>: (..., n) or (..., G, n)."""
    if a.dim() == 2:
        y = F.normalize(x.double() @ a.double(), dim=-1)
        return y @ F.normalize(c.double(), dim=-1).T
    y = F.normalize(torch.einsum("...d,gdh->...gh", x.double(), a.double()), dim=-1)
    return torch.einsum("...gh,gnh->...gn", y, F.normalize(c.double(), dim=-1))


def _assert_codes_match(out, expected, x, a, c, *, factor=2.0, max_mismatch=0.05):
    """The rule for an arg-max: where the kernel's codes differ from the eager float32
    reference ``expected``, the score the kernel gives up against the float64 best is at most
    ``factor`` x what eager gives up, plus a floor of the float32 error of a length-d dot
    (4 sqrt(d) ulps: near-ties closer than that may go either way)."""
    assert out.dtype == torch.long and out.shape == expected.shape, (out.dtype, out.shape)
    mism = out != expected
    if not mism.any():
        return
    s = _scores64(x, a, c)
    best = s.max(-1).values
    loss_k = (best - s.gather(-1, out.unsqueeze(-1)).squeeze(-1)).max().item()
    loss_e = (best - s.gather(-1, expected.unsqueeze(-1)).squeeze(-1)).max().item()
    floor = 4 * x.shape[-1] ** 0.5 * torch.finfo(torch.float32).eps
    assert loss_k <= factor * loss_e + floor, (
        f"{int(mism.sum())} indices differ; kernel score loss {loss_k:.3e} > {factor} x eager "
        f"{loss_e:.3e} + {floor:.1e}"
    )
    assert mism.float().mean().item() <= max_mismatch, f"{int(mism.sum())} near ties is too many"


def _run(backend, x, a, c):
    with muse_fast.backend(backend):
        return random_projection_quantize(x, a, c)


# ---------------------------------------------------------------------------------------------
# Reference semantics, pinned independently
# ---------------------------------------------------------------------------------------------
def _bruteforce64(x, a, c):
    """The definition (docs/design.md, "Quantizer") literally in float64: argmin of explicit squared differences (no cdist)."""
    y_hat = F.normalize(x.double() @ a.double(), dim=-1)
    c_hat = F.normalize(c.double(), dim=-1)
    dist2 = ((y_hat[..., None, :] - c_hat) ** 2).sum(-1)
    return dist2.argmin(-1)


def test_reference_is_the_distance_argmin_of_the_spec():
    x, a, c = _inputs((150,), 48, 300, 16)
    expected = _bruteforce64(x, a, c)
    # float64 inputs: the reference computes in float64 and must agree exactly
    assert torch.equal(
        random_projection_quantize_reference(x.double(), a.double(), c.double()), expected
    )
    # float32: equal up to rows whose best two codes are tied within float32 rounding
    _assert_codes_match(random_projection_quantize_reference(x, a, c), expected, x, a, c)


def test_argmax_form_equals_distance_form():
    """What the kernels compute (argmax of dots with C^) is the defining argmin of distances."""
    x, a, c = _inputs((400,), 32, 500, 16)
    argmax = _scores64(x, a, c).argmax(-1)
    assert torch.equal(argmax, _bruteforce64(x, a, c))


def test_reference_hand_computed():
    # d = h = 2, A = I: code words at angles 0, 90, 180, 270 degrees with varied norms
    a = torch.eye(2)
    c = torch.tensor([[3.0, 0.0], [0.0, 0.5], [-2.0, 0.0], [0.0, -7.0]])
    x = torch.tensor([[1.0, 0.1], [0.1, 5.0], [-4.0, 1.0], [0.2, -0.3], [0.0, 0.0], [1.0, 1.0]])
    # [1, 1] is equidistant from codes 0 and 1 -> lowest index; the zero row -> 0
    assert random_projection_quantize_reference(x, a, c).tolist() == [0, 1, 2, 3, 0, 0]


def test_reference_chunking_does_not_change_the_result(monkeypatch):
    x, a, c = _inputs((2, 10), 24, 100, 8)
    full = random_projection_quantize_reference(x, a, c)
    monkeypatch.setattr(Q, "REFERENCE_CHUNK_ELEMENTS", 350)  # 3 rows per chunk
    assert torch.equal(random_projection_quantize_reference(x, a, c), full)


# ---------------------------------------------------------------------------------------------
# Kernels vs the reference
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend,device", KERNELS)
@pytest.mark.parametrize(
    "lead,d,n,h",
    [((1,), 16, 1, 16), ((7,), 33, 5, 3), ((2, 50), 64, 300, 16), ((130,), 40, 1000, 12)],
)
def test_kernel_matches_reference(backend, device, lead, d, n, h):
    x, a, c = (t.to(device) for t in _inputs(lead, d, n, h))
    out = _run(backend, x, a, c)
    assert out.shape == lead
    _assert_codes_match(out.cpu(), random_projection_quantize_reference(x, a, c).cpu(), x, a, c)


@pytest.mark.parametrize("backend,device", KERNELS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernel_low_precision_inputs(backend, device, dtype):
    x, a, c = (t.to(device) for t in _inputs((3, 37), 64, 257, 16))
    x = x.to(dtype)
    out = _run(backend, x, a, c)
    # the kernels upcast x exactly as the reference does: same codes up to rounding near-ties
    _assert_codes_match(out.cpu(), random_projection_quantize_reference(x, a, c).cpu(), x, a, c)
    # a bf16/fp16 projection and codebook are used in float32 too
    out2 = _run(backend, x, a.to(dtype), c.to(dtype))
    ref2 = random_projection_quantize_reference(x, a.to(dtype), c.to(dtype))
    _assert_codes_match(out2.cpu(), ref2.cpu(), x, a.to(dtype), c.to(dtype))


@pytest.mark.parametrize("backend,device", KERNELS)
def test_kernel_multiple_codebooks(backend, device):
    x, a, c = (t.to(device) for t in _inputs((5, 21), 40, 130, 16, groups=3))
    out = _run(backend, x, a, c)
    assert out.shape == (5, 21, 3)
    _assert_codes_match(out.cpu(), random_projection_quantize_reference(x, a, c).cpu(), x, a, c)
    for g in range(3):  # each codebook alone gives the same column
        assert torch.equal(out[..., g], _run(backend, x, a[g], c[g]))


TIE_CASES = [pytest.param(*k.values, "one-hot", id=f"{k.id}-one-hot") for k in KERNELS] + [
    pytest.param(*k.values, "random", id=f"{k.id}-random") for k in KERNELS if k.id == "cpp"
]


@pytest.mark.parametrize("backend,device,words", TIE_CASES)
def test_kernel_ties_go_to_the_lowest_index(backend, device, words):
    """Exact duplicate code words, spread over lanes, tiles and blocks: the first copy wins.

    "one-hot" code words (+-e_k) make every score a single product, exact whatever the
    summation order, so the duplicates tie exactly on every backend. "random" code words tie
    exactly only where identical code words are scored by identical instruction sequences: the
    C++ kernel guarantees that; numpy's BLAS (the Triton interpreter's tl.dot) does not.
    """
    n, h, d = 600, 16, 32
    if words == "one-hot":
        base = torch.cat([torch.eye(h), -torch.eye(h)])[torch.randperm(2 * h)[:5]]
    else:
        base = torch.randn(5, h)
    assign = torch.randint(0, 4, (n,))
    assign[400] = 4  # code word 4 first appears at 400 (a later C++ tile / Triton block)
    assign[401:] = torch.randint(0, 5, (n - 401,))
    c = base[assign] * 2.0  # norm 2: normalization is exact for one-hot words
    a = torch.randn(d, h)
    # rows aimed at each base vector (x A ~ base[k]) so every base wins some rows
    target = torch.arange(60) % 5
    x = (base[target] + 0.1 * torch.randn(60, h)) @ torch.linalg.pinv(a)
    winner = _scores64(x, a, base).argmax(-1)
    first = torch.stack([(assign == k).nonzero()[0, 0] for k in range(5)])
    expected = first[winner]
    assert (expected >= 400).any()
    if words == "one-hot":
        assert torch.equal(random_projection_quantize_reference(x, a, c), expected)
    x, a, c = x.to(device), a.to(device), c.to(device)
    assert torch.equal(_run(backend, x, a, c).cpu(), expected)


@pytest.mark.parametrize("backend,device", KERNELS)
def test_kernel_zero_rows(backend, device):
    x, a, c = _inputs((40,), 24, 70, 16)
    x[::3] = 0.0
    ref = random_projection_quantize_reference(x, a, c)
    assert (ref[::3] == 0).all()
    out = _run(backend, x.to(device), a.to(device), c.to(device)).cpu()
    assert (out[::3] == 0).all()
    _assert_codes_match(out, ref, x, a, c)


@pytest.mark.parametrize("backend,device", KERNELS)
def test_kernel_near_ties_compare_scores(backend, device):
    """Pairs of code words closer than float32 rounding: either may win; the score must be best."""
    d, h, n = 48, 16, 200
    a = torch.randn(d, h)
    c = torch.randn(n, h)
    pairs = torch.arange(0, 40, 2)
    c[pairs + 1] = c[pairs] * (1 + 1e-7 * torch.randn(len(pairs), 1)) + 1e-7 * torch.randn(
        len(pairs), h
    )
    target = pairs[torch.arange(50) % len(pairs)]
    x = (c[target] + 1e-4 * torch.randn(50, h)) @ torch.linalg.pinv(a)
    s = _scores64(x, a, c)
    for name, out in [
        ("reference", random_projection_quantize_reference(x, a, c)),
        (backend, _run(backend, x.to(device), a.to(device), c.to(device)).cpu()),
    ]:
        chosen = s.gather(-1, out[:, None])[:, 0]
        assert ((chosen - s.max(-1).values).abs() <= 2e-5).all(), name
        assert ((out == target) | (out == target + 1)).all(), name


@pytest.mark.parametrize("backend,device", KERNELS)
def test_kernel_non_contiguous_and_batched(backend, device):
    d, n, h = 20, 90, 16
    base = torch.randn(d, 3, 30, device=device)
    x = base.permute(1, 2, 0)  # (3, 30, d) with feature stride 90
    a = torch.randn(h, d, device=device).T  # (d, h) transposed storage
    c = torch.randn(n, 2 * h, device=device)[:, ::2]  # (n, h) strided
    assert not (x.is_contiguous() or a.is_contiguous() or c.is_contiguous())
    out = _run(backend, x, a, c)
    assert out.shape == (3, 30)
    ref = random_projection_quantize_reference(x.contiguous(), a.contiguous(), c.contiguous())
    _assert_codes_match(out.cpu(), ref.cpu(), x, a, c)
    # every leading shape: (d,) -> (), (0, d) -> (0,), (2, 3, 4, d) -> (2, 3, 4)
    assert _run(backend, x[0, 0], a, c).shape == ()
    assert _run(backend, x[0, 0], a, c).item() == out[0, 0].item()
    assert _run(backend, x[0, :0], a, c).shape == (0,)
    x4 = torch.randn(2, 3, 4, d, device=device)
    assert torch.equal(_run(backend, x4, a, c).reshape(-1), _run(backend, x4.reshape(-1, d), a, c))


def test_triton_more_rows_than_one_grid(monkeypatch):
    """Small blocks and a shrunk grid limit: chunked launches, ragged d / n / h tiles."""
    pytest.importorskip("triton")
    from muse_fast.kernels import quantize as K

    device = "cuda" if torch.cuda.is_available() else "cpu"
    monkeypatch.setattr(K, "MAX_GRID_ROWS", 2)  # 2 programs x 16 rows per launch
    x, a, c = (t.to(device) for t in _inputs((103,), 40, 70, 12, groups=2))
    proj = a.contiguous()
    chat = F.normalize(c, dim=-1).contiguous()
    out = torch.full((103, 2), -7, dtype=torch.long, device=device)
    K.rpq_forward(x, proj, chat, out, block_n=16, block_c=16, block_d=16)  # (N, d) rows
    _assert_codes_match(out.cpu(), random_projection_quantize_reference(x, a, c).cpu(), x, a, c)


@pytest.mark.parametrize("lead,d,n,h", [((2, 65), 70, 300, 12), ((1,), 1, 1, 1)], ids=str)
def test_triton_cuda_tiles(lead, d, n, h):
    """The CUDA tile configuration (128 rows x 128 codes x 64 of d, full code tiles plus a
    masked tail, several d chunks) under the interpreter, on transposed (B, T, d) frames read
    through their strides."""
    from muse_fast.kernels._utils import tiles

    x, a, c = _inputs(lead, d, n, h)
    frames = x.transpose(-1, -2).contiguous().transpose(-1, -2) if len(lead) == 2 else x
    with muse_fast.backend("triton"), tiles("cuda"):
        out = random_projection_quantize(frames, a, c)
    _assert_codes_match(out, random_projection_quantize_reference(x, a, c), x, a, c)


def test_weights_are_prepared_and_checked_once_per_version(monkeypatch):
    """No host sync per call: the value checks and the codebook normalization run when the
    weights are new or were written in place, not on every call."""
    x, a, c = _inputs((9,), 12, 40, 8)
    calls = []
    check = Q._check_values
    monkeypatch.setattr(Q, "_check_values", lambda p, cb: calls.append(1) or check(p, cb))
    first = random_projection_quantize(x, a, c)
    assert torch.equal(random_projection_quantize(x, a, c), first)
    assert len(calls) == 1
    c.mul_(-1.0)  # in place: a new version, re-normalized and re-checked
    assert torch.equal(
        random_projection_quantize(x, a, c), random_projection_quantize_reference(x, a, c)
    )
    assert len(calls) == 2
    c[3] = 0.0
    with pytest.raises(ValueError, match="codebook"):
        random_projection_quantize(x, a, c)


# ---------------------------------------------------------------------------------------------
# Dispatch, memory, errors, torch.compile
# ---------------------------------------------------------------------------------------------
def test_float64_runs_on_the_reference():
    x, a, c = _inputs((10,), 8, 20, 4, dtype=torch.float64)
    ref = random_projection_quantize_reference(x, a, c)
    with pytest.warns(FallbackWarning, match="float64"):
        assert torch.equal(random_projection_quantize(x, a, c), ref)
    with muse_fast.backend("cpu"), pytest.raises(BackendUnavailableError, match="float64"):
        random_projection_quantize(x, a, c)


def test_cpu_kernel_allocates_no_rows_by_codes_buffer():
    from muse_fast.benchmark import measure_peak_memory

    x, a, c = _inputs((2000,), 64, 1024, 16)
    if muse_fast.available_backends("random_projection_quantize", x, a, c)["cpu"] is not None:
        pytest.skip("no C++ extension")
    with muse_fast.backend("cpu"):
        peak = measure_peak_memory(lambda: random_projection_quantize(x, a, c))
    assert peak < 2000 * 1024 * 4 / 8, f"peak {peak} bytes"


def test_output_does_not_require_grad():
    x, a, c = _inputs((6,), 8, 10, 4)
    out = random_projection_quantize(x.requires_grad_(), a, c)
    assert out.dtype == torch.long and not out.requires_grad


@pytest.mark.parametrize(
    "x,a,c,exc,match",
    [
        (torch.ones(4, 8, dtype=torch.int64), torch.ones(8, 4), torch.ones(5, 4), TypeError, "x"),
        ([[1.0] * 8], torch.ones(8, 4), torch.ones(5, 4), TypeError, "x"),
        (torch.ones(4, 8), torch.ones(8), torch.ones(5, 4), ValueError, "projection"),
        (torch.ones(4, 8), torch.ones(7, 4), torch.ones(5, 4), ValueError, "projection"),
        (torch.ones(4, 8), torch.ones(8, 4), torch.ones(5, 3), ValueError, "codebook"),
        (torch.ones(4, 8), torch.ones(8, 4), torch.ones(0, 4), ValueError, "codebook"),
        (torch.ones(4, 8), torch.ones(8, 4), torch.ones(2, 5, 4), ValueError, "codebook"),
        (torch.ones(4, 8), torch.ones(2, 8, 4), torch.ones(3, 5, 4), ValueError, "codebook"),
        (
            torch.ones(4, 8),
            torch.ones(8, 4),
            torch.ones(5, 4, dtype=torch.int32),
            TypeError,
            "code",
        ),
        (torch.ones(4, 8), torch.full((8, 4), float("nan")), torch.ones(5, 4), ValueError, "proj"),
        (torch.ones(4, 8), torch.ones(8, 4), torch.ones(5, 4, device="meta"), ValueError, "code"),
        (torch.ones(4, 0), torch.ones(0, 4), torch.ones(5, 4), ValueError, "x"),
        (torch.ones(4, 8), torch.ones(8, 4), torch.eye(5, 4), ValueError, "codebook: code word"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(x, a, c, exc, match):
    with pytest.raises(exc, match=match):
        random_projection_quantize(x, a, c)


def test_custom_op_traces_under_torch_compile():
    x, a, c = _inputs((2, 9), 16, 40, 8)
    expected = random_projection_quantize(x, a, c)
    compiled = torch.compile(random_projection_quantize, fullgraph=True, backend="eager")
    assert torch.equal(compiled(x, a, c), expected)
    torch.library.opcheck(Q._RPQ.library, (x, a, c), test_utils=("test_schema", "test_faketensor"))
