"""Static sm_90 report of every Triton kernel (``muse-fast bench --static``): compiled ahead of
time at the launch configuration each launcher picks for the papers' sizes; registers, spills,
occupancy, tensor-core use, instruction counts and a roofline estimate. No GPU needed."""

from .report import build, check, main, markdown

__all__ = ["build", "check", "main", "markdown"]
