"""Registry, configs, parameter counts, the embedding API and input errors, for every model."""

from __future__ import annotations

import pytest
import torch

import muse_fast.models as M

from ._synth import batch_for, tracks

NAMES = [
    "bestrq-conformer",
    "muselq-branchformer",
    "myna-base",
    "myna-hybrid",
    "myna-vertical",
    "vit1d",
]


@pytest.fixture(scope="module")
def tiny():
    cache: dict[str, torch.nn.Module] = {}

    def get(name: str) -> torch.nn.Module:
        if name not in cache:
            torch.manual_seed(0)
            cache[name] = M.create(name, size="tiny").eval()
        return cache[name]

    return get


# ----------------------------------------------------------------------------- registry / configs
def test_registry_lists_the_papers_models():
    assert M.list_models() == NAMES


def test_config_for_applies_size_then_overrides():
    cfg = M.config_for("myna-hybrid", size="vit-b", proj_dim=64)
    assert (cfg.dim, cfg.depth, cfg.heads, cfg.mlp_dim, cfg.proj_dim) == (768, 12, 12, 3072, 64)
    assert cfg.patch_sizes == ((16, 16), (128, 2))
    cfg = M.config_for("muselq-branchformer", size="small", mixer="attention")
    assert (cfg.encoder, cfg.mixer, cfg.dim, cfg.depth) == ("branchformer", "attention", 768, 4)
    assert (cfg.mask_prob, cfg.mel_loss_weight) == (0.2, 1.0)
    cfg = M.config_for("bestrq-conformer")
    assert (cfg.mask_prob, cfg.mel_loss_weight, cfg.codebook_size, cfg.codebook_dim) == (
        0.6,
        0.0,
        8192,
        16,
    )
    assert (cfg.span_samples, cfg.span_tokens) == (9600, 10)
    assert M.config_for("bestrq-conformer", size="base").dim == 768  # alias of "small"


def test_registry_errors_name_the_problem():
    with pytest.raises(ValueError, match="name: unknown model 'myna'"):
        M.create("myna")
    with pytest.raises(TypeError, match="myna-base: .*no_such_field"):
        M.config_for("myna-base", no_such_field=1)
    with pytest.raises(ValueError, match="size"):
        M.config_for("vit1d", size="huge")
    with pytest.raises(ValueError, match="dataset_size"):
        M.config_for("myna-base", loss="sogclr")
    with pytest.raises(ValueError, match="mixer"):
        M.config_for("muselq-branchformer", mixer="mamba")
    with pytest.raises(ValueError, match="segment_samples"):
        M.config_for("bestrq-conformer", segment_samples=1000)
    with pytest.raises(ValueError, match="n_frames"):
        M.config_for("myna-base", n_frames=100)


