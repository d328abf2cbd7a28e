"""Embeddings from a pre-training checkpoint: one vector per audio file.

A file is read whole (mono, resampled to the model's rate), cut into consecutive crops of
``model.segment_samples`` (the last partial crop is dropped when at least one full crop exists;
a file shorter than one crop is zero-padded), each crop is embedded with ``model.embed`` and the
crop embeddings are averaged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from . import checkpoint as ckpt
from .config import RECIPES, from_dict

__all__ = ["embed_audio", "embed_files", "load_pretrained", "save_embeddings"]


def load_pretrained(
    checkpoint: str | os.PathLike,
    device: str | torch.device = "cpu",
    *,
    model_factory: Callable[..., torch.nn.Module] | None = None,
) -> tuple[torch.nn.Module, dict]:
    """The model of a checkpoint (a run folder = its latest checkpoint), in eval mode.

    Returns ``(model, info)`` with info ``{"checkpoint", "recipe", "model", "step", "config"}``.
    ``model_factory(name, **overrides)`` defaults to ``muse_fast.models.create``.
    """
    path = ckpt.resolve_checkpoint(checkpoint)
    cfg = from_dict(ckpt.load_config(path))
    name = RECIPES[cfg.recipe].model
    if model_factory is None:
        from .. import models

        model_factory = models.create
    model = model_factory(name, **cfg.model)
    meta = ckpt.load_model_weights(model, path, device)
    model.to(device).eval()
    info = {
        "checkpoint": str(path),
        "recipe": cfg.recipe,
        "model": name,
        "step": int(meta.get("step", -1)),
        "config": cfg,
    }
    return model, info


@torch.no_grad()
def embed_audio(
    model: torch.nn.Module,
    audio: torch.Tensor,
    *,
    layer: int | None = None,
    batch_size: int = 16,
) -> torch.Tensor:
    """Mean of ``model.embed`` over the consecutive crops of ``audio`` (samples,); float32 (D,)."""
    if audio.dim() != 1:
        raise ValueError(f"audio must be 1-D (samples,), got shape {tuple(audio.shape)}")
    seg = int(model.segment_samples)
    n = audio.numel() // seg
    if n == 0:
        chunks = torch.nn.functional.pad(audio, (0, seg - audio.numel()))[None]
    else:
        chunks = audio[: n * seg].reshape(n, seg)
    device = next(model.parameters()).device
    total = None
    for i in range(0, chunks.shape[0], batch_size):
        e = model.embed(chunks[i : i + batch_size].to(device), layer=layer).float()
        s = e.sum(0)
        total = s if total is None else total + s
    return (total / chunks.shape[0]).cpu()


def embed_files(
    model: torch.nn.Module,
    paths: Sequence[str | os.PathLike],
    *,
    layer: int | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> torch.Tensor:
    """One embedding per file, float32 (len(paths), D)."""
    from tqdm import tqdm

    from ..data import load_audio

    rows = []
    for p in tqdm(list(paths), disable=not progress, unit="file"):
        audio = load_audio(p, int(model.sample_rate))
        rows.append(embed_audio(model, audio, layer=layer, batch_size=batch_size))
    return torch.stack(rows)


def save_embeddings(
    path: str | os.PathLike, embeddings: torch.Tensor, files: Sequence[str], info: dict
) -> None:
    """``.npy`` (the (N, D) array; file order = argument order) or ``.safetensors`` (tensor
    ``embeddings`` with the file list, checkpoint and step as metadata)."""
    path = Path(path)
    if path.suffix == ".npy":
        np.save(path, embeddings.numpy())
    elif path.suffix == ".safetensors":
        from safetensors.torch import save_file

        meta = {
            "files": json.dumps([str(f) for f in files]),
            "checkpoint": str(info.get("checkpoint", "")),
            "recipe": str(info.get("recipe", "")),
            "step": str(info.get("step", "")),
        }
        save_file({"embeddings": embeddings.contiguous()}, str(path), metadata=meta)
    else:
        raise ValueError(f"--out must end in .npy or .safetensors, got {str(path)!r}")
