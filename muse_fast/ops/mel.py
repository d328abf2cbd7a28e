"""Log-mel spectrograms with torchaudio's semantics (SPEC §1.1), and MusicFM's frame stacking.

``mel_spectrogram(waveform, ...)`` equals ``torchaudio.transforms.MelSpectrogram(...)`` (hann
window, ``melscale_fbanks`` filterbank) followed by an optional log, for every argument
torchaudio takes. Semantics, precisely:

* **Input** ``(..., time)`` float32 / bfloat16 / float16, computed in float32 (bf16 and fp16 are
  upcast on load); **output** float32 ``(..., n_mels, frames)``. float64 input is computed in
  float64 by the reference (the kernels refuse it, so it falls back with a warning) and returns
  float64.
* ``frames = 1 + (time + 2·pad + 2·(n_fft // 2) − n_fft) // hop`` with ``center``, else
  ``1 + (time + 2·pad − n_fft) // hop`` — exactly ``torch.stft``'s count.
* ``log``: ``None`` (power or magnitude mel), ``"log"`` = ``ln(max(mel, 1e-10))``,
  ``"log1p"`` = ``ln(1 + mel)`` (Myna: nnAudio's mel, then ``torch.log1p``), ``"db"`` =
  ``AmplitudeToDB``: ``(20 / power)·log10(max(mel, 1e-10))`` — torchaudio's
  ``multiplier = 10`` for ``stype="power"`` (power 2) and ``20`` for ``"magnitude"`` (power 1),
  ``amin = 1e-10``, ``ref = 1``. Silence therefore stays finite (−100 dB for power 2).
* ``top_db`` (``log="db"`` only): ``torchaudio.functional.amplitude_to_DB``'s rule, to the
  letter: values below ``max − top_db`` are raised to it, with one max over the *whole output*
  when it has ≤ 3 dims (so a (batch, time) input shares one max across the batch, as
  ``MelSpectrogram`` + ``AmplitudeToDB`` does) and one max per index of the leading dims
  otherwise. For a max per clip, pass ``(batch, 1, time)``, or give ``lengths``.
* ``lengths`` (``(B,)`` ints, ``B = waveform.shape[0]``, on the CPU or the waveform's device):
  each item ``b`` is computed as if it were ``waveform[b, ..., :lengths[b]]`` alone — its own
  center padding around its own end
  (reflect, replicate, circular), its own frame count ``frame_lengths[b]`` (the formula above
  with ``time = lengths[b]``), its own ``top_db`` max. Frames past ``frame_lengths[b]`` are
  exactly 0 (after the log, whatever the log mode); samples past ``lengths[b]`` are never read
  (nor checked for NaN). The call then returns ``(mel, frame_lengths)`` (int64, on the
  waveform's device). Validating ``lengths`` reads them on the host (a sync when they are on
  CUDA).
* NaN or inf among the samples read → ``ValueError("waveform: contains NaN or inf")``. The
  kernels count them while padding (no extra pass over the waveform); the Triton path reads the
  count back once, after every kernel is queued (one host sync per call, at the end).
* Too-short input → ``ValueError`` naming ``waveform`` / ``lengths`` where ``torch.stft``
  raises an obscure padding error: ``center=False`` needs ``time + 2·pad ≥ n_fft``; reflect
  needs ``time + 2·pad > n_fft // 2``; circular ``≥ n_fft // 2``; constant/replicate ``≥ 1``.
  Input shorter than ``n_fft`` but long enough for the padding works as in torchaudio.
* ``preset="musicfm" | "myna"`` (:data:`MEL_PRESETS`) supplies every argument the call does not
  pass explicitly; explicit arguments win.
* Gradients flow to the waveform (autograd through the eager reference, recomputed in the
  backward) — first order only.

Pipeline (``cpu`` and ``triton`` backends share it; the kernels are
:mod:`muse_fast.kernels.mel` and ``csrc/mel.cpp``):

1. **pad** (kernel): the waveform rows → one flat fp32 buffer of rows ``S = R·hop`` samples
   apart (R = ceil(padded length / hop)), holding each row's padded signal then zeros; counts
   NaN/inf. Flat frame ``j = row·R + t`` is then frame ``t`` of ``row``, and the frames of the
   whole batch are the strided view ``buf.as_strided((F, n_fft), (hop, 1))``: nothing of size
   frames × n_fft is materialized.
2. **FFT**: ``torch.fft.rfft`` (cuFFT / MKL) of that view, chunk by chunk into one reused
   complex buffer (``_CHUNK_BYTES``: 256 MiB on CUDA; 16 MiB on the CPU — 2 MiB chunks stay in
   cache and win by ~10 % on an idle CPU, but every chunk is two parallel regions, and on a
   loaded machine their barriers cost more than the cache saves: measured 1.8 s vs 0.6 s for
   4 × 30 s on 2 busy cores). The
   window is NOT applied here: for ``win_length == n_fft`` the periodic hann window is the exact
   3-tap ``0.5 X[k] − 0.25 (X[k−1] + X[k+1])`` in the frequency domain, done by step 3. Other
   ``win_length``: the chunk is multiplied by the window first (a chunk-sized copy).
3. **power + mel + log** (kernel): per frame, the windowed power (or magnitude, or
   ``|X|^power``), the *sparse* filterbank (per band its ``[lo, hi)`` bins and weights; each
   bin feeds ≤ 2 triangles), the log, zeros past each row's valid frames; writes only the mel.
4. ``top_db`` (if any): an amax and a clamp over the mel with torch ops.

Bytes moved per frame, ``musicfm`` preset (n_fft 2048, hop 240, 1025 bins, 128 mels, fp32),
counting DRAM/HBM traffic (the FFT's 8.5-fold overlapping reads of the padded signal hit L2):

==========================  ===============================  ==============================
stage                       this pipeline                    torchaudio MelSpectrogram + dB
==========================  ===============================  ==============================
pad / frame                 read 0.94 KiB, write 0.94 KiB    pad copy 1.9 KiB; frames·window:
                                                             write 8 KiB, read 8 KiB
FFT output                  write 8.0 KiB                    write 8.0 KiB
power, mel                  read 8.0 KiB (×~1.1, L2), write  abs: read 8, write 4; pow: 4+4;
                            0.5 KiB mel (log fused)          matmul: read 4, write 0.5 KiB
log (dB)                    —                                ~4 passes over the mel: 4 KiB
total                       ~18 KiB                          ~55 KiB
floor                       1.4 KiB: read the waveform once, write the mel once
==========================  ===============================  ==============================

The complex spectrum's round trip (16 KiB of the 18) dominates: cuFFT cannot hand its output to
a consumer without storing it, so this design sits ~13x above the byte floor and ~3x below
torchaudio. Closing the rest needs an in-kernel FFT (a Triton FFT feeding the power/mel/log
epilogue from registers/shared memory), which is not written. Compute floor: an n_fft-point
real FFT is ~2.5·n_fft·log2(n_fft) ≈ 56 kFLOP per frame, 10.8 GFLOP for 64 × 30 s (192 k frames):
a few tenths of a millisecond on an H100. GPU timings: not measured yet (no GPU was available
while this was written); ``benchmarks/test_bench_mel.py`` measures them when run on one.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from .._backend import Op, register
from .._runtime import empty
from ._checks import (
    check_choice,
    check_float,
    check_int,
    check_same_device,
    check_tensor,
)

__all__ = [
    "MEL_PRESETS",
    "mel_num_frames",
    "mel_spectrogram",
    "mel_spectrogram_reference",
    "stack_frames",
]

Tensor = torch.Tensor

# Every argument spelled out, so a preset is a complete recipe.
MEL_PRESETS: dict[str, dict[str, object]] = {
    # MusicFM / BEST-RQ music FM / MuseLQ: torchaudio MelSpectrogram + AmplitudeToDB (no top_db),
    # 24 kHz, 100 frames/s; the models then stack 4 frames (stack_frames) -> 512 x 25 Hz.
    "musicfm": {
        "sample_rate": 24000,
        "n_fft": 2048,
        "win_length": None,
        "hop_length": 240,
        "f_min": 0.0,
        "f_max": None,
        "pad": 0,
        "n_mels": 128,
        "power": 2.0,
        "normalized": False,
        "center": True,
        "pad_mode": "reflect",
        "mel_scale": "htk",
        "norm": None,
        "log": "db",
        "top_db": None,
    },
    # Myna / ViT-1D: nnAudio MelSpectrogram(sr=16000, n_mels=128) defaults (n_fft 2048, hop 512,
    # hann, center reflect, slaney scale + slaney area norm = librosa's), then torch.log1p.
    "myna": {
        "sample_rate": 16000,
        "n_fft": 2048,
        "win_length": None,
        "hop_length": 512,
        "f_min": 0.0,
        "f_max": None,
        "pad": 0,
        "n_mels": 128,
        "power": 2.0,
        "normalized": False,
        "center": True,
        "pad_mode": "reflect",
        "mel_scale": "slaney",
        "norm": "slaney",
        "log": "log1p",
        "top_db": None,
    },
}

PAD_MODES = ("constant", "reflect", "replicate", "circular")
LOG_MODES = (None, "log", "log1p", "db")
_PAD_MODE_ID = {"constant": 0, "reflect": 1, "replicate": 2, "circular": 3}
_LOG_MODE_ID = {"none": 0, "log": 1, "log1p": 2, "db": 3}
_CHUNK_BYTES = {"cuda": 256 << 20, "cpu": 16 << 20}
_AMIN = 1e-10


class _Default:
    """A signature default that a preset may replace (an explicit argument never is)."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


