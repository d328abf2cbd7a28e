"""SummaryMixing vs multi-head self-attention in the MuseLQ Branchformer encoder, against sequence
length T (25 Hz tokens: T = 750 is a 30 s clip).

The encoder is the model's own (``muse_fast.models.bestrq.Encoder``: Branchformer blocks + final
LayerNorm) built from the ``muselq-branchformer`` config with ``mixer="summary_mixing"``
(variant ``fused``: SummaryMixing through the fused kernels) or ``mixer="attention"`` (variant
``attention``: rotary MHSA through SDPA). Forward + backward of the encoder on (B, T, dim) input
in training mode, time and peak memory per T; the summary's ratio (attention / fused) > 1 where
SummaryMixing is faster or leaner. SummaryMixing is linear in T, attention quadratic.

Threads: on the CPU, the count ``muse-fast pretrain`` trains with here
(:func:`muse_fast.benchmark.training_threads`; 1 on a 2-core machine), in each row's params.

Sizes: GPU — the real MuseLQ ``large`` config (12 × 1024, 16 heads, cgMLP 4096), bf16 autocast,
B = 2, T up to 8000 (5.3 min of audio). CPU — a reduced Branchformer (2 × 256, 4 heads, cgMLP 1024),
fp32, B = 1, T up to 2000 (80 s), so the sweep fits a 2-core machine; the parameter counts of the
real configs are in ``test_bench_claims.py``.

    python -m pytest benchmarks/test_bench_mixers.py --benchmark -q
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from muse_fast.benchmark import cpu_threads, training_threads
from muse_fast.models import config_for
from muse_fast.models.bestrq import Encoder

CPU_CONFIG = dict(size="small", dim=256, depth=2, heads=4, cgmlp_dim=1024)
GPU_CONFIG = dict(size="large")
CPU_T = [250, 500, 1000, 2000]
GPU_T = [250, 500, 1000, 2000, 4000, 8000]
QUICK_T = [250, 500]
MIXERS = {"fused": "summary_mixing", "attention": "attention"}


def _sweep(device: torch.device, quick: bool) -> list[int]:
    if quick:
        return QUICK_T
    return GPU_T if device.type == "cuda" else CPU_T


@pytest.mark.parametrize("t_index", range(len(GPU_T)))
@pytest.mark.parametrize("variant", list(MIXERS))
def test_bench_muselq_encoder(measure, bench_device, quick, variant, t_index):
    ts = _sweep(bench_device, quick)
    if t_index >= len(ts):
        pytest.skip(f"T index {t_index} is not in the {bench_device.type} sweep")
    T = ts[t_index]
    gpu = bench_device.type == "cuda"
    overrides = GPU_CONFIG if gpu else CPU_CONFIG
    cfg = config_for("muselq-branchformer", mixer=MIXERS[variant], **overrides)
    B = 2 if gpu else 1
    torch.manual_seed(0)
    encoder = Encoder(cfg).to(bench_device).train()
    x = torch.randn(B, T, cfg.dim, device=bench_device, requires_grad=True)
    dy = torch.randn(B, T, cfg.dim, device=bench_device)

    def fn():
        encoder.zero_grad(set_to_none=True)
        x.grad = None
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if gpu else contextlib.nullcontext()
        with ctx:
            y = encoder(x)
        y.float().backward(dy)

    n_params = sum(p.numel() for p in encoder.parameters())
    threads = None if gpu else training_threads()
    params = {
        "T": T,
        "B": B,
        "dim": cfg.dim,
        "depth": cfg.depth,
        "dtype": "bf16" if gpu else "fp32",
    }
    if threads is not None:
        params["threads"] = threads
    with cpu_threads(threads):
        row = measure(
            fn,
            op="MuseLQ Branchformer encoder",
            variant=variant,
            params=params,
            mode="fwd+bwd",
            rounds=5 if T <= 500 else 3,
            warmup=1,
            note=("SummaryMixing" if variant == "fused" else f"MHSA ({cfg.heads} heads, SDPA)")
            + f", {n_params / 1e6:.2f} M params",
        )
    row.extra.update({"mixer": MIXERS[variant], "encoder_params": n_params, "heads": cfg.heads})
