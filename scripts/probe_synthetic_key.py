#!/usr/bin/env python
"""Does pre-training help? A tiny Myna-Hybrid pre-trained on the synthetic corpus on the CPU,
probed for key detection against its random-init twin and chroma features.

1. Pre-train ``myna-hybrid`` (``size=tiny``, 0.11 M parameters) with the package's training loop
   on the built-in synthetic corpus (seed 0) for ``--steps`` steps — skipped when ``--out``
   already holds a finished run of that length.
2. Probe ``synthetic-key`` (a *different* synthetic corpus, seed 10 000: 24 keys, 70/10/20
   split) with linear and one-hidden-layer probes on three feature sets: the pre-trained encoder,
   the same encoder at the weights its run started from (``torch.manual_seed(run seed)`` +
   ``models.create``), and chroma (librosa ``chroma_stft`` mean + std).
   Every probe is repeated for ``--probe-seeds`` seeds; the hyper-parameters (lr × weight decay)
   are chosen on the validation split, the metric is ``mir_eval.key.weighted_score`` on the test
   split.
3. Write ``<results>.json`` and ``<results>.md`` (table, settings, machine, timings).

Run (about 40 minutes on 2 busy CPU cores, most of it pre-training; the committed output is
docs/results/probe_synthetic_key.{md,json})::

    python scripts/probe_synthetic_key.py --out runs/probe_synthetic_key
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/probe_synthetic_key", help="pre-training run folder")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0, help="pre-training seed (and init of the twin)")
    p.add_argument("--eval-tracks", type=int, default=1000)
    p.add_argument("--eval-duration", type=float, default=10.0)
    p.add_argument("--probe-seeds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--note", default="", help="a paragraph added to the report (context, history)")
    p.add_argument(
        "--render", action="store_true", help="only rewrite <results>.md from <results>.json"
    )
    p.add_argument("--results", default="docs/results/probe_synthetic_key", help="output stem")
    return p.parse_args()


def _config(args):
    from muse_fast.train.config import make_config

    return make_config(
        "myna-hybrid",
        overrides={
            "model": {"size": "tiny"},
            "out": args.out,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "seed": args.seed,
            "device": "cpu",
            "ckpt_every": args.steps,
            "log_every": 25,
            "tensorboard": False,
            "data": {"synthetic_tracks": 1024, "synthetic_duration_s": 12.0},
        },
    )


# fields that change the trained weights (logging / checkpoint cadence do not)
_SAME = (
    "recipe",
    "model",
    "steps",
    "batch_size",
    "lr",
    "seed",
    "optimizer",
    "weight_decay",
    "data",
)


def pretrain(args) -> tuple[Path, dict]:
    """Train, or reuse ``--out`` when it holds a finished run of the same configuration;
    returns the run folder and its ``summary.json``."""
    from dataclasses import asdict

    from muse_fast.train.checkpoint import list_checkpoints, load_config
    from muse_fast.train.loop import train

    cfg = _config(args)
    done = list_checkpoints(args.out)
    if done and done[-1][0] >= args.steps:
        old, new = load_config(done[-1][1]), asdict(cfg)
        diff = [k for k in _SAME if old.get(k) != new.get(k)]
        if diff:
            raise SystemExit(
                f"{args.out} holds a run with other settings ({diff}); use another --out"
            )
        print(f"reusing {args.out} (step {done[-1][0]})", file=sys.stderr)
        reused = True
    else:
        train(cfg, resume=bool(done))
        reused = False
    summary = json.loads((Path(args.out) / "summary.json").read_text())
    return Path(args.out), {**summary, "reused": reused}


def summarize(results: list[dict]) -> list[dict]:
    """Mean ± std over probe seeds, per (features, probe)."""
    summary = []
    for i, row in enumerate(results[0]["rows"]):
        test = [r["rows"][i]["test"]["weighted_score"] for r in results]
        acc = [r["rows"][i]["test"]["accuracy"] for r in results]
        valid = [r["rows"][i]["valid"]["weighted_score"] for r in results]
        summary.append(
            {
                "features": row["features"],
                "probe": row["probe"],
                "dim": row["dim"],
                "test_weighted_score": test,
                "test_weighted_score_mean": statistics.mean(test),
                "test_weighted_score_std": statistics.pstdev(test),
                "test_accuracy_mean": statistics.mean(acc),
                "valid_weighted_score_mean": statistics.mean(valid),
            }
        )
    return summary


def machine_info() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores_visible": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "load_average_1min_at_end": round(os.getloadavg()[0], 1),
        "loaded": "a shared machine: other jobs were running during pre-training and probing",
    }


def main() -> int:
    args = parse()
    if args.render:
        stem = Path(args.results)
        stem.with_suffix(".md").write_text(
            markdown(json.loads(stem.with_suffix(".json").read_text()))
        )
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    from muse_fast.eval import (
        EncoderFeatures,
        HandcraftedFeatures,
        format_table,
        get_task,
        load_encoder,
        probe_task,
        random_init_like,
    )
    from muse_fast.eval.features import default_cache_dir

    run, train_summary = pretrain(args)
    model, spec = load_encoder(run)
    twin, _ = random_init_like(spec)
    task = get_task("synthetic-key", n_tracks=args.eval_tracks, duration_s=args.eval_duration)
    extractors = [
        EncoderFeatures(model, name="pretrained"),
        EncoderFeatures(twin, name="random-init"),
        HandcraftedFeatures("chroma"),
    ]
    t0 = time.perf_counter()
    results = []
    for seed in range(args.probe_seeds):
        r = probe_task(
            task,
            extractors,
            seed=seed,
            cache_dir=str(default_cache_dir()),
            log=print,
            keep_predictions=True,
        )
        print(format_table(r))
        results.append(r)
    t_probe = time.perf_counter() - t0

    summary = summarize(results)
    by = {(s["features"], s["probe"]): s["test_weighted_score_mean"] for s in summary}
    paired = {p: paired_difference(task, results, p) for p in ("linear", "mlp")}
    verdict = {p: by[("pretrained", p)] > by[("random-init", p)] for p in ("linear", "mlp")}
    record = {
        "pretraining": {
            "recipe": "myna-hybrid",
            "size": "tiny",
            "steps": args.steps,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "seed": args.seed,
            "corpus": "SyntheticMusic(1024 tracks x 12 s, seed 0)",
            "checkpoint": spec.checkpoint,
            "seconds": round(train_summary["wall_s"], 1),
            "samples_per_s": round(train_summary["samples_per_s"], 1),
            "loss_curve": train_summary["losses"],
            "reused_existing_run": train_summary["reused"],
        },  # fmt: skip
        "task": {
            "name": task.name,
            "description": task.description,
            "splits": {s: len(v) for s, v in task.splits.items()},
        },
        "probe_seeds": args.probe_seeds,
        "summary": summary,
        "pretrained_beats_random_init": verdict,
        "paired_difference": paired,
        "probe_seconds": round(t_probe, 1),
        "machine": machine_info(),
        "command": " ".join(["python", "scripts/probe_synthetic_key.py", *sys.argv[1:]]),
        "note": args.note,
        "runs": results,
    }
    stem = Path(args.results)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2, default=str))
    stem.with_suffix(".md").write_text(markdown(record))
    print(stem.with_suffix(".md").read_text())
    return 0 if all(verdict.values()) else 1


def paired_difference(task, results: list[dict], probe: str, n_boot: int = 10_000) -> dict:
    """Per test track, the pre-trained minus the random-init weighted score (averaged over probe
    seeds); mean and a 95 % bootstrap interval over tracks."""
    import mir_eval
    import numpy as np

    from muse_fast.eval.metrics import key_name

    ref = [t.label for t in task.splits["test"]]

    def per_track(features: str) -> np.ndarray:
        rows = [
            next(r for r in res["rows"] if r["features"] == features and r["probe"] == probe)
            for res in results
        ]
        return np.mean(
            [
                [
                    mir_eval.key.weighted_score(key_name(a), key_name(b))
                    for a, b in zip(ref, row["test_predictions"])
                ]
                for row in rows
            ],
            axis=0,
        )

    d = per_track("pretrained") - per_track("random-init")
    rng = np.random.default_rng(0)
    boot = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {
        "mean": float(d.mean()),
        "ci95": [float(lo), float(hi)],
        "tracks_better": int((d > 0).sum()),
        "tracks_worse": int((d < 0).sum()),
    }


def markdown(rec: dict) -> str:
    pt, tk = rec["pretraining"], rec["task"]
    lines = [
        "# Synthetic key detection: pre-trained vs random-init Myna-Hybrid (tiny, CPU)",
        "",
        "Produced by `python scripts/probe_synthetic_key.py` (see its docstring)"
        + (
            f"; this run: `{rec['command'].split(' --note')[0]}`"
            + (
                " (pre-training reused from an existing run folder of the same settings)"
                if rec["pretraining"].get("reused_existing_run")
                else ""
            )
            if rec.get("command")
            else ""
        )
        + ".",
        "",
        f"- Pre-training: `{pt['recipe']}` size `{pt['size']}`, {pt['steps']} steps, batch "
        f"{pt['batch_size']}, lr {pt['lr']}, seed {pt['seed']}, on {pt['corpus']}; "
        f"{pt['seconds']} s on the CPU ({pt['samples_per_s']} samples/s); NT-Xent loss "
        f"{pt['loss_curve'][0][1]:.2f} at step {pt['loss_curve'][0][0]} → "
        f"{pt['loss_curve'][-1][1]:.2f} at step {pt['loss_curve'][-1][0]} "
        "(chance: ln 127 = 4.84).",
        f"- Task: `{tk['name']}` — {tk['description']}; split {tk['splits']}.",
        f"- Probes: linear and one hidden layer (512, dropout 0.25); lr × weight decay grid "
        f"chosen on validation; {rec['probe_seeds']} probe seeds.",
        "- Metric: `mir_eval.key.weighted_score` on the test split (mean ± std over probe seeds).",
        "",
        "| features | probe | dim | test weighted score | test accuracy | valid weighted score |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for s in rec["summary"]:
        lines.append(
            f"| {s['features']} | {s['probe']} | {s['dim']} | "
            f"{s['test_weighted_score_mean']:.3f} ± {s['test_weighted_score_std']:.3f} | "
            f"{s['test_accuracy_mean']:.3f} | {s['valid_weighted_score_mean']:.3f} |"
        )
    v = rec["pretrained_beats_random_init"]
    sig = {p: d["ci95"][0] > 0 for p, d in rec["paired_difference"].items()}
    lines += [
        "",
        "Pre-trained above random init (mean test score): "
        + ", ".join(f"{p} probe {'yes' if ok else 'no'}" for p, ok in v.items())
        + "; with a 95 % paired bootstrap interval above zero: "
        + ", ".join(f"{p} probe {'yes' if ok else 'no'}" for p, ok in sig.items())
        + ".",
        "",
        "Paired over the test tracks (pre-trained minus random-init weighted score, probe seeds "
        "averaged; 95 % bootstrap interval over tracks): "
        + "; ".join(
            f"{p} {d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}], "
            f"{d['tracks_better']} tracks better / {d['tracks_worse']} worse"
            for p, d in rec["paired_difference"].items()
        )
        + ".",
        "",
        f"Machine: {rec['machine']['cpu']}, {rec['machine']['cpu_count']} CPU cores, torch "
        f"{rec['machine']['torch']}; {rec['machine']['loaded']} (1-min load average "
        f"{rec['machine']['load_average_1min_at_end']} at the end). Probing took "
        f"{rec['probe_seconds']} s. GPU figure not measured.",
        "",
    ]
    if rec.get("note"):
        lines += ["## Notes", "", rec["note"], ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
