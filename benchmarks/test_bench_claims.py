"""The papers' memory and size claims, measured: Myna's batch size per device, MuseLQ's parameters.

1. **Myna max batch** (Yonay et al. 2025: 4096 per GPU with 90 % token masking, 85× CLMR's 48).
   The largest batch that one full training step of Myna-Hybrid vit-s takes — forward, backward
   and the Adam step, exactly as ``muse-fast pretrain`` runs it
   (:func:`muse_fast.benchmark.make_train_step`) — at 90 % masking and at 0 %, found by a bounded
   search: doubling from a start batch until a step fails, then bisection until the bracket is
   within 1/16 of the best batch (or 1 sample).

   * CUDA: a step *fails* when it raises ``torch.cuda.OutOfMemoryError``; the failed step's
     tensors, gradients and cached blocks are released before the next try. Peak memory is
     ``torch.cuda.max_memory_allocated`` (everything: weights, Adam state, batch, activations).
   * CPU: a real out-of-memory would take the machine down, so the same search runs under a
     **memory cap**: a step fails when the weights + Adam state + the input batch + the step's
     peak allocation (torch CPU allocator, profiler accounting:
     :func:`muse_fast.benchmark.measure_peak_memory`) exceed the cap. One step per candidate.
     The cap is small (``CPU_CAP_MB``) so that the search stays affordable on 2 cores, the
     bisection stops within 1/8, and the search runs single-threaded (memory does not depend on
     the thread count; an oversubscribed 2-thread OpenMP pool on a busy machine is ~10× slower).

   Rows: one per masking ratio (max batch, peak MB at that batch, MB per extra sample — the slope
   between the two largest batches that fit — and every trial), plus the ratio of the two.
   The paper's 85× compares Myna with a *different* model (CLMR, SampleCNN on raw audio); the
   ratio here is masked vs unmasked Myna on the same device and budget.

2. **Parameter counts**: MuseLQ Branchformer with multi-head attention vs with SummaryMixing
   (the paper: 8.5–12.3 % fewer parameters with SummaryMixing), for the real ``small`` (4 × 768)
   and ``large`` (12 × 1024) configs, plus the MusicFM Conformer for scale. Parameters are
   created on the meta device (no memory, no initialisation cost).

These tests do not use the ``measure`` fixture (nothing here is a timing); their rows go to
``benchmarks/results/<device>/claims.json`` (+ ``.md``) through
:func:`muse_fast.benchmark.write_results`, with the same environment stamp.

    python -m pytest benchmarks/test_bench_claims.py --benchmark -q -s
"""

from __future__ import annotations

import contextlib
import gc
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from muse_fast.benchmark import (
    Row,
    cpu_threads,
    make_train_step,
    measure_peak_memory,
    write_results,
)

CPU_CAP_MB = 512  # CPU stand-in for device memory (quick runs: CPU_CAP_MB_QUICK)
CPU_CAP_MB_QUICK = 400
CPU_REL_TOL = 1 / 8  # bisection precision on the CPU (GPU: 1/16)
PAPER_MAX_BATCH = 4096  # Myna, per GPU, 90 % masking
CLMR_BATCH = 48
PAPER_PARAM_SAVING = (8.5, 12.3)  # % fewer parameters with SummaryMixing (MuseLQ abstract)

_ROWS: list[Row] = []


@pytest.fixture(scope="module", autouse=True)
def _write_claim_rows(request, bench_device):
    yield
    if _ROWS and request.config.getoption("--benchmark"):
        directory = request.config.getoption("--benchmark-results")
        path = write_results(
            list(_ROWS), "claims", bench_device, Path(directory) if directory else None
        )
        print(f"\nclaims results: {path}")
    _ROWS.clear()


# ---------------------------------------------------------------------------------------------
# the bounded search
# ---------------------------------------------------------------------------------------------
def find_max_batch(fits, start: int, limit: int, rel_tol: float = 1 / 16, minimum: int = 1):
    """Largest ``b`` in ``[minimum, limit]`` with ``fits(b)`` true, assuming monotonicity:
    doubling from ``start``, then bisection until ``hi - lo <= max(1, rel_tol * lo)``.
    ``fits(b)`` returns ``(ok, info)``. Returns ``(best, trials)`` with trials
    ``[(b, ok, info), ...]`` in order; best is 0 when not even ``minimum`` fits."""
    trials = []
    lo, hi, b = 0, None, max(minimum, start)
    while True:
        ok, info = fits(b)
        trials.append((b, ok, info))
        if not ok:
            hi = b
            break
        lo = b
        if b >= limit:
            return lo, trials
        b = min(2 * b, limit)
    while hi - lo > max(1, int(rel_tol * lo)):
        mid = (lo + hi) // 2
        if mid < minimum:
            break
        ok, info = fits(mid)
        trials.append((mid, ok, info))
        lo, hi = (mid, hi) if ok else (lo, mid)
    return lo, trials


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def _state_bytes(model: nn.Module, opt_state: dict) -> int:
    """Weights + buffers + optimizer state: what stays allocated between steps."""
    n = _tensor_bytes(model.parameters()) + _tensor_bytes(model.buffers())
    for st in opt_state.values():
        n += _tensor_bytes(st.values())
    return n


