""":class:`MelConfig`: every argument of :func:`muse_fast.ops.mel_spectrogram`, its presets and
its validation.

The defaults are ``torchaudio.transforms.MelSpectrogram``'s (plus ``log=None``, ``top_db=None``),
so ``MelConfig(n_fft=512)`` means what ``MelSpectrogram(n_fft=512)`` means. ``None`` fields
(``win_length``, ``hop_length``, ``f_max``) are filled in by :meth:`MelConfig.resolved` the
way torchaudio fills them. docs/design.md ("Mel spectrogram") states the contract.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ._checks import check_choice, check_float, check_int

__all__ = ["MEL_PRESETS", "MelConfig", "ResolvedMel", "mel_config"]

PAD_MODES = ("constant", "reflect", "replicate", "circular")
LOG_MODES = (None, "log", "log1p", "db")


@dataclass(frozen=True)
class MelConfig:
    """Arguments of a mel spectrogram (torchaudio ``MelSpectrogram`` names and defaults).

    ``log``: None (power / magnitude mel), ``"log"`` (ln, floor 1e-10), ``"log1p"``, ``"db"``
    (``AmplitudeToDB``; ``top_db`` applies only there). Validated on construction: a bad value
    raises ValueError / TypeError naming the field.
    """

    sample_rate: int = 16000
    n_fft: int = 400
    win_length: int | None = None
    hop_length: int | None = None
    f_min: float = 0.0
    f_max: float | None = None
    pad: int = 0
    n_mels: int = 128
    power: float = 2.0
    normalized: bool | str = False
    center: bool = True
    pad_mode: str = "reflect"
    mel_scale: str = "htk"
    norm: str | None = None
    log: str | None = None
    top_db: float | None = None

    def __post_init__(self) -> None:
        self.resolved()  # validates every field

    def replace(self, **overrides: object) -> MelConfig:
        """A copy with ``overrides`` (unknown names raise TypeError naming them)."""
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"unexpected mel_spectrogram arguments: {unknown}")
        return dataclasses.replace(self, **overrides) if overrides else self

    def resolved(self) -> ResolvedMel:
        """The validated configuration with every ``None`` filled in."""
        return _resolve(self)

    def num_frames(self, num_samples: int) -> int:
        """Frames a clip of ``num_samples`` gives (``torch.stft``'s count)."""
        return self.resolved().num_frames(num_samples)


@dataclass(frozen=True)
class ResolvedMel:
    """:class:`MelConfig` after validation: ``win_length``, ``hop_length``, ``f_max`` filled in,
    ``normalized`` as ``"none" | "window" | "frame_length"``, ``log`` as a string (``"none"``).
    The field order is the scalar part of the ``muse_fast::mel_spectrogram`` custom op."""

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

    @property
    def pad_mode_id(self) -> int:
        """The kernels' id of ``pad_mode``: its index in ``PAD_MODES``."""
        return PAD_MODES.index(self.pad_mode)

    @property
    def log_id(self) -> int:
        """The kernels' id of ``log``: 0 none, 1 log, 2 log1p, 3 db."""
        return LOG_MODES.index(None if self.log == "none" else self.log)

    @property
    def half(self) -> int:
        """Center padding on each side."""
        return self.n_fft // 2 if self.center else 0

    def num_frames(self, n: int) -> int:
        return 1 + (n + 2 * self.pad + 2 * self.half - self.n_fft) // self.hop_length

    def min_samples(self) -> int:
        """Shortest clip ``torch.stft`` accepts (after torchaudio's constant ``pad``)."""
        if not self.center:
            need = self.n_fft  # padded length >= n_fft
        elif self.pad_mode == "reflect":
            need = self.n_fft // 2 + 1  # reflect padding must be shorter than the input
        elif self.pad_mode == "circular":
            need = self.n_fft // 2  # may wrap at most once
        else:
            need = 1
        return max(1, need - 2 * self.pad)

    def too_short(self, name: str, n: int) -> str:
        """The ValueError message for a clip of ``n`` samples below :meth:`min_samples`."""
        h = self.n_fft // 2
        if not self.center:
            why = f"center=False needs time + 2*pad >= n_fft ({self.n_fft})"
        elif self.pad_mode == "reflect":
            why = f"center=True with pad_mode='reflect' needs time + 2*pad > n_fft // 2 ({h})"
        elif self.pad_mode == "circular":
            why = f"center=True with pad_mode='circular' needs time + 2*pad >= n_fft // 2 ({h})"
        else:
            why = "needs at least 1 sample"
        return f"{name}: {n} samples is too short ({why}, pad={self.pad})"


def _resolve(c: MelConfig) -> ResolvedMel:
    sample_rate = check_int("sample_rate", c.sample_rate, min=1)
    n_fft = check_int("n_fft", c.n_fft, min=2)
    win = n_fft if c.win_length is None else check_int("win_length", c.win_length, min=1)
    if win > n_fft:
        raise ValueError(f"win_length: expected <= n_fft ({n_fft}), got {win}")
    hop = win // 2 if c.hop_length is None else check_int("hop_length", c.hop_length, min=1)
    if hop < 1:
        raise ValueError(f"hop_length: win_length // 2 is 0 for win_length {win}; pass one")
    f_min = check_float("f_min", c.f_min, min=0.0)
    f_max = (
        float(sample_rate // 2)
        if c.f_max is None
        else check_float("f_max", c.f_max, min=0.0, min_open=True)
    )
    if f_min > f_max:
        raise ValueError(f"f_min: expected <= f_max ({f_max}), got {f_min}")
    power = check_float("power", c.power, min=0.0, min_open=True)
    if not math.isfinite(power):
        raise ValueError(f"power: expected a finite float, got {power}")
    normalized = c.normalized
    if isinstance(normalized, bool):
        normalized = "window" if normalized else "none"
    else:
        check_choice("normalized", normalized, [False, True, "window", "frame_length"])
    if not isinstance(c.center, bool):
        raise TypeError(f"center: expected a bool, got {type(c.center).__name__}")
    log = check_choice("log", c.log, LOG_MODES)
    top_db = c.top_db
    if top_db is not None:
        top_db = check_float("top_db", top_db, min=0.0)
        if log != "db":
            raise ValueError(f"top_db: only applies to log='db', got log={log!r}")
    return ResolvedMel(
        sample_rate=sample_rate,
        n_fft=n_fft,
        win_length=win,
        hop_length=hop,
        f_min=f_min,
        f_max=f_max,
        pad=check_int("pad", c.pad, min=0),
        n_mels=check_int("n_mels", c.n_mels, min=1),
        power=power,
        normalized=normalized,
        center=c.center,
        pad_mode=check_choice("pad_mode", c.pad_mode, PAD_MODES),
        mel_scale=check_choice("mel_scale", c.mel_scale, ["htk", "slaney"]),
        norm=check_choice("norm", c.norm, [None, "slaney"]),
        log="none" if log is None else log,
        top_db=top_db,
    )


PRESETS: dict[str, MelConfig] = {
    # MusicFM / BEST-RQ music FM / MuseLQ: torchaudio MelSpectrogram + AmplitudeToDB (no top_db),
    # 24 kHz, 100 frames/s; the models then stack 4 frames (stack_frames) -> 512 x 25 Hz.
    "musicfm": MelConfig(sample_rate=24000, n_fft=2048, hop_length=240, log="db"),
    # Myna / ViT-1D: nnAudio MelSpectrogram(sr=16000, n_mels=128) defaults (n_fft 2048, hop 512,
    # hann, center reflect, slaney scale + slaney area norm = librosa's), then torch.log1p.
    "myna": MelConfig(n_fft=2048, hop_length=512, mel_scale="slaney", norm="slaney", log="log1p"),
}

# Every argument of every preset spelled out (the mapping form older code reads).
MEL_PRESETS: dict[str, dict[str, object]] = {
    name: dataclasses.asdict(cfg) for name, cfg in PRESETS.items()
}


def mel_config(config: MelConfig | str | None = None, **overrides: object) -> MelConfig:
    """``config`` (a :class:`MelConfig`, a preset name from :data:`MEL_PRESETS`, or None for
    torchaudio's defaults) with ``overrides`` applied; explicit overrides always win."""
    if config is None:
        base = MelConfig()
    elif isinstance(config, str):
        base = PRESETS[check_choice("config", config, sorted(PRESETS))]
    elif isinstance(config, MelConfig):
        base = config
    else:
        raise TypeError(
            f"config: expected a MelConfig, a preset name {sorted(PRESETS)} or None, "
            f"got {type(config).__name__} (pass torchaudio arguments by keyword)"
        )
    return base.replace(**overrides)
