"""`make gpu-check DRY_RUN=1` on the CPU: every stage of scripts/gpu_check.sh starts and passes
its dry form (tests and benchmarks collected, the Myna training step at a tiny size, the max
batch search collected), the package imports with soundfile / librosa / mir_eval blocked, and
the folder gets the environment (device, versions, commit) and a per-stage summary."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["info", "install", "optional_deps", "tests", "benchmarks", "train_step", "max_batch"]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_gpu_check_dry_run_starts_every_stage(tmp_path):
    env = dict(os.environ, DRY_RUN="1", OUT=str(tmp_path), PYTHON=sys.executable)
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(
        ["make", "-s", "gpu-check", "DRY_RUN=1", f"PYTHON={sys.executable}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    rows = [ln.split("\t") for ln in (tmp_path / "stages.tsv").read_text().splitlines()[1:]]
    logs = {name: (tmp_path / f"{name}.log").read_text()[-2000:] for name, *_ in rows}
    assert [r[0] for r in rows] == STAGES, rows
    failed = {name: logs[name] for name, rc, *_ in rows if rc != "0"}
    assert not failed, failed
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    env_json = json.loads((tmp_path / "environment.json").read_text())
    assert {"device", "torch", "triton", "commit", "python"} <= set(env_json)
    step = json.loads((tmp_path / "train_step.json").read_text())
    assert step["samples_per_s"] > 0 and step["measured"] is False  # a dry run measures nothing
    assert "DRY RUN" in (tmp_path / "SUMMARY.md").read_text()
    assert "imports without soundfile, librosa, mir_eval" in logs["optional_deps"]
    # the budgets of the real run fit in 8 minutes
    assert sum(int(r[3]) for r in rows) <= 480


def test_gpu_check_refuses_without_cuda(tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable)
    env.pop("DRY_RUN", None)
    proc = subprocess.run(
        ["bash", "scripts/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr
