"""Pre-training: recipes, configs, the loop (single process or DDP), checkpoints, embeddings.

``muse-fast pretrain`` / ``muse-fast embed`` are the command-line faces of :func:`train` and
:func:`embed_files`; see :mod:`muse_fast.train.config` for how a run is configured.
"""

from .checkpoint import latest_checkpoint, list_checkpoints, resolve_checkpoint
from .config import RECIPES, DataConfig, Recipe, TrainConfig, apply_overrides, make_config
from .embed import embed_audio, embed_files, load_pretrained, save_embeddings
from .loop import build_dataset, build_model, lr_lambda, train

__all__ = [
    "RECIPES",
    "DataConfig",
    "Recipe",
    "TrainConfig",
    "apply_overrides",
    "build_dataset",
    "build_model",
    "embed_audio",
    "embed_files",
    "latest_checkpoint",
    "list_checkpoints",
    "load_pretrained",
    "lr_lambda",
    "make_config",
    "resolve_checkpoint",
    "save_embeddings",
    "train",
]
