"""Run probes on a task for several feature sets and score them: the engine of ``muse-fast probe``.

For every feature set (the encoder under test, its random-init twin, hand-crafted features) and
every probe kind (linear, one hidden layer), a probe is fitted on the training split with the
hyper-parameter grid searched on the validation split (:func:`muse_fast.eval.probes.fit_probe`),
then scored once on the test split. Beat tracking also picks its peak-picking threshold on the
validation split.

Metrics per target (the first is the one the validation search maximises):

* key — ``weighted_score`` (``mir_eval.key.weighted_score``), ``accuracy``;
* genre — ``accuracy``;
* tagging — ``roc_auc``, ``average_precision`` (macro, sklearn);
* beat — ``f_measure`` (``mir_eval.beat.f_measure``, ±70 ms, peaks picked from the activation);
* chord — ``majmin`` (``mir_eval.chord`` weighted accuracy, majmin rule), ``root``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import metrics as M
from .features import FeatureExtractor, extract
from .probes import Probe, ProbeSettings, fit_probe
from .task import SPLITS, Task, Track

__all__ = ["PRIMARY", "BEAT_THRESHOLDS", "format_table", "probe_task", "score"]

PRIMARY = {
    "key": "weighted_score",
    "genre": "accuracy",
    "tagging": "roc_auc",
    "beat": "f_measure",
    "chord": "majmin",
}
BEAT_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
BEAT_WIDEN = 1  # training targets: 1 at the beat frame, 0.5 at its neighbours


# ------------------------------------------------------------------------------ labels
def frame_targets(task: Task, track: Track, n_frames: int) -> np.ndarray:
    from ..data import beat_activations, chord_frames

    if task.target == "beat":
        return beat_activations(track.label, task.frame_rate, n_frames, widen=BEAT_WIDEN)
    return chord_frames(track.label, task.frame_rate, n_frames)


def stack(
    task: Task, tracks: Sequence[Track], feats: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Training matrix and targets: one row per track (global) or per frame (frame-level)."""
    if task.level == "global":
        x = np.stack(feats)
        y = np.stack([np.asarray(t.label) for t in tracks])
        return x, y
    x = np.concatenate(feats)
    y = np.concatenate([frame_targets(task, t, len(f)) for t, f in zip(tracks, feats)])
    return x, y


# ------------------------------------------------------------------------------ scoring
def _ref_chords(track: Track) -> tuple[np.ndarray, list[str]]:
    ch = [(s, min(e, track.label["duration"]), c) for s, e, c in track.label["chords"]]
    ch = [c for c in ch if c[1] > c[0]]
    return np.array([[s, e] for s, e, _ in ch], dtype=np.float64), [c for _, _, c in ch]


def score(
    task: Task,
    tracks: Sequence[Track],
    predictions: Sequence[np.ndarray],
    *,
    threshold: float | None = None,
) -> dict[str, float]:
    """Metrics of ``predictions`` (per track: class probabilities (C,) / tag probabilities (C,) for
    global tasks; (frames, C) class probabilities or (frames,) beat activation for frame tasks).
    Beat tracking picks peaks at ``threshold`` (None: every threshold of :data:`BEAT_THRESHOLDS`,
    the best reported with the threshold it used)."""
    t = task.target
    if t in ("key", "genre"):
        ref = np.array([tr.label for tr in tracks])
        est = np.array([int(np.argmax(p)) for p in predictions])
        out = {"accuracy": M.accuracy(ref, est)}
        if t == "key":
            out = {"weighted_score": M.key_weighted_score(ref, est), **out}
        return out
    if t == "tagging":
        return M.tagging_scores(np.stack([tr.label for tr in tracks]), np.stack(predictions))
    if t == "beat":
        refs = [np.asarray(tr.label["beats"], dtype=np.float64) for tr in tracks]
        best = None
        for th in (threshold,) if threshold is not None else BEAT_THRESHOLDS:
            est = [M.pick_peaks(p, task.frame_rate, threshold=th) for p in predictions]
            f = M.beat_f_measure(refs, est)
            if best is None or f > best["f_measure"]:
                best = {"f_measure": f, "threshold": float(th)}
        return best
    # chord
    refs = [_ref_chords(tr) for tr in tracks]
    ests = [
        M.frames_to_intervals(np.argmax(p, axis=-1), task.frame_rate, task.classes)
        for p in predictions
    ]
    return {
        "majmin": M.chord_weighted_accuracy(refs, ests, "majmin"),
        "root": M.chord_weighted_accuracy(refs, ests, "root"),
    }


def _predict(task: Task, probe: Probe, feats: Sequence[np.ndarray]) -> list[np.ndarray]:
    if task.level == "global":
        p = probe.predict(np.stack(feats), task.output)
        return list(p)
    p = probe.predict(np.concatenate(feats), task.output)
    offs = np.cumsum([0] + [len(f) for f in feats])
    return [p[offs[i] : offs[i + 1]] for i in range(len(feats))]


# ------------------------------------------------------------------------------ the runner
def default_settings(task: Task) -> dict[str, ProbeSettings]:
    """Linear and MLP probes; frame-level tasks train on many more rows: bigger batches,
    fewer epochs."""
    if task.level == "frame":
        kw = dict(max_epochs=40, patience=5, batch_size=512)
    else:
        kw = dict(max_epochs=300, patience=20, batch_size=64)
    return {"linear": ProbeSettings.linear(**kw), "mlp": ProbeSettings.mlp(**kw)}


