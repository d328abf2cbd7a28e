"""Frozen features for probing: encoder embeddings and hand-crafted baselines, cached on disk.

* :class:`EncoderFeatures` — a model's ``embed`` / ``embed_frames``. A track is cut into
  non-overlapping chunks of the model's ``segment_samples`` (a track shorter than one chunk is
  zero-padded to it). Global tasks average the chunk embeddings (the last chunk is aligned to the
  track's end instead of padded, so no embedding sees padding unless the whole track is short);
  local tasks concatenate the chunks' frame embeddings (the last chunk zero-padded) and
  interpolate them linearly onto the label frames ``(j + 0.5) / frame_rate``.
* :class:`HandcraftedFeatures` — ``chroma`` (``librosa.feature.chroma_stft``; key, chord),
  ``onset`` (``librosa.onset.onset_strength`` with ±3 frames of context; beat), ``mfcc`` (20
  MFCCs; genre, tagging). Global tasks use the per-track mean and standard deviation over time.
* :func:`extract` — features of a list of tracks, cached as safetensors under ``cache_dir``,
  keyed by the extractor's identity (weights hash, layer, chunking), the dataset fingerprint, the
  split's track ids and the frame rate.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .task import Task, Track

__all__ = [
    "EncoderFeatures",
    "FeatureExtractor",
    "HandcraftedFeatures",
    "default_cache_dir",
    "extract",
    "n_label_frames",
    "resample_frames",
    "state_hash",
]

log = logging.getLogger("muse_fast.eval")
_CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """``$MUSE_FAST_CACHE/embeddings``, else ``~/.cache/muse_fast/embeddings``."""
    base = os.environ.get("MUSE_FAST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "muse_fast"
    )
    return Path(base) / "embeddings"


def n_label_frames(n_samples: int, sample_rate: int, frame_rate: float) -> int:
    """Label frames of a track: frame ``j`` covers ``[j, j + 1) / frame_rate`` s and is kept when
    it starts inside the track."""
    return max(1, int(np.ceil(n_samples / sample_rate * frame_rate - 1e-9)))


def resample_frames(
    features: np.ndarray, src_rate: float, n_out: int, out_rate: float, src_offset: float = 0.5
) -> np.ndarray:
    """Linear interpolation of frame features (N, D), frame ``i`` centred at
    ``(i + src_offset) / src_rate`` s, onto ``n_out`` frames centred at ``(j + 0.5) / out_rate``
    (edge frames are held beyond the ends)."""
    f = np.asarray(features, dtype=np.float32)
    if f.ndim != 2 or len(f) == 0:
        raise ValueError(f"features: expected a non-empty (frames, dim) array, got shape {f.shape}")
    u = (np.arange(n_out) + 0.5) / out_rate * src_rate - src_offset  # fractional source index
    u = np.clip(u, 0.0, len(f) - 1)
    lo = np.minimum(np.floor(u).astype(np.int64), len(f) - 1)
    hi = np.minimum(lo + 1, len(f) - 1)
    w = (u - lo).astype(np.float32)[:, None]
    return (1 - w) * f[lo] + w * f[hi]


def state_hash(model: torch.nn.Module) -> str:
    """SHA-256 (16 hex digits) of a model's class, config and every state_dict tensor."""
    h = hashlib.sha256()
    h.update(type(model).__qualname__.encode())
    cfg = getattr(model, "config", None)
    if cfg is not None:
        h.update(repr(dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        t = t.detach().cpu().contiguous()
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


class FeatureExtractor:
    """Interface: ``name`` (row label), ``id`` (cache identity), ``sample_rate``,
    ``global_features(audio) -> (D,)``, ``frame_features(audio, frame_rate, n_frames) ->
    (n_frames, D)``."""

    name: str
    id: str
    sample_rate: int

    def global_features(self, audio: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def frame_features(self, audio: np.ndarray, frame_rate: float, n_frames: int) -> np.ndarray:
        raise NotImplementedError


class EncoderFeatures(FeatureExtractor):
    """Embeddings of a (frozen) encoder: ``layer`` None (the model's default), or a block index.

    ``max_chunks`` caps the chunks per track for global tasks (evenly spaced; None = all).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        name: str = "encoder",
        layer: int | None = None,
        batch_size: int = 16,
        max_chunks: int | None = None,
        weights_id: str | None = None,
    ):
        if isinstance(layer, str) or isinstance(layer, bool):
            raise TypeError(f"layer: expected None or an int block index, got {layer!r}")
        for attr in ("embed", "embed_frames", "sample_rate", "segment_samples"):
            if not hasattr(model, attr):
                raise TypeError(
                    f"model: {type(model).__name__} has no {attr!r} (not a muse_fast encoder?)"
                )
        self.model = model.eval()
        self.name = name
        self.layer = layer
        self.batch_size = int(batch_size)
        self.max_chunks = max_chunks
        self.sample_rate = int(model.sample_rate)
        self.segment = int(model.segment_samples)
        self.weights_id = weights_id or state_hash(model)
        self.id = (
            f"encoder:{type(model).__name__}:weights={self.weights_id}:layer={layer}"
            f":chunk={self.segment}@{self.sample_rate}:max_chunks={max_chunks}"
        )

    @property
    def device(self) -> torch.device:
        try:
            return next(self.model.parameters()).device
        except StopIteration:
            return torch.device("cpu")

    def _run(self, fn, chunks: np.ndarray) -> torch.Tensor:
        outs = []
        with torch.inference_mode():
            for i in range(0, len(chunks), self.batch_size):
                x = torch.from_numpy(chunks[i : i + self.batch_size]).to(self.device)
                outs.append(fn(x, layer=self.layer).float().cpu())
        return torch.cat(outs)

    def global_features(self, audio: np.ndarray) -> np.ndarray:
        seg, n = self.segment, len(audio)
        if n <= seg:
            chunks = np.zeros((1, seg), dtype=np.float32)
            chunks[0, :n] = audio
        else:
            starts = list(range(0, n - seg + 1, seg))
            if n - (starts[-1] + seg) > 0:
                starts.append(n - seg)  # the tail, aligned to the end
            if self.max_chunks and len(starts) > self.max_chunks:
                pick = np.linspace(0, len(starts) - 1, self.max_chunks).round().astype(int)
                starts = [starts[i] for i in pick]
            chunks = np.stack([audio[s : s + seg] for s in starts]).astype(np.float32)
        return self._run(self.model.embed, chunks).mean(0).numpy()

    def frame_features(self, audio: np.ndarray, frame_rate: float, n_frames: int) -> np.ndarray:
        seg, n = self.segment, len(audio)
        n_chunks = max(1, -(-n // seg))
        padded = np.zeros(n_chunks * seg, dtype=np.float32)
        padded[:n] = audio
        out = self._run(self.model.embed_frames, padded.reshape(n_chunks, seg))  # (C, T, D)
        steps = out.shape[1]
        hop = getattr(self.model, "frame_hop", None) or seg / steps  # samples per frame step
        feats = out.reshape(n_chunks * steps, -1).numpy()
        # chunk c, step t is centred at (c·seg + (t + ½)·hop) / sr; when steps·hop == seg this is
        # a uniform grid of rate sr / hop; otherwise place each chunk's frames explicitly
        if abs(steps * hop - seg) < 1e-6 * seg:
            return resample_frames(feats, self.sample_rate / hop, n_frames, frame_rate)
        times = (
            np.arange(n_chunks)[:, None] * seg + (np.arange(steps)[None, :] + 0.5) * hop
        ).ravel()
        target = (np.arange(n_frames) + 0.5) / frame_rate * self.sample_rate
        return np.stack(
            [np.interp(target, times, feats[:, d]) for d in range(feats.shape[1])], 1
        ).astype(np.float32)


class HandcraftedFeatures(FeatureExtractor):
    """``kind``: ``"chroma"``, ``"onset"`` or ``"mfcc"``, computed with librosa at 22 050 Hz
    (hop 512; onset strength hop 256)."""

    KINDS = ("chroma", "onset", "mfcc")

    def __init__(self, kind: str, *, sample_rate: int = 22050, context: int = 3):
        if kind not in self.KINDS:
            raise ValueError(f"kind: expected one of {self.KINDS}, got {kind!r}")
        try:
            import librosa  # noqa: F401
        except ImportError as e:  # pragma: no cover - librosa is in the dev/eval extras
            raise ImportError(
                "hand-crafted baselines need librosa: pip install librosa (or muse_fast[eval])"
            ) from e
        self.kind = kind
        self.name = kind
        self.sample_rate = int(sample_rate)
        self.context = int(context)
        self.hop = 256 if kind == "onset" else 512
        self.id = f"handcrafted:{kind}:sr={self.sample_rate}:hop={self.hop}:ctx={context}:v1"

    def _frames(self, audio: np.ndarray) -> np.ndarray:
        """(frames, dim) at rate sr / hop, frame ``i`` centred at ``i · hop / sr``."""
        import librosa

        y = np.asarray(audio, dtype=np.float32)
        if len(y) < 2048:
            y = np.pad(y, (0, 2048 - len(y)))
        sr, hop = self.sample_rate, self.hop
        if self.kind == "chroma":
            f = librosa.feature.chroma_stft(y=y, sr=sr, n_fft=2048, hop_length=hop)
        elif self.kind == "mfcc":
            f = librosa.feature.mfcc(y=y, sr=sr, n_mfcc=20, n_fft=2048, hop_length=hop)
        else:
            f = librosa.onset.onset_strength(y=y, sr=sr, hop_length=hop)[None, :]
            f = f / (f.max() + 1e-8)
        return np.ascontiguousarray(f.T, dtype=np.float32)

    def global_features(self, audio: np.ndarray) -> np.ndarray:
        f = self._frames(audio)
        return np.concatenate([f.mean(0), f.std(0)]).astype(np.float32)

    def frame_features(self, audio: np.ndarray, frame_rate: float, n_frames: int) -> np.ndarray:
        f = resample_frames(
            self._frames(audio), self.sample_rate / self.hop, n_frames, frame_rate, src_offset=0.0
        )
        if self.kind == "onset" and self.context:
            k = self.context  # the activation around each frame: a linear probe can find peaks
            p = np.pad(f, ((k, k), (0, 0)), mode="edge")
            f = np.concatenate([p[i : i + len(f)] for i in range(2 * k + 1)], axis=1)
        return f


# ---------------------------------------------------------------------------------- extraction
def _cache_key(extractor: FeatureExtractor, task: Task, tracks: Sequence[Track]) -> str:
    h = hashlib.sha256()
    parts = [
        _CACHE_VERSION,
        extractor.id,
        task.dataset_id,
        task.level,
        task.frame_rate,
        [t.id for t in tracks],
    ]
    h.update(json.dumps(parts, default=str).encode())
    return h.hexdigest()[:24]


def extract(
    extractor: FeatureExtractor,
    task: Task,
    tracks: Sequence[Track],
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> list[np.ndarray]:
    """Features of ``tracks`` for ``task``: one (D,) vector per track (global tasks) or one
    (n_frames, D) array at ``task.frame_rate`` (frame-level tasks). With ``cache_dir`` the result
    is read from / written to ``cache_dir/<key>.safetensors``."""
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{_cache_key(extractor, task, tracks)}.safetensors"
        if path.is_file():
            try:
                return _load(path, len(tracks), task.level)
            except Exception as e:  # a truncated / foreign file: recompute
                log.warning("embedding cache %s unreadable (%s); recomputing", path, e)
    it = tracks
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(tracks, desc=f"{extractor.name} features", leave=False)
    feats = []
    for t in it:
        audio = t.load(extractor.sample_rate)
        if task.level == "global":
            feats.append(np.asarray(extractor.global_features(audio), dtype=np.float32))
        else:
            n = n_label_frames(len(audio), extractor.sample_rate, task.frame_rate)
            feats.append(
                np.asarray(extractor.frame_features(audio, task.frame_rate, n), dtype=np.float32)
            )
    if path is not None:
        _save(
            path, feats, {"extractor": extractor.id, "dataset": task.dataset_id, "task": task.name}
        )
    return feats


def _save(path: Path, feats: list[np.ndarray], meta: dict[str, str]) -> None:
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    lengths = np.array([1 if f.ndim == 1 else len(f) for f in feats], dtype=np.int64)
    data = np.concatenate([f.reshape(-1, f.shape[-1]) for f in feats]).astype(np.float32)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file({"features": data, "lengths": lengths}, str(tmp), metadata=meta)
    os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file


def _load(path: Path, n_tracks: int, level: str) -> list[np.ndarray]:
    from safetensors.numpy import load_file

    d = load_file(str(path))
    lengths, data = d["lengths"], d["features"]
    if len(lengths) != n_tracks or lengths.sum() != len(data):
        raise ValueError("length mismatch")
    offs = np.concatenate([[0], np.cumsum(lengths)])
    if level == "global":
        return [data[offs[i]] for i in range(n_tracks)]
    return [data[offs[i] : offs[i + 1]] for i in range(n_tracks)]
