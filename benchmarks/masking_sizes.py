"""Sizes and helpers shared by the masking benchmarks (token_mask, patch_embed, span_mask).

Myna-like sizes: a 128 x 96 log-mel crop, 16 x 16 patches (Myna-Base, 8 x 6 = 48 tokens) or
128 x 2 patches (Myna-Vertical, 1 x 48 = 48 tokens), D = 384 (vit-s), 90 % masking: 4 of 48
tokens kept. Batch up to 4096 on GPU (the paper's per-device batch), smaller on CPU.
"""

from __future__ import annotations

import pytest
import torch

from muse_fast.ops import num_kept_tokens

N_MELS, FRAMES, DIM, RATIO = 128, 96, 384, 0.9
PATCHES = {"16x16": (16, 16), "128x2": (128, 2)}
CPU_BATCHES = [64, 256]
GPU_BATCHES = [256, 1024, 4096]


def batches(device: torch.device, quick: bool) -> list[int]:
    sizes = GPU_BATCHES if device.type == "cuda" else CPU_BATCHES
    return sizes[:1] if quick else sizes


def skip_unless_in_sweep(batch, device, quick):
    if batch not in batches(device, quick):
        pytest.skip(f"B={batch} is not in the {device.type} sweep")


def bench_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def myna_keep(batch: int, n_tokens: int, device: torch.device) -> torch.Tensor:
    """Myna's ``mask_inputs``: a CPU randperm per sample, the kept columns copied to the device.
    (Myna keeps ``N - int(0.9 * N)`` = 5 of 48; we keep ``num_kept_tokens`` = 4 here as in the
    fused rows, so both sides do the same amount of work.)"""
    n_keep = num_kept_tokens(n_tokens, RATIO)
    indices = torch.stack([torch.randperm(n_tokens) for _ in range(batch)])
    return indices[:, n_tokens - n_keep :].to(device)
