from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # train_helpers


@pytest.fixture
def one_thread():
    """Training tests run single-threaded: on a loaded 2-core CI box OpenMP barriers between two
    threads make tiny matmuls ~10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
