"""Training throughput of every recipe: fused kernels vs ``use_fused=False`` (eager references).

One full training step as ``muse-fast pretrain`` runs it (:func:`muse_fast.benchmark.make_train_step`:
loss under autocast — bf16 on CUDA, fp32 on the CPU —, backward, gradient clipping, optimizer
step), same weights (seed 0), same batch, same step code; the only difference is the model's
``use_fused`` flag (``False`` runs every op on its eager reference, as
``muse_fast.backend("reference")``). Rows: median / p20 / p80 step time and peak memory per
variant (``fused``, ``eager``); ``extra.samples_per_s`` = batch / median step time.

Threads: on the CPU, the count ``muse-fast pretrain`` trains with on this machine
(:func:`muse_fast.benchmark.training_threads`: the cores minus one data-loader worker — 1 on a
2-core machine); it is in each row's params.

Sizes: CPU — the ``tiny`` configs (Myna/ViT-1D dim 64 × 2 blocks, BEST-RQ/MuseLQ dim 64 × 2
layers on 2 s clips), small batches; GPU — the papers' sizes (Myna vit-s, ViT-1D base, BEST-RQ /
MuseLQ ``small`` 4 × 768 on 30 s clips) at batches that fit an 80 GB GPU.

    python -m pytest benchmarks/test_bench_throughput.py --benchmark -q
"""

from __future__ import annotations

import pytest
import torch

from muse_fast.benchmark import cpu_threads, make_train_step, training_threads

# recipe key -> (recipe, extra model overrides)
RECIPES = {
    "myna-base": ("myna-base", {}),
    "myna-vertical": ("myna-vertical", {}),
    "myna-hybrid": ("myna-hybrid", {}),
    "vit1d": ("vit1d", {}),
    "bestrq-conformer": ("bestrq-conformer", {}),
    "muselq-branchformer": ("muselq-branchformer", {"mixer": "summary_mixing"}),
    "muselq-branchformer-mhsa": ("muselq-branchformer", {"mixer": "attention"}),
}
# (size, batch) per recipe family and device type
SIZES = {
    "cpu": {"myna": ("tiny", 16), "vit1d": ("tiny", 16), "bestrq": ("tiny", 4)},
    "cuda": {"myna": ("vit-s", 1024), "vit1d": ("base", 256), "bestrq": ("small", 16)},
}
QUICK_BATCH = {"myna": 4, "vit1d": 4, "bestrq": 2}


def _family(recipe: str) -> str:
    return "myna" if recipe.startswith("myna") else "vit1d" if recipe == "vit1d" else "bestrq"


@pytest.mark.parametrize("variant", ["fused", "eager"])
@pytest.mark.parametrize("key", list(RECIPES))
def test_bench_train_step(measure, bench_device, quick, key, variant):
    recipe, overrides = RECIPES[key]
    fam = _family(recipe)
    size, batch = SIZES["cuda" if bench_device.type == "cuda" else "cpu"][fam]
    if quick:
        batch = min(batch, QUICK_BATCH[fam])
    threads = training_threads() if bench_device.type == "cpu" else None
    with cpu_threads(threads):
        step, model, _ = make_train_step(
            recipe,
            device=bench_device,
            batch_size=batch,
            seed=0,
            model={"size": size, "use_fused": variant == "fused", **overrides},
        )
        slow = bench_device.type == "cpu" and variant == "eager"
        params = {"recipe": key, "size": size, "B": batch}
        if threads is not None:
            params["threads"] = threads
        row = measure(
            step,
            op="train step",
            variant=variant,
            params=params,
            mode="fwd+bwd+optim",
            rounds=3 if quick else (5 if slow else 7),
            warmup=1,
        )
    if row.median_ms:
        sps = batch / (row.median_ms / 1e3)
        row.extra["samples_per_s"] = sps
        row.extra["n_params"] = sum(p.numel() for p in model.parameters())
        row.note = f"{sps:.1f} samples/s"
    del step, model
    if bench_device.type == "cuda":
        torch.cuda.empty_cache()