def _fit_and_score(task: Task, kind: str, data, feats, settings, grid, seed: int) -> dict:
    """Train one probe (hyper-parameters chosen on validation) and score it on valid and test."""
    xtr, ytr, xva, yva = data
    t1 = time.perf_counter()

    def select(probe: Probe) -> float:
        sc = score(task, task.splits["valid"], _predict(task, probe, feats["valid"]))
        val = sc[PRIMARY[task.target]]
        return -math.inf if not np.isfinite(val) else val

    probe, rec = fit_probe(
        xtr, ytr, xva, yva, output=task.output, n_outputs=task.n_outputs,
        select=select, settings=settings, grid=grid, seed=seed,
    )  # fmt: skip
    valid = score(task, task.splits["valid"], _predict(task, probe, feats["valid"]))
    th = valid.get("threshold") if task.target == "beat" else None
    pred_test = _predict(task, probe, feats["test"])
    test = score(task, task.splits["test"], pred_test, threshold=th)
    row = {
        "dim": int(xtr.shape[1]),
        "probe": kind,
        "lr": rec["lr"],
        "weight_decay": rec["weight_decay"],
        "epochs": rec["epochs"],
        "valid": valid,
        "test": test,
        "grid": rec["grid"],
        "seconds": time.perf_counter() - t1,
    }
    if task.output == "multiclass" and task.level == "global":
        row["test_predictions"] = [int(np.argmax(p)) for p in pred_test]
    return row


def probe_task(
    task: Task,
    extractors: Sequence[FeatureExtractor],
    *,
    probes: Sequence[str] = ("linear", "mlp"),
    settings: dict[str, ProbeSettings] | None = None,
    grid: dict[str, Sequence[float]] | None = None,
    seed: int = 0,
    cache_dir: str | None = None,
    progress: bool = False,
    log=None,
    keep_predictions: bool = False,
) -> dict[str, Any]:
    """Probe ``task`` on every extractor's features; returns the result record (JSON-ready):
    ``{"task", "target", "description", "splits", "primary", "seed", "rows": [...]}`` with one
    row per (features, probe): chosen hyper-parameters, validation and test metrics. With
    ``keep_predictions`` rows of global multiclass tasks also hold ``test_predictions`` (the
    predicted class of each test track, in split order) for paired comparisons."""
    sets = {**default_settings(task), **(settings or {})}
    unknown = [p for p in probes if p not in sets]
    if unknown:
        raise ValueError(f"probes: unknown probe kind(s) {unknown}; known: {sorted(sets)}")
    rows = []
    for ex in extractors:
        t0 = time.perf_counter()
        feats = {
            s: extract(ex, task, task.splits[s], cache_dir=cache_dir, progress=progress)
            for s in SPLITS
        }
        t_feat = time.perf_counter() - t0
        xtr, ytr = stack(task, task.splits["train"], feats["train"])
        xva, yva = stack(task, task.splits["valid"], feats["valid"])
        if log:
            log(
                f"  {ex.name}: features {xtr.shape[1]}-d for {sum(len(v) for v in feats.values())} tracks ({t_feat:.1f} s)"
            )
        for kind in probes:
            fit = _fit_and_score(task, kind, (xtr, ytr, xva, yva), feats, sets[kind], grid, seed)
            row = {"features": ex.name, "extractor": ex.id, **fit}
            row["seconds"] = round(row["seconds"] + t_feat, 2)
            if not keep_predictions:
                row.pop("test_predictions", None)
            rows.append(row)
            if log:
                primary = PRIMARY[task.target]
                log(
                    f"    {kind}: valid {primary} {row['valid'][primary]:.3f}, test {row['test'][primary]:.3f}"
                )
    return {
        "task": task.name,
        "target": task.target,
        "description": task.description,
        "splits": {s: len(task.splits[s]) for s in SPLITS},
        "frame_rate": task.frame_rate,
        "primary": PRIMARY[task.target],
        "seed": seed,
        "rows": rows,
    }


def format_table(result: dict[str, Any]) -> str:
    """The result as a fixed-width table: one line per (features, probe), test metrics."""
    rows = result["rows"]
    if not rows:
        return "(no results)"
    prim = result["primary"]
    metric_names = [prim] + [
        k for k in rows[0]["test"] if k not in (prim, "n_tags_scored", "threshold")
    ]
    head = (
        ["features", "probe", "dim", f"valid {prim}"]
        + [f"test {m}" for m in metric_names]
        + ["lr", "wd"]
    )
    body = []
    for r in rows:
        body.append(
            [r["features"], r["probe"], str(r["dim"]), f"{r['valid'][prim]:.3f}"]
            + [f"{r['test'][m]:.3f}" for m in metric_names]
            + [f"{r['lr']:g}", f"{r['weight_decay']:g}"]
        )
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(
        c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
    )
    sp = result["splits"]
    title = (
        f"{result['task']} — {result['description']} — train/valid/test "
        f"{sp['train']}/{sp['valid']}/{sp['test']}, seed {result['seed']}"
    )
    return "\n".join(
        [title, line(head), "  ".join("-" * w for w in widths)] + [line(b) for b in body]
    )
