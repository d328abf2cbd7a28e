"""Benchmark harness: ``pytest benchmarks/ --benchmark``.

Benchmarks are skipped unless ``--benchmark`` is given. Each benchmark test measures one
(op, mode, sizes, variant) case through the ``measure`` fixture, which times it with
pytest-benchmark in pedantic mode (a CUDA-synchronizing timer on GPU, so ``--benchmark-json``,
``--benchmark-save`` and ``--benchmark-compare`` work as usual), measures its peak memory
(:func:`muse_fast.benchmark.measure_peak_memory`) and records a row. At the end of the session
rows are written to ``benchmarks/results/<device>/<module>.json`` (+ ``.md``) and the terminal
summary prints every fused / baseline ratio.

Options: ``--benchmark-device cpu|cuda`` (default: cuda when available), ``--benchmark-quick``
(smallest sizes only, for smoke runs), ``--benchmark-results DIR``.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
import torch

from muse_fast.benchmark import (
    Row,
    cuda_timer,
    measure_peak_memory,
    ratio_table,
    timing_from_seconds,
    write_results,
)

_ROWS: dict[str, list[Row]] = defaultdict(list)


def pytest_addoption(parser):
    group = parser.getgroup("muse_fast benchmarks")
    group.addoption(
        "--benchmark", action="store_true", default=False, help="run the benchmark suite"
    )
    group.addoption(
        "--benchmark-device", default=None, help="cpu or cuda (default: cuda if available)"
    )
    group.addoption(
        "--benchmark-quick",
        action="store_true",
        default=False,
        help="smallest sizes only (smoke run)",
    )
    group.addoption(
        "--benchmark-results", default=None, help="results folder (default benchmarks/results)"
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--benchmark"):
        return
    skip = pytest.mark.skip(reason="benchmarks run only with --benchmark")
    for item in items:
        if "benchmarks" in Path(str(item.fspath)).parts:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def bench_device(request) -> torch.device:
    dev = request.config.getoption("--benchmark-device")
    if dev is None:
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(dev)


@pytest.fixture(scope="session")
def quick(request) -> bool:
    return bool(request.config.getoption("--benchmark-quick"))


@pytest.fixture
def measure(benchmark, request, bench_device):
    """``measure(fn, op=, variant=, params=, mode=, rounds=)`` → the recorded :class:`Row`."""
    module = Path(str(request.node.fspath)).stem.removeprefix("test_bench_")

    def _measure(
        fn,
        *,
        op: str,
        variant: str,
        params: dict,
        mode: str = "forward",
        rounds: int = 7,
        warmup: int = 1,
        note: str = "",
        memory: bool = True,
    ) -> Row:
        if bench_device.type == "cuda":
            benchmark._timer = cuda_timer  # pytest-benchmark has no public per-test timer hook
        benchmark.group = f"{op} {mode} " + " ".join(f"{k}={v}" for k, v in params.items())
        benchmark.extra_info.update({"op": op, "variant": variant, "mode": mode, **params})
        benchmark.pedantic(fn, rounds=rounds, warmup_rounds=warmup, iterations=1)
        stats = getattr(benchmark, "stats", None)
        data = list(stats.stats.data) if stats is not None else []
        t = timing_from_seconds(data) if data else None
        peak = measure_peak_memory(fn, bench_device) / 2**20 if memory else None
        row = Row(
            op=op,
            variant=variant,
            params=params,
            mode=mode,
            median_ms=t.median_ms if t else None,
            p20_ms=t.p20_ms if t else None,
            p80_ms=t.p80_ms if t else None,
            peak_mb=peak,
            note=note,
        )
        _ROWS[module].append(row)
        return row

    return _measure


def pytest_sessionfinish(session, exitstatus):
    if not _ROWS or not session.config.getoption("--benchmark"):
        return
    dev = session.config.getoption("--benchmark-device") or (
        "cuda" if torch.cuda.is_available() else "cpu"
    )
    directory = session.config.getoption("--benchmark-results")
    session.config._muse_fast_written = [
        write_results(rows, name, dev, Path(directory) if directory else None)
        for name, rows in _ROWS.items()
    ]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _ROWS or not config.getoption("--benchmark"):
        return
    tr = terminalreporter
    tr.section("muse_fast: fused vs baselines (ratio > 1: fused is faster / leaner)")
    for rows in _ROWS.values():
        for q in ratio_table([r.__dict__ for r in rows]):
            sp = f"{q['speedup']:.2f}x" if q["speedup"] else "-"
            mem = f"{q['memory_ratio']:.2f}x" if q["memory_ratio"] else "-"
            tr.write_line(
                f"{q['config']:<60} fused/{q['baseline']:<14} speed {sp:>8}  memory {mem:>8}  "
                f"({q['fused_ms']:.3g} ms vs {q['baseline_ms']:.3g} ms)"
            )
    for path in getattr(config, "_muse_fast_written", []):
        tr.write_line(f"results: {path}")
