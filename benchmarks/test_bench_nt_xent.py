"""Contrastive losses: fused (tiled, memory O(N·D)) vs the eager references that build the
2N × 2N similarity, D = 128 (Myna / SimCLR projection width).

Ops and variants (``measure`` rows; "fused" is the dispatcher's default path: Triton on CUDA,
the C++ kernels on CPU — the Triton interpreter is never timed):

``nt_xent``                  (z1, z2 (B, 128) → scalar)
  fused                      ``muse_fast.ops.nt_xent``
  reference                  ``nt_xent_reference``: cat, normalize, z zᵀ / τ, diagonal filled,
                             ``F.cross_entropy`` — what SimCLR code does
  lightly                    ``lightly.loss.NTXentLoss`` (skipped when not installed)
  pytorch-metric-learning    ``pytorch_metric_learning.losses.NTXentLoss`` (skipped likewise)
``global_contrastive_loss``  (SogCLR / libauc GCLoss_v1, what Myna's public code trains with)
  fused / reference          ``global_contrastive_loss`` / ``global_contrastive_loss_reference``

Modes: forward (no grad) and fwd+bwd (gradients to z1, z2). Batches: GPU 256 … 65536, CPU 256 …
16384. An eager variant is skipped where its working set would not fit (more than 16 GB, or 85 %
of the free memory, ``memory_limit``): copies of the 2B × 2B fp32 matrix, measured at B = 1024
fwd+bwd, 3.1 for the reference and 4.3 for lightly (its four B × B blocks and their
concatenation); pytorch-metric-learning's NTXentLoss pairs every positive with every negative
pair, a 2B × 2B(2B − 2) fp32 matrix (34 GB at B = 1024, cubic in B).

    python -m pytest benchmarks/test_bench_nt_xent.py --benchmark -q
"""

from __future__ import annotations

import pytest
import torch

import muse_fast
from muse_fast.benchmark import skip_unless_fits
from muse_fast.ops import (
    global_contrastive_loss,
    global_contrastive_loss_reference,
    nt_xent,
    nt_xent_reference,
)

D, TAU = 128, 0.1
CPU_BATCHES = [256, 1024, 4096, 16384]
GPU_BATCHES = [256, 1024, 4096, 16384, 65536]
# peak fwd+bwd in units of one (2B)² fp32 matrix (measure_peak_memory, B = 1024)
EAGER_COPIES = {"reference": 3.1, "lightly": 4.3}


def _batches(device: torch.device, quick: bool) -> list[int]:
    sizes = GPU_BATCHES if device.type == "cuda" else CPU_BATCHES
    return sizes[:1] if quick else sizes


def _eager_bytes(batch: int, variant: str) -> tuple[float, str]:
    """The variant's working set in bytes and how it is made up."""
    n = 2 * batch
    if variant == "pytorch-metric-learning":  # (positive pairs, negative pairs) fp32
        return n * n * (n - 2) * 4.0, "2B x 2B(2B-2) fp32"
    copies = EAGER_COPIES[variant]
    return copies * n * n * 4.0, f"2B x 2B fp32 x {copies}"


def _skip_if_eager_does_not_fit(batch: int, variant: str, device: torch.device) -> None:
    need, what = _eager_bytes(batch, variant)
    skip_unless_fits(need, f"{variant} B={batch} ({what})", device)


def _rounds(batch: int, device: torch.device) -> dict:
    if device.type == "cpu" and batch >= 16384:
        return {"rounds": 2, "warmup": 0}
    if device.type == "cpu" and batch >= 4096:
        return {"rounds": 3, "warmup": 1}
    return {}


def _third_party(variant: str):
    """The public tool's NT-Xent loss module, or skip (neither is a muse_fast dependency)."""
    if variant == "lightly":
        loss = pytest.importorskip("lightly.loss", reason="lightly is not installed")
        return loss.NTXentLoss(temperature=TAU)
    losses = pytest.importorskip(
        "pytorch_metric_learning.losses", reason="pytorch-metric-learning is not installed"
    )
    pml = losses.NTXentLoss(temperature=TAU)

    def fn(z1, z2):
        n = z1.shape[0]
        labels = torch.arange(n, device=z1.device).repeat(2)
        return pml(torch.cat([z1, z2]), labels)

    return fn


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("mode", ["forward", "fwd+bwd"])
@pytest.mark.parametrize("variant", ["fused", "reference", "lightly", "pytorch-metric-learning"])
@pytest.mark.parametrize("batch", sorted(set(CPU_BATCHES + GPU_BATCHES)))
def test_bench_nt_xent(measure, bench_device, quick, batch, variant, mode, dtype):
    """bfloat16: the embeddings a bf16 model hands the loss (fp32 accumulation in the kernels);
    fused and reference only."""
    if batch not in _batches(bench_device, quick):
        pytest.skip(f"B={batch} is not in the {bench_device.type} sweep")
    if dtype == "bfloat16" and variant not in ("fused", "reference"):
        pytest.skip(f"{variant}: float32 only")
    if variant != "fused":
        _skip_if_eager_does_not_fit(batch, variant, bench_device)
    gen = torch.Generator().manual_seed(0)
    dt = getattr(torch, dtype)
    z1 = torch.randn(batch, D, generator=gen).to(bench_device)
    z2 = (z1.cpu() + 0.5 * torch.randn(batch, D, generator=gen)).to(bench_device, dt)
    z1 = z1.to(dt)
    z1.requires_grad_(mode == "fwd+bwd")
    z2.requires_grad_(mode == "fwd+bwd")
    if variant == "fused":
        loss_fn = lambda a, b: nt_xent(a, b, TAU)  # noqa: E731
    elif variant == "reference":
        loss_fn = lambda a, b: nt_xent_reference(a, b, TAU)  # noqa: E731
    else:
        loss_fn = _third_party(variant)

    def fn():
        if mode == "forward":
            with torch.no_grad():
                return loss_fn(z1, z2)
        z1.grad = z2.grad = None
        loss = loss_fn(z1, z2)
        loss.backward()
        return loss.detach()

    measure(
        fn,
        op="nt_xent",
        variant=variant,
        params={"B": batch, "D": D, "dtype": dtype},
        mode=mode,
        **_rounds(batch, bench_device),
    )


@pytest.mark.parametrize("variant", ["fused", "reference"])
@pytest.mark.parametrize("batch", [256, 1024, 4096, 16384])
def test_bench_global_contrastive_loss(measure, bench_device, quick, batch, variant):
    sizes = [256, 1024, 4096] if bench_device.type == "cpu" else [256, 1024, 4096, 16384]
    if batch not in (sizes[:1] if quick else sizes):
        pytest.skip(f"B={batch} is not in the {bench_device.type} sweep")
    if variant != "fused":
        _skip_if_eager_does_not_fit(batch, variant, bench_device)
    gen = torch.Generator().manual_seed(0)
    z1 = torch.randn(batch, D, generator=gen).to(bench_device).requires_grad_()
    z2 = torch.randn(batch, D, generator=gen).to(bench_device).requires_grad_()
    log_u = torch.randn(batch, generator=gen).to(bench_device)
    loss_fn = global_contrastive_loss if variant == "fused" else global_contrastive_loss_reference

    def fn():
        z1.grad = z2.grad = None
        with muse_fast.backend(None):
            loss, _ = loss_fn(z1, z2, log_u, 0.9, TAU)
        loss.backward()
        return loss.detach()

    measure(
        fn,
        op="global_contrastive_loss",
        variant=variant,
        params={"B": batch, "D": D, "dtype": "float32"},
        mode="fwd+bwd",
        **_rounds(batch, bench_device),
    )
