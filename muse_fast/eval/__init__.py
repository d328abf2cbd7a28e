"""Evaluation of frozen embeddings (``muse-fast probe``; docs/design.md, "Evaluation").

* :mod:`~muse_fast.eval.task` — what a task is (:class:`Task`, :class:`Track`) and the helpers
  the folder adapters share (audio listing, readability, split files, random splits).
* :mod:`~muse_fast.eval.datasets` — tasks: GiantSteps key, GTZAN, MagnaTagATune folder adapters
  and built-in synthetic key / beat / chord tasks (:func:`get_task`, :data:`TASKS`).
* :mod:`~muse_fast.eval.features` — chunked encoder embeddings (per track or per frame, any
  layer) and hand-crafted baselines (chroma, onset strength, MFCC), cached on disk.
* :mod:`~muse_fast.eval.probes` — linear / one-hidden-layer probes, early stopping, a small
  learning-rate × weight-decay grid chosen on validation.
* :mod:`~muse_fast.eval.metrics` — mir_eval key / beat / chord scores, sklearn tagging scores.
* :mod:`~muse_fast.eval.run` — :func:`probe_task` runs everything and :func:`format_table`
  prints it.

>>> from muse_fast.eval import get_task, load_encoder, EncoderFeatures, HandcraftedFeatures, probe_task
>>> task = get_task("synthetic-key", n_tracks=60, duration_s=6)
>>> model, spec = load_encoder(model="myna-hybrid", size="tiny")
>>> result = probe_task(task, [EncoderFeatures(model), HandcraftedFeatures("chroma")])
"""

from .datasets import (
    TASKS,
    Task,
    Track,
    get_task,
    giantsteps_key,
    gtzan,
    magnatagatune,
    synthetic_task,
)
from .encoders import EncoderSpec, load_encoder, random_init_like
from .features import EncoderFeatures, FeatureExtractor, HandcraftedFeatures, extract
from .probes import Probe, ProbeSettings, fit_probe, train_probe
from .run import PRIMARY, format_table, probe_task, score

__all__ = [
    "PRIMARY",
    "TASKS",
    "EncoderFeatures",
    "EncoderSpec",
    "FeatureExtractor",
    "HandcraftedFeatures",
    "Probe",
    "ProbeSettings",
    "Task",
    "Track",
    "extract",
    "fit_probe",
    "format_table",
    "get_task",
    "giantsteps_key",
    "gtzan",
    "load_encoder",
    "magnatagatune",
    "probe_task",
    "random_init_like",
    "score",
    "synthetic_task",
    "train_probe",
]
