"""The test harness itself: one session seed across xdist workers, printed, and replayable."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from muse_fast.testing import seed_for, session_seed

CONFTEST = Path(__file__).with_name("conftest.py")

# Each probe file records the seed its worker sees and the first draws of the seeded generators.
PROBE = """
import os, random, numpy as np, torch
AT_IMPORT = torch.rand(1).item()  # a collection-time draw (inputs built for parametrize)
def test_probe_{name}():
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    draws = (AT_IMPORT, random.random(), float(np.random.rand()), torch.rand(1).item())
    with open(os.path.join({out!r}, "{name}-" + worker), "w") as f:
        f.write(f"{{os.environ['MUSE_FAST_TEST_SEED']}} {{draws}}")
    assert os.environ.get("PROBE_FAIL") != "{name}"
"""


def _run_probe(
    tmp_path: Path, out: Path, env_extra: dict[str, str], *args: str
) -> subprocess.CompletedProcess:
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    for name in ("one", "two"):
        (tmp_path / f"test_probe_{name}.py").write_text(PROBE.format(name=name, out=str(out)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.pop("MUSE_FAST_TEST_SEED", None)
    env.update(env_extra)
    cmd = [sys.executable, "-m", "pytest", str(tmp_path), "-n", "2", "--dist", "loadfile"]
    cmd += ["-p", "no:randomly", "-p", "no:cacheprovider", "-o", "addopts=", *args]
    return subprocess.run(
        cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False
    )


def _records(out: Path) -> dict[str, str]:
    return {p.name.split("-")[0]: p.read_text() for p in out.iterdir()}


@pytest.mark.slow
def test_workers_share_the_printed_seed_and_a_replay_repeats_the_inputs(tmp_path):
    run, out1, out2, out3 = (tmp_path / d for d in ("run", "out1", "out2", "out3"))
    for d in (run, out1, out2, out3):
        d.mkdir()
    first = _run_probe(run, out1, {"PROBE_FAIL": "two"})
    text = first.stdout + first.stderr
    assert first.returncode == 1, text
    header = re.search(r"muse_fast test seed: (\d+) \(rerun", text)
    footer = re.search(r"replay with MUSE_FAST_TEST_SEED=(\d+)", text)
    assert header and footer, text
    seed = header.group(1)
    assert footer.group(1) == seed
    rec1 = _records(out1)
    assert {r.split()[0] for r in rec1.values()} == {seed}, rec1  # both workers, one seed
    assert len({p.name.split("-")[1] for p in out1.iterdir()}) == 2  # really two workers

    replay = _run_probe(run, out2, {"MUSE_FAST_TEST_SEED": seed})
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert _records(out2) == rec1  # same seed -> same inputs in every test

    # Shuffled (pytest-randomly on): its order seed is the session seed, and it must not
    # re-seed random/NumPy over the per-test seeds, so the inputs stay the same.
    shuffled = _run_probe(run, out3, {"MUSE_FAST_TEST_SEED": seed}, "-p", "randomly")
    assert shuffled.returncode == 0, shuffled.stdout + shuffled.stderr
    assert f"Using --randomly-seed={seed}" in shuffled.stdout
    assert _records(out3) == rec1


def test_session_seed_is_exported_and_mixed_per_test(monkeypatch):
    assert os.environ["MUSE_FAST_TEST_SEED"] == str(session_seed())
    monkeypatch.delenv("MUSE_FAST_TEST_SEED")
    drawn = session_seed()
    assert os.environ["MUSE_FAST_TEST_SEED"] == str(drawn)  # later processes inherit it
    assert seed_for("a::x", 5) == seed_for("a::x", 5) != seed_for("a::y", 5)
    monkeypatch.setenv("MUSE_FAST_TEST_SEED", "twelve")
    with pytest.raises(ValueError, match="MUSE_FAST_TEST_SEED must be an integer"):
        session_seed()
