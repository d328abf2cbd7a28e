"""The pre-training loop: one process per device, DDP under ``torchrun``.

Per step: the batch's raw audio goes to the device; the model computes mel spectrograms, masks
and its loss inside ``model.loss(batch)`` (so the fused kernels run on the device); bf16 autocast
on CUDA (fp32 on the CPU unless asked); backward; global-norm clipping; Adam/AdamW (fused on
CUDA); LambdaLR warm-up + cosine. Every ``log_every`` steps: loss (mean over ranks), learning
rate, gradient norm, samples/s and peak memory go to the progress bar, ``OUT/log.csv`` and
TensorBoard (``OUT/tb``). Every ``ckpt_every`` steps and at the end: a checkpoint
(:mod:`muse_fast.train.checkpoint`).

Exact resumption: the data stream is a function of ``(seed, epoch, index)`` and of the number of
samples consumed (:class:`muse_fast.data.ResumableSampler`), the DataLoader gets its own generator
(so creating it does not touch the global RNG), and every rank's RNG states are saved with the
optimizer and scheduler — a run killed and resumed logs the same losses as one that was not.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import math
import os
import random
import resource
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from . import checkpoint as ckpt
from .config import RECIPES, TrainConfig, to_dict, validate

__all__ = ["build_dataset", "build_model", "lr_lambda", "train"]

_CSV_FIELDS = [
    "step",
    "loss",
    "lr",
    "grad_norm",
    "samples_per_s",
    "peak_mem_mb",
    "elapsed_s",
    "skipped_reads",
]


# ---------------------------------------------------------------------- setup helpers
def _dist_env() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, world, local


def _resolve_device(cfg: TrainConfig, local_rank: int, world: int) -> torch.device:
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


def _autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    p = cfg.precision
    if p == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[p]


def build_model(cfg: TrainConfig) -> torch.nn.Module:
    """``muse_fast.models.create(recipe's model, **cfg.model)``."""
    from .. import models

    return models.create(RECIPES[cfg.recipe].model, **cfg.model)


def build_dataset(cfg: TrainConfig, model: torch.nn.Module) -> torch.utils.data.Dataset:
    """The folder in ``cfg.data.root``, else the synthetic corpus, cropped for ``model``."""
    from ..data import AudioFolder, SyntheticMusic

    sr, seg, views = int(model.sample_rate), int(model.segment_samples), int(model.n_views)
    if cfg.data.root:
        return AudioFolder(
            cfg.data.root,
            sr,
            seg,
            views,
            extensions=tuple(cfg.data.extensions),
            seed=cfg.seed,
            silence_threshold=cfg.data.silence_threshold,
        )
    duration = max(cfg.data.synthetic_duration_s, 2.0 * seg / sr)
    return SyntheticMusic(
        cfg.data.synthetic_tracks, duration, sr, cfg.seed, segment_samples=seg, n_views=views
    )


def _describe_data(ds) -> str:
    from ..data import AudioFolder, SyntheticMusic

    if isinstance(ds, AudioFolder):
        return f"{len(ds)} files in {ds.root} (skipped at scan: {ds.skip_summary()})"
    if isinstance(ds, SyntheticMusic):
        return (
            f"synthetic corpus: {ds.n_tracks} tracks x {ds.duration_s:g} s at "
            f"{ds.sample_rate} Hz, seed {ds.seed}"
        )
    return repr(ds)


def _worker_init(_worker_id: int) -> None:
    torch.set_num_threads(1)


def _auto_workers(device: torch.device, world: int) -> int:
    cpus = os.cpu_count() or 1
    if device.type == "cuda":
        return max(1, min(8, cpus // max(world, 1) - 1))
    return 1 if cpus >= 2 else 0


def lr_lambda(cfg: TrainConfig):
    """Factor of ``cfg.lr`` after ``s`` optimizer steps: linear warm-up ``(s+1)/warmup`` then a
    cosine from 1 to ``min_lr / lr`` at ``cfg.steps`` (or constant)."""
    warm = _warmup_steps(cfg)
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


def _warmup_steps(cfg: TrainConfig) -> int:
    if cfg.warmup_steps is not None:
        return cfg.warmup_steps
    return min(10_000, cfg.steps // 20)


def _make_optimizer(cfg: TrainConfig, model: torch.nn.Module, device: torch.device):
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


def _rng_state(device: torch.device) -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _param_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for _, p in sorted(model.state_dict().items()):
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class _LossModule(torch.nn.Module):
    """``forward(batch) = model.loss(batch)``, so DDP's hooks see the loss computation."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> torch.Tensor:
        return self.model.loss(batch)


def _gather(obj, world: int) -> list:
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out


def _truncate_csv(path: Path, step: int) -> None:
    """Drop rows logged after ``step`` by a run that died before its next checkpoint."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=_CSV_FIELDS)
        w.writeheader()
        for r in rows:
            if int(r["step"]) <= step:
                w.writerow({k: r.get(k, "") for k in _CSV_FIELDS})


# ---------------------------------------------------------------------- the loop
def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    model: torch.nn.Module | None = None,
    dataset: torch.utils.data.Dataset | None = None,
    stop_at: int | None = None,
) -> dict:
    """Pre-train ``cfg.recipe``; returns a summary (also written to ``OUT/summary.json``).

    ``model`` / ``dataset`` replace the recipe's model and the configured data (tests, custom
    models with the same interface). ``stop_at`` ends the run after that step without a final
    checkpoint, as if it had been killed there (tests of resumption).
    """
    validate(cfg)
    rank, world, local_rank = _dist_env()
    device = _resolve_device(cfg, local_rank, world)
    own_pg = False
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        own_pg = True
    is_main = rank == 0
    out = Path(cfg.out)
    threads = torch.get_num_threads()
    try:
        return _train(cfg, resume, model, dataset, stop_at, rank, world, device, is_main, out)
    finally:
        torch.set_num_threads(threads)
        if own_pg:
            dist.destroy_process_group()


def _say(is_main: bool, msg: str) -> None:
    if is_main:
        from tqdm import tqdm

        tqdm.write(msg, file=sys.stderr)


def _train(cfg, resume, model, dataset, stop_at, rank, world, device, is_main, out) -> dict:
    from tqdm import tqdm

    from ..data import ResumableSampler

    # ---- where do we start?
    start_ckpt = ckpt.latest_checkpoint(out) if resume else None
    if not resume and ckpt.list_checkpoints(out):
        raise FileExistsError(
            f"{out} already holds checkpoints; pass --resume to continue that run, or choose "
            f"another --out"
        )
    if resume and start_ckpt is None:
        _say(is_main, f"no checkpoint in {out}: starting from scratch")
    state = ckpt.load_state(start_ckpt) if start_ckpt is not None else None
    if state is not None:
        old = state.get("config", {})
        for k in ("batch_size", "seed"):
            if old.get(k) != getattr(cfg, k):
                _say(is_main, f"warning: {k} changed since the checkpoint; resumption is not exact")
        if state.get("world_size", world) != world:
            _say(is_main, "warning: world size changed since the checkpoint; data order differs")

    # ---- model, data
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    _seed_all(cfg.seed)  # identical initial weights on every rank
    if model is None:
        if cfg.model.get("loss") == "sogclr" and not cfg.model.get("dataset_size"):
            # the global contrastive loss keeps one state per training item: size it to the data
            # (and record it, so the checkpoint's config rebuilds the same model)
            if dataset is None:
                probe = build_model(
                    dataclasses.replace(cfg, model={**cfg.model, "loss": "nt_xent"})
                )
                dataset = build_dataset(cfg, probe)
                del probe
            cfg.model["dataset_size"] = len(dataset)
            _seed_all(cfg.seed)
        model = build_model(cfg)
    model.to(device)
    if state is not None:
        ckpt.load_model_weights(model, start_ckpt, device)
    n_params = sum(p.numel() for p in model.parameters())
    if dataset is None:
        dataset = build_dataset(cfg, model)  # raises on an empty folder, before any step
    step = int(state["step"]) if state is not None else 0
    consumed = step * cfg.batch_size
    sampler = ResumableSampler(
        len(dataset), seed=cfg.seed, rank=rank, world_size=world, start=consumed
    )
    workers = cfg.num_workers if cfg.num_workers is not None else _auto_workers(device, world)
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # leave the loader workers and the other ranks their cores: oversubscribed OpenMP
        # barriers make small CPU kernels many times slower
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        torch.set_num_threads(max(1, min(torch.get_num_threads(), (cpus or 1) // world - workers)))
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=workers > 0,
        worker_init_fn=_worker_init if workers > 0 else None,
        generator=torch.Generator().manual_seed(cfg.seed),  # never draws from the global RNG
    )

    runner: torch.nn.Module = _LossModule(model)
    if world > 1:
        with warnings.catch_warnings():
            # broadcast_buffers=False is deprecated, but it is the switch that keeps rank-local
            # buffers (SogCLR's per-item state) rank-local, as the warning itself advises
            warnings.simplefilter("ignore", FutureWarning)
            runner = torch.nn.parallel.DistributedDataParallel(
                runner,
                device_ids=[device.index] if device.type == "cuda" else None,
                broadcast_buffers=False,
                find_unused_parameters=cfg.find_unused_parameters,
            )
    if cfg.compile:
        runner = torch.compile(runner)
    opt = _make_optimizer(cfg, model, device)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    amp_dtype = _autocast_dtype(cfg, device)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    skipped_reads = 0
    elapsed_before = 0.0
    if state is not None:
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        rngs = state["rng"]
        _set_rng_state(rngs[rank] if rank < len(rngs) else rngs[0], device)
        skipped_reads = int(state.get("skipped_reads", 0))
        elapsed_before = float(state.get("elapsed_s", 0.0))
    else:
        _seed_all(cfg.seed + 1_000_003 * (rank + 1))  # masks and dropout differ across ranks

    # ---- logs
    csv_path = out / "log.csv"
    csv_file = tb = None
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "config.json", "w") as f:
            json.dump(to_dict(cfg), f, indent=2)
        if state is not None:
            _truncate_csv(csv_path, step)
        new_csv = not csv_path.exists() or state is None
        csv_file = open(csv_path, "w" if state is None else "a", newline="")
        csv_writer = csv.DictWriter(csv_file, fieldnames=_CSV_FIELDS)
        if new_csv:
            csv_writer.writeheader()
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                tb = SummaryWriter(str(out / "tb"), purge_step=step + 1 if state else None)
            except Exception as e:  # tensorboard missing or broken: keep training
                _say(is_main, f"tensorboard disabled ({type(e).__name__}: {e})")

    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=amp_dtype)

    amp_name = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]
    _say(
        is_main,
        f"muse-fast pretrain: recipe {cfg.recipe} ({type(model).__name__}, {n_params / 1e6:.2f} M "
        f"params) on {device} x {world}, {amp_name}, batch {cfg.batch_size}/device, "
        f"steps {step} -> {cfg.steps}" + (f" (resumed from {start_ckpt})" if state else ""),
    )
    _say(
        is_main,
        f"data: {_describe_data(dataset)}; {workers} loader worker(s)/process"
        + (f", {torch.get_num_threads()} CPU thread(s)/process" if device.type == "cpu" else ""),
    )

    def save(at_step: int) -> Path | None:
        rng_all = _gather(_rng_state(device), world)
        if not is_main:
            return None
        st = {
            "step": at_step,
            "consumed": at_step * cfg.batch_size,
            "world_size": world,
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": rng_all,
            "config": to_dict(cfg),
            "skipped_reads": skipped_reads,
            "elapsed_s": elapsed_before + time.perf_counter() - t_start,
        }
        meta = {"recipe": cfg.recipe, "model": RECIPES[cfg.recipe].model}
        return ckpt.save_checkpoint(
            out, at_step, model, st, to_dict(cfg), keep_last=cfg.keep_last, metadata=meta
        )

    # ---- steps
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    bar = tqdm(
        total=cfg.steps,
        initial=step,
        disable=not (is_main and cfg.progress and sys.stderr.isatty()),
        dynamic_ncols=True,
        unit="step",
        file=sys.stderr,
    )
    t_start = time.perf_counter()
    t_window, n_window = t_start, 0
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    skipped_window = 0
    grad_norm = torch.zeros((), device=device)
    history: list[tuple[int, float]] = []
    rates: list[float] = []
    last_ckpt = start_ckpt
    last_loss = float("nan")
    it = iter(loader)
    try:
        while step < cfg.steps:
            batch = next(it)
            skipped_window += int(batch["skipped"].sum()) if "skipped" in batch else 0
            inputs = {
                "audio": batch["audio"].to(device, non_blocking=True),
                "index": batch["index"].to(device, non_blocking=True),
            }
            with autocast():
                loss = runner(inputs)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
            else:
                loss.backward()
            if cfg.grad_clip > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            lr = sched.get_last_lr()[0]  # the rate this step used
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            n_window += 1
            loss_sum += loss.detach().double()
            bar.update(1)

            if step % cfg.log_every == 0 or step == cfg.steps or step == stop_at:
                stats = torch.stack(
                    [
                        loss_sum,
                        torch.tensor(float(skipped_window), device=device, dtype=torch.float64),
                    ]
                )
                if world > 1:
                    dist.all_reduce(stats)
                loss_val = float(stats[0]) / (n_window * world)
                skipped_reads += int(stats[1])
                now = time.perf_counter()
                rate = n_window * cfg.batch_size * world / max(now - t_window, 1e-9)
                rates.append(rate)
                mem = _peak_mem_mb(device)
                gn = float(grad_norm)
                last_loss = loss_val
                history.append((step, loss_val))
                if is_main:
                    row = {
                        "step": step,
                        "loss": repr(loss_val),
                        "lr": f"{lr:.6g}",
                        "grad_norm": f"{gn:.6g}",
                        "samples_per_s": f"{rate:.2f}",
                        "peak_mem_mb": f"{mem:.1f}",
                        "elapsed_s": f"{elapsed_before + now - t_start:.2f}",
                        "skipped_reads": skipped_reads,
                    }
                    csv_writer.writerow(row)
                    csv_file.flush()
                    if tb is not None:
                        tb.add_scalar("train/loss", loss_val, step)
                        tb.add_scalar("train/lr", lr, step)
                        tb.add_scalar("train/grad_norm", gn, step)
                        tb.add_scalar("perf/samples_per_s", rate, step)
                        tb.add_scalar("perf/peak_mem_mb", mem, step)
                    bar.set_postfix(
                        loss=f"{loss_val:.4f}", sps=f"{rate:.1f}", mem=f"{mem:.0f}MB", refresh=False
                    )
                    _say(
                        True,
                        f"step {step:>7d}/{cfg.steps} | loss {loss_val:.4f} | lr {lr:.3g} | "
                        f"{rate:8.1f} samples/s | peak mem {mem:.0f} MB",
                    )
                if not math.isfinite(loss_val):
                    raise FloatingPointError(
                        f"loss is {loss_val} at step {step}; lower the learning rate or check the data"
                    )
                loss_sum.zero_()
                skipped_window = 0
                t_window, n_window = time.perf_counter(), 0
            if step == stop_at:
                break
            if step % cfg.ckpt_every == 0 or step == cfg.steps:
                last_ckpt = save(step) or last_ckpt
    finally:
        bar.close()
        if csv_file is not None:
            csv_file.close()
        if tb is not None:
            tb.close()
        del it

    wall = time.perf_counter() - t_start
    summary = {
        "recipe": cfg.recipe,
        "step": step,
        "loss": last_loss,
        "losses": history,
        "samples_per_s": float(np.median(rates[1:] if len(rates) > 1 else rates)) if rates else 0.0,
        "peak_mem_mb": _peak_mem_mb(device),
        "wall_s": wall,
        "world_size": world,
        "device": str(device),
        "checkpoint": str(last_ckpt) if last_ckpt else None,
        "skipped_at_scan": {k: len(v) for k, v in getattr(dataset, "skipped", {}).items()},
        "skipped_reads": skipped_reads,
        "n_params": n_params,
    }
    if world > 1:
        summary["param_sha256"] = _gather(_param_digest(model), world)
        if len(set(summary["param_sha256"])) != 1:
            _say(is_main, "warning: ranks' parameters differ after training")
    if is_main:
        with open(out / "summary.json", "w") as f:
            json.dump(summary, f, indent=2)
        scan = ", ".join(f"{v} {k}" for k, v in summary["skipped_at_scan"].items() if v)
        _say(
            True,
            f"done: step {step}, loss {last_loss:.4f}, {summary['samples_per_s']:.1f} samples/s, "
            f"peak mem {summary['peak_mem_mb']:.0f} MB, {wall:.1f} s"
            + (f"; skipped files at scan: {scan}" if scan else "")
            + (f"; bad reads replaced: {skipped_reads}" if skipped_reads else "")
            + (f"; checkpoint {last_ckpt}" if last_ckpt else ""),
        )
    return summary
