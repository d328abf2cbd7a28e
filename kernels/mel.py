"""Triton kernels for muse_fast.ops.mel — not written yet."""
