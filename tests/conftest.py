"""Test harness shared by every op test.

* Without a GPU, Triton kernels run on CPU tensors under the interpreter: ``TRITON_INTERPRET=1``
  is set here, before anything imports triton. With a GPU the same tests run the kernels on CUDA.
* ``MUSE_FAST_POISON=1``: kernel outputs are allocated NaN / -7 so unwritten elements fail tests.
* Inputs are fresh each session: the seed is drawn per session (or read from
  ``MUSE_FAST_TEST_SEED``), printed in the header, and re-applied before every test.
* ``kernel_case(op_name)`` yields the (backend, device) pairs a test should compare against the
  reference: ``("triton", "cuda")`` on a GPU machine, ``("triton", "cpu")`` under the interpreter,
  ``("cpu", "cpu")`` where the C++ extension has a kernel for that op.
"""

from __future__ import annotations

import os
import random
import zlib

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("MUSE_FAST_POISON", "1")
os.environ.pop("MUSE_FAST_BACKEND", None)

import pytest  # noqa: E402

from muse_fast.testing import kernel_cases  # noqa: E402,F401  (re-exported for tests)

# Under pytest-xdist each worker gets its share of the cores: two workers with two OpenMP
# threads each on a 2-core machine oversubscribe it and make small ops many times slower.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1 and "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _workers))

SEED = int(os.environ.get("MUSE_FAST_TEST_SEED", random.SystemRandom().randrange(2**31)))
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])


def pytest_report_header(config):
    return [
        f"muse_fast test seed: {SEED} (rerun with MUSE_FAST_TEST_SEED={SEED})",
        f"triton: {'CUDA' if HAS_CUDA else 'interpreter on CPU (TRITON_INTERPRET=1)'}",
    ]


@pytest.fixture(autouse=True)
def _seed_everything(request):
    seed = (SEED + zlib.crc32(request.node.nodeid.encode())) % 2**31  # stable across processes
    torch.manual_seed(seed)
    random.seed(seed)
    yield
