"""A synthetic music corpus generated on the fly, with exact key / tempo / beat / chord labels.

Every track is a short piece in one of the 24 major/minor keys at one tempo: a chord progression
of diatonic triads (one chord per bar of 4 beats, sustained pad + bass), a melody on the key's
scale, and drums (kick on beats 1 and 3, snare on 2 and 4, hi-hats on eighth notes), so every
beat carries a percussive onset. Timbres (harmonic spectra), tempo, phase, progression, melody
and mix gains are drawn from ``numpy.random.default_rng((seed, index))``: the corpus is a pure
function of ``seed``, nothing is stored, and any window of a track renders to exactly the samples
the whole track has there (noise comes from a fixed per-track table, not from a running RNG).

Label conventions (shared with :mod:`muse_fast.eval`):

* ``key``: 0..11 = C major .. B major, 12..23 = C minor .. B minor (tonic = key % 12);
  ``key_name`` as ``mir_eval.key`` writes it ("C# major", "A minor").
* ``tempo``: beats per minute (float); ``beats``: beat times in seconds (float64 array).
* ``chords``: ``[(start_s, end_s, "C:maj"), ...]`` covering ``[0, duration_s]`` (mir_eval
  chord syntax); chord classes as for keys: 0..11 = major triads, 12..23 = minor triads,
  :data:`NO_CHORD` = 24 for frames outside the track.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

__all__ = [
    "CHORD_NAMES",
    "KEY_NAMES",
    "NO_CHORD",
    "PITCH_NAMES",
    "SyntheticMusic",
    "beat_activations",
    "chord_class",
    "chord_frames",
    "crop_labels",
    "frame_labels",
]

PITCH_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
KEY_NAMES = tuple(f"{p} major" for p in PITCH_NAMES) + tuple(f"{p} minor" for p in PITCH_NAMES)
CHORD_NAMES = tuple(f"{p}:maj" for p in PITCH_NAMES) + tuple(f"{p}:min" for p in PITCH_NAMES)
NO_CHORD = 24

_MAJOR_SCALE = np.array([0, 2, 4, 5, 7, 9, 11])
_MINOR_SCALE = np.array([0, 2, 3, 5, 7, 8, 10])
# Diatonic triads used (degree -> (semitones above tonic, minor?)); no diminished chords.
_MAJOR_CHORDS = {
    1: (0, False),
    2: (2, True),
    3: (4, True),
    4: (5, False),
    5: (7, False),
    6: (9, True),
}
_MINOR_CHORDS = {
    1: (0, True),
    3: (3, False),
    4: (5, True),
    5: (7, False),
    6: (8, False),
    7: (10, False),
}
_MAJOR_PROGRESSIONS = (
    (1, 5, 6, 4),
    (1, 4, 5, 1),
    (1, 6, 2, 5),
    (1, 6, 4, 5),
    (1, 4, 1, 5),
    (1, 3, 4, 5),
)
_MINOR_PROGRESSIONS = ((1, 6, 3, 7), (1, 4, 5, 1), (1, 7, 6, 5), (1, 4, 7, 3), (1, 6, 4, 5))

_TABLE = 2048  # wavetable length (one period)

# Event kinds
_TONE, _KICK, _SNARE, _HAT = 0, 1, 2, 3


def chord_class(label: str) -> int:
    """``"C#:min"`` -> 13; ``"N"`` -> :data:`NO_CHORD`."""
    if label in ("N", "X"):
        return NO_CHORD
    return CHORD_NAMES.index(label)


def _midi_hz(m: np.ndarray | float) -> np.ndarray:
    return 440.0 * 2.0 ** ((np.asarray(m, dtype=np.float64) - 69.0) / 12.0)


class _Plan:
    """Everything about one track except the samples: labels, event list, timbres, noise."""

    __slots__ = (
        "labels",
        "onset",
        "dur",
        "freq",
        "amp",
        "kind",
        "timbre",
        "decay",
        "tables",
        "noise",
    )


class SyntheticMusic(torch.utils.data.Dataset):
    """``n_tracks`` music-like tracks of ``duration_s`` seconds at ``sample_rate``, from ``seed``.

    Without ``segment_samples`` an item is the whole track with its labels:
    ``{"audio": float32 (samples,), "index": i, "labels": {...}}``. With ``segment_samples`` it is
    a training item of random crops, ``{"audio": (n_views, segment_samples)`` (or
    ``(segment_samples,)`` when ``n_views == 1``) ``, "index": i, "skipped": 0}``; the crop
    positions come from ``key = (index, crop_seed)`` (see :class:`muse_fast.data.ResumableSampler`)
    or, for a plain ``int`` key, from ``(seed, index)``.
    """

    def __init__(
        self,
        n_tracks: int = 1000,
        duration_s: float = 30.0,
        sample_rate: int = 16000,
        seed: int = 0,
        *,
        segment_samples: int | None = None,
        n_views: int = 1,
    ):
        if int(n_tracks) < 1:
            raise ValueError(f"n_tracks must be >= 1, got {n_tracks}")
        if not duration_s > 0:
            raise ValueError(f"duration_s must be > 0, got {duration_s}")
        if int(sample_rate) < 4000:
            raise ValueError(f"sample_rate must be >= 4000, got {sample_rate}")
        if n_views < 1:
            raise ValueError(f"n_views must be >= 1, got {n_views}")
        self.n_tracks = int(n_tracks)
        self.duration_s = float(duration_s)
        self.sample_rate = int(sample_rate)
        self.seed = int(seed)
        self.num_samples = int(round(self.duration_s * self.sample_rate))
        if segment_samples is not None and segment_samples > self.num_samples:
            raise ValueError(
                f"segment_samples={segment_samples} is longer than a track "
                f"({self.num_samples} samples = {duration_s} s at {sample_rate} Hz)"
            )
        self.segment_samples = segment_samples
        self.n_views = int(n_views)
        # per-instance cache (each DataLoader worker has its own copy)
        self._plan = functools.lru_cache(maxsize=256)(self._make_plan)

    def __len__(self) -> int:
        return self.n_tracks

    def __repr__(self) -> str:
        return (
            f"SyntheticMusic(n_tracks={self.n_tracks}, duration_s={self.duration_s}, "
            f"sample_rate={self.sample_rate}, seed={self.seed})"
        )

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_plan")
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._plan = functools.lru_cache(maxsize=256)(self._make_plan)

    # ------------------------------------------------------------------ labels and audio
    def labels(self, index: int) -> dict:
        """``{"key", "key_name", "tempo", "beats", "chords"}`` of track ``index``."""
        lab = self._plan(self._check_index(index)).labels
        return {**lab, "beats": lab["beats"].copy(), "chords": list(lab["chords"])}

    def track(self, index: int) -> np.ndarray:
        """The whole track, float32 (num_samples,)."""
        return self.render(index, 0, self.num_samples)

    def render(self, index: int, start: int, length: int) -> np.ndarray:
        """Samples ``[start, start + length)`` of track ``index`` (zeros outside the track)."""
        plan = self._plan(self._check_index(index))
        sr = self.sample_rate
        out = np.zeros(length, dtype=np.float32)
        a, b = start / sr, (start + length) / sr
        sel = np.nonzero((plan.onset < b) & (plan.onset + plan.dur > a))[0]
        envs: dict[tuple[int, int, float], np.ndarray] = {}  # chord tones share an envelope
        for e in sel:
            on = int(round(plan.onset[e] * sr))
            n = int(round(plan.dur[e] * sr))
            lo, hi = max(on, start), min(on + n, start + length)
            if hi <= lo:
                continue
            kind = plan.kind[e]
            if kind == _TONE:
                t = np.arange(lo - on, hi - on, dtype=np.float32)  # samples since the onset
                env = envs.get((on, n, plan.decay[e]))
                if env is None:
                    env = np.minimum(t * np.float32(1.0 / (0.01 * sr)), 1.0)  # 10 ms attack
                    env *= np.exp(t * np.float32(-1.0 / (plan.decay[e] * sr)))
                    env *= np.minimum((n - t) * np.float32(1.0 / (0.03 * sr)), 1.0)  # release
                    env *= np.float32(plan.amp[e])
                    envs[(on, n, plan.decay[e])] = env
                step = plan.freq[e] * _TABLE / sr
                # phase index computed in float64 so long notes stay in tune
                phase = (np.arange(lo - on, hi - on) * step).astype(np.int64) & (_TABLE - 1)
                out[lo - start : hi - start] += plan.tables[int(plan.timbre[e])][phase] * env
                continue
            t = np.arange(lo - on, hi - on, dtype=np.float64)
            if kind == _KICK:
                ts = t / sr
                ph = 2 * np.pi * (45.0 * ts + (110.0 - 45.0) * 0.03 * (1 - np.exp(-ts / 0.03)))
                sig = np.sin(ph) * np.exp(-ts / 0.12)
            else:  # snare / hat: a fixed noise sample per track
                nz = plan.noise[kind - _SNARE]
                sig = nz[np.minimum(t.astype(np.int64), len(nz) - 1)]
                sig = sig * np.exp(-t / ((0.09 if kind == _SNARE else 0.025) * sr))
            out[lo - start : hi - start] += (plan.amp[e] * sig).astype(np.float32)
        return np.tanh(out)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            index, crop_seed = int(key[0]), int(key[1])
        else:
            index, crop_seed = int(key), None
        index = self._check_index(index)
        if self.segment_samples is None:
            return {
                "audio": torch.from_numpy(self.track(index)),
                "index": index,
                "labels": self.labels(index),
            }
        rng = np.random.default_rng(
            (self.seed, index) if crop_seed is None else (crop_seed & 0xFFFFFFFFFFFFFFFF,)
        )
        seg = self.segment_samples
        starts = rng.integers(0, self.num_samples - seg + 1, size=self.n_views)
        views = np.stack([self.render(index, int(s), seg) for s in starts])
        audio = torch.from_numpy(views if self.n_views > 1 else views[0])
        return {"audio": audio, "index": index, "skipped": 0}

    def _check_index(self, index: int) -> int:
        index = int(index)
        if not 0 <= index < self.n_tracks:
            raise IndexError(f"index {index} out of range for {self.n_tracks} tracks")
        return index

    # ------------------------------------------------------------------ the score
    def _make_plan(self, index: int) -> _Plan:
        rng = np.random.default_rng((self.seed, index, 0x5EED))
        sr, dur = self.sample_rate, self.duration_s
        key = int(rng.integers(24))
        tonic, minor = key % 12, key >= 12
        tempo = float(rng.integers(70, 161))
        period = 60.0 / tempo
        first = float(rng.uniform(0.0, period))
        n_beats = int(math.floor((dur - first) / period - 1e-9)) + 1
        beats = first + period * np.arange(max(n_beats, 0), dtype=np.float64)
        beats = beats[beats < dur]
        scale = (_MINOR_SCALE if minor else _MAJOR_SCALE) + tonic
        chords_tab = _MINOR_CHORDS if minor else _MAJOR_CHORDS
        progs = _MINOR_PROGRESSIONS if minor else _MAJOR_PROGRESSIONS
        prog = progs[int(rng.integers(len(progs)))]
        beats_per_chord = int(rng.choice([2, 4, 4]))

        # timbres: 3 wavetables (pad, bass, lead) with random harmonic roll-off
        n_harm = 8
        k = np.arange(1, n_harm + 1)
        x = np.arange(_TABLE) * (2 * np.pi / _TABLE)
        tables = []
        for _ in range(3):
            rolloff = rng.uniform(0.8, 2.2)
            amps = k ** (-rolloff) * rng.uniform(0.3, 1.0, n_harm)
            amps[0] = 1.0
            if rng.random() < 0.4:  # clarinet-like: odd harmonics only
                amps[1::2] *= 0.1
            ph = rng.uniform(0, 2 * np.pi, n_harm)
            tab = (amps[:, None] * np.sin(k[:, None] * x[None, :] + ph[:, None])).sum(0)
            tables.append((tab / np.abs(tab).max()).astype(np.float32))
        # drum noise from its own generator: the score (labels, notes, gains) does not depend on
        # the sample rate
        nrng = np.random.default_rng((self.seed, index, 0xD2))
        noise_len = int(0.4 * sr)
        noise = np.stack([nrng.standard_normal(noise_len), nrng.standard_normal(noise_len)])
        noise[1] = np.diff(noise[1], prepend=0.0)  # hats: high-passed noise
        noise /= np.abs(noise).max(axis=1, keepdims=True)

        g_pad, g_bass, g_lead = (
            rng.uniform(0.08, 0.14),
            rng.uniform(0.15, 0.25),
            rng.uniform(0.12, 0.2),
        )
        g_kick, g_snare, g_hat = (
            rng.uniform(0.3, 0.5),
            rng.uniform(0.15, 0.3),
            rng.uniform(0.03, 0.08),
        )

        ev: list[
            tuple[float, float, float, float, int, int, float]
        ] = []  # onset dur freq amp kind timbre decay
        chords: list[tuple[float, float, str]] = []
        # chord boundaries at every `beats_per_chord`-th beat; the first chord starts at 0
        bounds = [0.0] + [float(b) for b in beats[beats_per_chord::beats_per_chord]] + [dur]
        for c in range(len(bounds) - 1):
            s, e = bounds[c], bounds[c + 1]
            if e - s <= 1e-6:
                continue
            semis, is_min = chords_tab[prog[c % len(prog)]]
            root = (tonic + semis) % 12
            chords.append((s, e, f"{PITCH_NAMES[root]}:{'min' if is_min else 'maj'}"))
            triad = root + np.array([0, 3 if is_min else 4, 7]) + 48
            triad = np.where(triad > 59, triad - 12, triad)  # keep the pad within C3..B3 + fifth
            for m in triad:
                ev.append((s, e - s, float(_midi_hz(m)), g_pad, _TONE, 0, 2.5))
            bass = 36 + root
            beat_in = beats[(beats >= s - 1e-9) & (beats < e - 1e-9)]
            for j, bt in enumerate(beat_in):
                if j % 2 == 0:
                    end = min(bt + 2 * period, e)
                    ev.append((float(bt), end - bt, float(_midi_hz(bass)), g_bass, _TONE, 1, 0.6))
        # melody: eighth notes with rests, a random walk on the scale; on beats it lands on a
        # tone of the sounding chord
        deg = int(rng.integers(7))
        half = period / 2
        starts = np.array([c[0] for c in chords])
        triads = [
            {(chord_class(c[2]) % 12 + k) % 12 for k in (0, 3 if "min" in c[2] else 4, 7)}
            for c in chords
        ]
        t, j = first, 0
        while t < dur - 0.05:
            if rng.random() < 0.75:
                deg = int(np.clip(deg + rng.integers(-2, 3), 0, 13))
                if j % 2 == 0:  # on the beat: nearest degree that is a chord tone
                    tones = triads[int(np.searchsorted(starts, t + 1e-9) - 1)]
                    cands = [d for d in range(14) if scale[d % 7] % 12 in tones]
                    deg = min(cands, key=lambda d: (abs(d - deg), d))
                m = 60 + scale[deg % 7] + 12 * (deg // 7)
                length = half * (2 if rng.random() < 0.3 else 1)
                ev.append((t, min(length, dur - t), float(_midi_hz(m)), g_lead, _TONE, 2, 0.4))
            t += half
            j += 1
        # drums: kick on beats 1, 3; snare on 2, 4; hats on every eighth
        for j, bt in enumerate(beats):
            bt = float(bt)
            kind, gain = (_KICK, g_kick) if j % 2 == 0 else (_SNARE, g_snare)
            ev.append((bt, min(0.35, dur - bt), 0.0, gain, kind, 0, 0.0))
            for h in (bt, bt + half):
                if h < dur:
                    ev.append((h, min(0.1, dur - h), 0.0, g_hat, _HAT, 0, 0.0))

        arr = np.array(ev, dtype=np.float64).reshape(-1, 7)
        plan = _Plan()
        plan.onset, plan.dur, plan.freq, plan.amp = arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3]
        plan.kind, plan.timbre, plan.decay = arr[:, 4].astype(np.int64), arr[:, 5], arr[:, 6]
        plan.tables, plan.noise = tables, noise
        plan.labels = {
            "key": key,
            "key_name": KEY_NAMES[key],
            "tempo": tempo,
            "beats": beats,
            "chords": chords,
        }
        return plan


# ---------------------------------------------------------------------- frame-level labels
def crop_labels(labels: dict, start_s: float, end_s: float) -> dict:
    """The labels of the window ``[start_s, end_s)``, times relative to ``start_s``."""
    beats = labels["beats"]
    beats = beats[(beats >= start_s) & (beats < end_s)] - start_s
    chords = [
        (max(s, start_s) - start_s, min(e, end_s) - start_s, c)
        for s, e, c in labels["chords"]
        if e > start_s and s < end_s
    ]
    return {**labels, "beats": beats, "chords": chords}


def chord_frames(labels: dict, frame_rate: float, n_frames: int) -> np.ndarray:
    """Chord class (0..23, :data:`NO_CHORD` outside every chord) at each frame centre
    ``(i + 0.5) / frame_rate``; int64 (n_frames,)."""
    centres = (np.arange(n_frames) + 0.5) / frame_rate
    out = np.full(n_frames, NO_CHORD, dtype=np.int64)
    for s, e, c in labels["chords"]:
        out[(centres >= s) & (centres < e)] = chord_class(c)
    return out


def beat_activations(labels: dict, frame_rate: float, n_frames: int, widen: int = 0) -> np.ndarray:
    """1.0 at the frame holding each beat (``floor(t * frame_rate)``), 0.5 within ``widen``
    frames of it, else 0; float32 (n_frames,)."""
    out = np.zeros(n_frames, dtype=np.float32)
    idx = np.floor(np.asarray(labels["beats"]) * frame_rate).astype(np.int64)
    idx = idx[(idx >= 0) & (idx < n_frames)]
    for w in range(1, widen + 1):
        for j in (idx - w, idx + w):
            j = j[(j >= 0) & (j < n_frames)]
            out[j] = np.maximum(out[j], 0.5)
    out[idx] = 1.0
    return out


def frame_labels(labels: dict, frame_rate: float, n_frames: int, widen: int = 0) -> dict:
    """``{"chord": chord_frames(...), "beat": beat_activations(...)}``."""
    return {
        "chord": chord_frames(labels, frame_rate, n_frames),
        "beat": beat_activations(labels, frame_rate, n_frames, widen),
    }
