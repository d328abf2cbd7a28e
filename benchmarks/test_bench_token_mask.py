"""random_token_mask + gather_tokens: fused vs the eager reference vs what Myna's public code
does (sizes in ``masking_sizes.py``). Rows (x (B, 48, 384) → the kept tokens):

  fused         ``random_token_mask`` (Philox on the device) + ``gather_tokens``
  fused-unique  the same with ``unique_indices=True`` (the atomic-free backward on CUDA)
  reference     the same ops forced onto their eager references
  myna-style    ``torch.stack([torch.randperm(N) for _ in range(B)])`` on the CPU, the kept
                columns copied to the device, ``x.gather`` (Myna's ``mask_inputs``)

Modes: forward, and fwd+bwd (gradient to x). "fused" is the dispatcher's default path: Triton
on CUDA, the C++ kernels on CPU (the Triton interpreter is never timed).

    python -m pytest benchmarks/test_bench_token_mask.py --benchmark -q
"""

from __future__ import annotations

import pytest
import torch
from masking_sizes import (
    CPU_BATCHES,
    DIM,
    FRAMES,
    GPU_BATCHES,
    N_MELS,
    RATIO,
    bench_dtype,
    myna_keep,
    skip_unless_in_sweep,
)

import muse_fast
from muse_fast.ops import gather_tokens, num_kept_tokens, random_token_mask


# ---------------------------------------------------------------------------------------------
# random_token_mask + gather
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["forward", "fwd+bwd"])
@pytest.mark.parametrize("variant", ["fused", "fused-unique", "reference", "myna-style"])
@pytest.mark.parametrize("batch", sorted(set(CPU_BATCHES + GPU_BATCHES)))
def test_bench_token_mask_gather(measure, bench_device, quick, batch, variant, mode):
    skip_unless_in_sweep(batch, bench_device, quick)
    n_tokens = (N_MELS // 16) * (FRAMES // 16)
    x = torch.randn(batch, n_tokens, DIM, device=bench_device, dtype=bench_dtype(bench_device))
    x.requires_grad_(mode == "fwd+bwd")
    g = torch.randn(
        batch, num_kept_tokens(n_tokens, RATIO), DIM, device=bench_device, dtype=x.dtype
    )

    def finish(out):
        if mode == "fwd+bwd":
            out.backward(g)
        return out

    if variant == "myna-style":

        def fn():
            x.grad = None  # time the op, not the accumulation into x.grad
            keep = myna_keep(batch, n_tokens, bench_device)
            return finish(x.gather(1, keep.unsqueeze(-1).expand(-1, -1, DIM)))

    else:
        backend = "reference" if variant == "reference" else None
        unique = variant == "fused-unique"  # the atomic-free backward (distinct indices)

        def fn():
            x.grad = None
            with muse_fast.backend(backend):
                keep = random_token_mask(batch, n_tokens, RATIO, device=bench_device)
                return finish(gather_tokens(x, keep, unique_indices=unique))

    measure(
        fn,
        op="random_token_mask+gather",
        variant=variant,
        params={"B": batch, "L": n_tokens, "D": DIM, "ratio": RATIO, "dtype": str(x.dtype)[6:]},
        mode=mode,
    )
