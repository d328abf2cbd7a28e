"""What every Triton launcher shares: tile tables, small helpers, and one launch point.

* ``TILES`` is the one table of tile configurations. Each kernel has a ``"cuda"`` entry (what a
  GPU runs) and an ``"interpreter"`` entry (few, large programs: ``TRITON_INTERPRET=1`` pays per
  program, not per element). Launchers read theirs with :func:`tile_config` and shrink it to the
  problem with :func:`pow2`, so both entries go through the same code.
* ``with tiles("cuda"):`` (or ``MUSE_FAST_TILES=cuda``) makes launchers pick the CUDA entry under
  the interpreter too: that is how CI runs the block sizes, warps and loop bounds of the GPU
  configuration on small awkward shapes.
* :func:`launch` is the single place a kernel is started. Inside :func:`record_launches` each
  launch is also recorded (kernel, grid, arguments, constexprs, warps, stages); with
  ``dry=True`` nothing runs, which lets the static sm_90 report walk an op at the papers' sizes
  on ``meta`` tensors and compile exactly what its launcher would start.
* ``INTERPRETER_WORKAROUNDS`` lists every code path that exists only for the interpreter, each
  registered with :func:`workaround`, so they are all in one place and tests can name them.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import triton

from muse_fast._runtime import acc_dtype, empty  # noqa: F401  (kernels use these from here)
from muse_fast._runtime import triton_interpret as interpret

__all__ = [
    "INTERPRETER_WORKAROUNDS",
    "TILES",
    "Launch",
    "acc_dtype",
    "cuda_tiles",
    "empty",
    "interpret",
    "launch",
    "pow2",
    "record_launches",
    "tile_config",
    "tiles",
    "workaround",
]

TILE_MODES = ("auto", "cuda", "interpreter")
_tile_mode: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "muse_fast_tiles", default=None
)


def pow2(v: int, lo: int = 1, hi: int = 1 << 30) -> int:
    """``next_power_of_2(v)`` clamped to ``[lo, hi]`` (``lo`` and ``hi`` powers of two)."""
    return max(lo, min(hi, triton.next_power_of_2(max(int(v), 1))))


def _mode() -> str:
    mode = _tile_mode.get()
    if mode is None:
        mode = os.environ.get("MUSE_FAST_TILES", "auto").strip().lower() or "auto"
    if mode not in TILE_MODES:
        raise ValueError(f"MUSE_FAST_TILES: expected one of {TILE_MODES}, got {mode!r}")
    return mode


def cuda_tiles(device: torch.device) -> bool:
    """Whether a launcher for tensors on ``device`` uses the CUDA tile configuration."""
    mode = _mode()
    if mode == "auto":
        return device.type != "cpu"  # cuda, or meta under the static report
    return mode == "cuda"


@contextlib.contextmanager
def tiles(mode: str) -> Iterator[None]:
    """Force the tile configuration launchers pick: ``"cuda"``, ``"interpreter"`` or ``"auto"``."""
    if mode not in TILE_MODES:
        raise ValueError(f"tiles(mode): expected one of {TILE_MODES}, got {mode!r}")
    token = _tile_mode.set(mode)
    try:
        yield
    finally:
        _tile_mode.reset(token)


# One entry per kernel: "<op>.<kernel>" -> {"cuda": {...}, "interpreter": {...}}. Block sizes are
# upper bounds that launchers shrink to the problem; num_warps / num_stages are used as they are.
TILES: dict[str, dict[str, dict[str, int]]] = {
    # -- mel
    "mel.pad": {
        "cuda": {"BLOCK": 2048, "num_warps": 4},
        "interpreter": {"BLOCK": 16384, "num_warps": 4},
    },
    # chunk_bytes: complex spectrum per FFT chunk; on CUDA it stays in L2 (50 MiB on H100/H200)
    # between cuFFT's write and the power/mel kernel's read. BK 16 x 3 stages: ~154 registers,
    # 3 CTAs/SM, so one 30 s row (47 x 8 tiles) is one wave on 132 SMs.
    "mel.power_mel": {
        "cuda": {
            "BT": 64,
            "BK": 16,
            "BM": 16,
            "num_warps": 4,
            "num_stages": 3,
            "chunk_bytes": 24 << 20,
        },
        "interpreter": {
            "BT": 128,
            "BK": 256,
            "BM": 128,
            "num_warps": 4,
            "num_stages": 1,
            "chunk_bytes": 16 << 20,
        },
    },
    # -- quantize
    "quantize.rpq_fwd": {
        "cuda": {"BLOCK_N": 128, "BLOCK_C": 64, "BLOCK_D": 64, "num_warps": 8, "num_stages": 2},
        "interpreter": {
            "BLOCK_N": 64,
            "BLOCK_C": 1024,
            "BLOCK_D": 512,
            "num_warps": 1,
            "num_stages": 1,
        },
    },
    # -- token_mask
    "token_mask.random_token_mask": {
        "cuda": {"ELEMS": 2048, "num_warps": 4, "num_warps_long": 8, "num_stages": 1},
        "interpreter": {"ELEMS": 1 << 16, "num_warps": 4, "num_warps_long": 4, "num_stages": 1},
    },
    "token_mask.gather": {
        "cuda": {"BLOCK_D": 128, "ELEMS": 4096, "num_warps": 4, "num_stages": 1},
        "interpreter": {"BLOCK_D": 1 << 16, "ELEMS": 1 << 16, "num_warps": 4, "num_stages": 1},
    },
    "token_mask.scatter_add": {
        "cuda": {"BLOCK_D": 128, "ELEMS": 4096, "num_warps": 4, "num_stages": 1},
        "interpreter": {"BLOCK_D": 1 << 16, "ELEMS": 1 << 16, "num_warps": 4, "num_stages": 1},
    },
    "token_mask.scatter_rows": {
        "cuda": {"BLOCK_D": 128, "ELEMS": 4096, "num_warps": 4, "num_stages": 1},
        "interpreter": {"BLOCK_D": 1 << 16, "ELEMS": 1 << 16, "num_warps": 4, "num_stages": 1},
    },
    "philox.block": {
        "cuda": {"BLOCK": 256, "num_warps": 4, "num_stages": 1},
        "interpreter": {"BLOCK": 1024, "num_warps": 4, "num_stages": 1},
    },
    # -- patch_embed
    "patch_embed.embed": {
        "cuda": {
            "BLOCK_M": 32,
            "BLOCK_N": 128,
            "ELEMS": 8192,
            "W_BYTES": 1 << 16,
            "num_warps": 8,
            "num_stages": 2,
        },
        "interpreter": {
            "BLOCK_M": 128,
            "BLOCK_N": 512,
            "ELEMS": 1 << 17,
            "W_BYTES": 1 << 22,
            "num_warps": 4,
            "num_stages": 1,
        },
    },
    "patch_embed.gather": {
        "cuda": {"BLOCK_M": 32, "ELEMS": 8192, "num_warps": 4, "num_stages": 1},
        "interpreter": {"BLOCK_M": 256, "ELEMS": 1 << 18, "num_warps": 4, "num_stages": 1},
    },
    "patch_embed.scatter": {
        "cuda": {"BLOCK_M": 16, "ELEMS": 4096, "num_warps": 4, "num_stages": 1},
        "interpreter": {"BLOCK_M": 256, "ELEMS": 1 << 18, "num_warps": 4, "num_stages": 1},
    },
    # -- span_mask
    "span_mask.span_mask": {
        "cuda": {"BLOCK": 1024, "num_warps": 4, "num_stages": 1},
        "interpreter": {"BLOCK": 1 << 16, "num_warps": 4, "num_stages": 1},
    },
    "span_mask.noise": {
        "cuda": {"BLOCK": 1024, "num_warps": 4, "num_stages": 1},
        "interpreter": {"BLOCK": 1 << 16, "num_warps": 4, "num_stages": 1},
    },
    # -- nt_xent
    "nt_xent.row_rnorm": {
        "cuda": {"BLOCK_R": 16, "BLOCK_D": 1024, "num_warps": 4, "num_stages": 1},
        "interpreter": {"BLOCK_R": 256, "BLOCK_D": 1024, "num_warps": 1, "num_stages": 1},
    },
    # MIN_PROGRAMS: below this many row-block programs the columns are split (2 waves of 132 SMs);
    # BLOCK_D_FP32: fp32 inputs (tf32x3 keeps hi/lo operand copies) take D in smaller chunks
    "nt_xent.fwd": {
        "cuda": {
            "BLOCK_M": 128,
            "BLOCK_N": 64,
            "BLOCK_D": 128,
            "BLOCK_D_FP32": 64,
            "num_warps": 8,
            "num_stages": 2,
            "MIN_PROGRAMS": 264,
        },
        "interpreter": {
            "BLOCK_M": 128,
            "BLOCK_N": 128,
            "BLOCK_D": 256,
            "BLOCK_D_FP32": 256,
            "num_warps": 1,
            "num_stages": 1,
            "MIN_PROGRAMS": 1,
        },
    },
    "nt_xent.merge": {
        "cuda": {"BLOCK": 128, "num_warps": 4, "num_stages": 1},
        "interpreter": {"BLOCK": 4096, "num_warps": 1, "num_stages": 1},
    },
    "nt_xent.bwd": {
        "cuda": {
            "BLOCK_M": 64,
            "BLOCK_N": 64,
            "BLOCK_D": 128,
            "BLOCK_D_FP32": 64,
            "num_warps": 4,
            "num_stages": 2,
            "MIN_PROGRAMS": 264,
        },
        "interpreter": {
            "BLOCK_M": 128,
            "BLOCK_N": 128,
            "BLOCK_D": 256,
            "BLOCK_D_FP32": 256,
            "num_warps": 1,
            "num_stages": 1,
            "MIN_PROGRAMS": 1,
        },
    },
    "nt_xent.norm_bwd": {
        "cuda": {"ELEMS": 8192, "BLOCK_R": 16, "num_warps": 4, "num_stages": 1},
        "interpreter": {"ELEMS": 1 << 16, "BLOCK_R": 256, "num_warps": 1, "num_stages": 1},
    },
    # -- summary_mixing
    # PROGRAMS: programs the mean aims for before splitting time into chunks (4 x 132 SMs)
    "summary_mixing.masked_mean_fwd": {
        "cuda": {"BLOCK_T": 16, "BLOCK_D": 128, "PROGRAMS": 528, "num_warps": 4, "num_stages": 2},
        "interpreter": {
            "BLOCK_T": 256,
            "BLOCK_D": 1024,
            "PROGRAMS": 1,
            "num_warps": 1,
            "num_stages": 1,
        },
    },
    "summary_mixing.masked_mean_bwd": {
        "cuda": {"BLOCK_T": 16, "BLOCK_D": 128, "num_warps": 4, "num_stages": 2},
        "interpreter": {"BLOCK_T": 256, "BLOCK_D": 1024, "num_warps": 1, "num_stages": 1},
    },
    "summary_mixing.add_gelu_mask_fwd": {
        "cuda": {"BLOCK_T": 16, "BLOCK_D": 128, "num_warps": 4, "num_stages": 2},
        "interpreter": {"BLOCK_T": 256, "BLOCK_D": 1024, "num_warps": 1, "num_stages": 1},
    },
    # T_CHUNK: frames whose dz one program sums into one fp32 partial of dg
    "summary_mixing.add_gelu_mask_bwd": {
        "cuda": {"BLOCK_T": 16, "BLOCK_D": 128, "T_CHUNK": 128, "num_warps": 4, "num_stages": 2},
        "interpreter": {
            "BLOCK_T": 256,
            "BLOCK_D": 1024,
            "T_CHUNK": 1 << 30,
            "num_warps": 1,
            "num_stages": 1,
        },
    },
}


def tile_config(kernel: str, device: torch.device) -> dict[str, int]:
    """A copy of ``TILES[kernel]`` for the mode in force on ``device``."""
    try:
        entry = TILES[kernel]
    except KeyError:
        raise KeyError(f"no tile configuration for {kernel!r}; known: {sorted(TILES)}") from None
    return dict(entry["cuda" if cuda_tiles(device) else "interpreter"])


INTERPRETER_WORKAROUNDS: dict[str, str] = {}


def workaround(name: str, why: str) -> bool:
    """Register an interpreter-only code path (``name`` is ``"<op>.<what>"``, ``why`` says what
    the interpreter cannot do); returns True when it applies, i.e. under the interpreter."""
    INTERPRETER_WORKAROUNDS.setdefault(name, why)
    return interpret()


@dataclass
class Launch:
    """One recorded kernel launch."""

    kernel: Any  # a triton JITFunction
    grid: tuple[int, ...]
    args: tuple[Any, ...]
    constexprs: dict[str, Any]
    num_warps: int
    num_stages: int
    name: str = field(default="")


@dataclass
class _Recorder:
    dry: bool
    launches: list[Launch] = field(default_factory=list)


_recorder: contextvars.ContextVar[_Recorder | None] = contextvars.ContextVar(
    "muse_fast_launch_recorder", default=None
)


@contextlib.contextmanager
def record_launches(dry: bool = False) -> Iterator[list[Launch]]:
    """Record every :func:`launch` inside the block; ``dry=True`` also skips running them."""
    rec = _Recorder(dry=dry)
    token = _recorder.set(rec)
    try:
        yield rec.launches
    finally:
        _recorder.reset(token)


def launch(
    kernel: Any,
    grid: tuple[int, ...],
    *args: Any,
    num_warps: int = 4,
    num_stages: int = 2,
    **constexprs: Any,
) -> None:
    """Start ``kernel[grid](*args, **constexprs)`` (or record it, see :func:`record_launches`)."""
    grid = tuple(int(g) for g in grid)
    rec = _recorder.get()
    if rec is not None:
        name = getattr(getattr(kernel, "fn", kernel), "__name__", str(kernel))
        rec.launches.append(Launch(kernel, grid, args, constexprs, num_warps, num_stages, name))
        if rec.dry:
            return
    if not all(grid):
        return
    kernel[grid](*args, num_warps=num_warps, num_stages=num_stages, **constexprs)
