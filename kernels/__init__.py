"""Triton kernels, one file per op (installed as ``muse_fast.kernels``).

Only ``@triton.jit`` kernels and their launch helpers live here: no autograd, no dispatch.
Importing a module here imports triton; the ops layer does it lazily, on first Triton use.
"""
