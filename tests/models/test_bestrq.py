"""BEST-RQ (MusicFM) and MuseLQ: targets, span masking, front end, masked-only losses."""

from __future__ import annotations

import pytest
import torch
import torchaudio

import muse_fast.models as M
from muse_fast.models.bestrq import BestRQ, Conv2dSubsampling

from ._synth import batch_for, tracks


@pytest.fixture(scope="module")
def conformer() -> BestRQ:
    torch.manual_seed(0)
    return M.create("bestrq-conformer", size="tiny")


@pytest.fixture(scope="module")
def branchformer() -> BestRQ:
    torch.manual_seed(0)
    return M.create("muselq-branchformer", size="tiny")


def test_targets_follow_musicfm(conformer):
    """MusicFM: torchaudio MelSpectrogram(24 kHz, 2048, 240, 128) → AmplitudeToDB → drop the last
    frame → (x - mean) / std → 'b f (t s) -> b t (s f)' (s = 4) → random-projection quantizer."""
    audio = tracks(2, conformer.segment_samples, 24000)
    tokens, stacked = conformer.targets(audio)
    mel = torchaudio.transforms.MelSpectrogram(24000, n_fft=2048, hop_length=240, n_mels=128)
    db = torchaudio.transforms.AmplitudeToDB()(mel(audio))[..., :-1]
    x = (db - conformer.mel_mean) / conformer.mel_std
    b, f, t = x.shape
    ref = x.reshape(b, f, t // 4, 4).permute(0, 2, 3, 1).reshape(b, t // 4, 4 * f)
    assert stacked.shape == (2, conformer.segment_samples // 960, 512)
    torch.testing.assert_close(stacked, ref, atol=2e-3, rtol=1e-3)
    assert tokens.dtype == torch.int64 and tokens.shape == stacked.shape[:2]
    assert torch.equal(tokens, conformer.quantizer(stacked))
    assert 0 <= int(tokens.min()) and int(tokens.max()) < conformer.config.codebook_size


def test_front_end_subsamples_by_four():
    fe = Conv2dSubsampling(128, 8, 32)
    out = fe(torch.randn(2, 128, 200))
    assert out.shape == (2, 50, 32)
    # two residual blocks of stride 2 in frequency and time, then Linear(C · 128/4 → dim)
    assert fe.linear.in_features == 8 * 32
    assert [m.conv1.stride for m in fe.conv] == [(2, 2), (2, 2)]


def _capture_masks(model: BestRQ, batch) -> dict:
    seen: dict = {}
    token_mask = model._token_mask
    masker = model.span_masker.forward
    frontend = model._frontend

    def spy_token_mask(*args):
        seen["token"] = out = token_mask(*args)
        seen["seed"] = args[-1]
        return out

    def spy_masker(x, **kw):
        out = masker(x, **kw)
        seen["sample"] = out[1]
        return out

    def spy_frontend(audio):
        seen.setdefault("frontend_in", []).append(audio)
        out = frontend(audio)
        return out

    model._token_mask, model._frontend = spy_token_mask, spy_frontend
    model.span_masker.forward = spy_masker
    try:
        seen["terms"] = model.loss_terms(batch)
    finally:
        del model._token_mask, model._frontend, model.span_masker.forward
    return seen


def test_span_masks_name_the_same_400ms_spans(conformer):
    batch = batch_for(conformer, 4)
    seen = _capture_masks(conformer, batch)
    sample, token = seen["sample"], seen["token"]
    s = conformer.segment_samples
    assert sample.shape == (4, s) and token.shape == (4, s // 960)
    # every token covers 960 samples; a span is 10 tokens = 9600 samples = 400 ms
    torch.testing.assert_close(sample.view(4, -1, 960).all(-1), token)
    torch.testing.assert_close(sample.view(4, -1, 960).any(-1), token)
    spans = token.view(4, -1, 10)
    assert torch.equal(spans.all(-1), spans.any(-1))  # whole spans only
    # masked samples hold N(0, 0.1²) noise, the rest is the clean audio
    (noisy,) = seen["frontend_in"]
    clean = batch["audio"]
    torch.testing.assert_close(noisy[~sample], clean[~sample])
    noise = noisy[sample]
    assert noise.numel() > 0 and not torch.allclose(noise, clean[sample])
    assert abs(noise.std().item() - 0.1) < 0.01 and abs(noise.mean().item()) < 0.01


def test_mask_probability(conformer):
    cfg = conformer.config
    seed = torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64)
    token = conformer._token_mask(256, cfg.segment_samples // 960, seed)
    assert abs(token.float().mean().item() - 0.6) < 0.05


def test_losses_count_masked_positions_only(branchformer):
    model = branchformer
    batch = batch_for(model, 4)
    grads = {}
    hooks = [
        model.token_head.register_full_backward_hook(
            lambda mod, gin, gout: grads.__setitem__("tokens", gout[0])
        ),
        model.mel_head.register_full_backward_hook(
            lambda mod, gin, gout: grads.__setitem__("mel", gout[0])
        ),
    ]
    torch.manual_seed(5)
    while True:  # p = 0.2: draw until the batch has masked and unmasked tokens
        seen = _capture_masks(model, batch)
        token = seen["token"]
        if 0 < token.sum() < token.numel():
            break
    terms = seen["terms"]
    terms["loss"].backward()
    for h in hooks:
        h.remove()
    model.zero_grad()
    torch.testing.assert_close(terms["loss"], terms["ce"] + terms["mse"])
    for g in grads.values():
        assert g.shape[:2] == token.shape
        assert torch.all(g[~token] == 0)
        assert torch.all(g[token].abs().sum(-1) > 0)


def test_no_masked_token_gives_zero_loss_not_nan():
    model = M.create("bestrq-conformer", size="tiny", mask_prob=0.0)
    terms = model.loss_terms(batch_for(model, 2))
    assert terms["loss"].item() == 0.0 and terms["mask_fraction"].item() == 0.0


def test_learned_mask_embedding_replacement():
    model = M.create("muselq-branchformer", size="tiny", mask_replacement="embedding", mask_prob=1)
    batch = batch_for(model, 2)
    mel_in = []
    hook = model.frontend.register_forward_pre_hook(lambda mod, args: mel_in.append(args[0]))
    seen = _capture_masks(model, batch)
    hook.remove()
    assert "frontend_in" not in seen  # no mel of a masked waveform
    (spec,) = mel_in  # the audio stays clean: the front end sees the targets' clean mel
    torch.testing.assert_close(spec, model.normalized_mel(batch["audio"]))
    seen["terms"]["loss"].backward()
    assert model.mask_embedding.grad is not None and model.mask_embedding.grad.abs().sum() > 0


def test_estimate_stats_normalizes_the_mel(conformer):
    model = M.create("bestrq-conformer", size="tiny")
    audio = tracks(3, model.segment_samples, 24000, seed=3)
    model.estimate_stats([audio[:2], {"audio": audio[2:]}])
    x = model.normalized_mel(audio)
    assert abs(x.mean().item()) < 1e-3 and abs(x.std().item() - 1) < 1e-2
    with pytest.raises(ValueError, match="audio"):
        model.estimate_stats([])


def test_encoders_use_the_shared_blocks(conformer, branchformer):
    from muse_fast.nn import SummaryMixing
    from muse_fast.nn.blocks import BranchformerBlock, ConformerBlock, MultiHeadSelfAttention

    assert all(isinstance(b, ConformerBlock) for b in conformer.encoder.layers)
    assert isinstance(conformer.encoder.layers[0].mixer, MultiHeadSelfAttention)
    assert conformer.encoder.layers[0].mixer.rotary
    assert all(isinstance(b, BranchformerBlock) for b in branchformer.encoder.layers)
    assert isinstance(branchformer.encoder.layers[0].mixer, SummaryMixing)
    att = M.create("muselq-branchformer", size="tiny", mixer="attention")
    assert isinstance(att.encoder.layers[0].mixer, MultiHeadSelfAttention)
