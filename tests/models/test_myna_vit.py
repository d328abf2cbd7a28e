"""Myna and ViT-1D: architecture pinned against their public definitions, masking, objectives."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import muse_fast.models as M
from muse_fast.models._common import posemb_sincos_2d

from ._synth import batch_for, tracks


def test_posemb_matches_simplevit_formula():
    h, w, dim = 3, 5, 8
    pe = posemb_sincos_2d(h, w, dim)
    assert pe.shape == (h * w, dim)
    # token (i, j) = (1, 3): x = column 3, y = row 1; omega_k = 10000^(-k / (dim/4 - 1))
    row, col = 1, 3
    omega = [10000 ** (-k / 1) for k in range(2)]
    expected = (
        [math.sin(col * o) for o in omega]
        + [math.cos(col * o) for o in omega]
        + [math.sin(row * o) for o in omega]
        + [math.cos(row * o) for o in omega]
    )
    torch.testing.assert_close(pe[row * w + col], torch.tensor(expected))
    with pytest.raises(ValueError, match="dim"):
        posemb_sincos_2d(2, 2, 6)


@pytest.mark.parametrize("patch", [(16, 16), (128, 2)])
def test_patch_embed_is_simplevit_ln_linear_ln(patch):
    """All patches kept: equal to Myna's Rearrange → LN → Linear → LN (+ sin-cos posemb), with
    non-trivial LayerNorm affines (they are folded into the Linear for the fused op)."""
    embed = M.myna.PatchEmbed(patch, 32, 128, 96)
    with torch.no_grad():
        for ln in (embed.norm_in, embed.norm_out):
            ln.weight.uniform_(0.5, 1.5)
            ln.bias.uniform_(-0.5, 0.5)
    spec = torch.rand(2, 128, 96) * 3
    ph, pw = patch
    gh, gw = 128 // ph, 96 // pw
    # einops "b (h p1) (w p2) -> b (h w) (p1 p2)"
    patches = spec.reshape(2, gh, ph, gw, pw).permute(0, 1, 3, 2, 4).reshape(2, gh * gw, ph * pw)
    ref = embed.norm_out(embed.proj(embed.norm_in(patches))) + posemb_sincos_2d(gh, gw, 32)
    keep = torch.arange(gh * gw).expand(2, -1)
    torch.testing.assert_close(embed(spec, keep), ref, atol=1e-5, rtol=1e-5)
    # a subset of positions gives the same rows
    keep = torch.tensor([[0, 5, 7], [1, 2, gh * gw - 1]])
    out = embed(spec, keep)
    torch.testing.assert_close(out, ref.gather(1, keep[..., None].expand(-1, -1, 32)))


@pytest.mark.parametrize("name", ["myna-base", "myna-vertical", "myna-hybrid"])
def test_masked_encoder_sees_only_kept_tokens(name):
    model = M.create(name, size="tiny")
    b = 3
    batch = batch_for(model, b)
    seen: list[tuple[int, ...]] = []
    handle = model.transformer.layers[0].register_forward_hook(
        lambda mod, args, out: seen.append(tuple(args[0].shape))
    )
    keeps: list[torch.Tensor] = []
    hooks = [
        e.register_forward_hook(lambda mod, args, out: keeps.append(args[1])) for e in model.embeds
    ]
    model.loss(batch)
    handle.remove()
    for h in hooks:
        h.remove()
    # 128 × 96 mel: 16×16 → 8 × 6 = 48 tokens, 128×2 → 1 × 48 = 48 tokens; 10 % kept → 4
    n_embeds = 2 if name == "myna-hybrid" else 1
    assert seen == [(2 * b, 4, model.config.dim)] * n_embeds
    for keep in keeps:
        assert keep.shape == (2 * b, 4)
        # the two views of an item are masked independently
        assert not torch.equal(keep[:b], keep[b:])
    # unmasked, the same encoder sees every token
    seen.clear()
    handle = model.transformer.layers[0].register_forward_hook(
        lambda mod, args, out: seen.append(tuple(args[0].shape))
    )
    with torch.no_grad():
        model.embed(batch["audio"][:, 0])
    handle.remove()
    assert seen == [(b, 48, model.config.dim)] * n_embeds


def test_vit_s_masking_counts():
    cfg = M.config_for("myna-hybrid")
    assert (cfg.n_mels, cfg.n_frames, cfg.mask_ratio) == (128, 96, 0.9)
    from muse_fast.ops import num_kept_tokens

    assert num_kept_tokens((128 // 16) * (96 // 16), cfg.mask_ratio) == 4
    assert num_kept_tokens(96 // 2, cfg.mask_ratio) == 4


def test_hybrid_loss_is_the_mean_of_both_patch_losses():
    model = M.create("myna-hybrid", size="tiny")
    batch = batch_for(model, 4)
    torch.manual_seed(123)
    loss = model.loss(batch)
    # the same computation by hand, consuming the random stream in the same order
    torch.manual_seed(123)
    audio = batch["audio"]
    spec = model.spectrogram(torch.cat([audio[:, 0], audio[:, 1]]), 96)
    parts = []
    for which in (0, 1):
        z = model.linear_head(model._encode(spec, which, mask=True).mean(dim=1))
        parts.append(model.criterion(z[:4], z[4:]))
    torch.testing.assert_close(loss, (parts[0] + parts[1]) / 2)
    assert not torch.allclose(parts[0], parts[1])


def test_myna_contrastive_loss_is_nt_xent_on_the_head_output():
    model = M.create("myna-base", size="tiny", proj_dim=16)
    batch = batch_for(model, 4)
    z = []
    model.linear_head.register_forward_hook(lambda mod, args, out: z.append(out))
    loss = model.loss(batch)
    (out,) = z
    assert out.shape == (8, 16)
    # SimCLR NT-Xent, τ = 0.1, written out
    zz = F.normalize(out.float(), dim=-1)
    sim = zz @ zz.T / 0.1
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(4, 8), torch.arange(4)])
    torch.testing.assert_close(loss, F.cross_entropy(sim, target), atol=1e-5, rtol=1e-5)


def test_vit1d_class_token_is_learnable_plus_mean():
    model = M.create("vit1d", size="tiny")
    with torch.no_grad():
        model.cls_token.normal_()
    captured = []
    model.transformer.layers[0].register_forward_hook(
        lambda mod, args, out: captured.append(args[0])
    )
    audio = tracks(2, model.segment_samples, model.sample_rate)
    with torch.no_grad():
        model.embed(audio)
    (x,) = captured
    assert x.shape == (2, 127, 64)  # class token + 126 frame tokens
    pos = posemb_sincos_2d(1, 127, 64)
    tokens = x - pos
    torch.testing.assert_close(
        tokens[:, 0], model.cls_token + tokens[:, 1:].mean(dim=1), atol=1e-5, rtol=1e-5
    )
    # the sequence tokens are the Conv1d(128 → dim, kernel 1) of the mel frames
    spec = model.spectrogram(audio)
    ref = torch.einsum("dm,bmt->btd", model.to_patch.weight[..., 0], spec) + model.to_patch.bias
    torch.testing.assert_close(tokens[:, 1:], ref, atol=1e-4, rtol=1e-4)


def test_vit1d_loss_uses_the_class_tokens_of_both_views():
    model = M.create("vit1d", size="tiny")
    batch = batch_for(model, 3)
    loss = model.loss(batch)
    with torch.no_grad():
        cls = [model.embed(batch["audio"][:, v]) for v in (0, 1)]
    zz = F.normalize(torch.cat(cls), dim=-1)
    sim = zz @ zz.T / 0.1
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(3, 6), torch.arange(3)])
    torch.testing.assert_close(loss.detach(), F.cross_entropy(sim, target), atol=1e-5, rtol=1e-5)
