"""Combine every results file of one device into ``SUMMARY.md``: the papers' claims (measured value,
paper value, hardware) and the ops' fused-vs-baseline ratios.

    python benchmarks/report.py [benchmarks/results/<device>]      (default: every device folder)

Inputs are the ``*.json`` files that ``pytest benchmarks/ --benchmark`` writes
(:func:`muse_fast.benchmark.write_results`): ``claims.json`` (Myna max batch, parameter counts),
``throughput.json`` (training steps, fused vs eager), ``mixers.json`` (SummaryMixing vs MHSA
encoder against T) and one file per op. A claim whose file is missing gets a row saying so.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

try:
    from muse_fast.benchmark import RESULTS_DIR, load_results, ratio_table
except ImportError:  # pragma: no cover - run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from muse_fast.benchmark import RESULTS_DIR, load_results, ratio_table

SUMMARY_NAME = "SUMMARY.md"
CLAIM_FILES = ("claims", "throughput", "mixers")

PAPER = {
    "throughput": "no paper figure (the package's claim: fused ≥ eager at the same batch)",
    "mixer_time": (
        "linear in T vs quadratic (MuseLQ, SummaryMixing); SummaryMixing wav2vec 2.0 "
        "(Zhang et al. 2024): 18 % less pre-training time, 23 % less peak VRAM"
    ),
}


# ---------------------------------------------------------------------------------------------
# formatting
# ---------------------------------------------------------------------------------------------
def _g(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def hardware(env: dict[str, Any]) -> str:
    """Device name, threads and load: '<cpu> (2 threads), load 9.8'."""
    text = env.get("device", "?")
    load = env.get("loadavg")
    if env.get("device_type") == "cpu" and load:
        text += f", load {load[0]:.1f}"
    return text


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


# ---------------------------------------------------------------------------------------------
# claims
# ---------------------------------------------------------------------------------------------
def _claim(claim: str, measured: str, paper: str, hw: str, source: str) -> dict[str, str]:
    return {"claim": claim, "measured": measured, "paper": paper, "hardware": hw, "source": source}


def _missing(claim: str, paper: str, source: str) -> dict[str, str]:
    return _claim(claim, f"not measured (no {source})", paper, "–", source)


def myna_claims(payload: dict | None) -> list[dict[str, str]]:
    src = "claims.json"
    titles = {
        "mask 90%": "Myna-Hybrid vit-s: max batch per device, 90 % masking (full train step)",
        "mask 0%": "Myna-Hybrid vit-s: max batch per device, no masking (full train step)",
    }
    paper_ratio = "85× (4096 vs CLMR's 48: a different model)"
    if payload is None:
        return [
            _missing(titles["mask 90%"], "4096 per GPU", src),
            _missing(titles["mask 0%"], "not reported", src),
            _missing("Myna: max batch, 90 % masking / no masking", paper_ratio, src),
        ]
    hw = hardware(payload["environment"])
    out = []
    by_variant = {
        r["variant"]: r for r in payload["rows"] if r["extra"].get("claim") == "myna_max_batch"
    }
    for variant, title in titles.items():
        r = by_variant.get(variant)
        if r is None:
            out.append(_missing(title, "4096 per GPU" if "90" in variant else "–", src))
            continue
        x = r["extra"]
        budget = r["params"].get("budget", "")
        measured = f"**{x['max_batch']}**" + (" (search limit)" if x.get("limit_hit") else "")
        measured += f" under {budget}; {_g(r['peak_mb'])} MB at that batch"
        if x.get("mb_per_sample") is not None:
            measured += f", {x['mb_per_sample']:.2f} MB per extra sample"
        out.append(_claim(title, measured, x.get("paper", "–"), hw, src))
    ratio = next(
        (r for r in payload["rows"] if r["extra"].get("claim") == "myna_batch_ratio"), None
    )
    if ratio is None:
        out.append(_missing("Myna: max batch, 90 % masking / no masking", paper_ratio, src))
    else:
        x = ratio["extra"]
        measured = (
            f"**{x['ratio']:.1f}×** ({x['max_batch_90']} vs {x['max_batch_0']}, same model)"
            if x.get("ratio")
            else "no unmasked batch fits"
        )
        out.append(
            _claim(
                "Myna: max batch, 90 % masking / no masking",
                measured,
                x.get("paper", paper_ratio),
                hw,
                src,
            )
        )
    return out


def param_claims(payload: dict | None) -> list[dict[str, str]]:
    src = "claims.json"
    paper = "8.5–12.3 % fewer"
    title = "MuseLQ Branchformer {size}: parameters, SummaryMixing vs MHSA"
    if payload is None:
        return [_missing(title.format(size=s), paper, src) for s in ("small", "large")]
    hw = "any (parameter count, meta device)"
    rows = payload["rows"]
    counts = {
        (r["params"]["size"], r["variant"]): r["extra"]["params"]
        for r in rows
        if r["extra"].get("claim") == "parameters"
    }
    out = []
    for r in rows:
        if r["extra"].get("claim") != "muselq_param_saving":
            continue
        size, x = r["params"]["size"], r["extra"]
        att, sm = counts.get((size, "attention")), counts.get((size, "summary_mixing"))
        detail = f" ({att / 1e6:.1f} M → {sm / 1e6:.1f} M)" if att and sm else ""
        measured = (
            f"**{x['fewer_pct']:.1f} % fewer**{detail}; encoder alone "
            f"{x['fewer_pct_encoder']:.1f} %"
        )
        out.append(_claim(title.format(size=size), measured, x.get("paper", paper), hw, src))
    return out or [_missing(title.format(size="small/large"), paper, src)]


def throughput_claims(payload: dict | None) -> list[dict[str, str]]:
    src = "throughput.json"
    if payload is None:
        return [
            _missing("Training throughput per recipe, fused vs eager", PAPER["throughput"], src)
        ]
    hw = hardware(payload["environment"])
    groups: dict[str, dict[str, dict]] = {}
    for r in payload["rows"]:
        if r["op"] == "train step":
            groups.setdefault(r["params"]["recipe"], {})[r["variant"]] = r
    out = []
    for recipe, v in groups.items():
        f, e = v.get("fused"), v.get("eager")
        size = (f or e)["params"].get("size")
        batch = (f or e)["params"].get("B")

        def sps(r):
            return r["extra"].get("samples_per_s") if r else None

        measured = f"fused {_g(sps(f))} vs eager {_g(sps(e))} samples/s"
        if sps(f) and sps(e):
            measured += f" (**{sps(f) / sps(e):.2f}×**)"
        if f and e and f.get("peak_mb") and e.get("peak_mb"):
            measured += f"; peak {_g(f['peak_mb'])} vs {_g(e['peak_mb'])} MB"
        out.append(
            _claim(
                f"Train step throughput: {recipe} ({size}, batch {batch})",
                measured,
                PAPER["throughput"],
                hw,
                src,
            )
        )
    return out


def _growth(points: list[tuple[int, float]]) -> float | None:
    """Log-log slope of y against T between the smallest and the largest T (1: linear)."""
    pts = sorted(p for p in points if p[1])
    if len(pts) < 2 or pts[0][0] == pts[-1][0]:
        return None
    (t0, y0), (t1, y1) = pts[0], pts[-1]
    return math.log(y1 / y0) / math.log(t1 / t0)


def mixer_claims(payload: dict | None) -> list[dict[str, str]]:
    src = "mixers.json"
    title = "MuseLQ Branchformer encoder: SummaryMixing vs MHSA, {what} against T"
    if payload is None:
        return [
            _missing(title.format(what="time"), PAPER["mixer_time"], src),
            _missing(title.format(what="peak memory"), PAPER["mixer_time"], src),
        ]
    hw = hardware(payload["environment"])
    rows = [r for r in payload["rows"] if r["op"] == "MuseLQ Branchformer encoder"]
    by = {(r["variant"], r["params"]["T"]): r for r in rows}
    ts = sorted({r["params"]["T"] for r in rows})
    out = []
    for what, key, unit in (("time", "median_ms", "ms"), ("peak memory", "peak_mb", "MB")):
        if not ts:
            out.append(_missing(title.format(what=what), PAPER["mixer_time"], src))
            continue
        t_max = max(t for t in ts if ("fused", t) in by and ("attention", t) in by)
        sm, att = by[("fused", t_max)], by[("attention", t_max)]
        slope_sm = _growth([(t, by[("fused", t)][key]) for t in ts if ("fused", t) in by])
        slope_att = _growth([(t, by[("attention", t)][key]) for t in ts if ("attention", t) in by])
        p = sm["params"]
        measured = (
            f"T={t_max} (B={p['B']}, {p['depth']}×{p['dim']}, {p['dtype']}): SummaryMixing "
            f"{_g(sm[key])} {unit} vs MHSA {_g(att[key])} {unit}"
        )
        if sm.get(key) and att.get(key):
            measured += f" (**{att[key] / sm[key]:.2f}×**)"
        if slope_sm is not None and slope_att is not None:
            measured += f"; growth exponent in T {slope_sm:.2f} vs {slope_att:.2f}"
        out.append(_claim(title.format(what=what), measured, PAPER["mixer_time"], hw, src))
    return out


def claim_rows(results: dict[str, dict]) -> list[dict[str, str]]:
    """Every claim, in order; ``results`` maps a file stem to its payload."""
    claims = results.get("claims")
    return (
        myna_claims(claims)
        + param_claims(claims)
        + throughput_claims(results.get("throughput"))
        + mixer_claims(results.get("mixers"))
    )


# ---------------------------------------------------------------------------------------------
# ops
# ---------------------------------------------------------------------------------------------
def op_rows(results: dict[str, dict]) -> list[dict[str, str]]:
    """Per op file, op, mode and baseline: the range of speed-ups and memory ratios over sizes."""
    out = []
    for stem, payload in results.items():
        if stem in CLAIM_FILES:
            continue
        hw = hardware(payload["environment"])
        op_mode = {}  # Row.key() -> (op, mode)
        for r in payload["rows"]:
            params = " ".join(f"{k}={v}" for k, v in r["params"].items())
            op_mode[f"{r['op']} {r['mode']} {params}"] = (r["op"], r["mode"])
        grouped: dict[tuple[str, str, str], list[dict]] = {}
        for q in ratio_table(payload["rows"]):
            op, mode = op_mode.get(q["config"], (q["config"], ""))
            grouped.setdefault((op, mode, q["baseline"]), []).append(q)
        for (op, mode, baseline), qs in grouped.items():
            out.append(
                {
                    "file": stem,
                    "op": op,
                    "mode": mode,
                    "baseline": baseline,
                    "configs": str(len(qs)),
                    "speedup": _range([q["speedup"] for q in qs if q["speedup"]]),
                    "memory": _range([q["memory_ratio"] for q in qs if q["memory_ratio"]]),
                    "hardware": hw,
                }
            )
    return out


def _range(xs: list[float]) -> str:
    if not xs:
        return "–"
    lo, hi = min(xs), max(xs)
    return f"{lo:.2f}×" if abs(hi - lo) < 0.005 else f"{lo:.2f}–{hi:.2f}×"


# ---------------------------------------------------------------------------------------------
# SUMMARY.md
# ---------------------------------------------------------------------------------------------
def build_summary(directory: Path | str) -> str:
    directory = Path(directory)
    loaded = load_results(directory)
    results = {path.stem: payload for path, payload in loaded}
    lines = [f"# muse_fast benchmarks: {directory.name}", ""]
    if loaded:
        envs = [p["environment"] for _, p in loaded]
        devices = sorted({e.get("device", "?") for e in envs})
        commits = sorted({e.get("commit", "?") for e in envs})
        dates = sorted(e.get("date", "") for e in envs)
        loads = [e["loadavg"][0] for e in envs if e.get("loadavg")]
        e0 = envs[0]
        lines += [
            f"Hardware: **{', '.join(devices)}** · torch {e0.get('torch')} · triton "
            f"{e0.get('triton')} · CUDA {e0.get('cuda')} · muse_fast {e0.get('muse_fast')} @ "
            f"{', '.join(commits)} · {dates[0][:16]} – {dates[-1][:16]} UTC"
            + (
                f" · 1-min load average when the files were written "
                f"{min(loads):.1f}–{max(loads):.1f} on {e0.get('cpu_count')} CPUs"
                if loads
                else ""
            ),
            "",
        ]
    lines += [
        "## Claims",
        "",
        "| claim | measured | paper | hardware |",
        "| --- | --- | --- | --- |",
    ]
    for c in claim_rows(results):
        lines.append(
            f"| {_md_escape(c['claim'])} | {_md_escape(c['measured'])} | "
            f"{_md_escape(c['paper'])} | {_md_escape(c['hardware'])} |"
        )
    ops = op_rows(results)
    if ops:
        lines += [
            "",
            "## Ops: fused vs baselines",
            "",
            "Speed-up = baseline time / fused time, memory = baseline peak / fused peak, over the "
            "sizes measured (> 1: fused is faster / leaner). Per-size numbers: the file's `.md`.",
            "",
            "| file | op | mode | baseline | sizes | speed-up | memory |",
            "| --- | --- | --- | --- | ---: | ---: | ---: |",
        ]
        for o in ops:
            lines.append(
                f"| {o['file']} | {_md_escape(o['op'])} | {o['mode']} | {o['baseline']} | "
                f"{o['configs']} | {o['speedup']} | {o['memory']} |"
            )
    pngs = sorted(directory.glob("*.png"))
    lines += ["", "## Files", ""]
    for path, payload in loaded:
        n = len(payload["rows"])
        lines.append(f"- [`{path.stem}.md`]({path.stem}.md): {n} rows")
    for png in pngs:
        lines.append(f"- plot: [`{png.name}`]({png.name})")
    if not loaded:
        lines.append("- no results yet: run `pytest benchmarks/ --benchmark` or `muse-fast bench`")
    return "\n".join(lines) + "\n"


def write_summary(directory: Path | str) -> Path:
    directory = Path(directory)
    path = directory / SUMMARY_NAME
    path.write_text(build_summary(directory))
    return path


def main(argv: list[str]) -> int:
    dirs = [Path(a) for a in argv] or sorted(p for p in RESULTS_DIR.glob("*") if p.is_dir())
    if not dirs:
        print(
            f"no results under {RESULTS_DIR}; run `pytest benchmarks/ --benchmark`", file=sys.stderr
        )
        return 1
    for d in dirs:
        print(write_summary(d))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
