"""The pre-training loop: one process per device, DDP under ``torchrun``.

Per step: the batch's raw audio goes to the device (int16 from a prepared corpus, converted to
float there: ``x.float() / 32768``); the model computes mel spectrograms, masks and its loss
inside ``model.loss(batch)`` (so the fused kernels run on the device); bf16 autocast on CUDA
(fp32 on the CPU unless asked); backward; global-norm clipping; Adam/AdamW (fused on CUDA);
LambdaLR warm-up + cosine. Every ``log_every`` steps: loss (mean over ranks), learning rate,
gradient norm, samples/s and peak memory go to :class:`~muse_fast.train.run_logger.RunLogger`
(progress bar, ``OUT/log.csv``, TensorBoard in ``OUT/tb``). Every ``ckpt_every`` steps and at
the end: a checkpoint (:mod:`muse_fast.train.checkpoint`).

A run is :class:`_Run`'s phases in order: ``restore`` (the checkpoint to continue),
``build`` (model and data, :mod:`muse_fast.train.sources`), ``optimizer``, then ``fit`` (steps,
logging, saves) and ``close`` (loader threads / workers joined, logs closed).

Exact resumption: the data stream is a function of ``(seed, rank, batches consumed)``, and
every rank's RNG states are saved with the optimizer and scheduler — a run killed and resumed
logs the same losses as one that was not.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from . import checkpoint as ckpt
from .config import RECIPES, TrainConfig, to_dict, validate
from .run_logger import RunLogger, say
from .runtime import auto_workers as _auto_workers  # noqa: F401  (muse_fast.benchmark)
from .runtime import (
    autocast,
    autocast_dtype,
    dist_env,
    gather,
    lr_lambda,
    make_optimizer,
    param_digest,
    peak_mem_mb,
    process_group,
    resolve_device,
    rng_state,
    seed_all,
    set_cpu_threads,
    set_rng_state,
)
from .sources import build_dataset, open_source

__all__ = ["build_dataset", "build_model", "lr_lambda", "train"]

# names muse_fast.benchmark imports from here
_autocast_dtype, _make_optimizer = autocast_dtype, make_optimizer


def build_model(cfg: TrainConfig) -> torch.nn.Module:
    """``muse_fast.models.create(recipe's model, **cfg.model)``."""
    from .. import models

    return models.create(RECIPES[cfg.recipe].model, **cfg.model)


class _LossModule(torch.nn.Module):
    """``forward(batch) = model.loss(batch)``, so DDP's hooks see the loss computation."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> torch.Tensor:
        return self.model.loss(batch)


def train(
    cfg: TrainConfig,
    *,
    resume: bool = False,
    model: torch.nn.Module | None = None,
    dataset=None,
    stop_at: int | None = None,
) -> dict:
    """Pre-train ``cfg.recipe``; returns a summary (also written to ``OUT/summary.json``).

    ``model`` / ``dataset`` replace the recipe's model and the configured data (tests, custom
    models with the same interface; ``dataset`` may be a :class:`~muse_fast.data.PreparedCorpus`).
    ``stop_at`` ends the run after that step without a final checkpoint, as if it had been
    killed there (tests of resumption).
    """
    validate(cfg)
    rank, world, local_rank = dist_env()
    device = resolve_device(cfg, local_rank)
    threads = torch.get_num_threads()
    try:
        with process_group(world, device):
            run = _Run(cfg, rank, world, device)
            try:
                run.restore(resume)
                run.build(model, dataset)
                run.optimizer()
                return run.fit(stop_at)
            finally:
                run.close()
    finally:
        torch.set_num_threads(threads)


class _Run:
    def __init__(self, cfg: TrainConfig, rank: int, world: int, device: torch.device):
        self.cfg, self.rank, self.world, self.device = cfg, rank, world, device
        self.is_main = rank == 0
        self.out = Path(cfg.out)
        self.source = self.log = None
        self.skipped_reads = 0
        self.elapsed_before = 0.0
        self.t_start = time.perf_counter()

    # ------------------------------------------------------------------ phases
    def restore(self, resume: bool) -> None:
        """Find the checkpoint to continue (``resume``) and load its state."""
        cfg, out = self.cfg, self.out
        self.start_ckpt = ckpt.latest_checkpoint(out) if resume else None
        if not resume and ckpt.list_checkpoints(out):
            raise FileExistsError(
                f"{out} already holds checkpoints; pass --resume to continue that run, or choose "
                f"another --out"
            )
        if resume and self.start_ckpt is None:
            say(self.is_main, f"no checkpoint in {out}: starting from scratch")
        self.state = ckpt.load_state(self.start_ckpt) if self.start_ckpt is not None else None
        self.step = int(self.state["step"]) if self.state is not None else 0
        if self.state is not None:
            old = self.state.get("config", {})
            for k in ("batch_size", "seed"):
                if old.get(k) != getattr(cfg, k):
                    say(
                        self.is_main,
                        f"warning: {k} changed since the checkpoint; resumption is not exact",
                    )
            if self.state.get("world_size", self.world) != self.world:
                say(
                    self.is_main,
                    "warning: world size changed since the checkpoint; data order differs",
                )

    def build(self, model: torch.nn.Module | None, dataset) -> None:
        """The model (weights from the checkpoint) and this rank's batch stream."""
        cfg, device = self.cfg, self.device
        if device.type == "cuda":
            torch.set_float32_matmul_precision("high")
        seed_all(cfg.seed)  # identical initial weights on every rank
        if model is None:
            recipe = RECIPES[cfg.recipe]
            if recipe.sized_by_data is not None and recipe.sized_by_data(cfg.model):
                if dataset is None:  # the data's geometry comes from a model built without it
                    from .. import models

                    probe = models.create(recipe.model, **{**cfg.model, **recipe.probe})
                    dataset = build_dataset(cfg, probe)
                    del probe
                # recorded in cfg, so the checkpoint's config rebuilds the same model
                cfg.model.update(recipe.data_overrides(cfg.model, len(dataset)))
                seed_all(cfg.seed)
            model = build_model(cfg)
        model.to(device)
        if self.state is not None:
            ckpt.load_model_weights(model, self.start_ckpt, device)
        self.model = model
        if dataset is None:
            dataset = build_dataset(cfg, model)  # raises on an empty folder, before any step
        self.source = open_source(
            cfg, dataset, model, rank=self.rank, world=self.world, device=device, step=self.step
        )
        set_cpu_threads(device, self.world, self.source.workers)

    def optimizer(self) -> None:
        """DDP wrapper, optimizer, schedule, scaler and RNG state (restored or per-rank seeded)."""
        cfg, device, model = self.cfg, self.device, self.model
        runner: torch.nn.Module = _LossModule(model)
        if self.world > 1:
            with warnings.catch_warnings():
                # broadcast_buffers=False is deprecated, but it is the switch that keeps
                # rank-local buffers (SogCLR's per-item state) rank-local, as the warning advises
                warnings.simplefilter("ignore", FutureWarning)
                runner = torch.nn.parallel.DistributedDataParallel(
                    runner,
                    device_ids=[device.index] if device.type == "cuda" else None,
                    broadcast_buffers=False,
                    find_unused_parameters=cfg.find_unused_parameters,
                )
        self.runner = torch.compile(runner) if cfg.compile else runner
        self.opt = make_optimizer(cfg, model, device)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(cfg))
        self.amp = autocast_dtype(cfg, device)
        self.scaler = torch.amp.GradScaler(device.type) if self.amp == torch.float16 else None
        st = self.state
        if st is not None:
            self.opt.load_state_dict(st["optimizer"])
            self.sched.load_state_dict(st["scheduler"])
            if self.scaler is not None and st.get("scaler"):
                self.scaler.load_state_dict(st["scaler"])
            rngs = st["rng"]
            set_rng_state(rngs[self.rank] if self.rank < len(rngs) else rngs[0], device)
            self.skipped_reads = int(st.get("skipped_reads", 0))
            self.elapsed_before = float(st.get("elapsed_s", 0.0))
        else:
            seed_all(cfg.seed + 1_000_003 * (self.rank + 1))  # masks and dropout differ by rank

    # ------------------------------------------------------------------ one step
    def train_step(self, batch: dict) -> torch.Tensor:
        """Forward, backward, clip, optimizer and schedule step; returns the detached loss."""
        cfg, dev = self.cfg, self.device
        audio = batch["audio"].to(dev, non_blocking=True)
        if audio.dtype == torch.int16:  # prepared corpora send half the bytes of float32
            audio = audio.float().mul_(1.0 / 32768.0)
        inputs = {"audio": audio, "index": batch["index"].to(dev, non_blocking=True)}
        with autocast(dev, self.amp):
            loss = self.runner(inputs)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
        else:
            loss.backward()
        if cfg.grad_clip > 0:
            self.grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.lr = self.sched.get_last_lr()[0]  # the rate this step used
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        return loss.detach()

    def fit(self, stop_at: int | None) -> dict:
        cfg = self.cfg
        self.open_logs()
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.grad_norm = torch.zeros((), device=self.device)
        self.t_start = time.perf_counter()
        self._window(reset=True)
        self.history: list[tuple[int, float]] = []
        self.rates: list[float] = []
        self.last_ckpt, self.last_loss = self.start_ckpt, float("nan")
        while self.step < cfg.steps:
            batch = self.source.next()
            self.skipped_window += int(batch["skipped"].sum()) if "skipped" in batch else 0
            self.loss_sum += self.train_step(batch).double()
            self.step += 1
            self.n_window += 1
            self.log.advance()
            if self.step % cfg.log_every == 0 or self.step in (cfg.steps, stop_at):
                self.report()
            if self.step == stop_at:
                break
            if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps:
                self.last_ckpt = self.save(self.step) or self.last_ckpt
        return self.summary()

    # ------------------------------------------------------------------ logging and saving
    def open_logs(self) -> None:
        cfg = self.cfg
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / "config.json", "w") as f:
                json.dump(to_dict(cfg), f, indent=2)
        self.log = RunLogger(self.out, is_main=self.is_main, step=self.step, total=cfg.steps,
                             resumed=self.state is not None, tensorboard=cfg.tensorboard,
                             progress=cfg.progress)  # fmt: skip
        amp = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp]
        n_params = sum(p.numel() for p in self.model.parameters())
        self.log.say(
            f"muse-fast pretrain: recipe {cfg.recipe} ({type(self.model).__name__}, "
            f"{n_params / 1e6:.2f} M params) on {self.device} x {self.world}, {amp}, batch "
            f"{cfg.batch_size}/device, steps {self.step} -> {cfg.steps}"
            + (f" (resumed from {self.start_ckpt})" if self.state else "")
        )
        self.log.say(
            f"data: {self.source.describe()}; {self.source.workers} loader worker(s)/process"
            + (
                f", {torch.get_num_threads()} CPU thread(s)/process"
                if self.device.type == "cpu"
                else ""
            )
        )

    def _window(self, reset: bool = False) -> None:
        self.loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        self.skipped_window = 0
        self.t_window, self.n_window = time.perf_counter(), 0
        self.wait_window = self.source.wait_s

    def report(self) -> None:
        """Mean loss over the window and the ranks, rates, memory: one log row."""
        cfg, dev = self.cfg, self.device
        stats = torch.stack(
            [
                self.loss_sum,
                torch.tensor(float(self.skipped_window), device=dev, dtype=torch.float64),
            ]
        )
        if self.world > 1:
            dist.all_reduce(stats)
        loss = float(stats[0]) / (self.n_window * self.world)
        self.skipped_reads += int(stats[1])
        now = time.perf_counter()
        rate = self.n_window * cfg.batch_size * self.world / max(now - self.t_window, 1e-9)
        self.rates.append(rate)
        self.last_loss = loss
        self.history.append((self.step, loss))
        values = {"loss": loss, "lr": self.lr, "grad_norm": float(self.grad_norm), "rate": rate,
                  "mem": peak_mem_mb(dev), "elapsed": self.elapsed_before + now - self.t_start,
                  "skipped": self.skipped_reads}  # fmt: skip
        self.log.log(self.step, cfg.steps, values)
        if len(self.rates) == 1:
            self._folder_hint(now)
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"loss is {loss} at step {self.step}; lower the learning rate or check the data"
            )
        self._window()

    def _folder_hint(self, now: float) -> None:
        """On a GPU, say how fast a folder of files feeds the step, and how to do better."""
        from ..data import AudioFolder

        ds = self.source.dataset
        if self.device.type != "cuda" or not isinstance(ds, AudioFolder):
            return
        span = max(now - self.t_window, 1e-9)
        waited = (self.source.wait_s - self.wait_window) / span
        self.log.say(
            f"data: the audio folder delivered {self.n_window * self.cfg.batch_size / span:.0f} "
            f"items/s per process, the step waited for it {100 * waited:.0f} % of the time; "
            f"decode it once with `muse-fast prepare --data {ds.root} --out CORPUS` and train "
            f"with --data CORPUS"
        )

    def save(self, at_step: int) -> Path | None:
        rng_all = gather(rng_state(self.device), self.world)
        if not self.is_main:
            return None
        cfg = self.cfg
        st = {
            "step": at_step,
            "consumed": at_step * cfg.batch_size,
            "world_size": self.world,
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng_all,
            "config": to_dict(cfg),
            "skipped_reads": self.skipped_reads,
            "elapsed_s": self.elapsed_before + time.perf_counter() - self.t_start,
        }
        meta = {"recipe": cfg.recipe, "model": RECIPES[cfg.recipe].model}
        return ckpt.save_checkpoint(
            self.out, at_step, self.model, st, to_dict(cfg), keep_last=cfg.keep_last, metadata=meta
        )

    def summary(self) -> dict:
        wall = time.perf_counter() - self.t_start
        rates = self.rates
        s = {
            "recipe": self.cfg.recipe,
            "step": self.step,
            "loss": self.last_loss,
            "losses": self.history,
            "samples_per_s": float(np.median(rates[1:] if len(rates) > 1 else rates))
            if rates
            else 0.0,
            "peak_mem_mb": peak_mem_mb(self.device),
            "wall_s": wall,
            "data_wait_s": self.source.wait_s,
            "world_size": self.world,
            "device": str(self.device),
            "checkpoint": str(self.last_ckpt) if self.last_ckpt else None,
            "skipped_at_scan": self.source.skipped_at_scan,
            "skipped_reads": self.skipped_reads,
            "n_params": sum(p.numel() for p in self.model.parameters()),
        }
        if self.world > 1:
            s["param_sha256"] = gather(param_digest(self.model), self.world)
            if len(set(s["param_sha256"])) != 1:
                say(self.is_main, "warning: ranks' parameters differ after training")
        if self.is_main:
            with open(self.out / "summary.json", "w") as f:
                json.dump(s, f, indent=2)
            scan = ", ".join(f"{v} {k}" for k, v in s["skipped_at_scan"].items() if v)
            say(
                True,
                f"done: step {self.step}, loss {self.last_loss:.4f}, {s['samples_per_s']:.1f} "
                f"samples/s, peak mem {s['peak_mem_mb']:.0f} MB, {wall:.1f} s"
                + (f"; skipped files at scan: {scan}" if scan else "")
                + (f"; bad reads replaced: {self.skipped_reads}" if self.skipped_reads else "")
                + (f"; checkpoint {self.last_ckpt}" if self.last_ckpt else ""),
            )
        return s

    def close(self) -> None:
        """Join the batch stream's threads / worker processes and close the logs."""
        if self.source is not None:
            self.source.close()
        if self.log is not None:
            self.log.close()
