from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tiny_model


@pytest.fixture
def one_thread():
    """Training tests run single-threaded: on a loaded 2-core CI box OpenMP barriers between two
    threads make tiny matmuls ~10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_overrides(out, **kw):
    base = {
        "out": str(out),
        "model.size": "tiny",
        "batch_size": 4,
        "log_every": 1,
        "num_workers": 0,
        "progress": False,
        "tensorboard": False,
        "data.synthetic_tracks": 16,
        "data.synthetic_duration_s": 4.0,
        "device": "cpu",
    }
    base.update(kw)
    return list(base.items())
