"""Two CPU processes on gloo, launched the way torchrun launches them (RANK / WORLD_SIZE /
LOCAL_RANK / MASTER_ADDR / MASTER_PORT), running `muse-fast pretrain`: DDP keeps the ranks'
parameters identical while each rank reads its own shard of the data."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_ddp(tmp_path):
    out = tmp_path / "run"
    port = _free_port()
    cmd = [
        sys.executable, "-m", "muse_fast.cli", "pretrain", "--recipe", "myna-hybrid",
        "--set", "model.size=tiny", "--steps", "3", "--batch-size", "4", "--out", str(out),
        "--device", "cpu", "--log-every", "1", "--num-workers", "0", "--no-progress",
        "--set", "tensorboard=false", "--set", "data.synthetic_tracks=16",
        "--set", "data.synthetic_duration_s=4",
    ]  # fmt: skip
    procs = []
    for rank in range(2):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
        procs.append(
            subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == 3
    digests = summary["param_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1], digests
    assert "on cpu x 2" in logs[0] and "loss" in logs[0]
    assert logs[1].count("step ") == 0  # only rank 0 reports
    losses = [float(r.split(",")[1]) for r in (out / "log.csv").read_text().splitlines()[1:]]
    assert len(losses) == 3 and all(0 < x < 20 for x in losses)  # finite, mean over both ranks
