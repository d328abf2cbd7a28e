"""Shared test utilities: tolerances per dtype, the reference-error rule, output poisoning.

Every op test imports these, so all ops are judged by one rule (FlagGems-style tolerance table,
flash-attention's comparison against eager PyTorch's own error).
"""

from __future__ import annotations

import os
import random
import zlib

import torch

from ._runtime import poison  # noqa: F401  (re-exported)

SEED_ENV = "MUSE_FAST_TEST_SEED"

# Absolute / relative tolerance of a kernel against a reference computed in the same dtype.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-8),
    torch.float32: (1e-5, 1.3e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1e-2, 1.6e-2),
}


def session_seed() -> int:
    """The test session's seed: ``MUSE_FAST_TEST_SEED`` if set, else a fresh draw that is
    exported to ``MUSE_FAST_TEST_SEED`` so worker processes and subprocesses started afterwards
    (pytest-xdist workers, distributed-test ranks) reuse it and a printed seed replays the run."""
    value = os.environ.get(SEED_ENV)
    if value is None:
        value = str(random.SystemRandom().randrange(2**31))
        os.environ[SEED_ENV] = value
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{SEED_ENV} must be an integer, got {value!r}") from None


def seed_for(nodeid: str, seed: int | None = None) -> int:
    """Per-test seed: the session seed mixed with the test id, so a test's inputs do not depend
    on which tests ran before it (xdist scheduling, shuffled order)."""
    base = session_seed() if seed is None else seed
    return (base + zlib.crc32(nodeid.encode())) % 2**31


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    """(atol, rtol) for ``dtype``."""
    return TOLERANCES[dtype]


def assert_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    dtype: torch.dtype | None = None,
    *,
    atol: float | None = None,
    rtol: float | None = None,
    msg: str = "",
) -> None:
    """``torch.testing.assert_close`` with the tolerance of ``dtype`` (default: ``actual``'s dtype)."""
    a, r = tolerance(dtype or actual.dtype)
    torch.testing.assert_close(
        actual.to(expected.dtype) if actual.dtype != expected.dtype else actual,
        expected,
        atol=a if atol is None else atol,
        rtol=r if rtol is None else rtol,
        equal_nan=False,
        msg=(lambda m: f"{msg}\n{m}") if msg else None,
    )


def max_abs_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_within_eager_error(
    kernel_out: torch.Tensor,
    eager_out: torch.Tensor,
    reference_out: torch.Tensor,
    *,
    factor: float = 2.0,
    atol: float = 1e-6,
    msg: str = "",
) -> None:
    """flash-attention's rule for low-precision kernels.

    ``reference_out`` is the op in float32/float64 on upcast inputs; ``eager_out`` is eager PyTorch
    in the kernel's dtype. The kernel may be at most ``factor`` times as far from the reference as
    eager PyTorch is, plus ``atol``.
    """
    k_err = max_abs_err(kernel_out, reference_out)
    e_err = max_abs_err(eager_out, reference_out)
    assert k_err <= factor * e_err + atol, (
        f"{msg}kernel error {k_err:.3e} > {factor} x eager error {e_err:.3e} + {atol:.1e}"
    )


def kernel_cases(op_name: str) -> list:
    """pytest params ``(backend, device)`` for every kernel that exists for ``op_name``.

    ``("triton", "cuda")`` on a GPU machine, ``("triton", "cpu")`` under the interpreter,
    ``("cpu", "cpu")`` where the C++ extension has a kernel for that op, ``("torch", "cpu")``
    where the op has a pure-PyTorch fast path (the ``torch`` slot).
    """
    import pytest

    from ._backend import get_op

    op = get_op(op_name)
    cases = []
    if op.triton is not None:
        cases.append(
            pytest.param("triton", "cuda" if torch.cuda.is_available() else "cpu", id="triton")
        )
    if op.cpu is not None:
        cases.append(pytest.param("cpu", "cpu", id="cpp"))
    if op.torch is not None:
        cases.append(pytest.param("torch", "cpu", id="torch"))
    return cases
