"""random_projection_quantize: fused vs chunked eager vs vector-quantize-pytorch.

BEST-RQ / MusicFM tokenizer sizes: d = 512 (4 stacked 128-bin mel frames), n = 8192 codes,
h = 16. N sweeps the number of frames (a 4096-clip batch of 30 s at 25 Hz is 3e6).

Variants (``measure`` rows):
  fused                     the dispatcher's default: Triton on CUDA, the C++ kernel on CPU
  reference                 ``random_projection_quantize_reference``: chunked eager cdist + argmin
                            (the literal distance form; 2^24 distances per chunk)
  eager-argmax              chunked eager matmul + argmax (the cheapest eager form a user would
                            write; same chunk size)
  vector-quantize-pytorch   ``vector_quantize_pytorch.RandomProjectionQuantizer`` (the ``bench``
                            extra; skipped when not installed, and where its ~4 copies of the
                            N × n distance matrix exceed ``memory_limit``: N = 2e5 on a CPU)
GPU only: ``fused-tf32`` / ``fused-ieee`` time the Triton kernel at the other dot precisions and
note their agreement with float64 (the default is tf32x3, see docs/design.md ("Quantizer")).

    python -m pytest benchmarks/test_bench_quantize.py --benchmark -q     [-s for the TF32 table]
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import muse_fast
from muse_fast.benchmark import skip_unless_fits
from muse_fast.ops import quantize as Q
from muse_fast.ops import random_projection_quantize, random_projection_quantize_reference

D, N_CODES, H = 512, 8192, 16
CPU_SIZES = [10_000, 50_000, 200_000]
GPU_SIZES = [10_000, 100_000, 1_000_000, 3_000_000]
VARIANTS = ["fused", "reference", "eager-argmax", "vector-quantize-pytorch"]

_CACHE: dict = {}


def _sizes(device: torch.device, quick: bool) -> list[int]:
    sizes = GPU_SIZES if device.type == "cuda" else CPU_SIZES
    return sizes[:1] if quick else sizes


def _inputs(n_rows: int, device: torch.device):
    key = (n_rows, str(device))
    if key not in _CACHE:
        _CACHE.clear()
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n_rows, D, generator=g)
        a = torch.randn(D, H, generator=g) * (2.0 / (D + H)) ** 0.5
        c = torch.randn(N_CODES, H, generator=g)
        _CACHE[key] = (x.to(device), a.to(device), c.to(device))
    return _CACHE[key]


def _eager_argmax(x, a, c):
    """What one writes without the distance form: chunked matmul + argmax."""
    c_hat = F.normalize(c, dim=-1)
    chunk = max(1, Q.REFERENCE_CHUNK_ELEMENTS // c.shape[0])
    return torch.cat(
        [
            (F.normalize(x[s : s + chunk] @ a, dim=-1) @ c_hat.T).argmax(-1)
            for s in range(0, x.shape[0], chunk)
        ]
    )


VQP_COPIES = 4.0  # its peak in units of one N x n fp32 distance matrix (measure_peak_memory)


def _vqp(x, a, c):
    try:
        from vector_quantize_pytorch import RandomProjectionQuantizer as VQ
    except ImportError:
        pytest.skip(
            "vector-quantize-pytorch is not installed (not a dependency): variant not measured"
        )
    need = VQP_COPIES * x.shape[0] * c.shape[0] * 4
    what = f"vector-quantize-pytorch N={x.shape[0]} (N x n fp32 x {VQP_COPIES:g})"
    skip_unless_fits(need, what, x.device)
    # its own random projection and codebook (same sizes); indices only
    q = VQ(dim=D, num_codebooks=1, codebook_dim=H, codebook_size=N_CODES).to(x.device).eval()

    def run():
        with torch.no_grad():
            return q(x[None])

    return run


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("n_rows", sorted(set(CPU_SIZES + GPU_SIZES)))
def test_bench_random_projection_quantize(measure, bench_device, quick, variant, n_rows):
    if n_rows not in _sizes(bench_device, quick):
        pytest.skip(f"N={n_rows} is not in the {bench_device.type} sweep")
    x, a, c = _inputs(n_rows, bench_device)
    if variant == "fused":

        def fn():
            return random_projection_quantize(x, a, c)

    elif variant == "reference":

        def fn():
            with muse_fast.backend("reference"):
                return random_projection_quantize_reference(x, a, c)

    elif variant == "eager-argmax":

        def fn():
            return _eager_argmax(x, a, c)

    else:
        fn = _vqp(x, a, c)
    slow = variant != "fused" and bench_device.type == "cpu" and n_rows >= 50_000
    measure(
        fn,
        op="random_projection_quantize",
        variant=variant,
        params={"N": n_rows, "d": D, "n": N_CODES, "h": H, "dtype": "float32"},
        mode="forward",
        rounds=3 if slow else 7,
        warmup=0 if slow else 1,
    )


# ---------------------------------------------------------------------------------------------
# Dot precision: agreement with float64 (GPU: the real kernel; CPU: TF32 emulation)
# ---------------------------------------------------------------------------------------------
def _float64_best(x, a, c, chunk=2048):
    c_hat = F.normalize(c.double(), dim=-1)
    out = []
    for s in range(0, x.shape[0], chunk):
        scores = F.normalize(x[s : s + chunk].double() @ a.double(), dim=-1) @ c_hat.T
        out.append(scores.max(-1))
    return torch.cat([o.indices for o in out]), torch.cat([o.values for o in out])


def _agreement(idx, x, a, c, best_idx, best_val):
    """(fraction of rows whose index differs from float64, worst float64 score loss)."""
    c_hat = F.normalize(c.double(), dim=-1)
    y = F.normalize(x.double() @ a.double(), dim=-1)
    chosen = (y * c_hat[idx]).sum(-1)
    return (idx != best_idx).double().mean().item(), (best_val - chosen).max().item()


@pytest.mark.parametrize("precision", ["tf32", "ieee"])
def test_bench_dot_precision_gpu(measure, bench_device, quick, precision):
    if bench_device.type != "cuda":
        pytest.skip("timing the dot precisions needs a GPU (the interpreter is never timed)")
    from muse_fast.kernels import quantize as K

    n_rows = 100_000 if quick else 3_000_000
    x, a, c = _inputs(n_rows, bench_device)
    proj = a[None].contiguous()
    chat = F.normalize(c, dim=-1)[None].contiguous()
    out = torch.empty(n_rows, 1, dtype=torch.long, device=bench_device)
    best_idx, best_val = _float64_best(x[:200_000], a, c)
    notes = []
    for p in ("tf32x3", precision):
        K.rpq_forward(x, proj, chat, out, input_precision=p)
        flips, loss = _agreement(out[:200_000, 0], x[:200_000], a, c, best_idx, best_val)
        notes.append(f"{p}: {flips * 100:.3f}% rows differ from float64, max score loss {loss:.1e}")
    measure(
        lambda: K.rpq_forward(x, proj, chat, out, input_precision=precision),
        op="random_projection_quantize",
        variant=f"fused-{precision}",
        params={"N": n_rows, "d": D, "n": N_CODES, "h": H, "dtype": "float32"},
        mode="forward",
        note="; ".join(notes),
    )


def _tf32(t):
    """Round float32 to TF32 (10 mantissa bits, round to nearest even), as tensor cores see it."""
    u = t.contiguous().view(torch.int32)
    u = (u + 0xFFF + ((u >> 13) & 1)) & ~0x1FFF
    return u.view(torch.float32)


def _mm_tf32(p, q):
    return (_tf32(p).double() @ _tf32(q).double()).float()


def _mm_tf32x3(p, q):
    ph, qh = _tf32(p), _tf32(q)
    pl, ql = _tf32(p - ph), _tf32(q - qh)
    ph, qh, pl, ql = ph.double(), qh.double(), pl.double(), ql.double()
    return (ph @ qh + ph @ ql + pl @ qh).float()


def test_bench_tf32_emulated_agreement(bench_device, quick, capsys):
    """The precision table of docs/design.md ("Quantizer"): rows whose code changes with the dot precision."""
    n_rows = 2_000 if quick else 20_000
    x, a, c = _inputs(n_rows, torch.device("cpu"))
    c_hat = F.normalize(c, dim=-1)
    best_idx, best_val = _float64_best(x, a, c)
    variants = {
        "ieee fp32": lambda xs: F.normalize(xs @ a, dim=-1) @ c_hat.T,
        "tf32 both dots": lambda xs: _mm_tf32(F.normalize(_mm_tf32(xs, a), dim=-1), c_hat.T),
        "tf32 codebook dot only": lambda xs: _mm_tf32(F.normalize(xs @ a, dim=-1), c_hat.T),
        "tf32x3 both dots": lambda xs: _mm_tf32x3(F.normalize(_mm_tf32x3(xs, a), dim=-1), c_hat.T),
    }
    lines = [f"TF32 emulation, N={n_rows}, d={D}, n={N_CODES}, h={H} (vs float64):"]
    for name, scores in variants.items():
        idx = torch.cat([scores(x[s : s + 2048]).argmax(-1) for s in range(0, n_rows, 2048)])
        flips, loss = _agreement(idx, x, a, c, best_idx, best_val)
        lines.append(f"  {name:<24} {flips * 100:7.3f}% rows differ   max score loss {loss:.1e}")
    with capsys.disabled():
        print("\n" + "\n".join(lines))
