"""The dispatcher: forcing, fallbacks, reasons, errors — on a toy op so it tests the mechanism."""

from __future__ import annotations

import warnings

import pytest
import torch

import muse_fast
from muse_fast._backend import BackendUnavailableError, FallbackWarning, Op, forced_backend


def _toy(cpu_check=None, with_cpu=True, with_triton=True):
    return Op(
        "toy",
        reference=lambda x: ("reference", x),
        cpu=(lambda x: ("cpu", x)) if with_cpu else None,
        triton=(lambda x: ("triton", x)) if with_triton else None,
        cpu_check=cpu_check,
    )


def test_auto_prefers_cpp_on_cpu_tensors():
    assert _toy()(torch.ones(2))[0] == "cpu"


def test_auto_falls_back_to_reference_with_a_warning():
    op = _toy(cpu_check=lambda x: "float64 is not supported" if x.dtype == torch.float64 else None)
    with pytest.warns(FallbackWarning, match="float64 is not supported"):
        assert op(torch.ones(2, dtype=torch.float64))[0] == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per reason only
        assert op(torch.ones(2, dtype=torch.float64))[0] == "reference"


@pytest.mark.parametrize("name", ["reference", "triton", "cpu"])
def test_context_manager_forces_a_backend(name):
    with muse_fast.backend(name):
        assert forced_backend() == name
        assert _toy()(torch.ones(2))[0] == name  # triton: conftest set TRITON_INTERPRET=1
    assert forced_backend() is None


def test_env_var_forces_a_backend(monkeypatch):
    monkeypatch.setenv("MUSE_FAST_BACKEND", "reference")
    assert _toy()(torch.ones(2))[0] == "reference"
    with muse_fast.backend("cpu"):  # the context wins over the environment
        assert _toy()(torch.ones(2))[0] == "cpu"
    monkeypatch.setenv("MUSE_FAST_BACKEND", "cuda")
    with pytest.raises(ValueError, match="MUSE_FAST_BACKEND"):
        _toy()(torch.ones(2))


def test_forced_backend_that_refuses_raises_with_the_reason():
    op = _toy(cpu_check=lambda x: "x: expected float32")
    with muse_fast.backend("cpu"), pytest.raises(BackendUnavailableError, match="expected float32"):
        op(torch.ones(2))


def test_forced_backend_without_a_kernel_runs_the_reference():
    with muse_fast.backend("cpu"):
        assert _toy(with_cpu=False)(torch.ones(2))[0] == "reference"


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    why = _toy().availability(torch.ones(2))["triton"]
    assert "TRITON_INTERPRET" in why
    with (
        muse_fast.backend("triton"),
        pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET"),
    ):
        _toy()(torch.ones(2))


def test_mixed_devices_are_refused():
    op = _toy()
    # a meta tensor stands in for a second device on a machine without a GPU
    why = op.availability(torch.ones(2), torch.ones(2, device="meta"))["cpu"]
    assert "several devices" in why


def test_bad_backend_name():
    with pytest.raises(ValueError, match="backend"):
        with muse_fast.backend("gpu"):
            pass


def test_available_backends_reports_every_registered_op():
    ops = muse_fast.ops.registered_ops()
    assert ops, "no op registered"
    for name, op in ops.items():
        make = op.example_inputs or getattr(op.reference, "example_inputs", None)
        args, kwargs = make(torch.device("cpu")) if make else ((), {})
        avail = muse_fast.ops.available_backends(name, *args, **kwargs)
        assert list(avail) == ["triton", "cpu", "torch", "reference"], name
        assert avail["reference"] is None, name
        for backend_name, why in avail.items():
            assert why is None or isinstance(why, str), (name, backend_name)
    with pytest.raises(ValueError, match="op_name"):
        muse_fast.ops.available_backends("no_such_op", torch.ones(1))


def test_extension_builds_and_philox_matches_known_answer():
    from muse_fast import _C

    # Random123 known-answer test for Philox-4x32-10: counter 0, key 0
    assert _C.philox4x32(0, 0, 0, 0, 0) == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)
    # counter all ones, key all ones
    assert _C.philox4x32(0xFFFFFFFFFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF) == (
        0x408F276D,
        0x41C83B0E,
        0xA20BC7C6,
        0x6D5451FD,
    )
