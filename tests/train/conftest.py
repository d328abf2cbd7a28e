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


@pytest.fixture(autouse=True, scope="session")
def _corpus_cache(tmp_path_factory):
    """The synthetic default is rendered into a cached prepared corpus: keep that cache inside
    the test session (subprocesses inherit it through the environment)."""
    import os

    old = os.environ.get("MUSE_FAST_CACHE")
    os.environ["MUSE_FAST_CACHE"] = str(tmp_path_factory.mktemp("muse_fast_cache"))
    yield
    if old is None:
        os.environ.pop("MUSE_FAST_CACHE", None)
    else:
        os.environ["MUSE_FAST_CACHE"] = old
