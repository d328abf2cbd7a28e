"""Test harness shared by every op test.

* Without a GPU, Triton kernels run on CPU tensors under the interpreter: ``TRITON_INTERPRET=1``
  is set here, before anything imports triton. With a GPU the same tests run the kernels on CUDA.
* ``MUSE_FAST_POISON=1``: kernel outputs are allocated NaN / -7 so unwritten elements fail tests.
* Inputs are fresh each session: the seed is drawn once per session (or read from
  ``MUSE_FAST_TEST_SEED``), printed in the header and again after a failing run, and re-applied
  (mixed with the test id) to ``random``, NumPy and torch before every test. The controlling
  process draws it and exports it, so pytest-xdist workers and the subprocesses tests start use
  the same seed (``muse_fast.testing.session_seed``).
* ``kernel_case(op_name)`` yields the (backend, device) pairs a test should compare against the
  reference: ``("triton", "cuda")`` on a GPU machine, ``("triton", "cpu")`` under the interpreter,
  ``("cpu", "cpu")`` where the C++ extension has a kernel for that op.
"""

from __future__ import annotations

import os
import random

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("MUSE_FAST_POISON", "1")
os.environ.pop("MUSE_FAST_BACKEND", None)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from muse_fast.testing import kernel_cases, seed_for, session_seed  # noqa: E402,F401

# Under pytest-xdist each worker gets its share of the cores: two workers with two OpenMP
# threads each on a 2-core machine oversubscribe it and make small ops many times slower.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1 and "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _workers))

# Drawn here in the controller (conftest is imported before xdist starts its workers) and
# exported, so every worker inherits the printed seed instead of drawing its own.
SEED = session_seed()
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """xdist controller hook: hand the session seed to each worker explicitly as well."""
    node.workerinput["muse_fast_test_seed"] = SEED


@pytest.hookimpl(tryfirst=True)  # before pytest-randomly resolves its seed
def pytest_configure(config):
    if config.pluginmanager.hasplugin("randomly"):
        # Shuffled runs (`-p randomly`): the order follows the session seed unless
        # --randomly-seed is given, so MUSE_FAST_TEST_SEED replays inputs and order; and
        # pytest-randomly must not re-seed random/NumPy between fixture setup and the call,
        # which would replace the per-test seeds below with its own.
        if config.getoption("randomly_seed") == "default":
            config.option.randomly_seed = SEED
        config.option.randomly_reset_seed = False
    handed = getattr(config, "workerinput", {}).get("muse_fast_test_seed")
    if handed is not None and handed != SEED:  # a worker that drew its own seed: replay breaks
        raise pytest.UsageError(f"worker seed {SEED} != controller seed {handed}")


def pytest_report_header(config):
    return [
        f"muse_fast test seed: {SEED} (rerun with MUSE_FAST_TEST_SEED={SEED})",
        f"triton: {'CUDA' if HAS_CUDA else 'interpreter on CPU (TRITON_INTERPRET=1)'}",
    ]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if exitstatus not in (0, 5):  # 5: no tests collected
        terminalreporter.write_line(
            f"muse_fast test seed: {SEED} — replay with MUSE_FAST_TEST_SEED={SEED}", red=True
        )


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def pytest_collectstart(collector):
    # Before a test file is imported: its module-level draws (inputs built for parametrize)
    # follow the session seed too, and do not depend on which files were imported before it.
    if isinstance(collector, pytest.Module):
        _seed(seed_for(collector.nodeid))


@pytest.fixture(autouse=True)
def _seed_everything(request):
    _seed(seed_for(request.node.nodeid))  # stable across processes and test order
    yield
