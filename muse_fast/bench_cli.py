"""``muse-fast bench``: run the benchmark suite with a progress bar, then write the summary table
and the plots.

    muse-fast bench                       # everything, on cuda if available, else cpu
    muse-fast bench --quick               # smallest sizes only (smoke run)
    muse-fast bench -k "claims or mixers" --device cpu
    muse-fast bench --report-only         # rebuild SUMMARY.md and the PNGs from saved results
    muse-fast bench -- --benchmark-json out.json   # anything after -- goes to pytest

It is ``pytest benchmarks/ --benchmark`` (the repository's ``benchmarks/`` folder, or ``--path``)
plus ``benchmarks/report.py`` (``benchmarks/results/<device>/SUMMARY.md``) and
``benchmarks/plots.py`` (PNGs next to it).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from .cli import COMMANDS

DEFAULT_BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"


class ProgressPlugin:
    """A pytest plugin: a tqdm bar over the collected benchmarks (instead of pytest's dots)."""

    def __init__(self, file=None, disable: bool | None = None):
        self._own_file = file is None
        if file is None:
            # a duplicate of the terminal's stderr: pytest's output capture redirects fd 2
            # while benchmarks run, and the bar must stay visible
            try:
                file = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1)
            except (AttributeError, OSError, ValueError):
                file, self._own_file = sys.stderr, False
        self.file = file
        self.disable = disable
        self.bar = None
        self.total = 0
        self.finished = 0

    def pytest_collection_finish(self, session) -> None:
        from tqdm import tqdm

        self.total = len(session.items)
        self.bar = tqdm(
            total=self.total,
            desc="muse-fast bench",
            unit="bench",
            file=self.file,
            disable=self.disable,
        )

    def pytest_runtest_logstart(self, nodeid: str, location) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(nodeid.rsplit("/", 1)[-1][-70:], refresh=True)

    def pytest_runtest_logfinish(self, nodeid: str, location) -> None:
        self.finished += 1
        if self.bar is not None:
            self.bar.update(1)

    def pytest_report_teststatus(self, report, config):
        """Passed and skipped items print nothing (the bar shows progress); failures and errors
        keep pytest's letters."""
        if report.passed and report.when == "call":
            return "passed", "", ""
        if report.skipped:
            return "skipped", "", ""
        return None

    def pytest_sessionfinish(self, session, exitstatus) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self._own_file:
            self.file.close()
            self._own_file = False


def _load(bench_dir: Path, name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` by path (the folder is not a package)."""
    path = bench_dir / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"--path: {path} not found")
    spec = importlib.util.spec_from_file_location(f"_muse_fast_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_args(args: argparse.Namespace, bench_dir: Path) -> list[str]:
    """The pytest command line ``muse-fast bench`` runs."""
    out = [
        str(bench_dir),
        "--benchmark",
        "-q",
        "-p",
        "no:randomly",
        "-o",
        "console_output_style=classic",
        f"--durations={args.durations}",
    ]
    if args.quick:
        out.append("--benchmark-quick")
    if args.device:
        out += ["--benchmark-device", args.device]
    if args.results:
        out += ["--benchmark-results", str(args.results)]
    if args.keyword:
        out += ["-k", args.keyword]
    extra = list(args.pytest_args or [])
    if extra and extra[0] == "--":
        extra = extra[1:]
    return out + extra


def results_dir(args: argparse.Namespace) -> Path:
    import torch

    from .benchmark import RESULTS_DIR, device_slug

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    root = Path(args.results) if args.results else RESULTS_DIR
    return root / device_slug(device)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="smallest sizes only (a smoke run)")
    p.add_argument("-k", dest="keyword", default=None, help="pytest -k expression (a subset)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument(
        "--results",
        default=None,
        help="results root (default: benchmarks/results); files go to RESULTS/<device>/",
    )
    p.add_argument("--path", default=None, help=f"benchmarks folder (default: {DEFAULT_BENCH_DIR})")
    p.add_argument("--durations", type=int, default=10, help="report the N slowest benchmarks")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="do not run anything: rebuild SUMMARY.md and the plots from saved results",
    )
    p.add_argument(
        "--static",
        action="store_true",
        help="no benchmarks: the static sm_90 kernel report (estimates; no GPU needed)",
    )
    p.add_argument("--out", default=None, help="--static: output folder")
    p.add_argument("--check", default=None, help="--static: fail on regressions vs this JSON")
    p.add_argument(
        "pytest_args", nargs=argparse.REMAINDER, help="after --: passed to pytest unchanged"
    )


def run(args: argparse.Namespace) -> int:
    if args.static:
        from .static.report import main as static_main

        argv = [
            *(["--out", args.out] if args.out else []),
            *(["--check", args.check] if args.check else []),
        ]
        return static_main(argv + (["--only", args.keyword] if args.keyword else []))
    bench_dir = Path(args.path) if args.path else DEFAULT_BENCH_DIR
    if not (bench_dir / "conftest.py").is_file():
        print(
            f"muse-fast bench: no benchmark suite at {bench_dir} (it ships with the repository; "
            "pass --path)",
            file=sys.stderr,
        )
        return 2
    code = 0
    if not args.report_only:
        import pytest

        code = int(pytest.main(pytest_args(args, bench_dir), plugins=[ProgressPlugin()]))
        if code not in (0, 1):  # 1: some benchmark failed; still summarise what ran
            return code
    out = results_dir(args)
    if not out.is_dir():
        print(f"muse-fast bench: no results in {out}", file=sys.stderr)
        return code or 1
    summary = _load(bench_dir, "report").write_summary(out)
    print(f"summary: {summary}")
    if not args.no_plots:
        for png in _load(bench_dir, "plots").plot_all(out):
            print(f"plot: {png}")
        summary = _load(bench_dir, "report").write_summary(out)  # now lists the plots too
    return code


COMMANDS["bench"] = (
    "run the benchmark suite (progress bar), write SUMMARY.md and plots",
    add_arguments,
    run,
)