_DEFAULTS: dict[str, object] = {
    "sample_rate": 16000,
    "n_fft": 400,
    "win_length": None,
    "hop_length": None,
    "f_min": 0.0,
    "f_max": None,
    "pad": 0,
    "n_mels": 128,
    "power": 2.0,
    "normalized": False,
    "center": True,
    "pad_mode": "reflect",
    "mel_scale": "htk",
    "norm": None,
    "log": None,
    "top_db": None,
}
_D = {k: _Default(v) for k, v in _DEFAULTS.items()}


@dataclass(frozen=True)
class MelConfig:
    """Resolved, validated arguments (``win_length``, ``hop_length``, ``f_max`` filled in;
    ``normalized`` as ``"none" | "window" | "frame_length"``, ``log`` as a string)."""

    sample_rate: int
    n_fft: int
    win_length: int
    hop_length: int
    f_min: float
    f_max: float
    pad: int
    n_mels: int
    power: float
    normalized: str
    center: bool
    pad_mode: str
    mel_scale: str
    norm: str | None
    log: str
    top_db: float | None

    def num_frames(self, num_samples: int) -> int:
        return _num_frames(num_samples, self.n_fft, self.hop_length, self.pad, self.center)

    def min_samples(self) -> int:
        return _min_samples(self.n_fft, self.pad, self.center, self.pad_mode)


