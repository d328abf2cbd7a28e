"""A dataset over a folder of audio files: random crops, resampled, mono, skipping bad files.

Files (wav / flac / ogg / mp3 by default, searched recursively) are read with ``soundfile`` —
only the frames a crop needs — mixed down to mono and resampled with torchaudio's sinc
resampler. Files are checked twice:

* when the folder is scanned (headers only, fast): unreadable or unsupported files (mp3 needs
  libsndfile >= 1.1) and files shorter than one crop are skipped and counted in
  :attr:`AudioFolder.skipped`; a folder with no usable file raises ``ValueError`` right away,
  before any training starts.
* when a crop is read: a decoding error, a short read, or a silent file (every tried crop below
  ``silence_threshold`` peak) marks the file bad in this process and the item is replaced by
  another file chosen from the item's own seed, so an epoch never crashes and stays deterministic.
  Each item carries ``"skipped"``: how many bad reads it took (the training loop sums them).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import torch

__all__ = ["AUDIO_EXTENSIONS", "AudioFolder", "list_audio", "load_audio", "probe_audio"]

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
log = logging.getLogger("muse_fast.data")

_RESAMPLERS: dict[tuple[int, int], torch.nn.Module] = {}


def _resample(x: torch.Tensor, orig: int, new: int) -> torch.Tensor:
    """``torchaudio`` sinc resampling (Hann window, width 6 — the torchaudio default), with the
    kernel cached per rate pair."""
    if orig == new:
        return x
    r = _RESAMPLERS.get((orig, new))
    if r is None:
        import torchaudio

        r = _RESAMPLERS[(orig, new)] = torchaudio.transforms.Resample(orig, new)
    return r(x)


def load_audio(
    path: str | os.PathLike,
    sample_rate: int,
    *,
    start: int = 0,
    frames: int = -1,
) -> torch.Tensor:
    """Read ``frames`` frames (all by default) from ``start`` (in the file's own rate), mix to mono
    and resample to ``sample_rate``; float32 (samples,)."""
    import soundfile as sf

    data, sr = sf.read(str(path), start=start, frames=frames, dtype="float32", always_2d=True)
    x = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    return _resample(x, int(sr), int(sample_rate))


def probe_audio(path: str | os.PathLike):
    """``(soundfile.info(path), None)``, or ``(None, reason)`` with reason ``"corrupt"`` or
    ``"unsupported"`` (an mp3 this libsndfile cannot read) when the header is unusable."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception as e:  # libsndfile: unreadable header, unknown format
        msg = str(e).lower()
        unsupported = Path(path).suffix.lower() == ".mp3" and "format" in msg
        return None, "unsupported" if unsupported else "corrupt"
    if info.frames <= 0 or info.samplerate <= 0:
        return None, "corrupt"
    return info, None


def list_audio(root: str | os.PathLike, extensions: tuple[str, ...] = AUDIO_EXTENSIONS) -> list:
    """Files under ``root`` (recursive) whose extension is in ``extensions``, sorted."""
    exts = tuple(e.lower() for e in extensions)
    return sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in exts and p.is_file())


class _BadFile(Exception):
    pass


