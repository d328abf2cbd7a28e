"""Encoder blocks: rotary MHSA, cgMLP, Conformer conv module, Conformer / Branchformer blocks with
attention or SummaryMixing mixers, padding masks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import muse_fast
from muse_fast.nn import (
    BranchformerBlock,
    ConformerBlock,
    ConformerConvModule,
    ConvolutionalGatingMLP,
    MultiHeadSelfAttention,
    apply_rotary,
)
from muse_fast.testing import assert_close

D = 16
SM_KW = dict(local_proj_hid_dim=(12,), summary_hid_dim=(12,))


def _mask(B: int, T: int) -> torch.Tensor:
    m = torch.ones(B, T, dtype=torch.bool)
    for b in range(1, B):
        m[b, T - 2 * b :] = False  # right padding of different lengths
    m[0, 3] = False  # and one interior hole
    return m


# ----------------------------------------------------------------------------------------------
# rotary attention
# ----------------------------------------------------------------------------------------------


def test_rotary_hand_values_and_relative_positions():
    # d = 2: the pair (x1, x2) at position t rotates by angle t (inv_freq = 1)
    x = torch.tensor([[1.0, 0.5]]).repeat(3, 1)  # T = 3
    out = apply_rotary(x)
    for t in range(3):
        c, s = math.cos(t), math.sin(t)
        assert out[t].tolist() == pytest.approx([c - 0.5 * s, 0.5 * c + s], abs=1e-6)
    # d = 8: norms kept; q·k depends on positions only through their difference
    q, k = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    rq, rk = apply_rotary(q.repeat(12, 1)), apply_rotary(k.repeat(12, 1))
    torch.testing.assert_close(rq.norm(dim=-1), q.norm().expand(12))
    torch.testing.assert_close(rq[5] @ rk[2], rq[9] @ rk[6])
    # pair (i, i + d/2) uses frequency 10000^(-2i/d)
    e = torch.zeros(4, 8, dtype=torch.float64)
    e[:, 1] = 1.0
    r = apply_rotary(e)
    theta = 3 * 10000 ** (-2 / 8)
    assert r[3, 1].item() == pytest.approx(math.cos(theta)) and r[3, 5].item() == pytest.approx(
        math.sin(theta)
    )
    with pytest.raises(ValueError, match="even"):
        apply_rotary(torch.randn(4, 5))


def test_attention_matches_explicit_softmax():
    mha = MultiHeadSelfAttention(D, 4)
    B, T = 3, 9
    x = torch.randn(B, T, D)
    mask = _mask(B, T)
    y = mha(x, mask)
    q, k, v = mha.qkv(x).reshape(B, T, 3, 4, 4).permute(2, 0, 3, 1, 4)
    q, k = apply_rotary(q), apply_rotary(k)
    scores = q @ k.transpose(-1, -2) / 2.0
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    o = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, D)
    want = mha.out_proj(o) * mask.unsqueeze(-1)
    assert_close(y, want, atol=1e-5, rtol=1e-5)


def test_attention_without_rotary_and_all_padded_row():
    mha = MultiHeadSelfAttention(D, 2, rotary=False)
    x = torch.randn(2, 5, D, requires_grad=True)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1] = False
    y = mha(x, mask)
    y.sum().backward()
    assert (y[1] == 0).all() and torch.isfinite(x.grad).all()
    # without rotary the output is permutation-equivariant over frames
    perm = torch.randperm(5)
    assert_close(mha(x[:, perm].detach()), mha(x.detach())[:, perm], atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# convolutional parts
# ----------------------------------------------------------------------------------------------


def test_cgmlp_structure_and_gate_init():
    cg = ConvolutionalGatingMLP(D, 24, kernel_size=5)
    assert cg.channel_proj1.weight.shape == (24, D)
    assert cg.conv.weight.shape == (12, 1, 5) and cg.conv.groups == 12
    assert cg.channel_proj2.weight.shape == (D, 12)
    x = torch.randn(2, 7, D)
    # ESPnet init: conv ≈ 0, bias 1, so the gate starts open: out ≈ proj2(first half)
    a = F.gelu(cg.channel_proj1(x))[..., :12]
    assert_close(cg(x), cg.channel_proj2(a), atol=1e-4, rtol=1e-4)
    # explicit formula with a random conv
    torch.nn.init.normal_(cg.conv.weight)
    h = F.gelu(cg.channel_proj1(x))
    g = F.conv1d(
        cg.norm(h[..., 12:]).transpose(1, 2), cg.conv.weight, cg.conv.bias, padding=2, groups=12
    )
    assert_close(cg(x), cg.channel_proj2(h[..., :12] * g.transpose(1, 2)), atol=1e-5, rtol=1e-5)  # fmt: skip


@pytest.mark.parametrize(
    "make,kw,match",
    [
        (ConvolutionalGatingMLP, dict(d_model=D, cgmlp_dim=25), "cgmlp_dim"),
        (ConvolutionalGatingMLP, dict(d_model=D, cgmlp_dim=24, kernel_size=4), "kernel_size"),
        (ConformerConvModule, dict(d_model=D, kernel_size=0), "kernel_size"),
        (MultiHeadSelfAttention, dict(d_model=D, nhead=3), "d_model"),
        (MultiHeadSelfAttention, dict(d_model=12, nhead=4), "rotary"),
        (ConformerBlock, dict(d_model=D, nhead=2, ffn_dim=32, mixer="lstm"), "mixer"),
        (BranchformerBlock, dict(d_model=D, nhead=2, dropout=2.0), "dropout"),
        (BranchformerBlock, dict(d_model=D, nhead=2, mixer="summary_mixing", mode="x"), "mode"),
    ],
)
def test_bad_arguments(make, kw, match):
    with pytest.raises(ValueError, match=match):
        make(**kw)


def _blocks():
    return [
        pytest.param(lambda: ConformerBlock(D, 2, 32, kernel_size=5), id="conformer-attn"),
        pytest.param(
            lambda: ConformerBlock(D, 2, 32, kernel_size=5, mixer="summary_mixing", **SM_KW),
            id="conformer-sm",
        ),
        pytest.param(lambda: BranchformerBlock(D, 2, 24, kernel_size=5), id="branchformer-attn"),
        pytest.param(
            lambda: BranchformerBlock(D, 2, 24, kernel_size=5, mixer="summary_mixing", **SM_KW),
            id="branchformer-sm",
        ),
        pytest.param(
            lambda: BranchformerBlock(
                D, 1, 24, kernel_size=5, mixer="summary_mixing", mode="fast", **SM_KW
            ),
            id="branchformer-sm-fast",
        ),
        pytest.param(lambda: ConformerConvModule(D, kernel_size=7), id="conv-module"),
        pytest.param(lambda: ConvolutionalGatingMLP(D, 24, kernel_size=7), id="cgmlp"),
    ]


def _randomize_conv(mod):
    for m in mod.modules():  # ESPnet's near-zero gate init would hide leaks through the conv
        if isinstance(m, torch.nn.Conv1d):
            torch.nn.init.normal_(m.weight, std=0.5)


@pytest.mark.parametrize("make", _blocks())
def test_padding_invariance(make):
    mod = make()
    _randomize_conv(mod)
    B, T = 3, 11
    x = torch.randn(B, T, D)
    mask = _mask(B, T)
    y = mod(x, mask)
    assert y.shape == (B, T, D)
    # padded frames changed: valid outputs unchanged
    x2 = x.clone()
    x2[~mask] = 10 * torch.randn(int((~mask).sum()), D)
    assert_close(mod(x2, mask)[mask], y[mask])
    # more padding appended: valid outputs unchanged
    x3 = torch.cat([x, torch.randn(B, 6, D)], dim=1)
    m3 = torch.cat([mask, torch.zeros(B, 6, dtype=torch.bool)], dim=1)
    assert_close(mod(x3, m3)[:, :T][mask], y[mask], atol=1e-5, rtol=1e-5)
    # without a mask, padded frames do leak (the test can fail)
    assert not torch.allclose(mod(x2)[mask], mod(x)[mask], atol=1e-5)


@pytest.mark.parametrize("make", _blocks()[:5])
def test_blocks_backward_with_an_all_padded_row(make):
    mod = make()
    x = torch.randn(2, 6, D, requires_grad=True)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1] = False
    y = mod(x, mask)
    y[mask].sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in mod.parameters() if p.grad is not None)


@pytest.mark.parametrize("make", [_blocks()[1], _blocks()[3]])
def test_summary_mixing_blocks_fused_equal_reference(make):
    mod = make()
    x = torch.randn(2, 9, D)
    mask = _mask(2, 9)
    outs = []
    for be in ("reference", None, "triton"):
        mod.zero_grad()
        with muse_fast.backend(be):
            xi = x.clone().requires_grad_(True)
            y = mod(xi, mask)
            y[mask].square().sum().backward()
        outs.append([y, xi.grad] + [p.grad.clone() for p in mod.parameters()])
    for got in outs[1:]:
        for g, w in zip(got, outs[0]):
            assert_close(g, w, atol=3e-5, rtol=3e-5)


def test_block_structure_and_dropout():
    b = BranchformerBlock(D, 2)
    assert b.cgmlp.cgmlp_dim == 6 * D and b.merge_proj.weight.shape == (D, 2 * D)
    c = ConformerBlock(D, 2, 32, dropout=0.1, mixer="summary_mixing", **SM_KW)
    assert c.mixer.dropout == 0.1 and c.mixer.nhead == 2 and c.conv.depthwise.kernel_size == (31,)
    x = torch.randn(2, 8, D)
    c.eval()
    assert_close(c(x), c(x))
    c.train()
    torch.manual_seed(0)
    y1 = c(x)
    torch.manual_seed(1)
    assert not torch.allclose(y1, c(x))
    with pytest.raises(ValueError, match="x"):
        b(torch.randn(2, 8, D + 1))
    with pytest.raises(TypeError, match="mask"):
        b(torch.randn(2, 8, D), torch.ones(2, 8))


def test_blocks_under_torch_compile():
    """fullgraph (no graph break) through masks, rotary-free SummaryMixing custom op and convs;
    aot_eager traces forward and backward (inductor codegen is too slow for CPU CI)."""
    mod = BranchformerBlock(D, 2, 24, kernel_size=5, mixer="summary_mixing", **SM_KW)
    x = torch.randn(2, 7, D)
    mask = _mask(2, 7)
    compiled = torch.compile(mod, fullgraph=True, backend="aot_eager")
    xc = x.clone().requires_grad_(True)
    yc = compiled(xc, mask)
    yc.square().sum().backward()
    xe = x.clone().requires_grad_(True)
    ye = mod(xe, mask)
    assert_close(yc, ye, atol=1e-5, rtol=1e-5)
    ye.square().sum().backward()  # parameter grads accumulate: compare the input grads
    assert_close(xc.grad, xe.grad, atol=1e-4, rtol=1e-4)
