"""Myna loader and training-code patch against ``vit-pytorch``'s ``SimpleViT`` (Myna's
``vit.py`` is that class with a second patch embedding, ``to_patch_embedding_b``)."""

from __future__ import annotations

import types

import pytest
import torch

vit_pytorch = pytest.importorskip("vit_pytorch")

import muse_fast.models as M  # noqa: E402
from muse_fast import ops  # noqa: E402
from muse_fast.integrations import GCLoss_v1, apply_muse_fast_to_myna  # noqa: E402
from muse_fast.integrations.myna import _ratio_for, masked_model_output  # noqa: E402

DIM, DEPTH, HEADS, DIM_HEAD, MLP = 32, 2, 2, 16, 48


def _vit(patch):
    return vit_pytorch.SimpleViT(
        image_size=(128, 96), patch_size=patch, num_classes=10, dim=DIM, depth=DEPTH,
        heads=HEADS, mlp_dim=MLP, channels=1, dim_head=DIM_HEAD,
    ).eval()  # fmt: skip


def _hybrid():
    """Myna's hybrid layout: one transformer, 16 × 16 and 128 × 2 patch embeddings."""
    a, b = _vit(16), _vit((128, 2))
    b.transformer = a.transformer
    sd = dict(a.state_dict())
    sd.update({"to_patch_embedding_b." + k[19:]: v for k, v in b.state_dict().items()
               if k.startswith("to_patch_embedding.")})  # fmt: skip
    return a, b, sd


def _pooled(vit, spec):
    vit.linear_head = torch.nn.Identity()  # example.py
    return vit(spec)


@pytest.mark.parametrize("log_mel", [True, False])
def test_from_myna_hybrid_embeddings_match(log_mel):
    a, b, sd = _hybrid()
    model = M.from_myna(sd, log_mel=log_mel, dim_head=DIM_HEAD).eval()
    assert model.config.patch == "hybrid" and model.config.log_mel is log_mel
    audio = 0.3 * torch.randn(2, 16000 * 7)  # 219 frames: 2 whole chunks of 96
    got = model.embed_chunks(audio)  # (B, chunks, 2·dim)
    with torch.no_grad():
        spec = model.spectrogram(audio)  # the same mel for the reference (nnAudio not installed)
        chunks = spec[..., : 2 * 96].unfold(-1, 96, 96).permute(0, 2, 1, 3).reshape(4, 1, 128, 96)
        want = torch.cat([_pooled(a, chunks), _pooled(b, chunks)], dim=-1).view(2, 2, -1)
    assert got.shape == (2, 2, 2 * DIM)
    assert ((got - want).norm() / want.norm()).item() <= 1e-5


def test_from_myna_single_patch_and_refusals():
    vit = _vit((128, 2))
    model = M.from_myna(vit.state_dict(), log_mel=True, patch="vertical", dim_head=DIM_HEAD)
    spec = torch.rand(3, 128, 96)
    with torch.no_grad():
        ours = model._encode(spec, 0, mask=False).mean(dim=1)
        want = _pooled(vit, spec[:, None])
    torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="patch="):
        M.from_myna(vit.state_dict(), log_mel=True)
    with pytest.raises(TypeError, match="log_mel"):
        M.from_myna(vit.state_dict(), log_mel="yes", patch="vertical")
    bad = {**vit.state_dict(), "transformer.extra": torch.zeros(1)}
    with pytest.raises(ValueError, match="unexpected keys.*transformer.extra"):
        M.from_myna(bad, log_mel=True, patch="vertical", dim_head=DIM_HEAD)


def test_patched_masked_model_output():
    vit = _vit(16)
    spec = torch.rand(2, 1, 128, 96)
    args = types.SimpleNamespace(mask_ratio=0.0, device="cpu")
    with torch.no_grad():  # nothing masked: kept tokens in any order pool to the forward
        torch.testing.assert_close(
            masked_model_output(spec, vit, args), vit(spec), rtol=1e-5, atol=1e-6
        )
    args.mask_ratio = 0.9
    z = masked_model_output(spec, vit, args)
    z.sum().backward()
    assert z.shape == (2, 10) and vit.to_patch_embedding[2].weight.grad is not None
    # Myna keeps N - int(0.9 N) tokens: 48 - 43 = 5 (muse_fast's own rule would keep 4)
    for n, r in [(48, 0.9), (100, 0.9), (7, 0.5), (48, 0.0), (96, 0.75)]:
        assert ops.num_kept_tokens(n, _ratio_for(n, r)) == n - int(r * n)


def test_apply_to_myna_utils_module():
    utils = types.ModuleType("utils")
    utils.mask_inputs = utils.masked_model_output = lambda *a: None
    apply_muse_fast_to_myna(utils)
    assert utils.GCLoss_v1 is GCLoss_v1
    x = torch.randn(2, 48, 8)
    assert utils.mask_inputs(x, 0.9, "cpu").shape == (2, 5, 8)
    with pytest.raises(TypeError, match="mask_inputs"):
        apply_muse_fast_to_myna(types.ModuleType("other"))
