"""Triton kernels for muse_fast.ops.quantize — not written yet."""
