"""``MelSpectrogram``: a drop-in for ``torchaudio.transforms.MelSpectrogram`` (+ ``AmplitudeToDB``)
running :func:`muse_fast.ops.mel_spectrogram`."""

from __future__ import annotations

import torch
from torch import nn

from ..ops.mel import _D, _run, filterbank, resolve_config, window

__all__ = ["MelSpectrogram"]


class MelSpectrogram(nn.Module):
    """``torchaudio.transforms.MelSpectrogram`` arguments, plus ``log``, ``top_db`` and ``preset``.

    The hann window and the filterbank (and its per-band bin ranges) are non-persistent buffers:
    they follow ``.to(device)`` and stay out of ``state_dict`` (they are a function of the
    arguments). ``forward(waveform, lengths=None)`` returns the mel (..., n_mels, frames), or
    ``(mel, frame_lengths)`` when ``lengths`` is given — see :func:`muse_fast.ops.mel_spectrogram`.
    """

    def __init__(
        self,
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
        preset: str | None = None,
    ) -> None:
        super().__init__()
        self.config = resolve_config(
            preset,
            sample_rate=sample_rate, n_fft=n_fft, win_length=win_length, hop_length=hop_length,
            f_min=f_min, f_max=f_max, pad=pad, n_mels=n_mels, power=power, normalized=normalized,
            center=center, pad_mode=pad_mode, mel_scale=mel_scale, norm=norm, log=log,
            top_db=top_db,
        )  # fmt: skip
        fb, lo, hi = filterbank(self.config)
        self.register_buffer("window", window(self.config).clone(), persistent=False)
        self.register_buffer("fb", fb.clone(), persistent=False)
        self.register_buffer("band_lo", lo.clone(), persistent=False)
        self.register_buffer("band_hi", hi.clone(), persistent=False)

    def _apply(self, fn, recurse=True):
        # .half() / .to(dtype) would round the filterbank and window: rebuild them in float32
        # on the new device instead (they are functions of the configuration).
        super()._apply(fn, recurse)
        dev = self.fb.device
        if self.fb.dtype != torch.float32:
            self.fb = filterbank(self.config, dev)[0].clone()
        if self.window.dtype != torch.float32:
            self.window = window(self.config, dev).clone()
        return self

    # torchaudio-style attributes
    sample_rate = property(lambda self: self.config.sample_rate)
    n_fft = property(lambda self: self.config.n_fft)
    win_length = property(lambda self: self.config.win_length)
    hop_length = property(lambda self: self.config.hop_length)
    n_mels = property(lambda self: self.config.n_mels)

    def num_frames(self, num_samples: int) -> int:
        """Frames the forward gives for a clip of ``num_samples`` samples."""
        return self.config.num_frames(num_samples)

    def forward(
        self, waveform: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return _run(
            waveform,
            lengths,
            self.config,
            self.window,
            self.fb,
            self.band_lo,
            self.band_hi,
        )

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"sample_rate={c.sample_rate}, n_fft={c.n_fft}, win_length={c.win_length}, "
            f"hop_length={c.hop_length}, n_mels={c.n_mels}, f_min={c.f_min}, f_max={c.f_max}, "
            f"power={c.power}, mel_scale={c.mel_scale!r}, norm={c.norm!r}, log={c.log!r}, "
            f"top_db={c.top_db}"
        )
