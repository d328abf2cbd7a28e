"""`muse-fast info`: the torch / torchaudio CUDA build check (versions monkeypatched)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from muse_fast import cli


@pytest.mark.parametrize(
    ("version", "cuda"),
    [("2.11.1+cu132", "13.2"), ("2.10.0+cu128", "12.8"), ("2.13.0+cpu", None), ("2.11.0", None)],
)
def test_cuda_version_from_the_wheel_tag(version, cuda):
    assert cli._cuda_of_tag(version) == cuda


def test_torchaudio_cuda_reads_the_compiled_macro_then_the_tag(monkeypatch):
    ops = SimpleNamespace(_torchaudio=SimpleNamespace(cuda_version=lambda: 13020))
    monkeypatch.setattr(torch, "ops", ops)
    assert cli._torchaudio_cuda("2.11.1") == "13.2"  # the macro wins over a missing tag
    ops._torchaudio.cuda_version = lambda: None  # a CPU build of the extension
    assert cli._torchaudio_cuda("2.11.1+cpu") is None

    def missing():
        raise RuntimeError("no such operator _torchaudio::cuda_version")

    ops._torchaudio.cuda_version = missing
    assert cli._torchaudio_cuda("2.11.1+cu132") == "13.2"


def test_mismatch_rule():
    assert cli.cuda_build_mismatch("2.14.1+cu130", "13.0", "2.11.0+cu130", "13.0") is None
    assert cli.cuda_build_mismatch("2.14.1", "12.8", "2.10.0", "12.8.1") is None  # patch level
    assert cli.cuda_build_mismatch("2.13.0+cpu", None, "2.11.0+cpu", None) is None
    msg = cli.cuda_build_mismatch("2.14.1+cu130", "13.0", "2.11.1+cu132", "13.2")
    assert "CUDA 13.0" in msg and "CUDA 13.2" in msg and "torchaudio 2.11.1+cu132" in msg
    msg = cli.cuda_build_mismatch("2.14.1+cu130", "13.0", "2.11.0+cpu", None)
    assert "CPU only" in msg


@pytest.mark.parametrize(
    ("ta_version", "ta_cuda", "warns"),
    [("2.11.1+cu132", "13.2", True), ("2.11.0+cu130", "13.0", False)],
)
def test_info_warns_only_on_a_mismatched_pair(monkeypatch, capsys, ta_version, ta_cuda, warns):
    import torchaudio

    monkeypatch.setattr(torch, "__version__", "2.14.1+cu130")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torchaudio, "__version__", ta_version)
    monkeypatch.setattr(cli, "_torchaudio_cuda", lambda v: ta_cuda)
    assert cli.main(["info", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"torch 2.14.1+cu130 · torchaudio {ta_version}" in out
    assert ("WARNING: torch 2.14.1+cu130 is built for CUDA 13.0" in out) == warns, out
