"""Checkpoints: ``OUT/checkpoints/step_00001000/{model.safetensors, config.json, state.pt}``.

* ``model.safetensors`` — the model's ``state_dict`` (weights and buffers, each entry stored as
  its own tensor), with the recipe, model name and step as metadata.
* ``config.json`` — the :class:`TrainConfig` of the run (enough to rebuild the model).
* ``state.pt`` — everything else a resumed run needs: optimizer, scheduler, step, samples consumed
  per rank, every rank's RNG states (torch CPU / CUDA, numpy, python), loss-scaler state.
  Loaded with ``torch.load(weights_only=True)``: only tensors and plain Python inside.

Each file is written to a temporary name, flushed, fsync'ed and moved into place with
``os.replace``; ``state.pt`` goes last and marks the checkpoint complete, so a run killed while
saving leaves the previous checkpoints as they were and no half-written one is ever picked.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "checkpoint_path",
    "latest_checkpoint",
    "list_checkpoints",
    "load_model_weights",
    "load_state",
    "resolve_checkpoint",
    "save_checkpoint",
]

_STEP_DIR = re.compile(r"^step_(\d+)$")
WEIGHTS, CONFIG, STATE = "model.safetensors", "config.json", "state.pt"


def checkpoint_path(out: str | os.PathLike, step: int) -> Path:
    return Path(out) / "checkpoints" / f"step_{step:08d}"


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(str(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_checkpoint(
    out: str | os.PathLike,
    step: int,
    model: torch.nn.Module,
    state: dict[str, Any],
    config: dict[str, Any],
    *,
    keep_last: int = 0,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write checkpoint ``step`` under ``out`` and keep only the newest ``keep_last`` (0: all)."""
    from safetensors.torch import save_file

    path = checkpoint_path(out, step)
    path.mkdir(parents=True, exist_ok=True)
    if (path / STATE).exists():  # re-saving a step: invalidate the old one first
        (path / STATE).unlink()
    meta = {"step": str(step), **(metadata or {})}
    # every entry copied to its own contiguous CPU storage: tied weights and buffers that are
    # views of a larger storage (safetensors refuses both) are stored as plain tensors
    weights = {
        k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()
    }
    _atomic_write(path / WEIGHTS, lambda p: save_file(weights, p, metadata=meta))

    def write_json(p):
        with open(p, "w") as f:
            json.dump(config, f, indent=2)

    _atomic_write(path / CONFIG, write_json)
    _atomic_write(path / STATE, lambda p: torch.save(state, p))
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    if keep_last > 0:
        for _, old in list_checkpoints(out)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return path


def list_checkpoints(out: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``out``, oldest first."""
    root = Path(out) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / STATE).is_file() and (p / WEIGHTS).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(out: str | os.PathLike) -> Path | None:
    found = list_checkpoints(out)
    return found[-1][1] if found else None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder from: itself, its ``model.safetensors``, or a run folder (latest)."""
    p = Path(path)
    if p.is_file() and p.name.endswith(".safetensors"):
        p = p.parent
    if (p / WEIGHTS).is_file():
        return p
    if p.is_dir():
        latest = latest_checkpoint(p) or latest_checkpoint(
            p.parent if p.name == "checkpoints" else p
        )
        if latest is not None:
            return latest
    raise FileNotFoundError(
        f"no checkpoint at {str(path)!r} (expected a run folder with checkpoints/step_*/, a "
        f"checkpoint folder, or its {WEIGHTS})"
    )


def load_model_weights(model: torch.nn.Module, ckpt: str | os.PathLike, device=None) -> dict:
    """Load ``model.safetensors`` into ``model`` (strict); returns the file's metadata."""
    from safetensors import safe_open

    f = Path(ckpt) / WEIGHTS
    dev = "cpu" if device is None else str(device)
    with safe_open(str(f), framework="pt", device=dev) as h:
        weights = {k: h.get_tensor(k) for k in h.keys()}
        meta = dict(h.metadata() or {})
    model.load_state_dict(weights, strict=True)
    return meta


def load_state(ckpt: str | os.PathLike) -> dict:
    return torch.load(Path(ckpt) / STATE, map_location="cpu", weights_only=True)


def load_config(ckpt: str | os.PathLike) -> dict:
    with open(Path(ckpt) / CONFIG) as f:
        return json.load(f)
