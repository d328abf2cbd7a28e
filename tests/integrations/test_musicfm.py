"""MusicFM patch and loader against HF ``Wav2Vec2ConformerEncoder`` from the installed
``transformers`` (the encoder MusicFM builds), with MusicFM's mel / quantizer / masking pipeline
rebuilt in ``_musicfm_ref.py`` (MusicFM itself is not on PyPI)."""

from __future__ import annotations

import copy
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")

import muse_fast.models as M  # noqa: E402
from muse_fast.integrations import apply_muse_fast, musicfm_config  # noqa: E402

from ._musicfm_ref import MusicFM25Hz  # noqa: E402

SECONDS = 0.8  # 2 masking spans, 20 tokens
SAMPLES = int(24000 * SECONDS)


def _config(**kw):
    base = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        conv_depthwise_kernel_size=5,
        hidden_dropout=0.0,
        activation_dropout=0.0,
        attention_dropout=0.0,
        layerdrop=0.0,
    )
    base.update(kw)
    return musicfm_config(**base)


def _randomize_bn(model: torch.nn.Module) -> None:
    """Non-trivial BatchNorm statistics, so the eval-mode BN path is exercised."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1, 0.2)
                m.bias.normal_(0, 0.2)


@pytest.fixture
def pair():
    ref = MusicFM25Hz(_config()).eval()
    _randomize_bn(ref)
    patched = apply_muse_fast(copy.deepcopy(ref))
    return ref, patched


def _audio(b=2):
    return 0.3 * torch.randn(b, SAMPLES)


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_config_builds_offline():
    cfg = musicfm_config()
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (1024, 12, 16)
    assert cfg.position_embeddings_type == "rotary" and cfg.hidden_act == "swish"


def test_state_dict_keys_unchanged_and_strict_load(pair):
    ref, patched = pair
    assert list(patched.state_dict()) == list(ref.state_dict())
    patched.load_state_dict(ref.state_dict(), strict=True)


def test_latents_targets_and_loss_match(pair):
    ref, patched = pair
    x = _audio()
    with torch.no_grad():
        _, h_ref = ref.get_predictions(x)
        _, h_new = patched.get_predictions(x)
        assert len(h_new) == len(h_ref) == 3
        for a, b in zip(h_new, h_ref):
            assert _rel(a, b) <= 1e-5
        t_ref, t_new = ref.get_targets(x), patched.get_targets(x)
    assert torch.equal(t_ref["melspec_2048"], t_new["melspec_2048"])
    # injected mask: the same masked audio and spans for both
    masked_audio, idx = ref.masking(x)
    token_mask = torch.zeros_like(t_ref["melspec_2048"], dtype=torch.bool)
    token_mask[idx[:, 0], idx[:, 1]] = True
    with torch.no_grad():
        lg_ref, _ = ref.get_predictions(masked_audio)
        lg_new, _ = patched.get_predictions(masked_audio)
        l_ref, a_ref = ref.get_loss(lg_ref, t_ref, idx)
        l_new, a_new = patched.get_loss(lg_new, t_new, token_mask)
        l_idx, _ = patched.get_loss(lg_new, t_new, idx)  # upstream's index form still accepted
    key = "melspec_2048"
    torch.testing.assert_close(l_new[key], l_ref[key], rtol=1e-5, atol=0)
    torch.testing.assert_close(l_idx[key], l_new[key], rtol=1e-6, atol=0)
    torch.testing.assert_close(a_new[key], a_ref[key].float())


def test_patched_masking_spans(pair):
    _, patched = pair
    x = torch.ones(3, SAMPLES + 500)  # a tail shorter than a span stays clean
    mx, token_mask = patched.masking(x)
    assert token_mask.shape == (3, 20) and token_mask.dtype == torch.bool
    sample_masked = mx[:, :SAMPLES] != 1  # noise is never exactly 1
    spans_s = sample_masked.view(3, 2, -1)
    spans_t = token_mask.view(3, 2, 10)
    assert torch.equal(spans_s.any(-1), spans_t.any(-1))
    assert torch.equal(spans_t.all(-1), spans_t.any(-1))
    assert torch.equal(mx[:, SAMPLES:], x[:, SAMPLES:])
    noise = mx[:, :SAMPLES][sample_masked]
    if noise.numel() > 1000:
        assert abs(noise.std().item() - 0.1) < 0.02


def test_patched_training_step_and_compile(pair):
    _, patched = pair
    patched.train()
    _, _, losses, _ = patched(_audio())
    losses["melspec_2048"].backward()
    assert patched.linear.weight.grad is not None
    assert torch.isfinite(patched.conformer.layers[0].self_attn.linear_q.weight.grad).all()
    torch._dynamo.reset()
    compiled = torch.compile(patched, fullgraph=True, backend="aot_eager")
    out = compiled(_audio())
    assert torch.isfinite(out[2]["melspec_2048"])


def test_unrecognized_model_is_refused():
    with pytest.raises(TypeError, match="MusicFM25Hz"):
        apply_muse_fast(torch.nn.Linear(2, 2))


def test_from_musicfm_loads_and_matches_latents(tmp_path):
    ref = MusicFM25Hz(_config(), conv_dim=8, codebook_size=64).eval()
    _randomize_bn(ref)
    sd = {"model." + k: v for k, v in ref.state_dict().items()}
    ours = M.from_musicfm({"state_dict": sd}, ref.stat, heads=4).eval()
    assert ours.config.codebook_size == 64 and ours.config.depth == 2
    assert ours.mel_mean.item() == pytest.approx(ref.stat["melspec_2048_mean"])
    x = _audio()
    with torch.no_grad():
        _, h_ref = ref.get_predictions(x)
        frames = ours.embed_frames(x, layer="all")
        for k in (1, 2):  # MusicFM layer_ix=k ↔ our layer k - 1
            assert _rel(frames[k - 1], h_ref[k]) <= 1e-5
        tokens, _ = ours.targets(x)
    assert torch.equal(tokens, ref.get_targets(x)["melspec_2048"])


def test_from_musicfm_refuses_unknown_and_missing_keys():
    ref = MusicFM25Hz(_config())
    stats = ref.stat
    sd = ref.state_dict()
    with pytest.raises(ValueError, match="unexpected keys.*extra.weight"):
        M.from_musicfm({**sd, "extra.weight": torch.zeros(1)}, stats, heads=4)
    sd.pop("conformer.layers.1.final_layer_norm.weight")
    with pytest.raises(ValueError, match="missing keys.*layers.1.norm_out.weight"):
        M.from_musicfm(sd, stats, heads=4)
    with pytest.raises(ValueError, match="melspec_2048_mean"):
        M.from_musicfm(ref.state_dict(), {"mean": 1.0}, heads=4)


def test_muq_layout_gets_the_mel_and_encoder_patch():
    """MuQModel (tencent-ailab/MuQ, not on PyPI) shares MusicFM's mel and HF encoder; the patch
    replaces those two and leaves its own targets / masking (here: a renamed stand-in)."""
    muq_cls = type("MuQModel", (MusicFM25Hz,), {})
    ref = muq_cls(_config()).eval()
    _randomize_bn(ref)
    patched = apply_muse_fast(copy.deepcopy(ref))
    assert list(patched.state_dict()) == list(ref.state_dict())
    assert "masking" not in vars(patched) and "tokenize" not in vars(patched)
    x = _audio()
    with torch.no_grad():
        _, h_ref = ref.get_predictions(x)
        _, h_new = patched.get_predictions(x)  # upstream encoder() → patched conformer.forward
    assert len(h_new) == len(h_ref)
    for a, b in zip(h_new, h_ref):
        assert _rel(a, b) <= 1e-5


def test_untested_transformers_version_warns(monkeypatch):
    from muse_fast.integrations import _util
    from muse_fast.integrations import musicfm as patch

    monkeypatch.setattr(patch, "TESTED_TRANSFORMERS", (99,))
    monkeypatch.setattr(_util, "_WARNED", set())
    with pytest.warns(UserWarning, match=r"tested with transformers 99\.x, found \d"):
        apply_muse_fast(MusicFM25Hz(_config()))
