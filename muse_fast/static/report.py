"""``muse-fast bench --static``: build the sm_90 report, write JSON + markdown, check it.

The walk must run without ``TRITON_INTERPRET`` (the kernels have to be real ``JITFunction``s
to compile); :func:`main` re-executes itself in a clean subprocess when the variable is set,
which also keeps an interpreter-touched ``triton.language`` out of the compile.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import model as M

DEFAULT_OUT = Path("benchmarks/results/sm90-static")
# a per-tile instruction count may grow this much before --check calls it a regression
INSTRUCTION_SLACK = 0.02


def build(only: str | None = None, use_cache: bool = True) -> dict[str, Any]:
    import triton

    from .capture import capture
    from .cases import cases
    from .rows import case_rows

    rows: list[dict[str, Any]] = []
    t0 = time.time()
    for case in cases():
        if only and only not in case.op:
            continue
        rows.extend(case_rows(case, capture(case.prepare, case.autocast), use_cache))
    return {
        "target": "sm_90 (H100/H200), Triton AOT compile, no GPU",
        "triton": triton.__version__,
        "python": platform.python_version(),
        "commit": _commit(),
        "seconds": round(time.time() - t0, 1),
        "model": (M.__doc__ or "").strip(),
        "estimates": True,
        "rows": rows,
    }


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1e3:.1f} µs" if v < 1 else f"{v:.2f} ms"


def markdown(report: dict[str, Any], before: dict[str, Any] | None = None) -> str:
    rows = report["rows"]
    lines = [
        "# Static sm_90 kernel report (estimates, no GPU)",
        "",
        f"Triton {report['triton']}, commit {report['commit']}, {report['target']}. "
        "**Every time below is an estimate** from the compiler output and the model, "
        "not a measurement.",
        "",
        "## Per op (`kernel: total`: kernels + host-side aten ops + host syncs)",
        "",
    ]
    prev = {(r["op"], r["size"], r["kernel"]): r for r in (before or {}).get("rows", [])}
    head = "| op | size | est. | floor | ratio | host ops est. | host syncs | note |"
    if before:
        head = (
            "| op | size | est. before | est. | floor | ratio before | ratio | host syncs | note |"
        )
    lines += [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        if r["kernel"] != "total":
            continue
        note = r.get("error") or "; ".join(r.get("compile_errors", [])) or ""
        ratio = f"{r['ratio']:.1f}x" if r["ratio"] else "-"
        if before:
            b = prev.get((r["op"], r["size"], "total"), {})
            bratio = f"{b['ratio']:.1f}x" if b.get("ratio") and not b.get("error") else "-"
            best = "walk failed" if b.get("error") else _ms(b.get("est_ms"))
            lines.append(
                f"| {r['op']} | {r['size']} | {best} | {_ms(r['est_ms'])} | "
                f"{_ms(r['floor_ms'])} | {bratio} | {ratio} | {r['host_syncs']} | {note} |"
            )
        else:
            lines.append(
                f"| {r['op']} | {r['size']} | {_ms(r['est_ms'])} | {_ms(r['floor_ms'])} | {ratio} | "
                f"{_ms(r['host_ops_est_ms'])} | {r['host_syncs']} | {note} |"
            )
    lines += ["", "## Per kernel", ""]
    cols = [
        "op", "kernel", "grid", "num_warps", "regs", "spills", "smem_bytes", "ctas_per_sm",
        "occupancy", "waves", "tensor_core", "instructions_per_tile", "mma", "ffma", "mufu_ex2",
        "ldg", "ldgsts", "stg", "shfl", "atom", "bound", "est_ms", "floor_ms", "ratio",
    ]  # fmt: skip
    lines += ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    for r in rows:
        if r["kernel"] == "total":
            continue
        cells = []
        for c in cols:
            v = r.get(c)
            if c in ("est_ms", "floor_ms"):
                v = _ms(v)
            elif c == "ratio":
                v = f"{v:.1f}x" if v else "-"
            elif c == "grid":
                v = "x".join(str(g) for g in v) + (
                    f" ({r['launches']}x)" if r["launches"] > 1 else ""
                )
            cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    lines += _targets(rows)
    if before:
        lines += _before_after(rows, before["rows"])
    lines += ["", "## Host-side work per op", ""]
    for r in rows:
        if r["kernel"] == "total" and (r["host_ops"] or r["host_syncs"]):
            ops = ", ".join(
                f"{k} x{v['calls']} ({v['bytes'] / 1e9:.2f} GB, {_ms(v['est_ms'])})"
                for k, v in sorted(r["host_ops"].items(), key=lambda kv: -kv[1]["est_ms"])[:8]
            )
            syncs = "; ".join(r["host_sync_kinds"])
            lines.append(
                f"- **{r['op']}**, {r['size']}: {ops}" + (f"; host syncs: {syncs}" if syncs else "")
            )
    lines += ["", "## Model", "", "```", report["model"], "```", ""]
    return "\n".join(lines)


# issue #16's targets: est / floor at the papers' sizes, per op
TARGETS = {
    "random_projection_quantize": 2.0,
    "nt_xent": 2.5,
    "mel_spectrogram": 4.0,
    "masked_patch_embed": 3.0,
    "gather_tokens": 2.0,
    "summary_mixing": 1.5,
}


def _targets(rows: list[dict[str, Any]]) -> list[str]:
    out = ["", "## Targets (estimated ratio est / floor)", ""]
    out += ["| op | size | ratio | target | met |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        if r["kernel"] == "total" and r["op"] in TARGETS and r["ratio"]:
            t = TARGETS[r["op"]]
            out.append(
                f"| {r['op']} | {r['size']} | {r['ratio']:.1f}x | <= {t}x | "
                f"{'yes' if r['ratio'] <= t else 'no'} |"
            )
    ks = [r for r in rows if r["kernel"] != "total"]
    spill = [r["kernel"] for r in ks if r.get("spills") or r.get("stack_bytes")]
    no_tc = [r["kernel"] for r in ks if r.get("dot_in_source") and not r.get("tensor_core")]
    out += [
        "",
        f"Kernels with spills: {', '.join(spill) or 'none'}. "
        f"Kernels with a `tl.dot` not on tensor cores: {', '.join(no_tc) or 'none'}.",
    ]
    return out


def _before_after(rows: list[dict[str, Any]], before: list[dict[str, Any]]) -> list[str]:
    prev = dict(zip(_keys(before), before))
    out = ["", "## Before / after per kernel (estimates)", ""]
    out += [
        "| op | size | kernel | regs | CTAs/SM | tensor core | instr/tile | est. |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, r in zip(_keys(rows), rows):
        if r["kernel"] == "total":
            continue
        b = prev.get(key) or {}
        cells = [_ba(r, b, f) for f in ("regs", "ctas_per_sm", "tensor_core")]
        cells += [_ba(r, b, "instructions_per_tile"), _ba(r, b, "est_ms", _ms)]
        out.append(f"| {r['op']} | {r['size']} | {r['kernel']} | " + " | ".join(cells) + " |")
    return out


def _ba(now_row: dict[str, Any], old_row: dict[str, Any], field: str, fmt: Any = str) -> str:
    now = fmt(now_row.get(field))
    old = fmt(old_row.get(field)) if field in old_row else "-"
    return now if old == now else f"{old} -> {now}"


def check(report: dict[str, Any], baseline: dict[str, Any]) -> list[str]:
    """Regressions against a committed report: any spill; a kernel whose CTAs/SM or occupancy
    dropped, or whose instructions per tile grew by more than 2 %; an op that walked before and
    fails now."""
    problems = []
    base = dict(zip(_keys(baseline["rows"]), baseline["rows"]))
    for key, r in zip(_keys(report["rows"]), report["rows"]):
        where = f"{r['op']} [{r['size']}] {r['kernel']}" + (f" #{key[3] + 1}" if key[3] else "")
        if r.get("spills") or r.get("stack_bytes"):
            problems.append(
                f"{where}: spills = {r['spills']} STL/LDL, {r.get('stack_bytes', 0)} B stack (must be 0)"
            )
        b = base.get(key)
        if b is None:
            continue
        if r["kernel"] == "total":
            if r.get("error") and not b.get("error"):
                problems.append(f"{where}: walk fails now: {r['error']}")
            if r.get("compile_errors") and not b.get("compile_errors"):
                problems.append(f"{where}: compile fails now: {r['compile_errors']}")
            continue
        for metric in ("ctas_per_sm", "occupancy"):
            if r[metric] < b[metric]:
                problems.append(f"{where}: {metric} {b[metric]} -> {r[metric]} (regressed)")
        for metric in ("instructions_per_tile",):
            if r[metric] > b[metric] * (1 + INSTRUCTION_SLACK):
                problems.append(f"{where}: {metric} {b[metric]} -> {r[metric]} (regressed)")
    return problems


def _keys(rows: list[dict[str, Any]]) -> list[tuple[str, str, str, int]]:
    """(op, size, kernel, n-th row of that kernel in the case): one kernel may appear with
    several configurations in one case."""
    seen: dict[tuple[str, str, str], int] = {}
    keys = []
    for r in rows:
        k = (r["op"], r["size"], r["kernel"])
        keys.append((*k, seen.get(k, 0)))
        seen[k] = seen.get(k, 0) + 1
    return keys


def write(report: dict[str, Any], out: Path, before: dict[str, Any] | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "report.md").write_text(markdown(report, before))


def run(out: Path, baseline: Path | None, only: str | None, use_cache: bool) -> int:
    report = build(only, use_cache)
    before_path = out / "before.json"
    before = json.loads(before_path.read_text()) if before_path.exists() else None
    write(report, out, before)
    print(
        f"static sm_90 report: {out / 'report.json'}, {out / 'report.md'} ({report['seconds']} s)"
    )
    if baseline is None:
        return 0
    problems = check(report, json.loads(Path(baseline).read_text()))
    for p in problems:
        print(f"REGRESSION: {p}", file=sys.stderr)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="muse-fast bench --static", description=__doc__)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--check", type=Path, default=None, metavar="BASELINE.json")
    p.add_argument("--only", default=None, help="ops whose name contains this")
    p.add_argument("--no-cache", action="store_true")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        cmd = [
            sys.executable,
            "-m",
            "muse_fast.static",
            *(argv if argv is not None else sys.argv[1:]),
        ]
        return subprocess.run(cmd, env=env).returncode
    return run(args.out, args.check, args.only, not args.no_cache)
