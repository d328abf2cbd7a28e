"""Evaluation tests run single-threaded: their tensors are tiny, and on a shared CPU the
intra-op thread pool costs far more than it saves (a Myna-tiny forward measured 1.5 s with two
threads on two busy cores, 10-30 ms with one)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
