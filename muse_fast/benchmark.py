"""Benchmark harness shared by ``benchmarks/`` and ``muse-fast bench``.

Timing: CUDA-synchronized ``perf_counter`` per repetition on GPU (the pytest-benchmark timer
``cuda_timer``) or plain ``perf_counter`` on CPU, after warm-up; we report the median, p20 and p80.

Peak memory:

* CUDA — ``torch.cuda.max_memory_allocated`` above the memory allocated before the call
  (allocator statistics: the extra memory the call needed, inputs excluded);
* CPU  — the peak of the running sum of the torch CPU allocator's allocations and frees during one
  call, read from the profiler's ``[memory]`` events (``profile_memory=True``). It counts every
  tensor a call allocates (outputs included, inputs excluded) but not scratch memory that C++
  kernels take with ``new``/``std::vector`` outside torch; our kernels keep that O(threads × block).

Results are rows (dicts) written as JSON under ``benchmarks/results/<device>/`` with the device,
versions and commit, and rendered as markdown by :func:`render_markdown`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def cuda_timer() -> float:
    """A pytest-benchmark timer that waits for queued CUDA work before reading the clock."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


@dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    reps: int


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if len(xs) == 1:
        return xs[0]
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def timing_from_seconds(times_s: list[float]) -> Timing:
    ms = [t * 1e3 for t in times_s]
    return Timing(statistics.median(ms), _quantile(ms, 0.2), _quantile(ms, 0.8), len(ms))


def measure_time(
    fn: Callable[[], Any],
    device: torch.device | str = "cpu",
    *,
    warmup: int = 2,
    reps: int = 10,
    max_seconds: float = 20.0,
) -> Timing:
    """Median / p20 / p80 wall time of ``fn()`` (CUDA events on GPU), after ``warmup`` calls."""
    dev = torch.device(device)
    for _ in range(warmup):
        fn()
    synchronize(dev)
    times: list[float] = []
    t_start = time.perf_counter()
    for _ in range(reps):
        if dev.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        if time.perf_counter() - t_start > max_seconds and len(times) >= 3:
            break
    return timing_from_seconds(times)


def _cpu_peak_bytes(fn: Callable[[], Any]) -> int:
    from torch.profiler import ProfilerActivity, profile

    os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
        del out
    events = [
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]"
    ]
    events.sort()
    cur = peak = 0
    for _, nbytes in events:
        cur += nbytes
        peak = max(peak, cur)
    return peak


def measure_peak_memory(fn: Callable[[], Any], device: torch.device | str = "cpu") -> int:
    """Extra bytes allocated at the peak of one call of ``fn`` (see the module docstring)."""
    dev = torch.device(device)
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        del out
        return int(peak)
    return _cpu_peak_bytes(fn)


CPU_BASELINE_CAP = 16 * 2**30  # a baseline's working set on a CPU, at most (CI machines: 24 GiB)


def memory_limit(device: torch.device | str = "cpu") -> float:
    """Bytes a benchmark may let one baseline call take: 85 % of the free memory (CUDA:
    ``mem_get_info``; CPU: ``MemAvailable``), on a CPU at most :data:`CPU_BASELINE_CAP`. Baselines
    whose measured working set is above it are skipped rather than left to the OOM killer."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return 0.85 * free
    free = CPU_BASELINE_CAP / 0.85
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    return min(0.85 * free, CPU_BASELINE_CAP)


def skip_unless_fits(need: float, what: str, device: torch.device | str = "cpu") -> None:
    """``pytest.skip`` a baseline whose working set ``need`` (bytes; ``what`` says how it is
    made up) is above :func:`memory_limit` on ``device``."""
    limit = memory_limit(device)
    if need > limit:
        import pytest

        pytest.skip(f"{what}: needs ~{need / 2**30:.0f} GB; limit here {limit / 2**30:.0f} GB")


def device_name(device: torch.device | str = "cpu") -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    proc = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    proc = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{proc} ({torch.get_num_threads()} threads)"


def device_slug(device: torch.device | str = "cpu") -> str:
    dev = torch.device(device)
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev).replace("NVIDIA ", "")
    else:
        name = f"cpu-{os.cpu_count()}core"
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name).strip("-").lower()


def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        )
        commit = out.stdout.strip() or "unknown"
        return commit + ("-dirty" if dirty.stdout.strip() else "")
    except Exception:
        return "unknown"


def environment(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Device, versions and commit: stamped on every results file."""
    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = None
    from . import __version__

    return {
        "device": device_name(device),
        "device_type": torch.device(device).type,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "muse_fast": __version__,
        "commit": git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "loadavg": _loadavg(),
    }


