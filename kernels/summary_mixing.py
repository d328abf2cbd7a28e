"""Triton kernels for muse_fast.ops.summary_mixing — not written yet."""
