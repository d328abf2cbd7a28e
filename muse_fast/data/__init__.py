"""Datasets for pre-training and evaluation.

* :class:`AudioFolder` — random crops from a folder of audio files (wav / flac / ogg / mp3),
  resampled and mixed to mono, bad files skipped and counted.
* :class:`SyntheticMusic` — the default corpus: music-like tracks generated on the fly with exact
  key / tempo / beat / chord labels (and per-frame label helpers for local tasks).
* :class:`PreparedCorpus` — a corpus decoded once by ``muse-fast prepare`` (int16 shards +
  manifest): whole batches of random crops gathered from memory-mapped shards by a C++ kernel;
  :class:`CropBatches` is its resumable training stream.
* :class:`ResumableSampler` — the DistributedSampler-style key stream both datasets read, which
  makes DataLoader randomness a function of ``(seed, epoch, index)`` so training resumes exactly.
"""

from .audio_folder import AUDIO_EXTENSIONS, AudioFolder, list_audio, load_audio, probe_audio
from .corpus_format import CorpusError
from .prepare import cache_dir, is_prepared, merge_parts, prepare_folder, prepare_synthetic
from .prepared import CropBatches, PreparedCorpus
from .sampler import ResumableSampler, crop_seed
from .synthetic import (
    CHORD_NAMES,
    KEY_NAMES,
    NO_CHORD,
    PITCH_NAMES,
    SyntheticMusic,
    beat_activations,
    chord_class,
    chord_frames,
    crop_labels,
    frame_labels,
)

__all__ = [
    "AUDIO_EXTENSIONS",
    "CHORD_NAMES",
    "KEY_NAMES",
    "NO_CHORD",
    "PITCH_NAMES",
    "AudioFolder",
    "CorpusError",
    "CropBatches",
    "PreparedCorpus",
    "ResumableSampler",
    "SyntheticMusic",
    "beat_activations",
    "cache_dir",
    "chord_class",
    "chord_frames",
    "crop_labels",
    "crop_seed",
    "frame_labels",
    "is_prepared",
    "list_audio",
    "load_audio",
    "merge_parts",
    "prepare_folder",
    "prepare_synthetic",
    "probe_audio",
]
