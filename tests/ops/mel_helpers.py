"""Shared helpers of the mel tests: test signals, torchaudio as the yardstick, the precision rule."""

from __future__ import annotations

import math

import torch
import torchaudio

import muse_fast
from muse_fast.ops import mel_spectrogram
from muse_fast.testing import assert_within_eager_error, kernel_cases

KERNELS = kernel_cases("mel_spectrogram")


def signal(*lead: int, n: int, sr: int = 16000) -> torch.Tensor:
    """Three random tones + white noise per row: a wide dynamic range across the mel bands."""
    t = torch.arange(n) / sr
    f = torch.rand(*lead, 3, 1) * (sr / 3) + 40.0
    amp = torch.rand(*lead, 3, 1)
    x = (amp * torch.sin(2 * math.pi * f * t + torch.rand(*lead, 3, 1) * 6.0)).sum(-2)
    return x + 0.02 * torch.randn(*lead, n)


def torchaudio_mel(x: torch.Tensor, **kw) -> torch.Tensor:
    kw = dict(kw)
    log, top_db = kw.pop("log", None), kw.pop("top_db", None)
    mel = torchaudio.transforms.MelSpectrogram(**kw).to(x.dtype)(x)
    if log == "db":
        stype = "power" if kw.get("power", 2.0) == 2.0 else "magnitude"
        mel = torchaudio.transforms.AmplitudeToDB(stype, top_db)(mel)
    elif log == "log1p":
        mel = torch.log1p(mel)
    elif log == "log":
        mel = torch.log(mel.clamp_min(1e-10))
    return mel


def run(backend: str, *args, **kw):
    with muse_fast.backend(backend):
        return mel_spectrogram(*args, **kw)


# The absolute floor of the precision rule, times the peak of the linear mel: fp32 FFT rounding is
# absolute (~eps * peak), and the frequency-domain window adds a few eps in weak bands. In the
# log modes the same linear floor is carried through the log, element by element, so a band far
# below the peak gets the (large) log-domain allowance its few exact digits imply.
_LINEAR_FLOOR = 1e-6
_LOG_FLOOR = 1e-5  # rounding of the log itself


def _log_floor(gt: torch.Tensor, log: str, power: float) -> torch.Tensor:
    """Per element: how far ``_LINEAR_FLOOR * peak`` of linear error moves the log output."""
    if log == "db":
        mult = 20.0 / power
        lin = torch.pow(10.0, gt / mult)
        return mult * torch.log10(1 + _LINEAR_FLOOR * lin.max() / lin)
    if log == "log":
        lin = gt.exp()
        return torch.log1p(_LINEAR_FLOOR * lin.max() / lin)
    lin = gt.expm1()  # log1p: d log1p(m) = dm / (1 + m)
    return _LINEAR_FLOOR * lin.max() / (1 + lin)


def assert_mel_close(y: torch.Tensor, x: torch.Tensor, msg: str = "", **cfg) -> None:
    """The precision rule: the error of ``y`` against torchaudio in float64 (on ``x`` upcast) is at
    most 4x torchaudio-float32's own error against it, plus an absolute floor (1e-6 x the peak of
    the linear mel, carried through the log in the log modes). The same filterbank is used on both
    sides (torchaudio builds it in float32), so the rule measures the FFT / power / matmul / log
    rounding only."""
    gt = torchaudio_mel(x.double(), **cfg)
    ta = torchaudio_mel(x.float(), **cfg)
    assert y.shape == gt.shape, (y.shape, gt.shape)
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()
    log = cfg.get("log")
    if log is None:
        floor = _LINEAR_FLOOR * gt.abs().max().item()
        assert_within_eager_error(y.cpu(), ta, gt, factor=4.0, atol=floor, msg=f"{msg} ")
        return
    excess = (y.cpu().double() - gt).abs() - _log_floor(gt, log, cfg.get("power", 2.0))
    ta_err = (ta.double() - gt).abs().max().item()
    assert excess.max().item() <= 4.0 * ta_err + _LOG_FLOOR, (
        f"{msg} error beyond the linear floor {excess.max().item():.3e} > 4 x torchaudio-fp32 "
        f"error {ta_err:.3e} + {_LOG_FLOOR:.0e}"
    )