def _release(model: nn.Module, device: torch.device) -> None:
    for p in model.parameters():
        p.grad = None
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _myna_search(device: torch.device, ratio: float, quick: bool) -> dict:
    step, model, _ = make_train_step(
        "myna-hybrid", device=device, batch_size=2, model={"size": "vit-s", "mask_ratio": ratio}
    )
    step()  # creates the Adam state, so every candidate sees the same resident memory
    opt_state = step.optimizer.state
    seg, views = int(model.segment_samples), int(model.n_views)
    g = torch.Generator().manual_seed(0)
    audio_1 = 0.1 * torch.randn(1, views, seg, generator=g)

    def batch_of(b: int) -> dict:
        audio = audio_1.expand(b, views, seg).contiguous().to(device)
        return {"audio": audio, "index": torch.arange(b, device=device)}

    if device.type == "cuda":
        cap_mb = None

        def fits(b: int):
            _release(model, device)
            torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            try:
                inputs = batch_of(b)
                step(inputs)
                torch.cuda.synchronize(device)
            except torch.cuda.OutOfMemoryError:
                inputs = None
                _release(model, device)
                return False, {"peak_mb": None, "s": time.perf_counter() - t0}
            peak = torch.cuda.max_memory_allocated(device) / 2**20
            del inputs
            return True, {"peak_mb": peak, "s": time.perf_counter() - t0}

        start = 256 if ratio > 0 else 32
        limit = 1 << 17
    else:
        cap_mb = CPU_CAP_MB_QUICK if quick else CPU_CAP_MB
        resident = _state_bytes(model, opt_state)

        def fits(b: int):
            _release(model, device)
            inputs = batch_of(b)
            t0 = time.perf_counter()
            peak = measure_peak_memory(lambda: step(inputs), device)
            total = (resident + _tensor_bytes(inputs.values()) + peak) / 2**20
            return total <= cap_mb, {"peak_mb": total, "s": time.perf_counter() - t0}

        start = 8 if ratio > 0 else 2
        limit = 1 << 14
    rel_tol = 1 / 16 if device.type == "cuda" else CPU_REL_TOL
    # two views per sample, and NT-Xent needs two pairs: the smallest batch is 2
    best, trials = find_max_batch(fits, start, limit, rel_tol, minimum=2)
    _release(model, device)
    ok = sorted((b, info["peak_mb"]) for b, good, info in trials if good)
    per_sample = None
    if len(ok) >= 2:
        (b1, m1), (b2, m2) = ok[-2], ok[-1]
        per_sample = (m2 - m1) / (b2 - b1)
    return {
        "ratio": ratio,
        "max_batch": best,
        "peak_mb": ok[-1][1] if ok else None,
        "mb_per_sample": per_sample,
        "cap_mb": cap_mb,
        "limit_hit": best >= limit,
        "trials": [
            {
                "batch": b,
                "fits": good,
                "peak_mb": info["peak_mb"],
                "seconds": round(info["s"], 2),
            }
            for b, good, info in trials
        ],
        "params": sum(p.numel() for p in model.parameters()),
    }


