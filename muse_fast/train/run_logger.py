"""One logger for a training run: ``OUT/log.csv``, TensorBoard (``OUT/tb``), the tqdm bar and
the one-line reports on stderr. Only rank 0 writes; on other ranks every method is a no-op."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

__all__ = ["CSV_FIELDS", "RunLogger"]

CSV_FIELDS = [
    "step",
    "loss",
    "lr",
    "grad_norm",
    "samples_per_s",
    "peak_mem_mb",
    "elapsed_s",
    "skipped_reads",
]


def say(is_main: bool, msg: str) -> None:
    if is_main:
        from tqdm import tqdm

        tqdm.write(msg, file=sys.stderr)


def truncate_csv(path: Path, step: int) -> None:
    """Drop rows logged after ``step`` by a run that died before its next checkpoint."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in rows:
            if int(r["step"]) <= step:
                w.writerow({k: r.get(k, "") for k in CSV_FIELDS})


class RunLogger:
    """Opened at ``step`` (0, or the resumed checkpoint's step with ``resumed=True``)."""

    def __init__(
        self,
        out: Path,
        *,
        is_main: bool,
        step: int,
        total: int,
        resumed: bool,
        tensorboard: bool,
        progress: bool,
    ):
        self.is_main = is_main
        self._csv = self._writer = self._tb = None
        from tqdm import tqdm

        self.bar = tqdm(
            total=total,
            initial=step,
            disable=not (is_main and progress and sys.stderr.isatty()),
            dynamic_ncols=True,
            unit="step",
            file=sys.stderr,
        )
        if not is_main:
            return
        out.mkdir(parents=True, exist_ok=True)
        path = out / "log.csv"
        if resumed:
            truncate_csv(path, step)
        new = not path.exists() or not resumed
        self._csv = open(path, "a" if resumed else "w", newline="")
        self._writer = csv.DictWriter(self._csv, fieldnames=CSV_FIELDS)
        if new:
            self._writer.writeheader()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(out / "tb"), purge_step=step + 1 if resumed else None)
            except Exception as e:  # tensorboard missing or broken: keep training
                self.say(f"tensorboard disabled ({type(e).__name__}: {e})")

    def say(self, msg: str) -> None:
        say(self.is_main, msg)

    def advance(self) -> None:
        self.bar.update(1)

    def log(self, step: int, total: int, values: dict) -> None:
        """One log row: ``values`` holds loss, lr, grad_norm, rate, mem, elapsed, skipped."""
        if not self.is_main:
            return
        v = values
        self._writer.writerow(
            {
                "step": step,
                "loss": repr(v["loss"]),
                "lr": f"{v['lr']:.6g}",
                "grad_norm": f"{v['grad_norm']:.6g}",
                "samples_per_s": f"{v['rate']:.2f}",
                "peak_mem_mb": f"{v['mem']:.1f}",
                "elapsed_s": f"{v['elapsed']:.2f}",
                "skipped_reads": v["skipped"],
            }
        )
        self._csv.flush()
        if self._tb is not None:
            for tag, key in (
                ("train/loss", "loss"),
                ("train/lr", "lr"),
                ("train/grad_norm", "grad_norm"),
                ("perf/samples_per_s", "rate"),
                ("perf/peak_mem_mb", "mem"),
            ):
                self._tb.add_scalar(tag, v[key], step)
        self.bar.set_postfix(
            loss=f"{v['loss']:.4f}", sps=f"{v['rate']:.1f}", mem=f"{v['mem']:.0f}MB", refresh=False
        )
        self.say(
            f"step {step:>7d}/{total} | loss {v['loss']:.4f} | lr {v['lr']:.3g} | "
            f"{v['rate']:8.1f} samples/s | peak mem {v['mem']:.0f} MB"
        )

    def close(self) -> None:
        self.bar.close()
        if self._csv is not None:
            self._csv.close()
            self._csv = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