def test_segment_lengths_give_the_papers_frame_counts(tiny):
    # myna preset: hop 512, center=True → 1 + samples // 512 frames
    myna, vit = tiny("myna-base"), tiny("vit1d")
    assert myna.spectrogram(torch.zeros(1, myna.segment_samples)).shape == (1, 128, 96)
    assert vit.spectrogram(torch.zeros(1, vit.segment_samples)).shape == (1, 128, 126)
    assert vit.segment_samples == 4 * 16000
    # musicfm: 100 Hz mel (last frame dropped), 25 Hz tokens after stacking 4
    rq = tiny("bestrq-conformer")
    mel = rq.log_mel(torch.zeros(1, rq.segment_samples))
    assert mel.shape == (1, 128, rq.segment_samples // 240)
    assert M.config_for("bestrq-conformer").segment_samples == 30 * 24000


# ----------------------------------------------------------------------------- parameter counts
def _count(name: str, **kw) -> int:
    """Parameters of ``create(name, **kw)``, built on the meta device (no memory, no init)."""
    from muse_fast.nn import MelSpectrogram

    for preset in ("myna", "musicfm"):  # the mel filterbanks are built (and cached) on the CPU
        MelSpectrogram(preset)
    try:
        with torch.device("meta"):
            model = M.create(name, **kw)
    except (NotImplementedError, RuntimeError):  # a module that cannot be built on meta
        model = M.create(name, **kw)
    return model.num_parameters()


@pytest.mark.parametrize(
    "name,kw,expected",
    [
        # Myna paper: vit-s ≈ 22 M, vit-b ≈ 85 M (the hybrid adds a second small embedding)
        ("myna-base", {}, 22e6),
        ("myna-vertical", {}, 22e6),
        ("myna-hybrid", {}, 22e6),
        ("myna-base", {"size": "vit-b"}, 85e6),
        # MuseLQ paper, Table 2: CNF = Conformer (MusicFM), BRN = Branchformer
        ("bestrq-conformer", {"size": "small"}, 95e6),
        ("bestrq-conformer", {"size": "large"}, 330e6),
        ("bestrq-conformer", {"mixer": "summary_mixing"}, 302e6),
        ("muselq-branchformer", {"size": "small", "mixer": "attention"}, 60e6),
        ("muselq-branchformer", {"mixer": "attention"}, 187e6),
        ("muselq-branchformer", {}, 164e6),
    ],
)
def test_parameter_counts_match_the_papers(name, kw, expected):
    n = _count(name, **kw)
    assert abs(n - expected) / expected < 0.05, f"{name} {kw}: {n / 1e6:.2f} M"


def test_parameter_count_of_vit1d_follows_its_architecture():
    model = M.create("vit1d")
    d, blocks = 192, 12
    per_block = 2 * d + 4 * d * d + 2 * d + 2 * d * 4 * d + 4 * d + d  # LNs, qkv+out, MLP
    expected = blocks * per_block + 2 * d + (128 * d + d) + d  # final LN, Conv1d, class token
    assert model.num_parameters() == expected
    assert model.to_patch.kernel_size == (1,) and model.to_patch.in_channels == 128


def test_quantizer_is_frozen_and_saved(tiny):
    model = tiny("bestrq-conformer")
    names = {n for n, _ in model.named_parameters()}
    assert not any(n.startswith("quantizer.") for n in names)
    state = model.state_dict()
    assert any(k.startswith("quantizer.") for k in state)
    assert {"mel_mean", "mel_std"} <= set(state)


# ----------------------------------------------------------------------------- embeddings
@pytest.mark.parametrize("name", NAMES)
def test_embed_shapes_and_layers(tiny, name):
    model = tiny(name)
    depth = model.config.depth
    audio = tracks(2, model.segment_samples, model.sample_rate)
    with torch.no_grad():
        emb = model.embed(audio)
        frames = model.embed_frames(audio)
        every = model.embed(audio, layer="all")
        first = model.embed(audio, layer=0)
    assert emb.shape == (2, model.embed_dim)
    assert torch.isfinite(emb).all()
    assert len(every) == depth and all(e.shape == emb.shape for e in every)
    torch.testing.assert_close(every[-1], emb)  # also: embeddings are deterministic (no masking)
    torch.testing.assert_close(every[0], first)
    assert not torch.allclose(first, emb)
    steps = model.segment_samples // model.frame_hop
    assert frames.shape[0] == 2 and frames.shape[2] == model.embed_dim
    assert abs(frames.shape[1] - steps) <= 1, (frames.shape, steps)


@pytest.mark.parametrize("name", ["myna-hybrid", "vit1d", "bestrq-conformer"])
def test_embed_accepts_longer_audio(tiny, name):
    model = tiny(name)
    audio = tracks(1, model.segment_samples * 2, model.sample_rate)
    with torch.no_grad():
        frames = model.embed_frames(audio)
    assert frames.shape[1] > 1.5 * (model.segment_samples // model.frame_hop)


def test_myna_hybrid_embedding_concatenates_both_patch_sizes(tiny):
    model = tiny("myna-hybrid")
    audio = tracks(2, model.segment_samples, model.sample_rate)
    with torch.no_grad():
        emb = model.embed(audio)
        spec = model.spectrogram(audio)
        parts = [model._encode(spec, k, mask=False).mean(dim=1) for k in (0, 1)]
    assert emb.shape == (2, 2 * model.config.dim)
    torch.testing.assert_close(emb, torch.cat(parts, dim=-1))


def test_vit1d_poolings(tiny):
    model = tiny("vit1d")
    audio = tracks(2, model.segment_samples, model.sample_rate)
    with torch.no_grad():
        cls = model.embed(audio)
        mean = model.embed(audio, pooling="mean")
        seq = model.embed_frames(audio)
        _, (full,) = model._encode(model.spectrogram(audio), [model.config.depth - 1])
    torch.testing.assert_close(cls, full[:, 0])
    torch.testing.assert_close(mean, full.mean(dim=1))
    torch.testing.assert_close(seq, full[:, 1:])
    assert seq.shape[1] == 126


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("name", NAMES)
def test_wrong_inputs_give_clear_errors(tiny, name):
    model = tiny(name)
    s, sr = model.segment_samples, model.sample_rate
    with pytest.raises(ValueError, match=f"sample_rate: this model takes {sr} Hz"):
        model.embed(torch.zeros(1, s), sample_rate=sr * 2)
    with pytest.raises(
        ValueError, match=r"audio: expected shape \(batch, samples\).*audio\[None\]"
    ):
        model.embed(torch.zeros(s))
    with pytest.raises(TypeError, match="audio: expected floating-point"):
        model.embed(torch.zeros(1, s, dtype=torch.int16))
    with pytest.raises(ValueError, match="layer"):
        model.embed(torch.zeros(1, s), layer=model.config.depth)
    with pytest.raises(ValueError, match="at least"):
        model.embed(torch.zeros(1, 10))
    with pytest.raises(TypeError, match="batch"):
        model.loss([torch.zeros(1, s)])
    short = batch_for(model, 2)
    short["audio"] = short["audio"][..., : s // 2]
    with pytest.raises(ValueError, match=f"batch\\['audio'\\]: expected at least {s} samples"):
        model.loss(short)
    if model.n_views == 2:
        with pytest.raises(ValueError, match="expected 2 views"):
            model.loss({"audio": torch.zeros(2, 3, s)})
        with pytest.raises(ValueError, match=r"\(batch, views, samples\)"):
            model.loss({"audio": torch.zeros(2, s)})
    else:
        with pytest.raises(ValueError, match="takes one view"):
            model.loss({"audio": torch.zeros(2, 2, s)})


def test_sogclr_needs_indices():
    model = M.create("myna-base", size="tiny", loss="sogclr", dataset_size=16)
    batch = batch_for(model, 4)
    loss = model.loss(batch)
    assert torch.isfinite(loss)
    loss.backward()
    del batch["index"]
    with pytest.raises(ValueError, match="index"):
        model.loss(batch)
