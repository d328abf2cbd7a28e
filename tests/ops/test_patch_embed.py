"""masked_patch_embed: layout and formula pinned by hand, every kernel against a float64
reference within eager PyTorch's own error, gradients, low precision and mixed fp32/bf16,
awkward shapes, the CUDA tile configurations, bad inputs, a small model under torch.compile."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from masking_helpers import keep_indices, run
from muse_fast.kernels._utils import INTERPRETER_WORKAROUNDS, record_launches, tiles

import muse_fast
from muse_fast.ops import (
    apply_span_mask,
    gather_tokens,
    masked_patch_embed,
    random_token_mask,
    span_mask,
)
from muse_fast.ops.patch_embed import masked_patch_embed_reference
from muse_fast.testing import assert_close, assert_within_eager_error, kernel_cases


# =============================================================================================
# masked_patch_embed
# =============================================================================================
def _patchify_by_hand(spec, ph, pw):
    """Patch vectors written out element by element: einops
    'b c (h p1) (w p2) -> b (h w) (p1 p2 c)' (Myna / SimpleViT)."""
    s = spec if spec.dim() == 4 else spec[:, None]
    B, C, H, W = s.shape
    gh, gw = H // ph, W // pw
    out = torch.empty(B, gh * gw, ph * pw * C, dtype=s.dtype)
    for i, j, p1, p2, c in itertools.product(range(gh), range(gw), range(ph), range(pw), range(C)):
        out[:, i * gw + j, (p1 * pw + p2) * C + c] = s[:, c, i * ph + p1, j * pw + p2]
    return out


def test_masked_patch_embed_reference_layout_and_formula():
    B, C, H, W, ph, pw, D = 2, 3, 8, 6, 4, 2, 5
    spec = torch.randn(B, C, H, W, dtype=torch.float64)
    N, K = (H // ph) * (W // pw), ph * pw * C
    keep = keep_indices(B, N, 3)
    w, b, pos = (torch.randn(D, K, dtype=torch.float64), torch.randn(D, dtype=torch.float64),
                 torch.randn(N, D, dtype=torch.float64))  # fmt: skip
    patches = _patchify_by_hand(spec, ph, pw)
    for eps in (None, 1e-5):
        v = torch.stack([patches[i, keep[i]] for i in range(B)])
        if eps is not None:
            v = (v - v.mean(-1, keepdim=True)) / torch.sqrt(
                v.var(-1, unbiased=False, keepdim=True) + eps
            )
        want = v @ w.T + b + pos[keep]
        got = run("reference", masked_patch_embed, spec, keep, (ph, pw), w, b, pos, norm_eps=eps)
        assert_close(got, want)
    # a 3-D spec is one channel
    got = masked_patch_embed_reference(spec[:, 0], keep, (ph, pw), w[:, ::C].contiguous())
    want = torch.stack([_patchify_by_hand(spec[:, 0], ph, pw)[i, keep[i]] for i in range(B)])
    assert_close(got, want @ w[:, ::C].T)


def _mpe_inputs(B, C, H, W, ph, pw, D, dtype=torch.float32, device="cpu", three_d=False):
    N, K = (H // ph) * (W // pw), ph * pw * (1 if three_d else C)
    shape = (B, H, W) if three_d else (B, C, H, W)
    spec = (torch.randn(*shape, device=device) * 2 + 1).to(dtype)
    w = (torch.randn(D, K, device=device) / math.sqrt(K)).to(dtype)
    b = torch.randn(D, device=device).to(dtype)
    pos = torch.randn(N, D, device=device).to(dtype)
    keep = keep_indices(B, N, max(1, N // 4), device)
    return spec, keep, w, b, pos


def _mpe_grads(backend, spec, keep, patch, w, b, pos, eps, g):
    ins = [t.detach().requires_grad_() if t is not None else None for t in (spec, w, b, pos)]
    with muse_fast.backend(backend):
        out = masked_patch_embed(ins[0], keep, patch, ins[1], ins[2], ins[3], norm_eps=eps)
    grads = torch.autograd.grad(out, [t for t in ins if t is not None], g.to(out.dtype))
    return out.detach(), grads


@pytest.mark.parametrize("backend,device", kernel_cases("masked_patch_embed"))
@pytest.mark.parametrize(
    "B,C,H,W,ph,pw,D,eps,bias,three_d",
    [
        (2, 1, 32, 24, 16, 8, 48, 1e-5, True, True),  # Myna-like, small
        (3, 1, 16, 12, 16, 2, 24, None, False, True),  # 'vertical' patches (full height)
        (2, 3, 9, 10, 3, 5, 20, 1e-6, True, False),  # odd everything, channels
        (1, 2, 4, 4, 1, 1, 17, 1e-5, False, False),  # 1x1 patches, K = C
        (64, 1, 64, 64, 16, 16, 32, 1e-5, True, True),  # enough rows for the OpenMP paths
    ],
)  # fmt: skip
def test_masked_patch_embed_kernels(backend, device, B, C, H, W, ph, pw, D, eps, bias, three_d):
    spec, keep, w, b, pos = _mpe_inputs(B, C, H, W, ph, pw, D, device=device, three_d=three_d)
    b = b if bias else None
    pos = pos if bias else None  # also exercise the path without the position table
    g = torch.randn(B, keep.shape[1], D, device=device)
    out_ref, grads_ref = _mpe_grads("reference", spec.double(), keep, (ph, pw), w.double(),
                                    None if b is None else b.double(),
                                    None if pos is None else pos.double(), eps, g)  # fmt: skip
    out, grads = _mpe_grads(backend, spec, keep, (ph, pw), w, b, pos, eps, g)
    out32, grads32 = _mpe_grads("reference", spec, keep, (ph, pw), w, b, pos, eps, g)
    assert_within_eager_error(out, out32, out_ref, atol=1e-5, msg="out: ")
    for name, a, e, r in zip(["spec", "weight", "bias", "pos"], grads, grads32, grads_ref):
        assert_within_eager_error(a, e, r, atol=1e-5, msg=f"grad {name}: ")


@pytest.mark.parametrize("backend,device", kernel_cases("masked_patch_embed"))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_masked_patch_embed_half(backend, device, dtype):
    spec, keep, w, b, pos = _mpe_inputs(3, 1, 32, 24, 16, 8, 64, device=device, three_d=True)
    g = torch.randn(3, keep.shape[1], 64, device=device)
    out_ref, grads_ref = _mpe_grads("reference", spec.double(), keep, (16, 8),
                                    w.double(), b.double(), pos.double(), 1e-5, g)  # fmt: skip
    lo = [t.to(dtype) for t in (spec, w, b, pos)]
    out_e, grads_e = _mpe_grads("reference", lo[0], keep, (16, 8), *lo[1:], 1e-5, g)
    out, grads = _mpe_grads(backend, lo[0], keep, (16, 8), *lo[1:], 1e-5, g)
    assert out.dtype == dtype
    assert_within_eager_error(out, out_e, out_ref, atol=1e-2, msg="out: ")
    for name, a, e, r in zip(["spec", "weight", "bias", "pos"], grads, grads_e, grads_ref):
        assert_within_eager_error(a, e, r, atol=1e-2, msg=f"grad {name}: ")


@pytest.mark.parametrize("backend,device", kernel_cases("masked_patch_embed"))
def test_masked_patch_embed_noncontiguous_inputs(backend, device):
    spec, keep, w, b, pos = _mpe_inputs(2, 2, 8, 12, 4, 3, 16, device=device)
    spec_t = spec.transpose(2, 3).contiguous().transpose(2, 3)  # same values, other strides
    w_t = w.t().contiguous().t()
    pos_t = pos.t().contiguous().t()
    keep_t = keep.t().contiguous().t()
    assert not any(t.is_contiguous() for t in (spec_t, w_t, pos_t, keep_t))
    g = torch.randn(2, keep.shape[1], 16, device=device)
    out, grads = _mpe_grads(backend, spec_t, keep_t, (4, 3), w_t, b, pos_t, 1e-5, g)
    out_r, grads_r = _mpe_grads("reference", spec, keep, (4, 3), w, b, pos, 1e-5, g)
    assert_close(out, out_r, atol=1e-4, rtol=1e-4)
    for a, r in zip(grads, grads_r):
        assert_close(a, r, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_masked_patch_embed_gradcheck(backend):
    spec, keep, w, b, pos = (t.double() if t.is_floating_point() else t
                             for t in _mpe_inputs(2, 2, 4, 6, 2, 3, 5))  # fmt: skip
    keep = torch.tensor([[0, 3], [2, 2]])  # a repeated patch: its gradients add up
    ins = [t.requires_grad_() for t in (spec, w, b, pos)]
    fn = lambda s, w_, b_, p_: masked_patch_embed(s, keep, (2, 3), w_, b_, p_, norm_eps=1e-3)
    with muse_fast.backend(backend):
        assert torch.autograd.gradcheck(fn, ins, fast_mode=True)


def test_masked_patch_embed_triton_refuses_float64_with_a_reason():
    spec, keep, w, b, pos = (t.double() if t.is_floating_point() else t
                             for t in _mpe_inputs(1, 1, 4, 4, 2, 2, 4, three_d=True))  # fmt: skip
    why = muse_fast.ops.available_backends(
        "masked_patch_embed", spec, keep, (2, 2), w, b, pos, None
    )["triton"]
    assert why is not None and "float64" in why


def test_masked_patch_embed_under_autocast():
    spec, keep, w, b, pos = _mpe_inputs(2, 1, 16, 12, 8, 4, 32, three_d=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = masked_patch_embed(spec, keep, (8, 4), w, b, pos, norm_eps=1e-5)
    assert out.dtype == torch.bfloat16  # like F.linear under autocast
    want = masked_patch_embed_reference(spec, keep, (8, 4), w, b, pos, 1e-5)
    assert_close(out, want, torch.bfloat16, atol=5e-2)


def test_masked_patch_embed_bad_inputs():
    spec, keep, w, b, pos = _mpe_inputs(2, 1, 8, 6, 4, 2, 5, three_d=True)
    call = lambda **kw: masked_patch_embed(
        **{"spec": spec, "keep_idx": keep, "patch_size": (4, 2), "weight": w, "bias": b,
           "pos_embed": pos, **kw}
    )  # fmt: skip
    with pytest.raises(ValueError, match="patch_size"):
        call(patch_size=(5, 2))
    with pytest.raises(ValueError, match="patch_size"):
        call(patch_size=(4, 2, 1))
    with pytest.raises(ValueError, match="spec"):
        call(spec=spec[0])
    with pytest.raises(ValueError, match="weight"):
        call(weight=w[:, :-1])
    with pytest.raises(TypeError, match="weight"):
        call(weight=w.double())
    with pytest.raises(ValueError, match="bias"):
        call(bias=b[:-1])
    with pytest.raises(ValueError, match="pos_embed"):
        call(pos_embed=pos[:-1])
    with pytest.raises(ValueError, match="keep_idx"):
        call(keep_idx=torch.tensor([[0, 6], [1, 2]]))  # 6 patches: 0..5
    with pytest.raises(ValueError, match="keep_idx"):
        call(keep_idx=keep[:1])
    with pytest.raises(ValueError, match="norm_eps"):
        call(norm_eps=0.0)


class _TinyMaskedEncoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(16, 32) * 0.1)
        self.bias = torch.nn.Parameter(torch.zeros(16))
        self.pos = torch.nn.Parameter(torch.randn(12, 16))
        self.head = torch.nn.Linear(16, 4)

    def forward(self, spec):
        B = spec.shape[0]
        keep = random_token_mask(B, 12, 0.5, seed=1234, device=spec.device)
        t = masked_patch_embed(spec, keep, (4, 8), self.weight, self.bias, self.pos, norm_eps=1e-5)
        t = gather_tokens(t, random_token_mask(B, 6, 0.5, seed=99, device=spec.device))
        m = span_mask(B, 3, 1, 0.5, seed=7, device=spec.device)
        t = apply_span_mask(t, m, noise_std=0.1, seed=8)
        return self.head(t).mean(1)


def test_small_model_compiles_fullgraph_on_cpu():
    model = _TinyMaskedEncoder()
    spec = torch.randn(2, 16, 24)
    compiled = torch.compile(model, fullgraph=True)
    y = compiled(spec)
    y.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    y_eager = model(spec)
    y_eager.sum().backward()
    assert_close(y, y_eager)
    for g, p in zip(grads, model.parameters()):
        assert_close(g, p.grad)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton"])
def test_empty_inputs(backend):
    with muse_fast.backend(backend):
        keep = random_token_mask(0, 10, 0.5, seed=1)
        spec = torch.randn(0, 8, 8, requires_grad=True)
        w = torch.randn(4, 16, requires_grad=True)
        out = masked_patch_embed(spec, keep[:, :2], 4, w, norm_eps=1e-5)
        out.sum().backward()
        assert out.shape == (0, 2, 4) and not w.grad.any() and spec.grad.shape == spec.shape


def _check_against_reference(backend, spec, keep, patch, w, b, pos, eps, atol):
    """Kernel output and gradients vs float64, within eager PyTorch's own error (eager = the
    reference on the same inputs)."""
    g = torch.randn(spec.shape[0], keep.shape[1], w.shape[0])
    dbl = [None if t is None else t.double() for t in (spec, w, b, pos)]
    out_ref, grads_ref = _mpe_grads("reference", dbl[0], keep, patch, *dbl[1:], eps, g)
    out_e, grads_e = _mpe_grads("reference", spec, keep, patch, w, b, pos, eps, g)
    out, grads = _mpe_grads(backend, spec, keep, patch, w, b, pos, eps, g)
    assert out.dtype == w.dtype
    assert_within_eager_error(out, out_e, out_ref, atol=atol, msg="out: ")
    for name, a, e, r in zip(["spec", "weight", "bias", "pos"], grads, grads_e, grads_ref):
        assert a.dtype == e.dtype
        assert_within_eager_error(a, e, r, atol=atol, msg=f"grad {name}: ")


@pytest.mark.parametrize("backend,device", kernel_cases("masked_patch_embed"))
@pytest.mark.parametrize("wdtype", [torch.bfloat16, torch.float16])
def test_float32_spec_with_16bit_weights(backend, device, wdtype):
    """The autocast case: the spectrogram stays float32, the LayerNorm runs on its float32
    values, the kernel casts on load; output and weight gradients in the weights' dtype."""
    spec, keep, w, b, pos = _mpe_inputs(3, 1, 32, 24, 16, 8, 40, device=device, three_d=True)
    lo = [t.to(wdtype) for t in (w, b, pos)]
    _check_against_reference(backend, spec, keep, (16, 8), *lo, 1e-5, atol=1e-2)


