"""SummaryMixing benchmarks (issue: fused SummaryMixing).

1. The op: split-weight fused path (``fused``: the dispatcher's default — Triton on CUDA, the
   split algebra in torch on CPU) vs the public implementation's repeat + concat
   (``reference``) vs ``torch.compile`` of that reference (``compiled-reference``), forward and
   forward+backward, time and peak memory. GPU (64, 750, 1024) bf16; CPU (8, 750, 512) fp32.
2. The whole ``nn.SummaryMixing`` layer (local and summary MLPs included), fused vs
   ``muse_fast.backend("reference")`` with the same weights.
3. A T sweep of a Branchformer-style mixer: SummaryMixing (``fused``) vs rotary multi-head
   self-attention of the same width (``attention``), forward+backward; the ratio
   (attention / SummaryMixing) > 1 where SummaryMixing is faster.
"""

from __future__ import annotations

import pytest
import torch

import muse_fast
from muse_fast.nn import MultiHeadSelfAttention, SummaryMixing
from muse_fast.ops import summary_mixing, summary_mixing_reference


def _sizes(dev: torch.device, quick: bool) -> tuple[int, int, int, torch.dtype]:
    if quick:
        return 2, 100, 64, torch.float32
    if dev.type == "cuda":
        return 64, 750, 1024, torch.bfloat16
    return 8, 750, 512, torch.float32


def _mask(B: int, T: int, dev: torch.device) -> torch.Tensor:
    """Utterance lengths spread between 60 % and 100 % of T (typical bucketed padding)."""
    g = torch.Generator().manual_seed(0)
    lengths = (T * (0.6 + 0.4 * torch.rand(B, generator=g))).long().clamp(1, T)
    lengths[0] = T
    return (torch.arange(T)[None, :] < lengths[:, None]).to(dev)


def _op_inputs(B, T, D, dtype, dev, requires_grad):
    g = torch.Generator(device=dev).manual_seed(0)
    kw = dict(dtype=dtype, device=dev)
    local = torch.randn(B, T, D, generator=g, **kw)
    summary = torch.randn(B, T, D, generator=g, **kw)
    weight = torch.randn(D, 2 * D, generator=g, **kw) / (2 * D) ** 0.5
    bias = torch.zeros(D, **kw)
    args = [local, summary, weight, bias]
    if requires_grad:
        args = [a.requires_grad_(True) for a in args]
    return args


_COMPILED: dict = {}


def _compiled_reference():
    if "ref" not in _COMPILED:
        _COMPILED["ref"] = torch.compile(summary_mixing_reference, dynamic=False)
    return _COMPILED["ref"]


OP_VARIANTS = ["fused", "reference", "compiled-reference"]


@pytest.mark.parametrize("mode", ["forward", "fwd+bwd"])
@pytest.mark.parametrize("variant", OP_VARIANTS)
def test_bench_summary_mixing_op(measure, bench_device, quick, variant, mode):
    B, T, D, dtype = _sizes(bench_device, quick)
    fn_impl = {
        "fused": summary_mixing,
        "reference": summary_mixing_reference,
        "compiled-reference": _compiled_reference() if variant == "compiled-reference" else None,
    }[variant]
    mask = _mask(B, T, bench_device)
    args = _op_inputs(B, T, D, dtype, bench_device, requires_grad=mode == "fwd+bwd")
    dy = torch.randn(B, T, D, dtype=dtype, device=bench_device)

    if mode == "forward":

        def fn():
            with torch.no_grad():
                return fn_impl(*args, mask)

    else:

        def fn():  # gradients returned, not accumulated: the call's memory is its own
            return torch.autograd.grad(fn_impl(*args, mask), args, dy)

    params = dict(B=B, T=T, D=D, dtype=str(dtype).replace("torch.", ""))
    measure(fn, op="summary_mixing", variant=variant, params=params, mode=mode, rounds=7)


@pytest.mark.parametrize("mode", ["forward", "fwd+bwd"])
@pytest.mark.parametrize("variant", ["fused", "reference"])
def test_bench_summary_mixing_layer(measure, bench_device, quick, variant, mode):
    B, T, D, dtype = _sizes(bench_device, quick)
    torch.manual_seed(0)
    layer = SummaryMixing(D, local_proj_hid_dim=(D,), summary_hid_dim=(D,))
    layer = layer.to(device=bench_device, dtype=dtype)
    mask = _mask(B, T, bench_device)
    x = torch.randn(B, T, D, dtype=dtype, device=bench_device, requires_grad=mode == "fwd+bwd")
    dy = torch.randn(B, T, D, dtype=dtype, device=bench_device)
    backend = "reference" if variant == "reference" else None

    inputs = [x, *layer.parameters()]

    def fn():
        with muse_fast.backend(backend):
            if mode == "forward":
                with torch.no_grad():
                    return layer(x, mask)
            return torch.autograd.grad(layer(x, mask), inputs, dy)

    params = dict(B=B, T=T, D=D, dtype=str(dtype).replace("torch.", ""))
    measure(fn, op="SummaryMixing layer", variant=variant, params=params, mode=mode, rounds=7)


def _sweep(dev: torch.device, quick: bool) -> tuple[int, int, list[int], torch.dtype]:
    if quick:
        return 1, 64, [250, 500], torch.float32
    if dev.type == "cuda":
        return 8, 1024, [250, 500, 1000, 2000, 4000, 8000], torch.bfloat16
    return 2, 256, [250, 500, 1000, 2000, 4000], torch.float32


@pytest.mark.parametrize("t_index", range(6))
@pytest.mark.parametrize("variant", ["fused", "attention"])
def test_bench_mixer_t_sweep(measure, bench_device, quick, variant, t_index):
    B, D, Ts, dtype = _sweep(bench_device, quick)
    if t_index >= len(Ts):
        pytest.skip("T not in this device's sweep")
    T = Ts[t_index]
    torch.manual_seed(0)
    if variant == "fused":
        mixer = SummaryMixing(D, local_proj_hid_dim=(D,), summary_hid_dim=(D,))
    else:
        mixer = MultiHeadSelfAttention(D, max(1, D // 64))
    mixer = mixer.to(device=bench_device, dtype=dtype)
    x = torch.randn(B, T, D, dtype=dtype, device=bench_device, requires_grad=True)
    dy = torch.randn(B, T, D, dtype=dtype, device=bench_device)

    inputs = [x, *mixer.parameters()]

    def fn():
        return torch.autograd.grad(mixer(x), inputs, dy)

    params = dict(B=B, T=T, D=D, dtype=str(dtype).replace("torch.", ""))
    note = "SummaryMixing" if variant == "fused" else f"MHSA {max(1, D // 64)} heads, SDPA, rotary"
    measure(
        fn,
        op="mixer (Branchformer branch)",
        variant=variant,
        params=params,
        mode="fwd+bwd",
        rounds=5 if T <= 1000 else 3,
        note=note,
    )
