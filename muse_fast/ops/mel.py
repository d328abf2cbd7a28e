"""Log-mel spectrograms (torchaudio ``MelSpectrogram`` semantics) and frame stacking.

Work in progress: ``stack_frames`` first (other ops import it); ``mel_spectrogram`` follows.
"""

from __future__ import annotations

import torch

from ._checks import check_int, check_tensor

__all__ = ["stack_frames"]


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
