"""What a training process needs around the loop: ranks and devices, precision, RNG state,
the optimizer and its schedule, CPU threads, and a clean distributed teardown."""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import random
import resource
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .config import TrainConfig

__all__ = ["lr_lambda"]


def dist_env() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` as torchrun sets them (``(0, 1, 0)`` otherwise)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, world, local


def resolve_device(cfg: TrainConfig, local_rank: int) -> torch.device:
    if cfg.device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    dev = torch.device(cfg.device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {cfg.device!r} requested but CUDA is not available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
    return dev


@contextlib.contextmanager
def process_group(world: int, device: torch.device):
    """Initialise the default process group for ``world > 1`` (unless the caller did) and tear
    it down on the way out: a barrier so no rank leaves while another still talks to it, then
    ``destroy_process_group`` — a gloo/NCCL group left to the interpreter's exit handlers can
    abort the process ("terminate called without an active exception")."""
    own = world > 1 and not dist.is_initialized()
    if own:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    ok = False
    try:
        yield
        ok = True
    finally:
        if own:
            if ok:  # after an error another rank may never reach the barrier
                with contextlib.suppress(Exception):
                    dist.barrier()
            dist.destroy_process_group()


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    p = cfg.precision
    if p == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[p]


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def auto_workers(device: torch.device, world: int) -> int:
    """DataLoader workers per process for dataset-backed sources."""
    cpus = os.cpu_count() or 1
    if device.type == "cuda":
        return max(1, min(8, cpus // max(world, 1) - 1))
    return 1 if cpus >= 2 else 0


def set_cpu_threads(device: torch.device, world: int, workers: int) -> None:
    """Leave the loader workers and the other ranks their cores: oversubscribed OpenMP barriers
    make small CPU kernels many times slower (``OMP_NUM_THREADS``, when set, wins)."""
    if device.type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(max(1, min(torch.get_num_threads(), (cpus or 1) // world - workers)))


def lr_lambda(cfg: TrainConfig):
    """Factor of ``cfg.lr`` after ``s`` optimizer steps: linear warm-up ``(s+1)/warmup`` then a
    cosine from 1 to ``min_lr / lr`` at ``cfg.steps`` (or constant)."""
    warm = warmup_steps(cfg)
    floor = min(cfg.min_lr / cfg.lr, 1.0)
    total = cfg.steps

    def f(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (s - warm) / max(1, total - warm))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return f


def warmup_steps(cfg: TrainConfig) -> int:
    if cfg.warmup_steps is not None:
        return cfg.warmup_steps
    return min(10_000, cfg.steps // 20)


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module, device: torch.device):
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    kwargs: dict[str, Any] = {"lr": cfg.lr, "betas": tuple(cfg.betas)}
    if device.type == "cuda":
        kwargs["fused"] = True
    return cls([g for g in groups if g["params"]], **kwargs)


def rng_state(device: torch.device) -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def param_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for _, p in sorted(model.state_dict().items()):
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def gather(obj, world: int) -> list:
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out