class AudioFolder(torch.utils.data.Dataset):
    """Random crops of the audio files under ``root``.

    ``segment_samples`` (at ``sample_rate``): the crop length; ``None`` returns whole tracks
    (``{"audio", "index", "path"}``). With ``n_views == 2`` an item holds two independent crops
    of the same track (the positive pair of contrastive recipes): ``audio`` is
    ``(n_views, segment_samples)``, or ``(segment_samples,)`` when ``n_views == 1``.
    Keys are ``int`` or ``(index, crop_seed)`` (from :class:`ResumableSampler`).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        sample_rate: int,
        segment_samples: int | None = None,
        n_views: int = 1,
        *,
        extensions: tuple[str, ...] = AUDIO_EXTENSIONS,
        seed: int = 0,
        silence_threshold: float = 1e-4,
        crop_retries: int = 3,
        max_replacements: int = 64,
    ):
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"data folder {str(root)!r} does not exist or is not a folder")
        if n_views < 1:
            raise ValueError(f"n_views must be >= 1, got {n_views}")
        self.root = root
        self.sample_rate = int(sample_rate)
        self.segment_samples = segment_samples
        self.n_views = int(n_views)
        self.seed = int(seed)
        self.silence_threshold = float(silence_threshold)
        self.crop_retries = int(crop_retries)
        self.max_replacements = int(max_replacements)
        exts = tuple(e.lower() for e in extensions)
        candidates = list_audio(root, exts)
        self.skipped: dict[str, list[str]] = {"corrupt": [], "unsupported": [], "too_short": []}
        self.paths: list[str] = []
        self.frames: list[int] = []
        self.rates: list[int] = []
        for p in candidates:
            info, reason = probe_audio(p)
            if info is None:
                self.skipped[reason].append(str(p))
                continue
            if segment_samples is not None and info.frames < self._native_len(info.samplerate):
                self.skipped["too_short"].append(str(p))
                continue
            self.paths.append(str(p))
            self.frames.append(int(info.frames))
            self.rates.append(int(info.samplerate))
        n_skipped = sum(len(v) for v in self.skipped.values())
        if not self.paths:
            need = (
                f" (at least {segment_samples / sample_rate:.2f} s each)" if segment_samples else ""
            )
            raise ValueError(
                f"no usable audio in {str(root)!r}: {len(candidates)} file(s) with extensions "
                f"{', '.join(exts)} found{need}, {n_skipped} skipped ({self.skip_summary()})"
            )
        if n_skipped:
            log.warning("AudioFolder %s: %s", root, self.skip_summary())
        self._bad: dict[int, str] = {}  # index -> reason, per process

    # ------------------------------------------------------------------
    def _native_len(self, rate: int) -> int:
        """Frames to read at the file's rate for one crop of ``segment_samples``."""
        return int(math.ceil(self.segment_samples * rate / self.sample_rate))

    def skip_summary(self) -> str:
        parts = [f"{len(v)} {k.replace('_', ' ')}" for k, v in self.skipped.items() if v]
        return ", ".join(parts) if parts else "none skipped"

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return (
            f"AudioFolder({str(self.root)!r}, {len(self)} files, sample_rate={self.sample_rate}, "
            f"skipped: {self.skip_summary()})"
        )

    # ------------------------------------------------------------------
    def _crops(self, index: int, rng: np.random.Generator) -> torch.Tensor:
        if index in self._bad:
            raise _BadFile(self._bad[index])
        path, rate, frames = self.paths[index], self.rates[index], self.frames[index]
        n_native = self._native_len(rate)
        views = []
        for _ in range(self.n_views):
            for _attempt in range(self.crop_retries):
                start = int(rng.integers(0, frames - n_native + 1))
                try:
                    x = load_audio(path, self.sample_rate, start=start, frames=n_native)
                except Exception as e:
                    raise _BadFile(f"unreadable ({type(e).__name__}: {e})") from e
                if x.numel() < self.segment_samples:
                    raise _BadFile(f"short read ({x.numel()} of {self.segment_samples} samples)")
                x = x[: self.segment_samples]
                if not torch.isfinite(x).all():
                    raise _BadFile("non-finite samples")
                if float(x.abs().max()) >= self.silence_threshold:
                    break
            else:
                raise _BadFile(f"silent ({self.crop_retries} crops below {self.silence_threshold})")
            views.append(x)
        return torch.stack(views) if self.n_views > 1 else views[0]

    def __getitem__(self, key):
        if isinstance(key, tuple):
            index, cseed = int(key[0]), int(key[1])
        else:
            index, cseed = int(key), None
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} files")
        if self.segment_samples is None:
            return {
                "audio": load_audio(self.paths[index], self.sample_rate),
                "index": index,
                "path": self.paths[index],
            }
        base = (self.seed, index) if cseed is None else (cseed,)
        skipped = 0
        for attempt in range(self.max_replacements):
            if attempt:
                # a replacement drawn from the item's own seed and the attempt number only, so
                # the result does not depend on which files this worker already knows are bad
                index = int(np.random.default_rng((*base, attempt, 1)).integers(len(self)))
            try:
                audio = self._crops(index, np.random.default_rng((*base, attempt)))
                return {"audio": audio, "index": index, "skipped": skipped}
            except _BadFile as e:
                if index not in self._bad:
                    self._bad[index] = str(e)
                    log.warning("skipping %s: %s", self.paths[index], e)
                skipped += 1
                if len(self._bad) >= len(self):
                    break
        raise RuntimeError(
            f"AudioFolder {str(self.root)!r}: {skipped} bad files in a row while reading one item "
            f"({len(self._bad)} of {len(self)} files bad so far); is the folder readable?"
        )
