"""The eager definition of :func:`muse_fast.ops.mel_spectrogram`: torchaudio's code path
(``torch.stft``, ``abs().pow``, a dense matmul with ``melscale_fbanks``, the log ops), plus the
filterbank / window caches and row bookkeeping the kernels' pipeline shares with it."""

from __future__ import annotations

import functools
import math

import torch

from .mel_config import ResolvedMel

Tensor = torch.Tensor
_AMIN = 1e-10


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
def _tables(key: tuple, device: str) -> tuple[Tensor, Tensor, Tensor]:
    """``key`` = (n_freqs, f_min, f_max, n_mels, sample_rate, norm, mel_scale)."""
    if device != "cpu":
        return tuple(t.to(device) for t in _tables(key, "cpu"))
    import torchaudio

    fb = torchaudio.functional.melscale_fbanks(*key).to(torch.float32).contiguous()
    return (fb, *band_support(fb))  # fb (n_freqs, n_mels)


def _fb_key(r: ResolvedMel) -> tuple:
    return (r.n_fft // 2 + 1, r.f_min, r.f_max, r.n_mels, r.sample_rate, r.norm, r.mel_scale)


@functools.lru_cache(maxsize=64)
def _window_on(win_length: int, device: str) -> Tensor:
    return torch.hann_window(win_length, device=device)


@functools.lru_cache(maxsize=64)
def _window_energy(win_length: int) -> float:
    return float(torch.hann_window(win_length, dtype=torch.float64).pow(2).sum())


def _row_lengths(
    lengths: Tensor | None, lead: tuple[int, ...], n: int, r: ResolvedMel
) -> tuple[Tensor, Tensor, Tensor]:
    """(samples per row (N,), frames per row (N,), frame_lengths (B,)) — int64, lengths' device."""
    rows = math.prod(lead)
    if lengths is None:
        full = functools.partial(torch.full, dtype=torch.int64)
        T = r.num_frames(n)
        return full((rows,), n), full((rows,), T), full((lead[0] if lead else 1,), T)
    lengths = lengths.to(torch.int64)
    flen = 1 + torch.div(
        lengths + 2 * r.pad + 2 * r.half - r.n_fft, r.hop_length, rounding_mode="floor"
    )
    per_item = rows // lead[0] if lead[0] else 0
    return lengths.repeat_interleave(per_item), flen.repeat_interleave(per_item), flen


def _raise_if_nonfinite(x: Tensor) -> None:
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError("waveform: contains NaN or inf")


def _log(mel: Tensor, r: ResolvedMel) -> Tensor:
    if r.log == "log":
        return torch.log(torch.clamp(mel, min=_AMIN))
    if r.log == "log1p":
        return torch.log1p(mel)
    if r.log != "db":
        return mel
    mel = (20.0 / r.power) * torch.log10(torch.clamp(mel, min=_AMIN))
    if r.top_db is not None:  # torchaudio.functional.amplitude_to_DB
        s = mel.shape
        packed = s[-3] if mel.dim() > 2 else 1
        m4 = mel.reshape(-1, packed, s[-2], s[-1])  # (groups, packed, M, T)
        m4 = torch.max(m4, (m4.amax(dim=(-3, -2, -1)) - r.top_db).view(-1, 1, 1, 1))
        mel = m4.reshape(s)
    return mel


# --------------------------------------------------------------------------------------------
# Reference: torchaudio's code path (torch.stft + abs/pow + dense matmul + log)
# --------------------------------------------------------------------------------------------


def _reference_core(x: Tensor, r: ResolvedMel) -> Tensor:
    """One clip (or a batch processed as torchaudio would): x (..., time) → (..., M, T)."""
    shape = x.shape
    x = x.reshape(-1, shape[-1])  # (rows, time)
    if x.shape[0] == 0:
        return x.new_zeros(shape[:-1] + (r.n_mels, r.num_frames(shape[-1])))
    if r.pad > 0:
        x = torch.nn.functional.pad(x, (r.pad, r.pad), "constant")
    w = _window_on(r.win_length, str(x.device)).to(x.dtype)
    spec = torch.stft(
        x, n_fft=r.n_fft, hop_length=r.hop_length, win_length=r.win_length, window=w,
        center=r.center, pad_mode=r.pad_mode, normalized=r.normalized == "frame_length",
        onesided=True, return_complex=True,
    )  # fmt: skip
    if r.normalized == "window":
        spec = spec / w.pow(2.0).sum().sqrt()
    mag = spec.abs()
    p = mag if r.power == 1.0 else mag.pow(r.power)
    fb = _tables(_fb_key(r), str(x.device))[0].to(p.dtype)
    mel = torch.matmul(p.transpose(-1, -2), fb).transpose(-1, -2)  # (rows, M, T)
    return _log(mel.reshape(shape[:-1] + mel.shape[-2:]), r)


def _reference(waveform: Tensor, lengths: Tensor | None, r: ResolvedMel, check: bool):
    dtype = torch.float64 if waveform.dtype == torch.float64 else torch.float32
    x = waveform.to(dtype)
    lead, n = tuple(x.shape[:-1]), x.shape[-1]
    _, _, flen = _row_lengths(None if lengths is None else lengths.cpu(), lead, n, r)
    if lengths is None:
        if check:
            _raise_if_nonfinite(x)
        return _reference_core(x, r), flen.to(x.device)
    T = r.num_frames(n)
    items = []
    for b, (nb, tb) in enumerate(zip(lengths.tolist(), flen.tolist())):
        clip = x[b, ..., :nb]
        if check:
            _raise_if_nonfinite(clip)
        items.append(torch.nn.functional.pad(_reference_core(clip, r), (0, T - tb)))
    mel = torch.stack(items) if items else x.new_zeros(lead + (r.n_mels, T))
    return mel, flen.to(x.device)


def _mel_reference(
    waveform: Tensor,
    lengths: Tensor | None,
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
    check_finite: bool,
) -> tuple[Tensor, Tensor]:
    """The backend op's signature: the waveform, lengths, :class:`ResolvedMel`'s fields in
    order, and whether to check for NaN/inf."""
    r = ResolvedMel(
        sample_rate, n_fft, win_length, hop_length, f_min, f_max, pad, n_mels, power,
        normalized, center, pad_mode, mel_scale, norm, log, top_db,
    )  # fmt: skip
    return _reference(waveform, lengths, r, check_finite)
