"""``MelSpectrogram``: a drop-in for ``torchaudio.transforms.MelSpectrogram`` (+ ``AmplitudeToDB``)
running :func:`muse_fast.ops.mel_spectrogram`."""

from __future__ import annotations

import torch
from torch import nn

from ..ops.mel import MelConfig, mel_config, mel_filterbank, mel_spectrogram, mel_window

__all__ = ["MelSpectrogram"]


class MelSpectrogram(nn.Module):
    """``MelSpectrogram(config=None, **overrides)``: a :class:`~muse_fast.ops.MelConfig`, a
    preset name or None (torchaudio's defaults), with torchaudio's keyword arguments (plus
    ``log``, ``top_db``) as overrides; ``preset=`` is the deprecated spelling of ``config``.

    ``window`` and ``fb`` (the hann window and the filterbank the op uses, for inspection and
    export) are non-persistent buffers: they follow ``.to(device)`` and stay out of
    ``state_dict`` (they are a function of the configuration). ``forward(waveform,
    lengths=None)`` returns the mel (..., n_mels, frames), or ``(mel, frame_lengths)`` when
    ``lengths`` is given — see :func:`muse_fast.ops.mel_spectrogram`.
    """

    def __init__(
        self, config: MelConfig | str | None = None, *, preset: str | None = None, **overrides
    ) -> None:
        super().__init__()
        if preset is not None:  # the deprecation warning comes from the op's own shim
            config = _preset_config(config, preset)
        self.config = mel_config(config, **overrides)
        self.register_buffer("window", mel_window(self.config).clone(), persistent=False)
        self.register_buffer("fb", mel_filterbank(self.config)[0].clone(), persistent=False)

    def _apply(self, fn, recurse=True):
        # .half() / .to(dtype) would round the filterbank and window: rebuild them in float32
        # on the new device instead (they are functions of the configuration).
        super()._apply(fn, recurse)
        dev = self.fb.device
        if self.fb.dtype != torch.float32:
            self.fb = mel_filterbank(self.config, dev)[0].clone()
        if self.window.dtype != torch.float32:
            self.window = mel_window(self.config, dev).clone()
        return self

    # torchaudio-style attributes
    sample_rate = property(lambda self: self.config.sample_rate)
    n_fft = property(lambda self: self.config.n_fft)
    win_length = property(lambda self: self.config.resolved().win_length)
    hop_length = property(lambda self: self.config.resolved().hop_length)
    n_mels = property(lambda self: self.config.n_mels)

    def num_frames(self, num_samples: int) -> int:
        """Frames the forward gives for a clip of ``num_samples`` samples."""
        return self.config.num_frames(num_samples)

    def forward(
        self, waveform: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return mel_spectrogram(waveform, self.config, lengths=lengths)

    def extra_repr(self) -> str:
        c = self.config.resolved()
        return (
            f"sample_rate={c.sample_rate}, n_fft={c.n_fft}, win_length={c.win_length}, "
            f"hop_length={c.hop_length}, n_mels={c.n_mels}, f_min={c.f_min}, f_max={c.f_max}, "
            f"power={c.power}, mel_scale={c.mel_scale!r}, norm={c.norm!r}, log={c.log!r}, "
            f"top_db={c.top_db}"
        )


def _preset_config(config: MelConfig | str | None, preset: str) -> str:
    import warnings

    warnings.warn(
        f"MelSpectrogram(preset=...) is deprecated; pass MelSpectrogram({preset!r})",
        DeprecationWarning,
        stacklevel=3,
    )
    if config is not None:
        raise TypeError("preset: pass either config or preset, not both")
    return preset
