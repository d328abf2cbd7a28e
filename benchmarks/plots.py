"""PNG plots (matplotlib) of the benchmark results of one device folder.

    python benchmarks/plots.py [benchmarks/results/<device>]      (default: every device folder)

* ``claims_myna_batch.png``: the Myna max-batch searches — memory of every tried batch, the
  budget, the largest batch that fit — at 90 % and 0 % masking;
* ``claims_parameters.png``: MuseLQ parameter counts, attention vs SummaryMixing;
* ``throughput.png``: samples/s of a training step per recipe, fused vs eager;
* ``mixers.png``: MuseLQ encoder time and peak memory against T, SummaryMixing vs MHSA (log-log);
* ``<op file>.png``: for every other results file, one panel per (op, mode): median time (p20–p80
  bars) per variant over the sizes measured.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

try:
    from muse_fast.benchmark import RESULTS_DIR, load_results
except ImportError:  # pragma: no cover - run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from muse_fast.benchmark import RESULTS_DIR, load_results


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _title(env: dict[str, Any]) -> str:
    return f"{env.get('device', '?')} · muse_fast @ {env.get('commit', '?')}"


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# claims
# ---------------------------------------------------------------------------------------------
def plot_myna_batch(payload: dict, out: Path) -> Path | None:
    rows = [r for r in payload["rows"] if r["extra"].get("claim") == "myna_max_batch"]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    cap = None
    for r, color in zip(rows, ("tab:blue", "tab:orange", "tab:green")):
        trials = r["extra"]["trials"]
        good = sorted((t["batch"], t["peak_mb"]) for t in trials if t["fits"] and t["peak_mb"])
        bad = [(t["batch"], t["peak_mb"]) for t in trials if not t["fits"]]
        if good:
            ax.plot(*zip(*good), "o-", color=color, label=f"{r['variant']}: fits")
        bad_measured = [b for b in bad if b[1]]
        if bad_measured:
            ax.plot(*zip(*bad_measured), "x", color=color, ms=8, label=f"{r['variant']}: too big")
        for b, peak in bad:
            if not peak:
                ax.axvline(b, color=color, ls=":", alpha=0.6)  # out of memory: no peak known
        best = r["extra"]["max_batch"]
        if best:
            ax.annotate(
                f"max {best}",
                (best, r["peak_mb"] or 0),
                textcoords="offset points",
                xytext=(-20, -16),
                color=color,
                fontweight="bold",
            )
        cap = r["extra"].get("cap_mb") or cap
    if cap:
        ax.axhline(cap, color="red", ls="--", label=f"cap {cap} MB")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch per device (x / dotted line: did not fit)")
    ax.set_ylabel("memory of a train step (MB)\nweights + Adam + batch + step peak")
    ax.set_title("Myna-Hybrid vit-s: largest batch per device\n" + _title(payload["environment"]))
    ax.legend(fontsize=8)
    return _save(fig, out)


def plot_parameters(payload: dict, out: Path) -> Path | None:
    rows = [r for r in payload["rows"] if r["extra"].get("claim") == "parameters"]
    if not rows:
        return None
    plt = _plt()
    sizes = sorted({r["params"]["size"] for r in rows}, key=["small", "large"].index)
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(variants)
    for i, v in enumerate(variants):
        ys = [
            next(
                (
                    r["extra"]["params"] / 1e6
                    for r in rows
                    if r["variant"] == v and r["params"]["size"] == s
                ),
                0,
            )
            for s in sizes
        ]
        xs = [j + i * width for j in range(len(sizes))]
        bars = ax.bar(xs, ys, width, label=v)
        ax.bar_label(bars, fmt="%.0f M", fontsize=7)
    ax.set_xticks([j + width * (len(variants) - 1) / 2 for j in range(len(sizes))], sizes)
    ax.set_ylabel("parameters (M)")
    ax.set_title("BEST-RQ encoders: parameter counts (real configs)")
    ax.legend(fontsize=8)
    return _save(fig, out)


def plot_throughput(payload: dict, out: Path) -> Path | None:
    rows = [r for r in payload["rows"] if r["op"] == "train step"]
    if not rows:
        return None
    plt = _plt()
    recipes = list(dict.fromkeys(r["params"]["recipe"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(7, 1.8 * len(recipes)), 4.5))
    width = 0.8 / len(variants)
    for i, v in enumerate(variants):
        ys = []
        for rec in recipes:
            r = next((r for r in rows if r["variant"] == v and r["params"]["recipe"] == rec), None)
            ys.append((r or {}).get("extra", {}).get("samples_per_s") or 0)
        bars = ax.bar([j + i * width for j in range(len(recipes))], ys, width, label=v)
        ax.bar_label(bars, fmt="%.3g", fontsize=7)
    labels = []
    for rec in recipes:
        r = next(r for r in rows if r["params"]["recipe"] == rec)
        labels.append(f"{rec}\n{r['params'].get('size')}, B={r['params'].get('B')}")
    ax.set_xticks([j + width * (len(variants) - 1) / 2 for j in range(len(recipes))], labels)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_ylabel("samples / s (train step)")
    ax.set_title("Training throughput, fused vs use_fused=False\n" + _title(payload["environment"]))
    ax.legend(fontsize=8)
    return _save(fig, out)


def plot_mixers(payload: dict, out: Path) -> Path | None:
    rows = [r for r in payload["rows"] if r["op"] == "MuseLQ Branchformer encoder"]
    if not rows:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    names = {"fused": "SummaryMixing (fused)", "attention": "MHSA (SDPA)"}
    for ax, key, label in zip(axes, ("median_ms", "peak_mb"), ("fwd+bwd time (ms)", "peak MB")):
        for v in dict.fromkeys(r["variant"] for r in rows):
            pts = sorted((r["params"]["T"], r[key]) for r in rows if r["variant"] == v and r[key])
            if not pts:
                continue
            ax.plot(*zip(*pts), "o-", label=names.get(v, v))
            if key == "median_ms" and any(r["p20_ms"] for r in rows):
                lo = [
                    r["p20_ms"]
                    for r in sorted(rows, key=lambda r: r["params"]["T"])
                    if r["variant"] == v and r[key]
                ]
                hi = [
                    r["p80_ms"]
                    for r in sorted(rows, key=lambda r: r["params"]["T"])
                    if r["variant"] == v and r[key]
                ]
                if len(lo) == len(pts) and None not in lo and None not in hi:
                    ax.fill_between([p[0] for p in pts], lo, hi, alpha=0.2)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ts = sorted({r["params"]["T"] for r in rows})
        ax.set_xticks(ts, [str(t) for t in ts])
        ax.xaxis.set_minor_formatter(_plt().NullFormatter())
        ax.set_xlabel("T (25 Hz tokens)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    p = rows[0]["params"]
    fig.suptitle(
        f"MuseLQ Branchformer encoder {p.get('depth')}×{p.get('dim')}, B={p.get('B')}, "
        f"{p.get('dtype')}\n" + _title(payload["environment"]),
        fontsize=9,
    )
    return _save(fig, out)


# ---------------------------------------------------------------------------------------------
# op files
# ---------------------------------------------------------------------------------------------
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def plot_op_file(payload: dict, out: Path) -> Path | None:
    """One panel per (op, mode): median ms per variant over the configurations measured."""
    rows = [r for r in payload["rows"] if r.get("median_ms")]
    if not rows:
        return None
    plt = _plt()
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["op"], r["mode"]), []).append(r)
    n = len(groups)
    cols = min(3, n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 3.8 * nrows), squeeze=False)
    for ax, ((op, mode), rs) in zip(axes.flat, groups.items()):
        keys = list(dict.fromkeys(k for r in rs for k in r["params"]))
        varying = [k for k in keys if len({str(r["params"].get(k)) for r in rs}) > 1]

        def xval(r, varying=varying):
            return tuple(r["params"].get(k) for k in varying)

        configs = sorted({xval(r) for r in rs}, key=lambda t: tuple(str(x).zfill(12) for x in t))
        numeric = len(varying) == 1 and all(_is_number(c[0]) for c in configs)
        for v in dict.fromkeys(r["variant"] for r in rs):
            pts = []
            for r in rs:
                if r["variant"] != v:
                    continue
                x = xval(r)[0] if numeric else configs.index(xval(r))
                pts.append((x, r["median_ms"], r.get("p20_ms"), r.get("p80_ms")))
            pts.sort()
            xs = [p[0] for p in pts]
            ys = [p[1] for p in pts]
            err = None
            if all(p[2] is not None and p[3] is not None for p in pts):
                err = [[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]]
            ax.errorbar(xs, ys, yerr=err, fmt="o-", capsize=2, label=v, ms=4)
        ax.set_yscale("log")
        if numeric:
            ax.set_xscale("log")
            ax.set_xlabel(varying[0])
        else:
            labels = [", ".join(f"{k}={x}" for k, x in zip(varying, c)) or "-" for c in configs]
            ax.set_xticks(range(len(configs)), labels, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("median ms")
        fixed = {k: rs[0]["params"][k] for k in keys if k not in varying}
        sub = ", ".join(f"{k}={v}" for k, v in fixed.items())
        ax.set_title(f"{op} · {mode}\n{sub}", fontsize=8)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle(_title(payload["environment"]), fontsize=9)
    return _save(fig, out)


# ---------------------------------------------------------------------------------------------
def plot_all(directory: Path | str) -> list[Path]:
    """Write every plot for the results in ``directory``; returns the PNG paths."""
    directory = Path(directory)
    written: list[Path | None] = []
    for path, payload in load_results(directory):
        if path.stem == "claims":
            written.append(plot_myna_batch(payload, directory / "claims_myna_batch.png"))
            written.append(plot_parameters(payload, directory / "claims_parameters.png"))
        elif path.stem == "throughput":
            written.append(plot_throughput(payload, directory / "throughput.png"))
        elif path.stem == "mixers":
            written.append(plot_mixers(payload, directory / "mixers.png"))
        else:
            written.append(plot_op_file(payload, directory / f"{path.stem}.png"))
    return [p for p in written if p is not None]


def main(argv: list[str]) -> int:
    dirs = [Path(a) for a in argv] or sorted(p for p in RESULTS_DIR.glob("*") if p.is_dir())
    for d in dirs:
        for p in plot_all(d):
            print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
