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

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("MUSE_FAST_POISON", "1")
os.environ.pop("MUSE_FAST_BACKEND", None)

import pytest  # noqa: E402

SEED = int(os.environ.get("MUSE_FAST_TEST_SEED", random.SystemRandom().randrange(2**31)))
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])


def pytest_report_header(config):
    return [
        f"muse_fast test seed: {SEED} (rerun with MUSE_FAST_TEST_SEED={SEED})",
        f"triton: {'CUDA' if HAS_CUDA else 'interpreter on CPU (TRITON_INTERPRET=1)'}",
    ]


@pytest.fixture(autouse=True)
def _seed_everything(request):
    seed = (SEED + hash(request.node.nodeid)) % 2**31
    torch.manual_seed(seed)
    random.seed(seed)
    yield


def kernel_cases(op_name: str) -> list:
    """pytest params (backend, device) for every kernel that exists for ``op_name``."""
    from muse_fast._backend import get_op

    op = get_op(op_name)
    cases = []
    if op.triton is not None:
        cases.append(pytest.param("triton", "cuda" if HAS_CUDA else "cpu", id="triton"))
    if op.cpu is not None:
        cases.append(pytest.param("cpu", "cpu", id="cpp"))
    return cases
