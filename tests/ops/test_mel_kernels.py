"""The mel Triton kernels in their GPU configuration: CUDA tiles under the interpreter, FFT chunk
boundaries, the meta-tensor dry run. The sm_90 compile checks (tensor cores, no atomics or
fences, shared memory, spills) live in tests/test_sm90.py."""

from __future__ import annotations

import pytest
import torch
from mel_helpers import KERNELS, assert_mel_close, run, signal, torchaudio_mel
from muse_fast.kernels._utils import TILES, tiles

from muse_fast.ops import mel_spectrogram_reference

pytestmark = pytest.mark.filterwarnings(
    "ignore:At least one mel filterbank has all zero values:UserWarning"
)


@pytest.mark.parametrize("backend,device", KERNELS)
def test_small_fft_chunks(backend, device, monkeypatch):
    """Chunk boundaries of the FFT loop (here every 6 flat frames) change nothing."""
    from muse_fast.ops import mel as mel_ops

    kw = dict(n_fft=128, hop_length=37, n_mels=16, log="db")
    x = signal(3, n=700).to(device)
    lengths = torch.tensor([700, 500, 65], device=device)
    full, fl = run(backend, x, lengths=lengths, **kw)
    monkeypatch.setattr(mel_ops, "_CPU_CHUNK_BYTES", 8 * 65 * 7)
    for mode in ("cuda", "interpreter"):
        monkeypatch.setitem(TILES["mel.power_mel"][mode], "chunk_bytes", 8 * 65 * 7)
    small, fl2 = run(backend, x, lengths=lengths, **kw)
    assert torch.equal(fl, fl2)
    torch.testing.assert_close(small, full, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "kw,lead,n",
    [
        (dict(n_fft=256, hop_length=61, n_mels=40, log="db"), (3,), 1001),
        (dict(n_fft=255, hop_length=50, n_mels=17, win_length=201, power=1.5), (1,), 777),
        (dict(n_fft=128, hop_length=32, n_mels=72, log="log1p", center=False), (2, 1), 129),
    ],
    ids=["db-3x1001", "win201-p1.5-1x777", "nocenter-log1p-2x1x129"],
)
def test_cuda_tiles_under_interpreter(kw, lead, n):
    """The Triton kernels with the CUDA tile configuration (block sizes, warps, stages, chunk
    size) on awkward shapes: forward against the precision rule, backward against torchaudio."""
    if not any(p.values[0] == "triton" for p in KERNELS):
        pytest.skip("Triton unavailable")
    dev = KERNELS[0].values[1]
    x = signal(*lead, n=n)
    with tiles("cuda"):
        y = run("triton", x.to(dev), **kw).cpu()
        assert_mel_close(y, x, **kw)
        xg = x.to(dev).requires_grad_(True)
        g = torch.randn_like(y).to(dev)
        (gx,) = torch.autograd.grad(run("triton", xg, **kw), xg, g)
    x2 = x.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(torchaudio_mel(x2, **kw), x2, g.cpu())
    torch.testing.assert_close(gx.cpu(), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    if dev == "cpu":  # lengths: rows of different lengths inside one chunk, zeros past the end
        lengths = torch.tensor([n] + [(n + kw["n_fft"]) // 2 + 1] * (lead[0] - 1))
        with tiles("cuda"):
            ym, fl = run("triton", x, lengths=lengths, **kw)
        rm, rf = mel_spectrogram_reference(x, lengths=lengths, **kw)
        assert torch.equal(fl, rf)
        assert_mel_close(ym[0], x[0], **kw)
        assert (ym[1:, ..., fl[-1] :] == 0).all()


def test_triton_backend_dry_run_on_meta():
    """The static report walks the Triton backend on meta tensors with the CUDA tiles: no host
    sync may happen (reading a meta tensor would raise), one pad and one power/mel launch per
    chunk (here one 30 s row per chunk), and no launch beyond those."""
    from dataclasses import astuple

    from muse_fast.kernels._utils import record_launches

    from muse_fast._backend import get_op
    from muse_fast.ops import mel_config

    r = mel_config("musicfm").resolved()
    x = torch.empty(3, 30 * 24000, device="meta")
    with record_launches(dry=True) as launches, tiles("cuda"):
        mel, fl = get_op("mel_spectrogram").impl("triton")(x, None, *astuple(r), False)
    assert mel.shape == (3, 128, 3001) and mel.device.type == "meta"
    names = [launch.name for launch in launches]
    assert names == ["_pad_kernel", "_power_mel_kernel"] * 3, names
    assert launches[1].constexprs["PRECISION"] == "tf32x3"
