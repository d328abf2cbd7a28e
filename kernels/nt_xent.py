"""Triton kernels for muse_fast.ops.nt_xent — not written yet."""