def _loadavg() -> list[float] | None:
    """1, 5 and 15-minute load averages (None where the OS has none): how busy the machine was."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


@dataclass
class Row:
    """One measured configuration. ``variant`` is 'fused' or the baseline's name."""

    op: str
    variant: str
    params: dict[str, Any]
    mode: str = "forward"
    median_ms: float | None = None
    p20_ms: float | None = None
    p80_ms: float | None = None
    peak_mb: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def key(self) -> str:
        return f"{self.op} {self.mode} " + " ".join(f"{k}={v}" for k, v in self.params.items())


def write_results(
    rows: list[Row], name: str, device: torch.device | str = "cpu", directory: Path | None = None
) -> Path:
    """Write ``rows`` to ``<directory>/<device>/<name>.json`` (and its markdown twin)."""
    out_dir = (directory or RESULTS_DIR) / device_slug(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    payload = {"environment": environment(device), "rows": [asdict(r) for r in rows]}
    path.write_text(json.dumps(payload, indent=1))
    path.with_suffix(".md").write_text(render_markdown(payload))
    return path


def ratio_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each configuration measured fused and with baselines: time and memory ratios."""
    groups: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        key = Row(**{k: r[k] for k in ("op", "variant", "params", "mode")}).key()
        groups.setdefault(key, {})[r["variant"]] = r
    out = []
    for key, variants in groups.items():
        fused = variants.get("fused")
        for name, base in variants.items():
            if name == "fused" or fused is None:
                continue
            speedup = (
                base["median_ms"] / fused["median_ms"]
                if base.get("median_ms") and fused.get("median_ms")
                else None
            )
            mem = (
                base["peak_mb"] / fused["peak_mb"]
                if base.get("peak_mb") and fused.get("peak_mb")
                else None
            )
            out.append(
                {
                    "config": key,
                    "baseline": name,
                    "speedup": speedup,
                    "memory_ratio": mem,
                    "fused_ms": fused.get("median_ms"),
                    "baseline_ms": base.get("median_ms"),
                    "fused_mb": fused.get("peak_mb"),
                    "baseline_mb": base.get("peak_mb"),
                }
            )
    return out


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def render_markdown(payload: dict[str, Any]) -> str:
    env = payload["environment"]
    rows = payload["rows"]
    lines = [
        f"Device: **{env['device']}** · torch {env['torch']} · triton {env.get('triton')} · "
        f"muse_fast {env['muse_fast']} @ {env['commit']} · {env['date']}",
        "",
        "| op | mode | params | variant | median ms | p20 | p80 | peak MB | note |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        lines.append(
            f"| {r['op']} | {r['mode']} | {params} | {r['variant']} | {_fmt(r['median_ms'])} | "
            f"{_fmt(r['p20_ms'])} | {_fmt(r['p80_ms'])} | {_fmt(r['peak_mb'])} | {r.get('note', '')} |"
        )
    ratios = ratio_table(rows)
    if ratios:
        lines += [
            "",
            "| configuration | baseline | speed-up (baseline / fused time) | memory (baseline / fused) |",
            "| --- | --- | ---: | ---: |",
        ]
        for q in ratios:
            lines.append(
                f"| {q['config']} | {q['baseline']} | {_fmt(q['speedup'])}× | {_fmt(q['memory_ratio'])}× |"
            )
    return "\n".join(lines) + "\n"


def load_results(directory: Path | str) -> list[tuple[Path, dict[str, Any]]]:
    """Every results file (``*.json`` written by :func:`write_results`) in ``directory``, sorted by
    name, as ``(path, payload)``; files that are not results payloads are skipped."""
    out = []
    for path in sorted(Path(directory).glob("*.json")):
        try:
            payload = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(payload, dict) and "environment" in payload and "rows" in payload:
            out.append((path, payload))
    return out


def make_train_step(
    recipe: str,
    *,
    device: torch.device | str = "cpu",
    batch_size: int,
    seed: int = 0,
    model: dict[str, Any] | None = None,
) -> tuple[Callable[[], torch.Tensor], torch.nn.Module, dict[str, torch.Tensor]]:
    """One pre-training step of ``recipe`` as ``muse-fast pretrain`` runs it, for benchmarks.

    Built from :mod:`muse_fast.train`'s pieces: the recipe's config (``model`` overrides as in
    ``--set model.KEY=VALUE``, e.g. ``{"size": "tiny", "use_fused": False}``), its model
    (weights from ``torch.manual_seed(seed)``), its optimizer (Adam/AdamW, fused on CUDA) and
    autocast (bf16 on CUDA, fp32 on the CPU). The step: ``model.loss(batch)`` under autocast,
    backward, global-norm clipping, optimizer step, gradients set to None. The learning-rate
    schedule is left out (it costs nothing). ``batch`` is fixed random audio from ``seed``:
    ``{"audio": (batch_size, n_views, segment_samples), "index": arange}`` on ``device``.

    Returns ``(step, model, batch)``; ``step.optimizer`` and ``step.config`` (the
    :class:`~muse_fast.train.TrainConfig`) are attached. ``step(batch=None)`` runs one step on ``batch`` (default:
    the fixed one; any batch of the same form and any size works) and returns the detached loss.
    """
    import contextlib

    from .train import build_model, make_config
    from .train.loop import _autocast_dtype, _make_optimizer

    dev = torch.device(device)
    cfg = make_config(
        recipe,
        overrides={
            "batch_size": batch_size,
            "seed": seed,
            "device": str(dev),
            "model": dict(model or {}),
        },
    )
    torch.manual_seed(seed)
    net = build_model(cfg).to(dev)
    net.train()
    opt = _make_optimizer(cfg, net, dev)
    amp = _autocast_dtype(cfg, dev)
    params = [p for p in net.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(seed)
    audio = 0.1 * torch.randn(batch_size, int(net.n_views), int(net.segment_samples), generator=g)
    batch = {"audio": audio.to(dev), "index": torch.arange(batch_size, device=dev)}

    def step(inputs: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        ctx = torch.autocast(dev.type, dtype=amp) if amp is not None else contextlib.nullcontext()
        with ctx:
            loss = net.loss(batch if inputs is None else inputs)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    step.optimizer = opt  # type: ignore[attr-defined]
    step.config = cfg  # type: ignore[attr-defined]
    return step, net, batch


def training_threads() -> int:
    """The CPU thread count ``muse-fast pretrain`` trains with on this machine: the available
    cores minus its data-loader worker (``OMP_NUM_THREADS``, when set, is left alone), so CPU
    training-step benchmarks run as a CPU training run does."""
    if "OMP_NUM_THREADS" in os.environ:
        return torch.get_num_threads()
    from .train.loop import _auto_workers

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = _auto_workers(torch.device("cpu"), 1)
    return max(1, min(torch.get_num_threads(), (cpus or 1) - workers))


class cpu_threads:
    """``with cpu_threads(n):`` — ``torch.set_num_threads(n)`` for the block (no-op for None)."""

    def __init__(self, n: int | None):
        self.n = n
        self.old: int | None = None

    def __enter__(self) -> cpu_threads:
        if self.n is not None:
            self.old = torch.get_num_threads()
            torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.old is not None:
            torch.set_num_threads(self.old)
