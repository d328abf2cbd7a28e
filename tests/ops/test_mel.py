"""mel_spectrogram against torchaudio (MelSpectrogram + AmplitudeToDB), librosa, nnAudio and float64;
the Triton (interpreter) and C++ kernels against the reference; lengths, presets, stack_frames,
bad inputs, autograd, torch.compile, nn.MelSpectrogram."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from mel_helpers import KERNELS, assert_mel_close, run, signal, torchaudio_mel

import muse_fast
from muse_fast.nn import MelSpectrogram
from muse_fast.ops import (
    MEL_PRESETS,
    available_backends,
    mel_num_frames,
    mel_spectrogram,
    mel_spectrogram_reference,
    stack_frames,
)
from muse_fast.testing import assert_within_eager_error

ALL_BACKENDS = [pytest.param("reference", "cpu", id="reference"), *KERNELS]

pytestmark = pytest.mark.filterwarnings(
    "ignore:At least one mel filterbank has all zero values:UserWarning"
)


# A grid over every argument, not a cartesian product: each row changes several at once.
CONFIGS = [
    dict(sample_rate=16000, n_fft=400),  # torchaudio's defaults
    dict(sample_rate=16000, n_fft=512, hop_length=160, win_length=400, n_mels=64, log="db"),
    dict(
        sample_rate=22050,
        n_fft=1024,
        hop_length=256,
        n_mels=80,
        mel_scale="slaney",
        norm="slaney",
        f_min=30.0,
        f_max=8000.0,
        log="log1p",
    ),
    dict(sample_rate=24000, n_fft=2048, hop_length=240, n_mels=128, log="db"),  # musicfm
    dict(
        sample_rate=44100,
        n_fft=4096,
        hop_length=1024,
        win_length=2048,
        n_mels=96,
        power=1.0,
        log="db",
        top_db=50.0,
    ),
    dict(sample_rate=16000, n_fft=511, hop_length=128, n_mels=40, center=False, power=1.5),
    dict(sample_rate=22050, n_fft=600, hop_length=150, n_mels=50, pad_mode="constant", pad=37),
    dict(
        sample_rate=24000,
        n_fft=800,
        hop_length=300,
        n_mels=60,
        pad_mode="replicate",
        normalized=True,
        mel_scale="slaney",
        log="log",
    ),
    dict(
        sample_rate=44100,
        n_fft=1000,
        win_length=999,
        hop_length=441,
        n_mels=72,
        pad_mode="circular",
        norm="slaney",
        f_min=100.0,
        f_max=16000.0,
    ),
    dict(
        sample_rate=16000,
        n_fft=256,
        hop_length=255,
        n_mels=32,
        normalized="frame_length",
        log="db",
        top_db=30.0,
        power=1.0,
        center=False,
        f_max=6000.0,
    ),
]
_CFG_IDS = [
    "default", "win400-db", "slaney-log1p", "musicfm", "4096-mag-topdb", "odd-nocenter-p1.5",
    "constant-pad", "replicate-norm-log", "circular-fmin", "frame-length-topdb",
]  # fmt: skip

# Small configurations for the Triton interpreter (each call costs ~0.3 s there).
SMALL = [0, 5, 7, 9]


@pytest.mark.parametrize("cfg", CONFIGS, ids=_CFG_IDS)
def test_reference_istorchaudio_mel(cfg):
    x = signal(2, n=9000, sr=cfg["sample_rate"])
    ref = torchaudio_mel(x, **cfg)
    y = mel_spectrogram_reference(x, **cfg)
    torch.testing.assert_close(y, ref, rtol=1e-6, atol=1e-6 * ref.abs().max().item())


@pytest.mark.parametrize("cfg", CONFIGS, ids=_CFG_IDS)
def test_cpu_kernel_vstorchaudio_mel(cfg):
    if not any(p.values[0] == "cpu" for p in KERNELS):
        pytest.skip("C++ extension without the mel kernels")
    x = signal(2, n=9000, sr=cfg["sample_rate"])
    assert_mel_close(run("cpu", x, **cfg), x, **cfg)


@pytest.mark.parametrize("idx", SMALL, ids=[_CFG_IDS[i] for i in SMALL])
def test_triton_kernel_vstorchaudio_mel(idx):
    if not any(p.values[0] == "triton" for p in KERNELS):
        pytest.skip("Triton unavailable")
    cfg = CONFIGS[idx]
    dev = KERNELS[0].values[1]
    x = signal(2, n=3000, sr=cfg["sample_rate"])
    y = run("triton", x.to(dev), **cfg).cpu()
    assert_mel_close(y, x, **cfg)


@pytest.mark.parametrize("sr", [16000, 22050, 24000, 44100])
def test_cpu_kernel_sample_rates(sr):
    cfg = dict(sample_rate=sr, n_fft=1024 if sr < 40000 else 2048, hop_length=sr // 100, n_mels=64)
    x = signal(3, n=sr // 4, sr=sr)
    assert_mel_close(run("cpu", x, **cfg), x, **cfg)
    assert_mel_close(run("cpu", x, log="db", **cfg), x, log="db", **cfg)


def test_against_float64_ground_truth():
    """The kernels' error against float64 is of the size of torchaudio's own fp32 error."""
    cfg = dict(sample_rate=24000, n_fft=1024, hop_length=240, n_mels=96)
    x = signal(2, n=12000, sr=24000)
    gt = torchaudio_mel(x.double(), **cfg)
    ta = torchaudio_mel(x, **cfg)
    # relative error in bands within 60 dB of the peak; far below it neither side has exact fp32
    # digits (a 1-in-40 seed put the max relative error of a near-silent band at 7x torchaudio's)
    strong = gt >= 1e-6 * gt.amax()
    ta_err = ((ta.double() - gt).abs() / gt)[strong].max().item()
    ta_abs = (ta.double() - gt).abs().max().item()
    for backend, _ in (p.values for p in KERNELS):
        y = run(backend, x, **cfg).double()
        err = ((y - gt).abs() / gt)[strong].max().item()
        assert err <= 4 * ta_err + 1e-6, (backend, err, ta_err)
        assert (y - gt).abs().max().item() <= 4 * ta_abs + 1e-6 * gt.amax().item(), backend


def _librosa_mel(x: torch.Tensor, **kw) -> torch.Tensor:
    librosa = pytest.importorskip("librosa")
    kw = dict(n_fft=2048, n_mels=128, htk=False, norm="slaney", center=True, **kw)
    return torch.from_numpy(librosa.feature.melspectrogram(y=x.double().numpy(), **kw))


def test_librosa_slaney():
    """Against librosa in float64. torchaudio builds the slaney filterbank in fp32, librosa in
    fp64 (weights differ by up to ~1e-4 relative), so the yardstick is that difference alone: our
    reference in float64 (torchaudio's filterbank, no rounding elsewhere) against librosa. Kernel
    and reference may be 2x as far, plus fp32 rounding (relative in strong bands, ~1e-7 x peak
    absolute in weak ones)."""
    sr, hop = 22050, 512
    x = signal(n=22050, sr=sr)
    ref = _librosa_mel(x, sr=sr, hop_length=hop, pad_mode="constant", power=2.0)
    kw = dict(sample_rate=sr, n_fft=2048, hop_length=hop, n_mels=128, mel_scale="slaney")
    kw.update(norm="slaney", pad_mode="constant")
    fb_err = (mel_spectrogram_reference(x.double(), **kw) - ref).abs()
    for backend in ("reference", "cpu"):
        y = run(backend, x, **kw)
        assert y.shape == ref.shape
        err = (y.double() - ref).abs()
        assert err.max() <= 2 * fb_err.max() + 1e-6 * ref.max(), backend
        bound = 2 * fb_err + 1e-5 * ref + 1e-6 * ref.max()
        assert (err <= bound).all(), (backend, (err / bound).max().item())


def test_myna_preset_matches_librosa():
    """Myna = nnAudio's defaults (librosa slaney filters, reflect padding) then log1p; the
    yardstick is the filterbank difference, as above."""
    x = signal(n=16000, sr=16000)
    ref = torch.log1p(_librosa_mel(x, sr=16000, hop_length=512, pad_mode="reflect"))
    y = mel_spectrogram(x, "myna")
    ours64 = mel_spectrogram_reference(x.double(), "myna")
    assert_within_eager_error(y, ours64, ref, factor=2.0, atol=1e-5)


def test_myna_preset_matches_nnaudio():
    """Myna's own mel, nnAudio's ``MelSpectrogram(sr=16000, n_mels=128)`` then log1p, on a
    2 x 50 000-sample batch (Myna crops). nnAudio's STFT is an fp32 convolution: every kernel may
    be at most 2x as far from the float64 reference as nnAudio is, and that close to nnAudio."""
    nn_mel = pytest.importorskip("nnAudio.features.mel")
    x = signal(2, n=50000, sr=16000)
    theirs = torch.log1p(nn_mel.MelSpectrogram(sr=16000, n_mels=128, verbose=False)(x))
    ref = mel_spectrogram_reference(x.double(), "myna")
    nn_err = (theirs.double() - ref).abs().max().item()
    for backend, _ in (p.values for p in KERNELS):
        y = run(backend, x, "myna")
        assert y.shape == theirs.shape, backend
        assert_within_eager_error(y, ref, theirs, factor=2.0, atol=1e-6, msg=f"{backend}: ")
        assert (y - theirs).abs().max().item() <= 3 * nn_err + 1e-6, backend


# ----------------------------------------------------------------------------------------------
# kernels vs reference: shapes, lengths, dtypes, errors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend,device", KERNELS)
@pytest.mark.parametrize("pad_mode", ["reflect", "constant", "replicate", "circular"])
def test_lengths_equal_each_clip_alone(backend, device, pad_mode):
    """Valid frames equal torchaudio on the clip alone (its own padding around its own end),
    frames past the end are exactly 0, and top_db is per clip."""
    kw = dict(sample_rate=16000, n_fft=255, hop_length=50, n_mels=24, pad=3, pad_mode=pad_mode)
    kw.update(log="db", top_db=40.0)
    x = signal(3, 2, n=2000)
    lengths = torch.tensor([2000, 1234, 333])
    x[1, :, 1234:] = 7.0  # garbage past the end must not leak in
    x[2, :, 333:] = float("nan")  # and is never read
    mel, flen = run(backend, x.to(device), lengths=lengths.to(device), **kw)
    mel, flen = mel.cpu(), flen.cpu()
    assert flen.dtype == torch.int64 and mel.shape[:3] == (3, 2, 24)
    for b in range(3):
        clip = x[b, :, : lengths[b]]
        ref = torchaudio_mel(clip, **kw)
        assert flen[b] == ref.shape[-1] == mel_num_frames(int(lengths[b]), **_no_log(kw))
        assert_mel_close(mel[b, ..., : flen[b]], clip, msg=f"item {b}", **kw)
        assert (mel[b, ..., flen[b] :] == 0).all()


def _no_log(kw: dict) -> dict:
    return {k: v for k, v in kw.items() if k not in ("log", "top_db")}


def test_lengths_reference_and_backends_agree():
    kw = dict(sample_rate=22050, n_fft=512, hop_length=128, n_mels=40, log="log1p")
    x = signal(4, n=4000, sr=22050)
    lengths = [4000, 3999, 1000, 257]
    ref, rf = mel_spectrogram_reference(x, lengths=lengths, **kw)
    for backend, device in (p.values for p in KERNELS):
        y, fl = run(backend, x.to(device), lengths=torch.tensor(lengths, device=device), **kw)
        assert torch.equal(fl.cpu(), rf)
        torch.testing.assert_close(y.cpu(), ref, rtol=0, atol=1e-4)
    # full lengths = no lengths (top_db aside, whose max is then per clip)
    y, fl = mel_spectrogram(x, lengths=torch.full((4,), 4000), **kw)
    torch.testing.assert_close(y, mel_spectrogram(x, **kw), rtol=0, atol=0)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_nan_inf_raise(backend, device):
    x = signal(2, n=3000)
    for bad in (float("nan"), float("inf"), -float("inf")):
        y = x.clone()
        y[1, 1234] = bad
        # CPU tensors are checked by default; CUDA ones only on request (no host sync)
        check = None if device == "cpu" else True
        with pytest.raises(ValueError, match="waveform: contains NaN or inf"):
            run(backend, y.to(device), n_fft=256, n_mels=32, check_finite=check)
        # check_finite=False: no check, the bad sample propagates as in torchaudio
        out = run(backend, y.to(device), n_fft=256, n_mels=32, check_finite=False)
        assert not torch.isfinite(out[1]).all() and torch.isfinite(out[0]).all()


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_input(backend, device, dtype):
    """bf16/fp16 are upcast on load: the result is the fp32 result of the rounded waveform."""
    x = signal(2, n=3000).to(dtype)
    kw = dict(n_fft=256, hop_length=64, n_mels=32, log="db")
    y = run(backend, x.to(device), **kw).cpu()
    assert y.dtype == torch.float32
    assert_mel_close(y, x.float(), **kw)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_shapes_batched_unbatched_noncontiguous(backend, device):
    kw = dict(sample_rate=16000, n_fft=256, hop_length=100, n_mels=20)
    x = signal(2, 3, n=1500).to(device)
    y = run(backend, x, **kw)
    assert y.shape == (2, 3, 20, 16)
    y1 = run(backend, x[1, 2], **kw)
    assert y1.shape == (20, 16)
    torch.testing.assert_close(y1, y[1, 2], rtol=1e-5, atol=1e-7)
    strided = signal(3, n=3000).to(device)[:, ::2]  # stride 2 along time
    assert not strided.is_contiguous()
    torch.testing.assert_close(
        run(backend, strided, **kw), run(backend, strided.contiguous(), **kw), rtol=0, atol=0
    )
    empty = run(backend, torch.zeros(0, 1500, device=device), **kw)
    assert empty.shape == (0, 20, 16)


@pytest.mark.parametrize("backend,device", ALL_BACKENDS)
def test_silence_stays_finite(backend, device):
    x = torch.zeros(2, 2000, device=device)
    kw = dict(n_fft=256, n_mels=16)
    assert (run(backend, x, **kw) == 0).all()
    torch.testing.assert_close(
        run(backend, x, log="db", top_db=80.0, **kw).cpu(), torch.full((2, 16, 16), -100.0)
    )
    assert (run(backend, x, log="db", power=1.0, **kw) == -200.0).all()
    torch.testing.assert_close(
        run(backend, x, log="log", **kw).cpu(), torch.full((2, 16, 16), math.log(1e-10))
    )
    assert (run(backend, x, log="log1p", **kw) == 0).all()
    ta = torchaudio_mel(x.cpu(), log="db", top_db=80.0, **kw)
    torch.testing.assert_close(ta, torch.full((2, 16, 16), -100.0))


def test_short_inputs():
    # shorter than n_fft but longer than n_fft // 2: works, as in torchaudio
    for n, kw in [(201, {}), (101, {"pad_mode": "constant"}), (1, {"pad_mode": "replicate"})]:
        x = signal(n=n)
        assert_mel_close(run("cpu", x, **kw), x, **kw)
        assert_mel_close(run("reference", x, **kw), x, **kw)
    x = signal(n=200)
    assert_mel_close(run("cpu", x, pad_mode="circular"), x, pad_mode="circular")
    with pytest.raises(ValueError, match=r"waveform: 200 samples is too short.*reflect"):
        mel_spectrogram(x)
    with pytest.raises(ValueError, match=r"waveform: 199 samples is too short.*circular"):
        mel_spectrogram(x[:199], pad_mode="circular")
    with pytest.raises(ValueError, match=r"waveform: 399 samples is too short.*center=False"):
        mel_spectrogram(signal(n=399), center=False)
    x399 = signal(n=399)  # pad makes 401 >= n_fft: accepted
    assert_mel_close(mel_spectrogram(x399, center=False, pad=1), x399, center=False, pad=1)
    assert mel_spectrogram(x[:199], center=False, pad=101, n_fft=400).shape == (128, 1)
    with pytest.raises(ValueError, match=r"lengths: 150 samples is too short"):
        mel_spectrogram(signal(2, n=400), lengths=torch.tensor([400, 150]))


def test_bad_arguments():
    x = signal(2, n=2000)
    with pytest.raises(TypeError, match="waveform"):
        mel_spectrogram(x.long())
    with pytest.raises(TypeError, match="waveform"):
        mel_spectrogram(x.numpy())
    bad = [
        (dict(n_fft=1), "n_fft"),
        (dict(win_length=500), "win_length"),
        (dict(hop_length=0), "hop_length"),
        (dict(pad_mode="mirror"), "pad_mode"),
        (dict(mel_scale="bark"), "mel_scale"),
        (dict(norm="area"), "norm"),
        (dict(log="log10"), "log"),
        (dict(top_db=80.0), "top_db"),
        (dict(log="db", top_db=-1.0), "top_db"),
        (dict(power=0.0), "power"),
        (dict(f_min=9000.0), "f_min"),
        (dict(normalized="l2"), "normalized"),
        (dict(preset="hubert"), "preset"),
        (dict(n_mels=0), "n_mels"),
        (dict(pad=-1), "pad"),
        (dict(lengths=torch.tensor([2000])), "lengths"),
        (dict(lengths=torch.tensor([2000, 2001])), "lengths"),
        (dict(lengths=torch.tensor([2000.0, 10.0])), "lengths"),
    ]
    for kw, name in bad:
        with pytest.raises((ValueError, TypeError), match=name):
            mel_spectrogram(x, **kw)
    with pytest.raises(ValueError, match="lengths"):
        mel_spectrogram(x[0], lengths=torch.tensor([2000]))
    with pytest.raises(TypeError, match="center"):
        mel_spectrogram(x, center=1)


def test_float64_runs_reference_in_float64():
    x = signal(2, n=3000).double()
    assert available_backends("mel_spectrogram", x, None)["cpu"].startswith("float64")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", muse_fast.FallbackWarning)
        y = mel_spectrogram(x, n_fft=256, n_mels=32)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, torchaudio_mel(x, n_fft=256, n_mels=32), rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# presets, stack_frames, frame counts
# ----------------------------------------------------------------------------------------------


def test_presets():
    assert MEL_PRESETS["musicfm"]["sample_rate"] == 24000 and MEL_PRESETS["myna"]["n_fft"] == 2048
    x = signal(2, n=24000, sr=24000)
    y = mel_spectrogram(x, "musicfm")
    assert_mel_close(y, x, sample_rate=24000, n_fft=2048, hop_length=240, n_mels=128, log="db")
    assert y.shape == (2, 128, 101)
    # explicit arguments win over the preset, even when equal to the signature default
    y = mel_spectrogram(x, "musicfm", n_mels=64, n_fft=400, log=None)
    assert_mel_close(y, x, sample_rate=24000, n_fft=400, hop_length=240, n_mels=64)
    assert mel_num_frames(64000, "myna") == 126  # ViT-1D: 4 s -> 126 frames
    assert mel_num_frames(30 * 24000, "musicfm") == 3001
    assert mel_num_frames(1000, n_fft=400, hop_length=100, center=False) == 7
    m = mel_spectrogram(signal(1, n=64000), "myna")
    assert m.shape == (1, 128, 126) and (m >= 0).all()


def test_stack_frames():
    mel = torch.arange(2 * 3 * 10, dtype=torch.float32).reshape(2, 3, 10)
    y = stack_frames(mel, 4)
    assert y.shape == (2, 12, 2)
    # out[b, s*F + f, t] = mel[b, f, t*k + s]
    for b, s, f, t in [(0, 0, 0, 0), (1, 3, 2, 1), (0, 2, 1, 1), (1, 1, 0, 0)]:
        assert y[b, s * 3 + f, t] == mel[b, f, t * 4 + s]
    # MusicFM: rearrange(x, "b f (t s) -> b t (s f)") then transpose back
    musicfm = mel[..., :8].reshape(2, 3, 2, 4).permute(0, 2, 3, 1).reshape(2, 2, 12)
    assert torch.equal(y, musicfm.transpose(1, 2))
    assert torch.equal(stack_frames(mel[0], 4), y[0])
    assert torch.equal(stack_frames(mel, 1), mel)
    assert stack_frames(mel, 11).shape == (2, 33, 0)
    with pytest.raises(ValueError, match="factor"):
        stack_frames(mel, 0)
    with pytest.raises(ValueError, match="mel"):
        stack_frames(mel[0, 0], 2)


# ----------------------------------------------------------------------------------------------
# autograd, torch.compile, nn.MelSpectrogram
# ----------------------------------------------------------------------------------------------


def test_gradcheck_reference_float64():
    x = torch.randn(2, 24, dtype=torch.float64, requires_grad=True)
    kw = dict(n_fft=16, hop_length=8, n_mels=4, sample_rate=8000, log="log1p")
    lengths = torch.tensor([24, 13])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", muse_fast.FallbackWarning)
        assert torch.autograd.gradcheck(lambda w: mel_spectrogram(w, **kw), (x,), fast_mode=True)
        assert torch.autograd.gradcheck(
            lambda w: mel_spectrogram(w, lengths=lengths, **kw)[0], (x,), fast_mode=True
        )


@pytest.mark.parametrize("backend,device", KERNELS)
def test_gradient_through_kernel_forward(backend, device):
    kw = dict(n_fft=128, hop_length=32, n_mels=16, log="db")
    x = signal(2, n=800).to(device).requires_grad_(True)
    g = torch.randn(2, 16, 26, device=device)
    (gx,) = torch.autograd.grad(run(backend, x, **kw), x, g)
    x2 = x.detach().clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(torchaudio_mel(x2, **kw), x2, g)
    torch.testing.assert_close(gx, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_torch_compile_fullgraph():
    def f(w):
        return mel_spectrogram(w, n_fft=256, hop_length=64, n_mels=32, log="db") * 2.0

    x = signal(2, n=2000)
    y = torch.compile(f, fullgraph=True, backend="eager")(x)
    torch.testing.assert_close(y, f(x))
    # the module with lengths: the value checks run inside the custom op, not in the graph
    m = MelSpectrogram(n_fft=256, hop_length=64, n_mels=32, log="db")
    lengths = torch.tensor([2000, 900])
    cm = torch.compile(m, fullgraph=True, backend="eager")
    (y, fl), (ref, rfl) = cm(x, lengths), m(x, lengths)
    torch.testing.assert_close(y, ref)
    assert torch.equal(fl, rfl)
    with pytest.raises(ValueError, match="lengths: 2001 exceeds"):
        cm(x, torch.tensor([2001, 900]))


def test_module():
    x = signal(2, n=8000)
    m = MelSpectrogram(sample_rate=16000, n_fft=512, hop_length=128, n_mels=48, log="db")
    y = m(x)
    torch.testing.assert_close(
        y, mel_spectrogram(x, n_fft=512, hop_length=128, n_mels=48, log="db")
    )
    assert_mel_close(y, x, n_fft=512, hop_length=128, n_mels=48, log="db")
    assert m.state_dict() == {} and m.fb.shape == (257, 48) and m.window.shape == (512,)
    assert m.num_frames(8000) == y.shape[-1] and m.hop_length == 128
    y2, fl = m(x, torch.tensor([8000, 5000]))
    assert fl.tolist() == [63, 40]
    mh = MelSpectrogram("myna").half()  # float buffers cast: still computes in fp32
    assert mh(x).dtype == torch.float32
    assert "n_mels=128" in repr(mh) and mh.sample_rate == 16000
    torch.testing.assert_close(mh(x), mel_spectrogram(x, "myna"), rtol=0, atol=1e-6)


def test_config_first_api_and_preset_shim():
    """config (MelConfig, preset name, None = torchaudio defaults) + overrides; preset= warns."""
    from muse_fast.ops import MelConfig, mel_config

    x = signal(2, n=4000)
    cfg = MelConfig(n_fft=512, hop_length=128, n_mels=48, log="db")
    torch.testing.assert_close(
        mel_spectrogram(x, cfg), mel_spectrogram(x, n_fft=512, hop_length=128, n_mels=48, log="db")
    )
    assert mel_config("musicfm", n_mels=64).n_mels == 64 and MelConfig().n_fft == 400
    with pytest.warns(DeprecationWarning, match="preset"):
        y = mel_spectrogram(x, preset="myna")
    torch.testing.assert_close(y, mel_spectrogram(x, "myna"), rtol=0, atol=0)
    with pytest.warns(DeprecationWarning):
        assert MelSpectrogram(preset="myna").config == mel_config("myna")
    with pytest.raises(TypeError, match="config"):
        mel_spectrogram(x, 16000)
    with pytest.raises(TypeError, match="unexpected"):
        mel_spectrogram(x, n_ftt=512)
    with pytest.raises(ValueError, match="n_fft"):
        MelConfig(n_fft=1)