def test_bench_myna_max_batch(bench_device, quick):
    with cpu_threads(1 if bench_device.type == "cpu" else None):
        results = {r: _myna_search(bench_device, r, quick) for r in (0.9, 0.0)}
    budget = (
        "device memory (OutOfMemoryError)"
        if bench_device.type == "cuda"
        else f"CPU cap {results[0.9]['cap_mb']} MB (torch allocator accounting)"
    )
    for ratio, res in results.items():
        _ROWS.append(
            Row(
                op="myna max batch",
                variant=f"mask {int(ratio * 100)}%",
                params={"model": "myna-hybrid vit-s", "mask_ratio": ratio, "budget": budget},
                mode="train step",
                peak_mb=res["peak_mb"],
                note=(
                    f"max batch {res['max_batch']}"
                    + (" (search limit reached)" if res["limit_hit"] else "")
                    + (
                        f", {res['mb_per_sample']:.2f} MB/sample"
                        if res["mb_per_sample"] is not None
                        else ""
                    )
                ),
                extra={
                    "claim": "myna_max_batch",
                    "max_batch": res["max_batch"],
                    "mb_per_sample": res["mb_per_sample"],
                    "cap_mb": res["cap_mb"],
                    "limit_hit": res["limit_hit"],
                    "trials": res["trials"],
                    "n_params": res["params"],
                    "paper": (
                        f"{PAPER_MAX_BATCH} per GPU"
                        if ratio > 0
                        else f"not reported (CLMR, another model, trains at {CLMR_BATCH})"
                    ),
                },
            )
        )
    b90, b0 = results[0.9]["max_batch"], results[0.0]["max_batch"]
    ratio = b90 / b0 if b0 else None
    _ROWS.append(
        Row(
            op="myna max batch ratio",
            variant="mask 90% / mask 0%",
            params={"model": "myna-hybrid vit-s", "budget": budget},
            mode="train step",
            note=f"{ratio:.1f}x" if ratio else "no unmasked batch fits",
            extra={
                "claim": "myna_batch_ratio",
                "ratio": ratio,
                "max_batch_90": b90,
                "max_batch_0": b0,
                "paper": f"{PAPER_MAX_BATCH / CLMR_BATCH:.0f}× ({PAPER_MAX_BATCH} vs CLMR's "
                f"{CLMR_BATCH}: a different model)",
            },
        )
    )
    print(
        f"\nmyna-hybrid vit-s max batch ({budget}): 90% -> {b90}, 0% -> {b0}"
        + (f", ratio {ratio:.1f}x" if ratio else "")
    )
    assert b90 >= b0, "masking 90 % of the tokens cannot make a step need more memory"


# ---------------------------------------------------------------------------------------------
# parameter counts on the meta device
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def meta_parameters():
    """Create every ``nn.Parameter`` on the meta device (buffers stay real): counts without
    memory or initialisation cost (what ``accelerate.init_empty_weights`` does)."""
    original = nn.Module.register_parameter

    def register(self, name, param):
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(self, name, param)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def count_parameters(name: str, **overrides) -> tuple[int, int]:
    """(all parameters, encoder parameters) of ``muse_fast.models.create(name, **overrides)``."""
    from muse_fast import models

    with meta_parameters():
        model = models.create(name, **overrides)
    total = sum(p.numel() for p in model.parameters())
    enc = sum(p.numel() for p in model.encoder.parameters()) if hasattr(model, "encoder") else 0
    return total, enc


@pytest.mark.parametrize("size", ["small", "large"])
def test_bench_muselq_parameters(bench_device, size):
    counts = {
        mixer: count_parameters("muselq-branchformer", size=size, mixer=mixer)
        for mixer in ("attention", "summary_mixing")
    }
    conformer = count_parameters("bestrq-conformer", size=size)
    (att, att_enc), (sm, sm_enc) = counts["attention"], counts["summary_mixing"]
    fewer = 100.0 * (att - sm) / att
    fewer_enc = 100.0 * (att_enc - sm_enc) / att_enc
    paper = f"{PAPER_PARAM_SAVING[0]}–{PAPER_PARAM_SAVING[1]} % fewer (MuseLQ, SAC 2026)"
    for variant, (total, enc) in [
        ("attention", counts["attention"]),
        ("summary_mixing", counts["summary_mixing"]),
        ("conformer (MusicFM)", conformer),
    ]:
        _ROWS.append(
            Row(
                op="parameters",
                variant=variant,
                params={"model": "muselq-branchformer", "size": size},
                mode="count",
                note=f"{total / 1e6:.2f} M (encoder {enc / 1e6:.2f} M)",
                extra={"claim": "parameters", "params": total, "encoder_params": enc},
            )
        )
    _ROWS.append(
        Row(
            op="parameters saving",
            variant="summary_mixing vs attention",
            params={"model": "muselq-branchformer", "size": size},
            mode="count",
            note=f"{fewer:.1f} % fewer (encoder: {fewer_enc:.1f} %)",
            extra={
                "claim": "muselq_param_saving",
                "fewer_pct": fewer,
                "fewer_pct_encoder": fewer_enc,
                "paper": paper,
            },
        )
    )
    assert sm < att, "SummaryMixing must have fewer parameters than attention"