def test_autocast_does_not_cast_the_spectrogram(monkeypatch):
    import muse_fast.ops.patch_embed as P

    seen = []
    real = P._MASKED_PATCH_EMBED

    def spy(spec, *args):
        seen.append(spec.dtype)
        return real(spec, *args)

    monkeypatch.setattr(P, "_MASKED_PATCH_EMBED", spy)
    spec, keep, w, b, pos = _mpe_inputs(2, 1, 16, 12, 8, 4, 32, three_d=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = masked_patch_embed(spec, keep, (8, 4), w, b, pos, norm_eps=1e-5)
    assert seen == [torch.float32] and out.dtype == torch.bfloat16
    lo = [t.bfloat16() for t in (w, b, pos)]
    assert torch.equal(out, masked_patch_embed(spec, keep, (8, 4), *lo, norm_eps=1e-5))


@pytest.mark.parametrize(
    "B,C,H,W,ph,pw,D,eps,dtype",
    [
        (2, 1, 32, 24, 16, 8, 48, 1e-5, torch.float32),  # Myna-like, small
        (2, 3, 9, 10, 3, 5, 200, None, torch.float32),  # odd; D = 200: two column blocks
        (1, 2, 4, 4, 1, 1, 17, 1e-5, torch.float32),  # 1x1 patches, K = 2 (padded to 16)
        (9, 1, 16, 48, 16, 4, 24, 1e-5, torch.bfloat16),  # 36 rows: two 32-row programs
    ],
)  # fmt: skip
def test_cuda_tile_configuration(B, C, H, W, ph, pw, D, eps, dtype):
    """The GPU launch configuration (32-row tiles, 128-column blocks, 8 warps; the gather and
    scatter kernels' 32-row tiles) under the interpreter, forward and backward."""
    spec, keep, w, b, pos = _mpe_inputs(B, C, H, W, ph, pw, D, three_d=C == 1)
    keep = keep_indices(B, (H // ph) * (W // pw), max(1, (H // ph) * (W // pw) // 2))
    lo = [t.to(dtype) for t in (spec, w, b, pos)]
    with tiles("cuda"):
        _check_against_reference("triton", *lo[:1], keep, (ph, pw), *lo[1:], eps,
                                 atol=1e-5 if dtype == torch.float32 else 1e-2)  # fmt: skip


def test_launchers_run_on_meta_tensors_at_the_papers_sizes(monkeypatch):
    """Myna (B = 4096, 128 x 96 mel, 16 x 16 and 128 x 2 patches, 4 of 48 kept, D = 384) with a
    float32 spectrogram and bf16 weights, on meta tensors (recorded, not run): no host sync;
    outside the interpreter the interpreter-only paths are off."""
    from muse_fast._backend import get_op

    monkeypatch.setenv("TRITON_INTERPRET", "0")  # as the static report runs

    spec = torch.empty(4096, 128, 96, device="meta")
    keep = torch.empty(4096, 4, dtype=torch.int64, device="meta")
    w = torch.empty(384, 256, dtype=torch.bfloat16, device="meta")
    b = torch.empty(384, dtype=torch.bfloat16, device="meta")
    pos = torch.empty(48, 384, dtype=torch.bfloat16, device="meta")
    with record_launches(dry=True) as launches, tiles("cuda"):
        for patch in ((16, 16), (128, 2)):
            get_op("masked_patch_embed").impl("triton")(spec, keep, patch, w, b, pos, 1e-5)
        get_op("masked_patch_gather").impl("triton")(spec, keep, (16, 16), 1e-5)
        g = torch.empty(4096 * 4, 256, device="meta")
        get_op("masked_patch_scatter").impl("triton")(g, spec, keep, (16, 16), 1e-5)
    embed = launches[0]
    assert embed.grid == (512,) and embed.num_warps == 8
    assert {k: embed.constexprs[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K")} == {
        "BLOCK_M": 32, "BLOCK_N": 128, "BLOCK_K": 256
    }  # fmt: skip
    assert not embed.constexprs["UPCAST_DOT"] and not embed.constexprs["ROUND_BF16"]
    assert [rec.name for rec in launches[2:]] == ["_patch_gather_kernel", "_patch_scatter_kernel"]
    # the launchers named their interpreter-only paths (off here: CUDA tiles on meta tensors)
    assert {"patch_embed.upcast_dot", "patch_embed.round_bf16"} <= set(INTERPRETER_WORKAROUNDS)


_AOT = r"""
import re, subprocess, sys, tempfile, torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction
from muse_fast._backend import get_op
from muse_fast.kernels._utils import INTERPRETER_WORKAROUNDS, record_launches, tiles

TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16",
         torch.int64: "i64", torch.int32: "i32", torch.bool: "i1"}

def compile_launch(rec):
    jit = JITFunction(getattr(rec.kernel, "fn", rec.kernel))
    params = [n for n in jit.arg_names if n not in rec.constexprs]
    sig = {}
    for name, a in zip(params, rec.args):
        if isinstance(a, torch.Tensor):
            sig[name] = "*" + TYPES[a.dtype]
        else:
            sig[name] = "fp32" if isinstance(a, float) else "i64" if abs(a) >= 2**31 else "i32"
    sig.update({n: "constexpr" for n in rec.constexprs})
    sig = {n: sig[n] for n in jit.arg_names}
    src = ASTSource(fn=jit, signature=sig, constexprs=dict(rec.constexprs))
    opts = dict(num_warps=rec.num_warps, num_stages=rec.num_stages)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)

m = lambda *s, dt=torch.float32: torch.empty(*s, dtype=dt, device="meta")
with record_launches(dry=True) as launches, tiles("cuda"):
    get_op("masked_patch_embed").impl("triton")(
        m(4096, 128, 96), m(4096, 4, dt=torch.int64), (16, 16), m(384, 256, dt=torch.bfloat16),
        m(384, dt=torch.bfloat16), m(48, 384, dt=torch.bfloat16), 1e-5)
    get_op("span_noise_fill").impl("triton")(
        m(4, 24000, dt=torch.bfloat16), m(4, 24000, dt=torch.bool), m(1, dt=torch.int64), 0.1)
tool = sys.argv[1]
for rec in launches:
    k = compile_launch(rec)
    ptx = k.asm["ptx"]
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"]); f.flush()
        res = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True,
                             text=True, check=True).stdout
    stack = [int(s) for s in re.findall(r"STACK:(\d+)", res)]
    print(rec.name, "mma" if re.search(r"\bw?gmma|\bmma\.sync", ptx) else "-",
          len(re.findall(r"cvt\.rn(\.satfinite)?\.bf16", ptx)), max(stack))
"""


def test_workarounds_have_a_non_interpreter_path_that_compiles_for_sm90(tmp_path):
    """The interpreter-only paths (bf16 ``tl.dot`` upcast, rounding fp32 -> bf16 casts) are off
    at the CUDA launch configuration: compiled for sm_90 (a clean subprocess, no interpreter),
    the patch embed's dot is a tensor-core MMA, the bf16 casts are round-to-nearest ``cvt.rn``
    instructions, and the patch embed has no stack frame (no spills)."""
    import pathlib
    import subprocess
    import sys

    import triton

    tool = pathlib.Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
    if not tool.exists():
        pytest.skip(f"cuobjdump not shipped with this triton ({tool})")
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", _AOT, str(tool)], capture_output=True,
                         text=True, env=env, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines()}
    mma, casts, stack = rows["_patch_embed_kernel"]
    assert mma == "mma" and int(casts) > 0 and stack == "0", rows
    _, casts, _ = rows["_span_noise_kernel"]  # (its small stack frame is libdevice's cos)
    assert int(casts) > 0, rows
