"""Mel spectrograms with torchaudio's semantics, and MusicFM's frame stacking.

``mel_spectrogram(waveform, config, **overrides)`` equals ``torchaudio.transforms.MelSpectrogram``
(hann window, ``melscale_fbanks`` filterbank) followed by an optional log, for every argument
torchaudio takes; ``config`` is a :class:`~muse_fast.ops.mel_config.MelConfig`, a preset name
(``"musicfm"``, ``"myna"``) or None (torchaudio's defaults). docs/design.md ("Mel spectrogram")
states the contract: frame counts, ``lengths``, ``top_db`` grouping, NaN/inf checks, the
precision rule, and the pipeline the ``cpu`` and ``triton`` backends share (pad kernel ->
``torch.fft.rfft`` in L2-sized chunks -> power/mel/log kernel; :mod:`muse_fast.kernels.mel`,
``csrc/mel.cpp``).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import astuple, dataclass

import torch

from .._backend import declare
from .._runtime import empty
from ._checks import check_int, check_same_device, check_tensor
from .mel_config import MEL_PRESETS, PRESETS, MelConfig, ResolvedMel, mel_config
from .mel_reference import (
    _fb_key,
    _mel_reference,
    _reference,
    _row_lengths,
    _tables,
    _window_energy,
    _window_on,
    band_support,  # noqa: F401  (importable here, as before)
)

__all__ = [
    "MEL_PRESETS",
    "MelConfig",
    "mel_config",
    "mel_filterbank",
    "mel_num_frames",
    "mel_spectrogram",
    "mel_spectrogram_reference",
    "mel_window",
    "stack_frames",
]

Tensor = torch.Tensor
# C++ backend: complex spectrum per FFT chunk (why not smaller: docs/design.md, "Mel spectrogram").
_CPU_CHUNK_BYTES = 16 << 20


# --------------------------------------------------------------------------------------------
# Filterbank and window (cached per configuration and device)
# --------------------------------------------------------------------------------------------


def mel_filterbank(
    config: MelConfig | str | None = None, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor, Tensor]:
    """``(fb (n_fft//2+1, n_mels) float32, band_lo, band_hi)`` of ``config``: fb is
    ``torchaudio.functional.melscale_fbanks``; the band supports make it sparse."""
    return _tables(_fb_key(mel_config(config).resolved()), str(torch.device(device)))


def mel_window(config: MelConfig | str | None = None, device: torch.device | str = "cpu") -> Tensor:
    """``torch.hann_window(win_length)`` (periodic, float32) of ``config``."""
    return _window_on(mel_config(config).resolved().win_length, str(torch.device(device)))


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _check_lengths_values(lengths: Tensor | None, n: int, r: ResolvedMel) -> None:
    """lengths within [shortest clip torch.stft takes, time]. Reads them on the host (free for
    CPU lengths, one sync for CUDA ones); runs inside the custom op, so torch.compile'd callers
    get the same checks without tracing data-dependent branches."""
    if lengths is None or lengths.numel() == 0:
        return
    lo, hi = (int(v) for v in torch.stack([lengths.min(), lengths.max()]).tolist())
    if hi > n:
        raise ValueError(f"lengths: {hi} exceeds the waveform's {n} samples")
    if lo < r.min_samples():
        raise ValueError(r.too_short("lengths", lo))


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
    g = mel.reshape(_top_db_groups(shape, flen_rows is not None), -1)  # (groups, rest)
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
# Fused pipeline (cpu and triton backends)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Kernels:
    """One backend's two kernels and its FFT chunk size, behind the same signatures."""

    pad: Callable[..., Tensor | None]  # (x, row_lengths, buf, S, r, check) -> flags | None
    power_mel: Callable[..., None]
    chunk_bytes: Callable[[torch.device], int]


def _triton_kernels() -> _Kernels:
    from muse_fast.kernels import mel as K

    def pad(x, row_lengths, S, r, check):
        return K.pad_signal(x, row_lengths, S, r.pad, r.half, r.pad_mode_id, check)

    return _Kernels(pad, K.power_mel, K.chunk_bytes)


def _cpu_kernels() -> _Kernels:
    from .._ext import dtype_name, ext, ptr

    def pad(x, row_lengths, S, r, check):
        buf = empty(x.shape[0] * S, dtype=torch.float32, device=x.device)
        bad = ext().mel_pad(
            ptr(x), dtype_name(x), x.shape[0], x.stride(0), x.stride(1), ptr(row_lengths),
            ptr(buf), S, r.pad, r.half, r.pad_mode_id,
        )  # fmt: skip
        if bad and check:
            raise ValueError("waveform: contains NaN or inf")
        return buf, None

    def power_mel(spec, fb, lo, hi, flen, out, *, j0, R, n_fft, scale, power, log, log_mult,
                  hann3, rows, frames):  # fmt: skip
        del rows, frames  # the C++ kernel walks flat frames and skips the gaps between rows
        ext().mel_power_mel(
            ptr(spec), spec.shape[0], j0, R, out.shape[-1], n_fft, ptr(fb), ptr(lo), ptr(hi),
            fb.shape[1], ptr(flen), ptr(out), scale, power, log, log_mult, hann3,
        )  # fmt: skip

    return _Kernels(pad, power_mel, lambda device: _CPU_CHUNK_BYTES)


def _chunks(rows: int, R: int, T: int, per_chunk: int):
    """(row0, n_rows, t0, t1, j0, n_frames) chunks of the flat frames: whole rows when a row's
    spectrum fits, else even-length segments of one row (even, so every chunk's first sample
    stays 8-byte aligned and the FFT reads it in place)."""
    if per_chunk >= R:
        k = per_chunk // R
        for row0 in range(0, rows, k):
            nr = min(k, rows - row0)
            yield row0, nr, 0, T, row0 * R, (nr - 1) * R + T
        return
    seg = max(2, per_chunk - per_chunk % 2)
    for row in range(rows):
        for t0 in range(0, T, seg):
            t1 = min(T, t0 + seg)
            yield row, 1, t0, t1, row * R + t0, t1 - t0


def _fused(kernels: _Kernels, waveform: Tensor, lengths: Tensor | None, r: ResolvedMel, check):
    dev = waveform.device
    lead, n = tuple(waveform.shape[:-1]), waveform.shape[-1]
    rows, T, M, nf = math.prod(lead), r.num_frames(n), r.n_mels, r.n_fft // 2 + 1
    x = waveform.reshape(rows, n)  # (N, time)
    per_row, flen_rows, flen = _row_lengths(lengths, lead, n, r)
    out = empty(rows, M, T, dtype=torch.float32, device=dev)  # (N, M, T)
    if rows == 0:
        return out.view(*lead, M, T), flen.to(dev)
    fb, lo, hi = _tables(_fb_key(r), str(dev))
    flen32 = flen_rows.to(device=dev, dtype=torch.int32)
    hop = r.hop_length
    R = -(-(n + 2 * r.pad + 2 * r.half) // hop)  # flat frames per row
    R += R % 2 if hop % 2 else 0  # even R * hop: every row starts 8-byte aligned
    S = R * hop  # samples per row of the padded buffer
    len32 = per_row.to(device=dev, dtype=torch.int32)
    hann3 = r.win_length == r.n_fft  # raw frames; the window is a 3-tap in the power kernel
    left = (r.n_fft - r.win_length) // 2  # else win_length samples centered in n_fft
    w = None if hann3 else _window_on(r.win_length, str(dev))
    scale = {"window": 1.0 / _window_energy(r.win_length), "frame_length": 1.0 / r.n_fft}
    per_chunk = max(2, kernels.chunk_bytes(dev) // (8 * nf))
    flags = []
    for row0, nr, t0, t1, j0, cnt in _chunks(rows, R, T, per_chunk):
        if t0 == 0:  # new rows: pad just them, so the FFT reads the padded signal from cache
            buf, bad = kernels.pad(x[row0 : row0 + nr], len32[row0 : row0 + nr], S, r, check)
            flags += [] if bad is None else [bad]
            frames = buf.as_strided(((nr - 1) * R + T, r.win_length), (hop, 1), left)  # (F, win)
        fr = frames[t0 : t0 + cnt]  # flat frame j0 is local frame j0 - row0 * R = t0
        # (cnt, nf, 2): re/im pairs of the one-sided spectrum
        spec = torch.view_as_real(torch.fft.rfft(fr if w is None else fr * w, n=r.n_fft))
        kernels.power_mel(
            spec, fb, lo, hi, flen32, out, rows=(row0, row0 + nr), frames=(t0, t1), j0=j0, R=R,
            n_fft=r.n_fft, scale=scale.get(r.normalized, 1.0), power=r.power, log=r.log_id,
            log_mult=20.0 / r.power, hann3=hann3,
        )  # fmt: skip
        del spec  # the next chunk's FFT reuses this block while it is still in L2
    if flags and bool(torch.cat(flags).any()):  # only when checking (free on the CPU)
        raise ValueError("waveform: contains NaN or inf")
    mel = out.view(*lead, M, T)
    if r.top_db is not None:
        mel = _apply_top_db(mel, None if lengths is None else flen_rows, r.top_db)
    return mel, flen.to(dev)


def _backend(kernels: Callable[[], _Kernels]) -> Callable[..., tuple[Tensor, Tensor]]:
    get = functools.cache(kernels)

    def run(waveform, lengths, *spec):
        return _fused(get(), waveform, lengths, ResolvedMel(*spec[:-1]), spec[-1])

    return run


def _kernel_check(waveform: Tensor, *args, **kwargs) -> str | None:
    if waveform.dtype == torch.float64:
        return "float64 waveform (the kernels compute in float32; the reference keeps float64)"
    return None


def _cpu_check(waveform: Tensor, *args, **kwargs) -> str | None:
    from .._ext import ext

    if not hasattr(ext(), "mel_power_mel"):
        return "the built muse_fast._C predates the mel kernels; rebuild the extension"
    return _kernel_check(waveform)


def _fake(waveform: Tensor, lengths: Tensor | None, *spec) -> tuple[Tensor, Tensor]:
    r = ResolvedMel(*spec[:-1])
    dtype = torch.float64 if waveform.dtype == torch.float64 else torch.float32
    b = waveform.shape[0] if waveform.dim() > 1 else 1
    T = r.num_frames(waveform.shape[-1])
    return (
        waveform.new_empty(*waveform.shape[:-1], r.n_mels, T, dtype=dtype),
        waveform.new_empty(b, dtype=torch.int64),
    )


def _setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1])
    ctx.spec = inputs[2:]
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, grad_mel, _grad_flen):
    """Through the eager reference, recomputed (first order only)."""
    waveform, lengths = ctx.saved_tensors
    with torch.enable_grad():
        x = waveform.detach().requires_grad_(True)
        mel, _ = _reference(x, lengths, ResolvedMel(*ctx.spec[:-1]), False)
        (gx,) = torch.autograd.grad(mel, x, grad_mel)
    return (gx,) + (None,) * (1 + len(ctx.spec))


def _example_inputs(device: torch.device) -> tuple[tuple, dict]:
    spec = astuple(PRESETS["myna"].resolved())
    return (torch.randn(2, 16000, device=device), None, *spec, device.type == "cpu"), {}


_MEL = declare(
    "mel_spectrogram",
    reference=_mel_reference,
    triton=_backend(_triton_kernels),
    cpu=_backend(_cpu_kernels),
    checks={"triton": _kernel_check, "cpu": _cpu_check},
    example_inputs=_example_inputs,
    fake=_fake,
    backward=_backward,
    setup_context=_setup,
    validate=lambda waveform, lengths, *spec: _check_lengths_values(
        lengths, waveform.shape[-1], ResolvedMel(*spec[:-1])
    ),
)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _config(config: MelConfig | str | None, preset: str | None, overrides: dict) -> MelConfig:
    if preset is not None:
        warnings.warn(
            "mel_spectrogram(preset=...) is deprecated; pass the preset as config "
            f"(mel_spectrogram(waveform, {preset!r}))",
            DeprecationWarning,
            stacklevel=3,
        )
        if config is not None:
            raise TypeError("preset: pass either config or preset, not both")
        if not isinstance(preset, str) or preset not in PRESETS:
            raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {preset!r}")
        config = preset
    return mel_config(config, **overrides)


def _validate(waveform: object, lengths: object, r: ResolvedMel) -> tuple[Tensor, Tensor | None]:
    dtypes = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
    check_tensor("waveform", waveform, min_ndim=1, dtypes=dtypes)
    n = waveform.shape[-1]
    if lengths is None:
        if n < r.min_samples():
            raise ValueError(r.too_short("waveform", n))
        return waveform, None
    if isinstance(lengths, (list, tuple)):
        lengths = torch.tensor(lengths, dtype=torch.int64, device=waveform.device)
    elif not isinstance(lengths, torch.Tensor):
        raise TypeError(
            f"lengths: expected a tensor or a list of ints, got {type(lengths).__name__}"
        )
    if waveform.dim() < 2:
        raise ValueError(
            f"lengths: needs a batched waveform (B, ..., time), got shape {tuple(waveform.shape)}"
        )
    int_dtypes = (torch.int64, torch.int32, torch.int16)
    check_tensor("lengths", lengths, shape=(waveform.shape[0],), dtypes=int_dtypes)
    if lengths.device != waveform.device and lengths.device.type != "cpu":
        check_same_device(waveform=waveform, lengths=lengths)
    # values are checked inside the op (_check_lengths_values)
    return waveform, lengths.to(waveform.device, non_blocking=True)


def mel_spectrogram(
    waveform: Tensor,
    config: MelConfig | str | None = None,
    *,
    lengths: Tensor | None = None,
    check_finite: bool | None = None,
    preset: str | None = None,
    **overrides: object,
) -> Tensor | tuple[Tensor, Tensor]:
    """Mel spectrogram of ``waveform`` (..., time) → float32 (..., n_mels, frames).

    ``config``: a :class:`MelConfig`, a preset name (``"musicfm"``, ``"myna"``) or None
    (``torchaudio.transforms.MelSpectrogram``'s defaults); ``overrides`` are MelConfig fields
    (torchaudio's keyword names plus ``log``, ``top_db``) and win over the config. With
    ``lengths`` (B,) returns ``(mel, frame_lengths)``. ``check_finite``: raise ValueError on
    NaN/inf samples; the default (None) checks where it costs no host sync (CPU tensors) and on
    CUDA lets them propagate into the mel, as torchaudio does. ``preset=`` is the deprecated
    spelling of ``config``.
    """
    r = _config(config, preset, overrides).resolved()
    waveform, lengths = _validate(waveform, lengths, r)
    check = waveform.device.type == "cpu" if check_finite is None else bool(check_finite)
    mel, flen = _MEL(waveform, lengths, *astuple(r), check)
    return mel if lengths is None else (mel, flen)


def mel_spectrogram_reference(
    waveform: Tensor,
    config: MelConfig | str | None = None,
    *,
    lengths: Tensor | None = None,
    preset: str | None = None,
    **overrides: object,
) -> Tensor | tuple[Tensor, Tensor]:
    """:func:`mel_spectrogram` computed the eager torchaudio way (``torch.stft``, ``abs().pow``,
    a dense matmul with the filterbank, the log ops; with ``lengths``, one clip at a time).
    Differentiable. The benchmark baseline and the ground truth of the tests."""
    r = _config(config, preset, overrides).resolved()
    waveform, lengths = _validate(waveform, lengths, r)
    _check_lengths_values(lengths, waveform.shape[-1], r)
    mel, flen = _reference(waveform, lengths, r, True)
    return mel if lengths is None else (mel, flen)


def mel_num_frames(
    num_samples: int,
    config: MelConfig | str | None = None,
    *,
    preset: str | None = None,
    **overrides: object,
) -> int:
    """Frames :func:`mel_spectrogram` gives for a clip of ``num_samples`` (same arguments)."""
    r = _config(config, preset, overrides).resolved()
    n = check_int("num_samples", num_samples, min=0)
    if n < r.min_samples():
        raise ValueError(r.too_short("num_samples", n))
    return r.num_frames(n)


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
