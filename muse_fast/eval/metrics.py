"""Task metrics: ``mir_eval`` for key, beat and chord; scikit-learn for tagging; accuracy for genre.

Label conventions (the same as :mod:`muse_fast.data.synthetic`):

* keys: class ``0..11`` = C major .. B major, ``12..23`` = C minor .. B minor; names as
  ``mir_eval.key`` writes them (``"C# major"``, ``"A minor"``);
* chords: ``0..11`` = major triads ``"C:maj"`` .. ``"B:maj"``, ``12..23`` = minor triads,
  ``24`` = no chord ``"N"``.

Every function takes plain numpy arrays / lists and returns Python floats, so results serialise
straight to JSON.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from ..data.synthetic import CHORD_NAMES, KEY_NAMES, NO_CHORD, PITCH_NAMES

__all__ = [
    "CHORD_LABELS",
    "KEY_NAMES",
    "NO_CHORD",
    "PITCH_NAMES",
    "accuracy",
    "beat_f_measure",
    "chord_weighted_accuracy",
    "frames_to_intervals",
    "key_name",
    "key_weighted_score",
    "parse_key",
    "pick_peaks",
    "tagging_scores",
]

# One label convention for the corpus and the metrics: class ids 0..23 (12 major, 12 minor)
CHORD_LABELS = (*CHORD_NAMES, "N")  # mir_eval chord labels; id NO_CHORD (24) = "N"

_TONIC = {
    "c": 0, "b#": 0, "c#": 1, "db": 1, "d": 2, "d#": 3, "eb": 3, "e": 4, "fb": 4, "f": 5,
    "e#": 5, "f#": 6, "gb": 6, "g": 7, "g#": 8, "ab": 8, "a": 9, "a#": 10, "bb": 10, "b": 11,
    "cb": 11,
}  # fmt: skip
_MODE = {"major": 0, "maj": 0, "minor": 12, "min": 12, "m": 12}
_KEY_RE = re.compile(r"^\s*([A-Ga-g])\s*([#b♯♭]?)\s*[:\s]?\s*([A-Za-z]*)\s*$")


def parse_key(text: str) -> int:
    """``"D minor"``, ``"Eb major"``, ``"f# min"``, ``"C:maj"``, ``"Am"`` → class id 0..23.

    Raises ``ValueError`` (the caller adds the file and line) for anything else.
    """
    m = _KEY_RE.match(text)
    if m is None:
        raise ValueError(f"cannot parse key {text!r} (expected e.g. 'D minor' or 'Eb major')")
    letter, acc, mode = m.groups()
    acc = {"♯": "#", "♭": "b"}.get(acc, acc)
    tonic = _TONIC.get(letter.lower() + acc)
    mode_off = _MODE.get(mode.lower()) if mode else 0
    if tonic is None or mode_off is None:
        raise ValueError(
            f"cannot parse key {text!r}: mode must be major or minor (expected e.g. 'D minor')"
        )
    return tonic + mode_off


def key_name(cls: int) -> str:
    """Class id 0..23 → ``mir_eval`` key string."""
    return KEY_NAMES[int(cls)]


def key_weighted_score(reference: Sequence[int], estimated: Sequence[int]) -> float:
    """Mean ``mir_eval.key.weighted_score`` over tracks (1 exact, 0.5 fifth, 0.3 relative,
    0.2 parallel, else 0), class ids mapped to key strings."""
    import mir_eval

    ref, est = np.asarray(reference), np.asarray(estimated)
    if ref.shape != est.shape or ref.ndim != 1 or len(ref) == 0:
        raise ValueError(
            f"reference/estimated: expected equal non-empty 1-D, got {ref.shape} / {est.shape}"
        )
    return float(
        np.mean([mir_eval.key.weighted_score(key_name(r), key_name(e)) for r, e in zip(ref, est)])
    )


def accuracy(reference: Sequence[int], estimated: Sequence[int]) -> float:
    ref, est = np.asarray(reference), np.asarray(estimated)
    if ref.shape != est.shape or len(ref) == 0:
        raise ValueError(
            f"reference/estimated: expected equal non-empty shapes, got {ref.shape} / {est.shape}"
        )
    return float(np.mean(ref == est))


def tagging_scores(reference: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Macro ROC-AUC and average precision over the tags that have both positive and negative
    examples in ``reference`` (N, n_tags) (sklearn cannot score the others); ``n_tags_scored``
    says how many there were."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    ref = np.asarray(reference)
    sc = np.asarray(scores, dtype=np.float64)
    if ref.shape != sc.shape or ref.ndim != 2:
        raise ValueError(
            f"reference/scores: expected equal (N, n_tags) shapes, got {ref.shape} / {sc.shape}"
        )
    pos = ref.sum(0)
    ok = (pos > 0) & (pos < ref.shape[0])
    if not ok.any():
        raise ValueError("reference: no tag has both positive and negative examples; cannot score")
    return {
        "roc_auc": float(roc_auc_score(ref[:, ok], sc[:, ok], average="macro")),
        "average_precision": float(average_precision_score(ref[:, ok], sc[:, ok], average="macro")),
        "n_tags_scored": int(ok.sum()),
    }


# ------------------------------------------------------------------------------------- beats
def pick_peaks(
    activation: np.ndarray, frame_rate: float, threshold: float = 0.3, min_interval_s: float = 0.1
) -> np.ndarray:
    """Beat times (s) from a frame-level beat activation in [0, 1].

    Peaks are frames that are the maximum of the window ``±min_interval_s`` around them and reach
    ``threshold``; plateaus keep their first frame. Frame ``i`` sits at time ``i / frame_rate``
    (the convention of :func:`muse_fast.data.beat_activations`, which marks ``floor(t·rate)``);
    each peak is refined to sub-frame precision by a parabola through its neighbours.
    """
    act = np.asarray(activation, dtype=np.float64).ravel()
    n = len(act)
    if n == 0:
        return np.zeros(0)
    w = max(1, int(round(min_interval_s * frame_rate)))
    padded = np.pad(act, w, mode="constant", constant_values=-np.inf)
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * w + 1)  # (n, 2w+1)
    is_max = act >= windows.max(axis=1)
    # plateau: keep only the first frame of a run of equal maxima
    first = np.ones(n, dtype=bool)
    first[1:] = ~(is_max[:-1] & (act[1:] == act[:-1]))
    idx = np.nonzero(is_max & first & (act >= threshold))[0]
    # greedy suppression of peaks closer than the window (ties of separate plateaus)
    keep: list[int] = []
    for i in idx:
        if not keep or i - keep[-1] > w:
            keep.append(int(i))
    idx = np.asarray(keep, dtype=np.int64)
    pos = idx.astype(np.float64)
    inner = (idx > 0) & (idx < n - 1)
    if inner.any():
        j = idx[inner]
        a, b, c = act[j - 1], act[j], act[j + 1]
        den = a - 2 * b + c
        off = np.where(np.abs(den) > 1e-12, 0.5 * (a - c) / np.where(den == 0, 1, den), 0.0)
        pos[inner] += np.clip(off, -0.5, 0.5)
    # frame i covers [i, i+1)/rate; the beat marked there lies on average at its centre
    return (pos + 0.5) / frame_rate


def beat_f_measure(
    reference_beats: Sequence[np.ndarray], estimated_beats: Sequence[np.ndarray]
) -> float:
    """Mean ``mir_eval.beat.f_measure`` (±70 ms window) over tracks. Beats are not trimmed (the
    5 s trim of ``mir_eval.beat.evaluate`` would drop most of a short synthetic track)."""
    import mir_eval

    if len(reference_beats) != len(estimated_beats) or len(reference_beats) == 0:
        raise ValueError("reference_beats/estimated_beats: expected equal non-empty lists")
    return float(
        np.mean(
            [
                mir_eval.beat.f_measure(
                    np.asarray(r, dtype=np.float64), np.asarray(e, dtype=np.float64)
                )
                for r, e in zip(reference_beats, estimated_beats)
            ]
        )
    )


# ------------------------------------------------------------------------------------ chords
def frames_to_intervals(
    classes: np.ndarray, frame_rate: float, labels: Sequence[str] = CHORD_LABELS
) -> tuple[np.ndarray, list[str]]:
    """Frame-level chord classes → (intervals (n, 2) s, labels), merging runs of equal frames.
    Frame ``i`` covers ``[i, i+1) / frame_rate``."""
    c = np.asarray(classes).ravel()
    if len(c) == 0:
        return np.zeros((0, 2)), []
    change = np.nonzero(np.diff(c))[0] + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(c)]])
    iv = np.stack([starts, ends], axis=1).astype(np.float64) / frame_rate
    return iv, [labels[int(c[s])] for s in starts]


def chord_weighted_accuracy(
    reference: Sequence[tuple[np.ndarray, list[str]]],
    estimated: Sequence[tuple[np.ndarray, list[str]]],
    comparison: str = "majmin",
) -> float:
    """``mir_eval.chord.weighted_accuracy`` with the ``comparison`` rule (majmin by default) over a
    whole dataset: each track's estimate is adjusted to span its reference and the labels merged
    over common intervals as ``mir_eval.chord.evaluate`` does, then comparisons and durations of
    all tracks are pooled (duration-weighted, as MIREX's WCSR)."""
    import mir_eval

    cmp = getattr(mir_eval.chord, comparison)
    comps, durs = [], []
    if len(reference) != len(estimated) or len(reference) == 0:
        raise ValueError(
            "reference/estimated: expected equal non-empty lists of (intervals, labels)"
        )
    for (ref_iv, ref_lab), (est_iv, est_lab) in zip(reference, estimated):
        ref_iv = np.asarray(ref_iv, dtype=np.float64)
        est_iv, est_lab = mir_eval.util.adjust_intervals(
            np.asarray(est_iv, dtype=np.float64).reshape(-1, 2),
            list(est_lab),
            ref_iv.min(),
            ref_iv.max(),
            mir_eval.chord.NO_CHORD,
            mir_eval.chord.NO_CHORD,
        )
        iv, r, e = mir_eval.util.merge_labeled_intervals(ref_iv, list(ref_lab), est_iv, est_lab)
        comps.append(cmp(r, e))
        durs.append(mir_eval.util.intervals_to_durations(iv))
    return float(mir_eval.chord.weighted_accuracy(np.concatenate(comps), np.concatenate(durs)))
