"""Triton kernels for muse_fast.ops.masking — not written yet."""
