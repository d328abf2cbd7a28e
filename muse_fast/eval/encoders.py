"""Encoders to probe: a pre-training checkpoint, or a named model with random weights.

``load_encoder("runs/muse")`` loads a checkpoint through :func:`muse_fast.train.embed.load_pretrained`
(a run folder → its latest checkpoint). ``load_encoder(model="myna-hybrid", size="tiny")`` — or a
model name given as the checkpoint — builds that model randomly initialised.

:func:`random_init_like` builds the random-init baseline of a checkpoint: the same model and
config, initialised exactly as the pre-training loop does (``torch.manual_seed(run seed)`` then
``muse_fast.models.create``), i.e. the weights the run started from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["EncoderSpec", "load_encoder", "random_init_like"]


@dataclass
class EncoderSpec:
    """How an encoder was made: ``kind`` ``"checkpoint"`` or ``"random-init"``; ``model`` the
    registered name; ``overrides`` its config overrides; ``seed`` the initialisation seed."""

    kind: str
    model: str
    overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    checkpoint: str | None = None
    step: int | None = None

    def describe(self) -> str:
        cfg = ", ".join(f"{k}={v}" for k, v in sorted(self.overrides.items()))
        what = f"{self.model}({cfg})" if cfg else self.model
        if self.kind == "checkpoint":
            return f"{what} from {self.checkpoint} (step {self.step})"
        return f"{what}, random init (seed {self.seed})"


def _build(name: str, overrides: dict[str, Any], seed: int, device) -> torch.nn.Module:
    from .. import models

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = models.create(name, **overrides)
    return model.to(device).eval()


def _is_model_name(name: str) -> bool:
    from .. import models

    return name in models.list_models()


def load_encoder(
    checkpoint: str | os.PathLike | None = None,
    *,
    model: str | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    **overrides: Any,
) -> tuple[torch.nn.Module, EncoderSpec]:
    """``(model in eval mode, spec)`` from a checkpoint path, or a random-init ``model`` (name)
    with config ``overrides`` (``size="tiny"``, ...). A ``checkpoint`` that is not a path but a
    model name means that model, randomly initialised."""
    if checkpoint is not None and not Path(checkpoint).exists() and _is_model_name(str(checkpoint)):
        if model is not None and model != str(checkpoint):
            raise ValueError(f"--checkpoint {checkpoint!r} and --model {model!r} disagree")
        model, checkpoint = str(checkpoint), None
    if checkpoint is not None and not Path(checkpoint).exists():
        from .. import models

        raise ValueError(
            f"{str(checkpoint)!r} is neither an existing checkpoint path nor a model name "
            f"({', '.join(models.list_models())})"
        )
    if checkpoint is not None:
        if overrides:
            raise ValueError(
                f"model options {sorted(overrides)} apply to a random-init --model, not to a "
                "checkpoint (its config is stored with it)"
            )
        from ..train.embed import load_pretrained

        net, info = load_pretrained(checkpoint, device)
        cfg = info["config"]
        if model is not None and model != info["model"]:
            raise ValueError(f"--model {model!r}: the checkpoint holds {info['model']!r}")
        spec = EncoderSpec(
            kind="checkpoint",
            model=info["model"],
            overrides=dict(cfg.model),
            seed=int(cfg.seed),
            checkpoint=str(info["checkpoint"]),
            step=int(info["step"]),
        )
        return net.eval(), spec
    if model is None:
        raise ValueError("give a checkpoint (a run folder or checkpoint folder) or a model name")
    if not _is_model_name(model):
        from .. import models

        raise ValueError(
            f"{model!r} is neither an existing checkpoint path nor a model name "
            f"({', '.join(models.list_models())})"
        )
    spec = EncoderSpec(kind="random-init", model=model, overrides=dict(overrides), seed=int(seed))
    return _build(model, spec.overrides, spec.seed, device), spec


def random_init_like(
    spec: EncoderSpec, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, EncoderSpec]:
    """The same architecture as ``spec`` with the weights its pre-training run started from."""
    base = EncoderSpec(
        kind="random-init", model=spec.model, overrides=dict(spec.overrides), seed=spec.seed
    )
    return _build(base.model, base.overrides, base.seed, device), base
