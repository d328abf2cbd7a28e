"""Training configuration: dataclasses, recipes, and overrides from files and the command line.

A run's configuration is built in layers, later ones winning:

1. the :class:`TrainConfig` defaults,
2. the recipe's defaults (:data:`RECIPES`: the model and the paper's optimizer settings),
3. a config file (``--config run.json`` or ``run.toml``: the same nesting as :class:`TrainConfig`,
   e.g. ``lr = 1e-4`` and a ``[model]`` table),
4. dedicated flags (``--steps``, ``--batch-size``, ``--data``, ``--out``, ``--mixer``),
5. ``--set key=value`` pairs in command-line order (``--set lr=1e-4 --set model.size=tiny
   --set data.synthetic_tracks=256``). Values are parsed as JSON when they parse (numbers,
   ``true``/``false``, ``null``, lists) and kept as strings otherwise, then converted to the
   field's type.

``muse-fast pretrain --resume`` starts from the resumed run's saved config instead of 1-2, so
``muse-fast pretrain --recipe R --out RUN --resume`` continues the run as it was configured (flags
and ``--set`` still apply on top, e.g. ``--steps`` to train longer).

``model.*`` keys are passed to ``muse_fast.models.create(recipe.model, **config.model)``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "RECIPES",
    "DataConfig",
    "Recipe",
    "TrainConfig",
    "apply_overrides",
    "load_config_file",
    "make_config",
    "parse_set",
    "recipe_geometry",
]


@dataclass
class DataConfig:
    """Where training audio comes from."""

    root: str | None = None  # a prepared corpus, or a folder of audio; None: synthetic corpus
    extensions: list[str] = field(default_factory=lambda: [".wav", ".flac", ".ogg", ".mp3"])
    silence_threshold: float = 1e-4  # peak below which a crop counts as silent
    synthetic_tracks: int = 2048  # synthetic corpus size (tracks)
    synthetic_duration_s: float = 30.0  # synthetic track length; raised to 2 crops if shorter


@dataclass
class TrainConfig:
    """Everything a pre-training run needs. ``batch_size`` is per process (per GPU)."""

    recipe: str = "myna-hybrid"
    model: dict[str, Any] = field(default_factory=dict)  # overrides for models.create
    data: DataConfig = field(default_factory=DataConfig)
    out: str = "runs/muse"
    steps: int = 100_000
    batch_size: int = 64
    optimizer: str = "adamw"  # adamw | adam
    lr: float = 3e-4  # peak learning rate
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 1e-5
    warmup_steps: int | None = None  # linear warm-up from 0; None: 5 % of steps (<= 10 000)
    schedule: str = "cosine"  # cosine (to min_lr at `steps`) | constant (after warm-up)
    min_lr: float = 0.0
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    log_every: int = 10
    ckpt_every: int = 1000
    keep_last: int = 3  # checkpoints kept in out/checkpoints (0 keeps all)
    num_workers: int | None = None  # DataLoader workers per process; None: auto
    seed: int = 0
    compile: bool = False  # torch.compile the loss
    tensorboard: bool = True
    progress: bool = True  # tqdm progress bar
    find_unused_parameters: bool = False  # DDP option, for models with branches a step skips


def _sogclr_size_key(model_cfg: dict) -> str | None:
    """Myna's global contrastive loss (SogCLR) keeps one state per training item: the model
    needs the corpus size, which is only known once the data is opened."""
    if model_cfg.get("loss") == "sogclr" and not model_cfg.get("dataset_size"):
        return "dataset_size"
    return None


@dataclass(frozen=True)
class Recipe:
    model: str  # name for muse_fast.models.create
    description: str
    defaults: dict[str, Any]  # TrainConfig fields (nested dicts for model / data)
    # model.* key to set to the number of training items (or None), given cfg.model
    sized_by_data: Callable[[dict], str | None] | None = None
    # model.* overrides under which the model's config can be built before that size is known
    probe: dict[str, Any] = field(default_factory=dict)

    def data_overrides(self, model_cfg: dict, n_items: int) -> dict[str, Any]:
        """model.* values that depend on the data (recorded in the run's config)."""
        key = self.sized_by_data(model_cfg) if self.sized_by_data else None
        return {key: int(n_items)} if key else {}


def recipe_geometry(recipe: str, model_cfg: dict) -> tuple[int, int]:
    """``(sample_rate, segment_samples)`` of ``recipe``'s model under ``model_cfg``, without
    building the model (and before data-dependent fields are known)."""
    from .. import models

    r = RECIPES[recipe]
    probe = (
        {**model_cfg, **r.probe} if r.sized_by_data and r.sized_by_data(model_cfg) else model_cfg
    )
    c = models.config_for(r.model, **probe)
    return int(c.sample_rate), int(c.segment_samples)


_MYNA = {"optimizer": "adam", "lr": 3e-4, "weight_decay": 1e-5, "batch_size": 4096}
_MUSELQ = {
    "optimizer": "adamw",
    "lr": 1e-4,
    "min_lr": 1e-5,
    "weight_decay": 1e-2,
    "grad_clip": 1.0,
    "batch_size": 64,
}

_MYNA_DATA = {"sized_by_data": _sogclr_size_key, "probe": {"loss": "nt_xent"}}

RECIPES: dict[str, Recipe] = {
    "myna-base": Recipe(
        "myna-base",
        "Myna, 16x16 patches, 90% token masking, NT-Xent on two crops (Adam 3e-4, wd 1e-5)",
        dict(_MYNA),
        **_MYNA_DATA,
    ),
    "myna-vertical": Recipe(
        "myna-vertical",
        "Myna, 128x2 vertical patches, 90% token masking, NT-Xent (Adam 3e-4, wd 1e-5)",
        dict(_MYNA),
        **_MYNA_DATA,
    ),
    "myna-hybrid": Recipe(
        "myna-hybrid",
        "Myna-Hybrid: one ViT, 16x16 and 128x2 patch embeddings, mean of the two losses",
        dict(_MYNA),
        **_MYNA_DATA,
    ),
    "vit1d": Recipe(
        "vit1d",
        "ViT-1D (128x1 patches), NT-Xent on the class token of two 4-s segments",
        {"optimizer": "adam", "lr": 3e-4, "weight_decay": 1e-5, "batch_size": 256},
    ),
    "bestrq-conformer": Recipe(
        "bestrq-conformer",
        "BEST-RQ music FM: random-projection quantizer targets, span masking, Conformer, CE",
        dict(_MUSELQ),
    ),
    "muselq-branchformer": Recipe(
        "muselq-branchformer",
        "MuseLQ: BEST-RQ targets, Branchformer (MHSA or SummaryMixing), CE + MSE "
        "(AdamW, warm-up to 1e-4, cosine to 1e-5, clip 1.0, bf16)",
        dict(_MUSELQ),
    ),
}


# ---------------------------------------------------------------------- overrides
def parse_set(item: str) -> tuple[str, Any]:
    """``"model.size=tiny"`` -> ``("model.size", "tiny")``; ``"lr=1e-4"`` -> ``("lr", 1e-4)``."""
    if "=" not in item:
        raise ValueError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ValueError(f"--set expects key=value, got {item!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, name)
            except (TypeError, ValueError):
                continue
        raise ValueError(f"{name}: cannot use {value!r} as {tp}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError(f"{name}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ValueError(f"{name}: expected an integer, got {value!r}")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            return int(float(value)) if float(value).is_integer() else int(value)
        if isinstance(value, int):
            return value
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str | int | float):
            raise ValueError(f"{name}: expected a string, got {value!r}")
        return str(value)
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list | tuple):
            raise ValueError(f"{name}: expected a list, got {value!r}")
        (inner,) = args or (Any,)
        return [v if inner is Any else _coerce(v, inner, name) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{name}: expected a table / object, got {value!r}")
        return dict(value)
    return value


def _set(obj: Any, path: list[str], value: Any, full: str) -> None:
    name = path[0]
    if isinstance(obj, dict):
        if len(path) == 1:
            obj[name] = value
        else:
            _set(obj.setdefault(name, {}), path[1:], value, full)
        return
    types = _field_types(type(obj))
    if name not in types:
        raise ValueError(
            f"unknown config key {full!r}; {type(obj).__name__} has: {', '.join(sorted(types))}"
        )
    cur = getattr(obj, name)
    if len(path) > 1:
        if not (dataclasses.is_dataclass(cur) or isinstance(cur, dict)):
            raise ValueError(f"config key {full!r}: {name!r} has no sub-keys")
        _set(cur, path[1:], value, full)
        return
    if dataclasses.is_dataclass(cur):
        if not isinstance(value, dict):
            raise ValueError(f"config key {full!r} expects a table of {type(cur).__name__} keys")
        for k, v in value.items():
            _set(cur, [k], v, f"{full}.{k}")
        return
    if isinstance(cur, dict) and isinstance(value, dict):
        cur.update(value)
        return
    try:
        setattr(obj, name, _coerce(value, types[name], full))
    except (TypeError, ValueError) as e:
        msg = str(e)
        raise ValueError(msg if msg.startswith(full) else f"{full}: {msg}") from None


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "model":
            out += _flatten(v, key + ".")
        elif isinstance(v, dict):
            out += [(f"{key}.{mk}", mv) for mk, mv in v.items()]
        else:
            out.append((key, v))
    return out


def apply_overrides(cfg: TrainConfig, overrides: dict | list[tuple[str, Any]]) -> TrainConfig:
    """Apply ``{"lr": 1e-4, "model": {"size": "tiny"}}`` or ``[("model.size", "tiny")]`` in place."""
    items = _flatten(overrides) if isinstance(overrides, dict) else list(overrides)
    for key, value in items:
        _set(cfg, key.split("."), value, key)
    return cfg


def load_config_file(path: str | os.PathLike) -> dict:
    """A JSON (``.json``) or TOML (``.toml``) file with :class:`TrainConfig`'s nesting."""
    path = os.fspath(path)
    if path.endswith(".toml"):
        import tomllib

        with open(path, "rb") as f:
            return tomllib.load(f)
    with open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(
                f"config file {path!r} is not valid JSON (or name it .toml): {e}"
            ) from e
    if not isinstance(data, dict):
        raise ValueError(f"config file {path!r} must hold an object")
    return data


def make_config(
    recipe: str,
    *,
    config_file: str | None = None,
    overrides: dict | list[tuple[str, Any]] = (),
    base: TrainConfig | None = None,
) -> TrainConfig:
    """Defaults < recipe < config file < overrides (see the module docstring). With ``base``
    (a resumed run's config) that replaces the defaults and the recipe."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose from: {', '.join(RECIPES)}")
    if base is not None:
        if base.recipe != recipe:
            raise ValueError(f"the run to resume is recipe {base.recipe!r}, not {recipe!r}")
        cfg = from_dict(to_dict(base))
    else:
        cfg = TrainConfig(recipe=recipe)
        apply_overrides(cfg, RECIPES[recipe].defaults)
    if config_file:
        file_cfg = load_config_file(config_file)
        if "recipe" in file_cfg and file_cfg["recipe"] != recipe:
            raise ValueError(
                f"config file {config_file!r} is for recipe {file_cfg['recipe']!r}, not {recipe!r}"
            )
        apply_overrides(cfg, file_cfg)
    apply_overrides(cfg, overrides)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    """Raise ``ValueError`` naming the first bad field."""
    if cfg.recipe not in RECIPES:
        raise ValueError(f"unknown recipe {cfg.recipe!r}; choose from: {', '.join(RECIPES)}")
    checks = [
        (cfg.steps >= 1, "steps must be >= 1"),
        (cfg.batch_size >= 1, "batch_size must be >= 1"),
        (cfg.lr > 0, "lr must be > 0"),
        (cfg.min_lr >= 0, "min_lr must be >= 0"),
        (cfg.weight_decay >= 0, "weight_decay must be >= 0"),
        (cfg.warmup_steps is None or cfg.warmup_steps >= 0, "warmup_steps must be >= 0"),
        (cfg.grad_clip >= 0, "grad_clip must be >= 0 (0 disables clipping)"),
        (cfg.log_every >= 1, "log_every must be >= 1"),
        (cfg.ckpt_every >= 1, "ckpt_every must be >= 1"),
        (cfg.keep_last >= 0, "keep_last must be >= 0"),
        (cfg.num_workers is None or cfg.num_workers >= 0, "num_workers must be >= 0"),
        (cfg.optimizer in ("adam", "adamw"), "optimizer must be adam or adamw"),
        (cfg.schedule in ("cosine", "constant"), "schedule must be cosine or constant"),
        (
            cfg.precision in ("auto", "bf16", "fp16", "fp32"),
            "precision must be auto|bf16|fp16|fp32",
        ),
        (len(cfg.betas) == 2, "betas must hold two numbers"),
        (cfg.data.synthetic_tracks >= 1, "data.synthetic_tracks must be >= 1"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ValueError(msg)


def to_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(d: dict) -> TrainConfig:
    """Inverse of :func:`to_dict` (unknown keys raise)."""
    cfg = TrainConfig(recipe=d.get("recipe", "myna-hybrid"))
    apply_overrides(cfg, {k: v for k, v in d.items() if k != "recipe"})
    return cfg