def resolve_config(preset: str | None = None, **kwargs: object) -> MelConfig:
    """Apply ``preset`` to the arguments left at their defaults, then validate everything."""
    if preset is not None:
        check_choice("preset", preset, sorted(MEL_PRESETS))
    base = MEL_PRESETS[preset] if preset is not None else _DEFAULTS
    unknown = set(kwargs) - set(_DEFAULTS)
    if unknown:
        raise TypeError(f"unexpected mel_spectrogram arguments: {sorted(unknown)}")
    v = {}
    for name, default in _DEFAULTS.items():
        x = kwargs.get(name, _D[name])
        v[name] = base.get(name, default) if isinstance(x, _Default) else x

    sample_rate = check_int("sample_rate", v["sample_rate"], min=1)
    n_fft = check_int("n_fft", v["n_fft"], min=2)
    win_length = (
        n_fft if v["win_length"] is None else check_int("win_length", v["win_length"], min=1)
    )
    if win_length > n_fft:
        raise ValueError(f"win_length: expected <= n_fft ({n_fft}), got {win_length}")
    hop = v["hop_length"]
    hop_length = win_length // 2 if hop is None else check_int("hop_length", hop, min=1)
    if hop_length < 1:
        raise ValueError(f"hop_length: win_length // 2 is 0 for win_length {win_length}; pass one")
    f_min = check_float("f_min", v["f_min"], min=0.0)
    f_max = (
        float(sample_rate // 2)
        if v["f_max"] is None
        else check_float("f_max", v["f_max"], min=0.0, min_open=True)
    )
    if f_min > f_max:
        raise ValueError(f"f_min: expected <= f_max ({f_max}), got {f_min}")
    pad = check_int("pad", v["pad"], min=0)
    n_mels = check_int("n_mels", v["n_mels"], min=1)
    power = check_float("power", v["power"], min=0.0, min_open=True)
    if not math.isfinite(power):
        raise ValueError(f"power: expected a finite float, got {power}")
    normalized = v["normalized"]
    if isinstance(normalized, bool):
        normalized = "window" if normalized else "none"
    else:
        check_choice("normalized", normalized, [False, True, "window", "frame_length"])
    center = v["center"]
    if not isinstance(center, bool):
        raise TypeError(f"center: expected a bool, got {type(center).__name__}")
    pad_mode = check_choice("pad_mode", v["pad_mode"], PAD_MODES)
    mel_scale = check_choice("mel_scale", v["mel_scale"], ["htk", "slaney"])
    norm = check_choice("norm", v["norm"], [None, "slaney"])
    log = check_choice("log", v["log"], LOG_MODES)
    top_db = v["top_db"]
    if top_db is not None:
        top_db = check_float("top_db", top_db, min=0.0)
        if log != "db":
            raise ValueError(f"top_db: only applies to log='db', got log={log!r}")
    return MelConfig(
        sample_rate,
        n_fft,
        win_length,
        hop_length,
        f_min,
        f_max,
        pad,
        n_mels,
        power,
        normalized,
        center,
        pad_mode,
        mel_scale,
        norm,
        "none" if log is None else log,
        top_db,
    )


def _num_frames(n: int, n_fft: int, hop: int, pad: int, center: bool) -> int:
    half = n_fft // 2 if center else 0
    return 1 + (n + 2 * pad + 2 * half - n_fft) // hop


def _min_samples(n_fft: int, pad: int, center: bool, pad_mode: str) -> int:
    """Shortest clip torch.stft accepts (after torchaudio's constant ``pad``)."""
    if not center:
        need = n_fft  # padded length >= n_fft
    elif pad_mode == "reflect":
        need = n_fft // 2 + 1  # reflect padding must be shorter than the input
    elif pad_mode == "circular":
        need = n_fft // 2  # may wrap at most once
    else:
        need = 1
    return max(1, need - 2 * pad)


def _too_short(name: str, n: int, n_fft: int, pad: int, center: bool, pad_mode: str) -> str:
    if not center:
        why = f"center=False needs time + 2*pad >= n_fft ({n_fft})"
    elif pad_mode == "reflect":
        why = f"center=True with pad_mode='reflect' needs time + 2*pad > n_fft // 2 ({n_fft // 2})"
    elif pad_mode == "circular":
        why = (
            f"center=True with pad_mode='circular' needs time + 2*pad >= n_fft // 2 ({n_fft // 2})"
        )
    else:
        why = "needs at least 1 sample"
    return f"{name}: {n} samples is too short ({why}, pad={pad})"


def _check_lengths_values(
    lengths: Tensor | None, n: int, n_fft: int, pad: int, center: bool, pad_mode: str
) -> None:
    """lengths within [shortest clip torch.stft takes, time]. Reads them on the host (free for
    CPU lengths, one sync for CUDA ones); runs inside the custom op, so torch.compile'd callers
    get the same checks without tracing data-dependent branches."""
    if lengths is None or lengths.numel() == 0:
        return
    lo, hi = (int(v) for v in torch.stack([lengths.min(), lengths.max()]).tolist())
    if hi > n:
        raise ValueError(f"lengths: {hi} exceeds the waveform's {n} samples")
    if lo < _min_samples(n_fft, pad, center, pad_mode):
        raise ValueError(_too_short("lengths", lo, n_fft, pad, center, pad_mode))


def mel_num_frames(num_samples: int, *, preset: str | None = None, **kwargs: object) -> int:
    """Frames :func:`mel_spectrogram` gives for a clip of ``num_samples`` (same arguments)."""
    cfg = resolve_config(preset, **kwargs)
    n = check_int("num_samples", num_samples, min=0)
    if n < cfg.min_samples():
        raise ValueError(_too_short("num_samples", n, cfg.n_fft, cfg.pad, cfg.center, cfg.pad_mode))
    return cfg.num_frames(n)


# --------------------------------------------------------------------------------------------
# Filterbank and window (cached per configuration and device)
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _filterbank_cpu(
    n_freqs: int,
    f_min: float,
    f_max: float,
    n_mels: int,
    sample_rate: int,
    norm: str | None,
    mel_scale: str,
) -> tuple[Tensor, Tensor, Tensor]:
    import torchaudio

    fb = torchaudio.functional.melscale_fbanks(
        n_freqs, f_min, f_max, n_mels, sample_rate, norm, mel_scale
    )
    fb = fb.to(torch.float32).contiguous()  # (n_freqs, n_mels)
    return (fb, *band_support(fb))


def band_support(fb: Tensor) -> tuple[Tensor, Tensor]:
    """Per band m (column of ``fb``, (n_freqs, n_mels)): ``[lo[m], hi[m])``, the bins between its
    first and last nonzero weight (int32; ``lo = hi = 0`` for an all-zero band)."""
    nz = fb != 0
    n_freqs = fb.shape[0]
    has = nz.any(0)
    lo = nz.to(torch.int8).argmax(0)
    hi = n_freqs - nz.flip(0).to(torch.int8).argmax(0)
    lo = torch.where(has, lo, 0).to(torch.int32)
    hi = torch.where(has, hi, 0).to(torch.int32)
    return lo.contiguous(), hi.contiguous()


@functools.lru_cache(maxsize=64)
def _filterbank_on(cfg_key: tuple, device: str) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(t.to(device) for t in _filterbank_cpu(*cfg_key))


@functools.lru_cache(maxsize=64)
def _window_on(win_length: int, device: str) -> Tensor:
    return torch.hann_window(win_length, device=device)


def filterbank(cfg: MelConfig, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor, Tensor]:
    """``(fb (n_fft//2+1, n_mels) float32, band_lo, band_hi)`` for ``cfg`` — fb is
    ``torchaudio.functional.melscale_fbanks``; the band supports make it sparse."""
    key = (cfg.n_fft // 2 + 1, cfg.f_min, cfg.f_max, cfg.n_mels, cfg.sample_rate, cfg.norm)
    key = (*key, cfg.mel_scale)
    return _filterbank_on(key, str(torch.device(device)))


def window(cfg: MelConfig, device: torch.device | str = "cpu") -> Tensor:
    """``torch.hann_window(win_length)`` (periodic), float32."""
    return _window_on(cfg.win_length, str(torch.device(device)))


@functools.lru_cache(maxsize=64)
def _window_energy(win_length: int) -> float:
    return float(torch.hann_window(win_length, dtype=torch.float64).pow(2).sum())


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _row_lengths(
    lengths: Tensor | None,
    lead: tuple[int, ...],
    n: int,
    n_fft: int,
    hop: int,
    pad: int,
    center: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """(samples per row (N,), frames per row (N,), frame_lengths (B,)) — int64, lengths' device."""
    rows = math.prod(lead)
    half = n_fft // 2 if center else 0
    if lengths is None:
        b = lead[0] if lead else 1
        T = _num_frames(n, n_fft, hop, pad, center)
        full = functools.partial(torch.full, dtype=torch.int64)
        return full((rows,), n), full((rows,), T), full((b,), T)
    lengths = lengths.to(torch.int64)
    flen = 1 + torch.div(lengths + 2 * pad + 2 * half - n_fft, hop, rounding_mode="floor")
    per_item = rows // lead[0] if lead[0] else 0
    return (
        lengths.repeat_interleave(per_item),
        flen.repeat_interleave(per_item),
        flen,
    )


def _top_db_groups(shape: tuple[int, ...], per_item: bool) -> int:
    """torchaudio's amplitude_to_DB grouping (one max per group) for a mel of ``shape``."""
    if per_item:  # each item alone: its own output has shape[1:]
        return math.prod(shape[:-3]) if len(shape) > 4 else shape[0]
    return math.prod(shape[:-3]) if len(shape) > 3 else 1


def _apply_top_db(mel: Tensor, flen_rows: Tensor | None, top_db: float) -> Tensor:
    """Clamp ``mel`` (…, M, T), in place where possible, to ``max − top_db`` per group."""
    shape = tuple(mel.shape)
    if mel.numel() == 0:
        return mel
    g = mel.reshape(_top_db_groups(shape, flen_rows is not None), -1)
    if flen_rows is None:
        mx = g.amax(1, keepdim=True)
        return torch.maximum(g, mx - top_db, out=g).view(shape)
    n_rows = flen_rows.numel()
    t = torch.arange(shape[-1], device=mel.device)
    valid = (t[None, :] < flen_rows.to(mel.device)[:, None]).view(n_rows, 1, shape[-1])
    valid = valid.expand(n_rows, shape[-2], shape[-1]).reshape(g.shape)
    mx = g.masked_fill(~valid, float("-inf")).amax(1, keepdim=True)
    return torch.where(valid, torch.maximum(g, mx - top_db), 0.0).view(shape)


# --------------------------------------------------------------------------------------------
# Reference: torchaudio's code path (torch.stft + abs/pow + dense matmul + log)
# --------------------------------------------------------------------------------------------


def _check_finite(x: Tensor) -> None:
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError("waveform: contains NaN or inf")


def _reference_core(
    x: Tensor,
    window_: Tensor,
    fb: Tensor,
    n_fft: int,
    win_length: int,
    hop_length: int,
    pad: int,
    power: float,
    normalized: str,
    center: bool,
    pad_mode: str,
    log: str,
    top_db: float | None,
) -> Tensor:
    """One clip (or a batch processed as torchaudio would): x (..., time) → (..., M, T)."""
    shape = x.shape
    x = x.reshape(-1, shape[-1])
    if x.shape[0] == 0:
        T = _num_frames(shape[-1], n_fft, hop_length, pad, center)
        return x.new_zeros(shape[:-1] + (fb.shape[1], T))
    if pad > 0:
        x = torch.nn.functional.pad(x, (pad, pad), "constant")
    w = window_.to(x.dtype)
    spec = torch.stft(
        x,
        n_fft=n_fft,
        hop_length=hop_length,
        win_length=win_length,
        window=w,
        center=center,
        pad_mode=pad_mode,
        normalized=normalized == "frame_length",
        onesided=True,
        return_complex=True,
    )
    if normalized == "window":
        spec = spec / w.pow(2.0).sum().sqrt()
    mag = spec.abs()
    p = mag if power == 1.0 else mag.pow(power)
    mel = torch.matmul(p.transpose(-1, -2), fb.to(p.dtype)).transpose(-1, -2)
    mel = mel.reshape(shape[:-1] + mel.shape[-2:])
    if log == "log":
        mel = torch.log(torch.clamp(mel, min=_AMIN))
    elif log == "log1p":
        mel = torch.log1p(mel)
    elif log == "db":
        mel = (20.0 / power) * torch.log10(torch.clamp(mel, min=_AMIN))
        if top_db is not None:  # torchaudio.functional.amplitude_to_DB
            s = mel.shape
            packed = s[-3] if mel.dim() > 2 else 1
            m4 = mel.reshape(-1, packed, s[-2], s[-1])
            m4 = torch.max(m4, (m4.amax(dim=(-3, -2, -1)) - top_db).view(-1, 1, 1, 1))
            mel = m4.reshape(s)
    return mel


def _mel_reference_impl(
    waveform: Tensor,
    lengths: Tensor | None,
    window_: Tensor,
    fb: Tensor,
    band_lo: Tensor,
    band_hi: Tensor,
    n_fft: int,
    win_length: int,
    hop_length: int,
    pad: int,
    power: float,
    normalized: str,
    center: bool,
    pad_mode: str,
    log: str,
    top_db: float | None,
) -> tuple[Tensor, Tensor]:
    del band_lo, band_hi  # the reference applies the dense filterbank, as torchaudio does
    dtype = torch.float64 if waveform.dtype == torch.float64 else torch.float32
    x = waveform.to(dtype)
    args = (window_, fb, n_fft, win_length, hop_length, pad, power, normalized, center, pad_mode)
    lead, n = tuple(x.shape[:-1]), x.shape[-1]
    _, _, flen = _row_lengths(
        None if lengths is None else lengths.cpu(), lead, n, n_fft, hop_length, pad, center
    )
    if lengths is None:
        _check_finite(x)
        return _reference_core(x, *args, log, top_db), flen.to(x.device)
    T = _num_frames(n, n_fft, hop_length, pad, center)
    items = []
    for b, (nb, tb) in enumerate(zip(lengths.tolist(), flen.tolist())):
        clip = x[b, ..., :nb]
        _check_finite(clip)
        mb = _reference_core(clip, *args, log, top_db)
        items.append(torch.nn.functional.pad(mb, (0, T - tb)))
    mel = torch.stack(items) if items else x.new_zeros(lead + (fb.shape[1], T))
    return mel, flen.to(x.device)


_mel_reference_impl.example_inputs = lambda device: (  # type: ignore[attr-defined]
    (torch.randn(2, 16000, device=device), None, window(resolve_config("myna"), device))
    + filterbank(resolve_config("myna"), device)
    + (2048, 2048, 512, 0, 2.0, "none", True, "reflect", "log1p", None),
    {},
)


# --------------------------------------------------------------------------------------------
# Fused pipeline (cpu and triton backends)
# --------------------------------------------------------------------------------------------


def _fused(
    kind: str,
    waveform: Tensor,
    lengths: Tensor | None,
    window_: Tensor,
    fb: Tensor,
    band_lo: Tensor,
    band_hi: Tensor,
    n_fft: int,
    win_length: int,
    hop_length: int,
    pad: int,
    power: float,
    normalized: str,
    center: bool,
    pad_mode: str,
    log: str,
    top_db: float | None,
) -> tuple[Tensor, Tensor]:
    dev = waveform.device
    lead, n = tuple(waveform.shape[:-1]), waveform.shape[-1]
    rows = math.prod(lead)
    x = waveform.reshape(rows, n)
    hop = hop_length
    half = n_fft // 2 if center else 0
    T = _num_frames(n, n_fft, hop, pad, center)
    M = fb.shape[1]
    nf = n_fft // 2 + 1
    per_row, flen_rows, flen = _row_lengths(lengths, lead, n, n_fft, hop, pad, center)
    out = empty(rows, M, T, dtype=torch.float32, device=dev)
    if rows == 0:
        return out.view(*lead, M, T), flen.to(dev)
    per_row32 = per_row.to(device=dev, dtype=torch.int32)
    flen32 = flen_rows.to(device=dev, dtype=torch.int32)
    fb = fb.to(device=dev, dtype=torch.float32).contiguous()
    band_lo = band_lo.to(device=dev, dtype=torch.int32).contiguous()
    band_hi = band_hi.to(device=dev, dtype=torch.int32).contiguous()

    R = -(-(n + 2 * pad + 2 * half) // hop)  # flat frames per row
    S = R * hop  # samples per row of the padded buffer
    if kind == "triton":
        from muse_fast.kernels import mel as K

        buf, flag = K.pad_signal(x, per_row32, S, pad, half, pad_mode)
    else:
        from .._ext import dtype_name, ext, ptr

        buf = empty(rows * S, dtype=torch.float32, device=dev)
        bad = ext().mel_pad(
            ptr(x), dtype_name(x), rows, x.stride(0), x.stride(1), ptr(per_row32),
            ptr(buf), S, pad, half, _PAD_MODE_ID[pad_mode],
        )  # fmt: skip
        if bad:
            raise ValueError("waveform: contains NaN or inf")
        flag = None

    n_used = (rows - 1) * R + T  # flat frames that hold a valid (row, t < T)
    hann3 = win_length == n_fft
    if hann3:  # raw frames; the window is a 3-tap in the power kernel
        frames = buf.as_strided((n_used, n_fft), (hop, 1))
    else:  # win_length samples centered in n_fft: |rfft| does not depend on the offset
        left = (n_fft - win_length) // 2
        frames = buf.as_strided((n_used, win_length), (hop, 1), left)
        w = window_.to(device=dev, dtype=torch.float32)
    if normalized == "window":
        scale = 1.0 / _window_energy(win_length)
    elif normalized == "frame_length":
        scale = 1.0 / n_fft
    else:
        scale = 1.0
    log_mult = 20.0 / power
    chunk = max(2, _CHUNK_BYTES["cuda" if dev.type == "cuda" else "cpu"] // (8 * nf))
    chunk -= chunk % 2  # even: every chunk's first frame is 8-byte aligned (cuFFT clones if not)
    spec = torch.empty(min(chunk, n_used), nf, dtype=torch.complex64, device=dev)
    for j0 in range(0, n_used, chunk):
        cnt = min(chunk, n_used - j0)
        fr = frames[j0 : j0 + cnt]
        if not hann3:
            fr = fr * w
        xr = torch.view_as_real(torch.fft.rfft(fr, n=n_fft, out=spec[:cnt]))
        if not xr.is_contiguous():  # the kernels index (frame, bin, re/im) densely
            xr = xr.contiguous()
        if kind == "triton":
            K.power_mel(
                xr, fb, band_lo, band_hi, flen32, out, j0=j0, R=R, n_fft=n_fft, scale=scale,
                power=power, log=log, log_mult=log_mult, hann3=hann3,
            )  # fmt: skip
        else:
            ext().mel_power_mel(
                ptr(xr), cnt, j0, R, T, n_fft, ptr(fb), ptr(band_lo), ptr(band_hi), M,
                ptr(flen32), ptr(out), scale, power, _LOG_MODE_ID[log], log_mult, hann3,
            )  # fmt: skip
    if flag is not None and int(flag.item()):
        raise ValueError("waveform: contains NaN or inf")
    mel = out.view(*lead, M, T)
    if top_db is not None:
        mel = _apply_top_db(mel, None if lengths is None else flen_rows, top_db)
    return mel, flen.to(dev)


def _mel_triton(*args, **kwargs):
    return _fused("triton", *args, **kwargs)


def _mel_cpu(*args, **kwargs):
    return _fused("cpu", *args, **kwargs)


def _kernel_check(waveform: Tensor, *args, **kwargs) -> str | None:
    if waveform.dtype == torch.float64:
        return "float64 waveform (the kernels compute in float32; the reference keeps float64)"
    return None


def _cpu_check(waveform: Tensor, *args, **kwargs) -> str | None:
    from .._ext import ext

    if not hasattr(ext(), "mel_power_mel"):
        return "the built muse_fast._C predates the mel kernels; rebuild the extension"
    return _kernel_check(waveform)


_MEL = register(
    Op(
        "mel_spectrogram",
        reference=_mel_reference_impl,
        triton=_mel_triton,
        cpu=_mel_cpu,
        triton_check=_kernel_check,
        cpu_check=_cpu_check,
    )
)


# --------------------------------------------------------------------------------------------
# custom op (torch.compile) + autograd (through the reference)
# --------------------------------------------------------------------------------------------


@torch.library.custom_op("muse_fast::mel_spectrogram", mutates_args=())
def _mel_op(
    waveform: Tensor,
    lengths: Tensor | None,
    window_: Tensor | None,
    fb: Tensor | None,
    band_lo: Tensor | None,
    band_hi: Tensor | None,
    sample_rate: int,
    n_fft: int,
    win_length: int,
    hop_length: int,
    f_min: float,
    f_max: float,
    pad: int,
    n_mels: int,
    power: float,
    normalized: str,
    center: bool,
    pad_mode: str,
    mel_scale: str,
    norm: str | None,
    log: str,
    top_db: float | None,
) -> tuple[Tensor, Tensor]:
    # The filterbank and window come from the module's buffers, or (None: functional calls) from
    # the per-device cache — looked up here, where torch.compile does not trace.
    if fb is None or band_lo is None or band_hi is None:
        key = (n_fft // 2 + 1, f_min, f_max, n_mels, sample_rate, norm, mel_scale)
        fb, band_lo, band_hi = _filterbank_on(key, str(waveform.device))
    if window_ is None:
        window_ = _window_on(win_length, str(waveform.device))
    _check_lengths_values(lengths, waveform.shape[-1], n_fft, pad, center, pad_mode)
    return _MEL(
        waveform, lengths, window_, fb, band_lo, band_hi, n_fft, win_length, hop_length, pad,
        power, normalized, center, pad_mode, log, top_db,
    )  # fmt: skip


@_mel_op.register_fake
def _(waveform, lengths, window_, fb, band_lo, band_hi, sample_rate, n_fft, win_length, hop, *rest):
    f_min, f_max, pad, n_mels, power, normalized, center = rest[:7]
    T = _num_frames(waveform.shape[-1], n_fft, hop, pad, center)
    dtype = torch.float64 if waveform.dtype == torch.float64 else torch.float32
    b = waveform.shape[0] if waveform.dim() > 1 else 1
    return (
        waveform.new_empty(*waveform.shape[:-1], n_mels, T, dtype=dtype),
        waveform.new_empty(b, dtype=torch.int64),
    )


def _mel_setup(ctx, inputs, output):
    waveform, lengths, window_, fb, band_lo, band_hi, *scalars = inputs
    ctx.save_for_backward(waveform, lengths, window_, fb, band_lo, band_hi)
    ctx.scalars = scalars
    ctx.mark_non_differentiable(output[1])


def _mel_backward(ctx, grad_mel, _grad_flen):
    waveform, lengths, window_, fb, band_lo, band_hi = ctx.saved_tensors
    (sr, n_fft, win, hop, f_min, f_max, pad, n_mels, power, normalized, center, pad_mode,
     mel_scale, norm, log, top_db) = ctx.scalars  # fmt: skip
    if fb is None:
        fb = _filterbank_on(
            (n_fft // 2 + 1, f_min, f_max, n_mels, sr, norm, mel_scale), str(waveform.device)
        )[0]
    if window_ is None:
        window_ = _window_on(win, str(waveform.device))
    with torch.enable_grad():
        x = waveform.detach().requires_grad_(True)
        mel, _ = _mel_reference_impl(
            x, lengths, window_, fb, None, None, n_fft, win, hop, pad, power, normalized, center,
            pad_mode, log, top_db,
        )  # fmt: skip
        (gx,) = torch.autograd.grad(mel, x, grad_mel)
    return (gx,) + (None,) * 21


_mel_op.register_autograd(_mel_backward, setup_context=_mel_setup)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _validate(waveform: object, lengths: object, cfg: MelConfig) -> tuple[Tensor, Tensor | None]:
    check_tensor(
        "waveform",
        waveform,
        min_ndim=1,
        dtypes=(torch.float32, torch.bfloat16, torch.float16, torch.float64),
    )
    n = waveform.shape[-1]
    if lengths is None:
        if n < cfg.min_samples():
            raise ValueError(
                _too_short("waveform", n, cfg.n_fft, cfg.pad, cfg.center, cfg.pad_mode)
            )
        return waveform, None
    if not isinstance(lengths, torch.Tensor):
        if isinstance(lengths, (list, tuple)):
            lengths = torch.tensor(lengths, dtype=torch.int64, device=waveform.device)
        else:
            raise TypeError(
                f"lengths: expected a tensor or a list of ints, got {type(lengths).__name__}"
            )
    if waveform.dim() < 2:
        raise ValueError(
            f"lengths: needs a batched waveform (B, ..., time), got shape {tuple(waveform.shape)}"
        )
    check_tensor(
        "lengths",
        lengths,
        shape=(waveform.shape[0],),
        dtypes=(torch.int64, torch.int32, torch.int16),
    )
    if lengths.device != waveform.device and lengths.device.type != "cpu":
        check_same_device(waveform=waveform, lengths=lengths)
    # values are checked inside the op (_check_lengths_values)
    return waveform, lengths.to(waveform.device, non_blocking=True)


def _run(
    waveform,
    lengths,
    cfg: MelConfig,
    window_: Tensor | None = None,
    fb: Tensor | None = None,
    lo: Tensor | None = None,
    hi: Tensor | None = None,
):
    waveform, lengths = _validate(waveform, lengths, cfg)
    mel, flen = _mel_op(
        waveform, lengths, window_, fb, lo, hi, cfg.sample_rate, cfg.n_fft, cfg.win_length,
        cfg.hop_length, cfg.f_min, cfg.f_max, cfg.pad, cfg.n_mels, cfg.power, cfg.normalized,
        cfg.center, cfg.pad_mode, cfg.mel_scale, cfg.norm, cfg.log, cfg.top_db,
    )  # fmt: skip
    return mel if lengths is None else (mel, flen)


def mel_spectrogram(
    waveform: Tensor,
    sample_rate: int = _D["sample_rate"],
    n_fft: int = _D["n_fft"],
    win_length: int | None = _D["win_length"],
    hop_length: int | None = _D["hop_length"],
    f_min: float = _D["f_min"],
    f_max: float | None = _D["f_max"],
    pad: int = _D["pad"],
    n_mels: int = _D["n_mels"],
    power: float = _D["power"],
    normalized: bool | str = _D["normalized"],
    center: bool = _D["center"],
    pad_mode: str = _D["pad_mode"],
    mel_scale: str = _D["mel_scale"],
    norm: str | None = _D["norm"],
    *,
    log: str | None = _D["log"],
    top_db: float | None = _D["top_db"],
    lengths: Tensor | None = None,
    preset: str | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Mel spectrogram of ``waveform`` (..., time) → float32 (..., n_mels, frames).

    ``torchaudio.transforms.MelSpectrogram(sample_rate, n_fft, win_length, hop_length, f_min,
    f_max, pad, n_mels, torch.hann_window, power, normalized, center=center, pad_mode=pad_mode,
    norm=norm, mel_scale=mel_scale)`` then ``log`` (None | "log" | "log1p" | "db", with
    ``top_db`` as ``AmplitudeToDB``). With ``lengths`` (B,) returns ``(mel, frame_lengths)``;
    see the module docstring for the exact rules. ``preset`` ("musicfm", "myna") fills every
    argument not passed explicitly.
    """
    cfg = resolve_config(
        preset,
        sample_rate=sample_rate, n_fft=n_fft, win_length=win_length, hop_length=hop_length,
        f_min=f_min, f_max=f_max, pad=pad, n_mels=n_mels, power=power, normalized=normalized,
        center=center, pad_mode=pad_mode, mel_scale=mel_scale, norm=norm, log=log, top_db=top_db,
    )  # fmt: skip
    return _run(waveform, lengths, cfg)


def mel_spectrogram_reference(
    waveform: Tensor,
    sample_rate: int = _D["sample_rate"],
    n_fft: int = _D["n_fft"],
    win_length: int | None = _D["win_length"],
    hop_length: int | None = _D["hop_length"],
    f_min: float = _D["f_min"],
    f_max: float | None = _D["f_max"],
    pad: int = _D["pad"],
    n_mels: int = _D["n_mels"],
    power: float = _D["power"],
    normalized: bool | str = _D["normalized"],
    center: bool = _D["center"],
    pad_mode: str = _D["pad_mode"],
    mel_scale: str = _D["mel_scale"],
    norm: str | None = _D["norm"],
    *,
    log: str | None = _D["log"],
    top_db: float | None = _D["top_db"],
    lengths: Tensor | None = None,
    preset: str | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """:func:`mel_spectrogram` computed the eager torchaudio way (``torch.stft``, ``abs().pow``,
    a dense matmul with the filterbank, the log ops; with ``lengths``, one clip at a time).
    Differentiable. The benchmark baseline and the ground truth of the tests."""
    cfg = resolve_config(
        preset,
        sample_rate=sample_rate, n_fft=n_fft, win_length=win_length, hop_length=hop_length,
        f_min=f_min, f_max=f_max, pad=pad, n_mels=n_mels, power=power, normalized=normalized,
        center=center, pad_mode=pad_mode, mel_scale=mel_scale, norm=norm, log=log, top_db=top_db,
    )  # fmt: skip
    waveform, lengths = _validate(waveform, lengths, cfg)
    _check_lengths_values(lengths, waveform.shape[-1], cfg.n_fft, cfg.pad, cfg.center, cfg.pad_mode)
    dev = waveform.device
    mel, flen = _mel_reference_impl(
        waveform, lengths, window(cfg, dev), *filterbank(cfg, dev), cfg.n_fft, cfg.win_length,
        cfg.hop_length, cfg.pad, cfg.power, cfg.normalized, cfg.center, cfg.pad_mode, cfg.log,
        cfg.top_db,
    )  # fmt: skip
    return mel if lengths is None else (mel, flen)


mel_spectrogram_reference.example_inputs = lambda device: (  # type: ignore[attr-defined]
    (torch.randn(2, 16000, device=device),),
    {"preset": "myna"},
)


# --------------------------------------------------------------------------------------------
# Frame stacking
# --------------------------------------------------------------------------------------------


def stack_frames(mel: torch.Tensor, factor: int) -> torch.Tensor:
    """Stack ``factor`` consecutive frames into one: (B, F, T) → (B, F·factor, T // factor).

    Output frame ``t`` is input frames ``t·k, t·k+1, ..., t·k+k-1`` concatenated in that order
    along the feature axis: ``out[b, s·F + f, t] = mel[b, f, t·k + s]`` — MusicFM's
    ``rearrange(x, "b f (t s) -> b t (s f)")`` transposed back to (B, F·k, T // k). Trailing
    frames that do not fill a group (``T % k`` of them) are dropped. A 2-D (F, T) input gives a
    2-D (F·k, T // k) output. Pure view/reshape ops: differentiable, any dtype and device.
    """
    check_tensor("mel", mel, ndim=(2, 3))
    k = check_int("factor", factor, min=1)
    squeeze = mel.dim() == 2
    x = mel.unsqueeze(0) if squeeze else mel
    b, f, t = x.shape
    n = t // k
    # (B, F, n, k) -> (B, k, F, n) -> (B, k*F, n)
    out = x[..., : n * k].reshape(b, f, n, k).permute(0, 3, 1, 2).reshape(b, k * f, n)
    return out.squeeze(0) if squeeze else out
