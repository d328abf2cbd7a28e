"""Triton kernels for :func:`muse_fast.ops.mel_spectrogram` (launchers included; no autograd).

Two kernels bracket the FFT, which is ``torch.fft.rfft`` (cuFFT on CUDA); docs/design.md
("Mel spectrogram") has the whole pipeline.

``_pad_kernel``: every row's padded signal (torchaudio's constant ``pad``, then ``center``
padding by ``n_fft // 2`` in ``pad_mode`` around the row's own end) as fp32 rows of
``S = R * hop`` samples in one flat buffer, so flat frame ``j = row * R + t`` is frame ``t`` of
``row`` and the FFT reads all frames through one strided view. With ``CHECK`` it also writes one
NaN/inf flag per program (a plain store: no atomics, no fence). The op pads the rows of one FFT
chunk at a time, so the buffer is written to and read back from L2. Traffic: the waveform read
once.

``_power_mel_kernel``: one (frames x bands) output tile of one row. For the bins of the tile's
bands (their triangles' support) it loads the complex spectrum as (re, im) pairs, applies the
periodic hann window as the exact frequency-domain 3-tap ``Y[k] = X[k]/2 - (X[k-1] + X[k+1])/4``
(``X[-1] = conj X[1]``, ``X[N/2 + 1] = conj X[N/2 - 1]``), forms ``|Y|^power`` and multiplies by
the filterbank slice on tensor cores (``tf32x3``: three TF32 products, fp32-accurate), then the
log, zeros past the row's valid frames, and stores frames-contiguous. Traffic: the spectrum
chunk (L2-resident, ~1.1 reads per element because neighbouring band tiles share about one
triangle of bins), the mel written once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import empty, launch, pow2, tile_config

DOT_PRECISION = "tf32x3"


@triton.jit
def _pad_kernel(
    x_ptr,
    stride_row,
    stride_col,
    len_ptr,
    out_ptr,
    flag_ptr,
    S,
    PAD,
    HALF,
    MODE: tl.constexpr,
    CHECK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    i = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    n = tl.load(len_ptr + row)  # this row's clip length (samples)
    lp = n + 2 * PAD  # after torchaudio's constant `pad`
    live = i < lp + 2 * HALF  # inside the row's own padded signal
    q = i - HALF  # position in the constant-padded clip
    if MODE == 1:  # reflect (HALF < lp is checked by the op)
        q = tl.where(q < 0, -q, q)
        q = tl.where(q >= lp, 2 * (lp - 1) - q, q)
    elif MODE == 2:  # replicate
        q = tl.minimum(tl.maximum(q, 0), lp - 1)
    elif MODE == 3:  # circular (HALF <= lp)
        q = tl.where(q < 0, q + lp, q)
        q = tl.where(q >= lp, q - lp, q)
    s = q - PAD  # sample index in the clip; outside [0, n): zero
    ok = live & (s >= 0) & (s < n)
    row64 = row.to(tl.int64)
    v = tl.load(x_ptr + row64 * stride_row + s.to(tl.int64) * stride_col, mask=ok, other=0.0)
    v = v.to(tl.float32)
    tl.store(out_ptr + row64 * S + i, v, mask=i < S)
    if CHECK:
        bad = ok & ((v != v) | (tl.abs(v) == float("inf")))
        tl.store(flag_ptr + row * tl.num_programs(1) + tl.program_id(1), tl.max(bad.to(tl.int8)))


@triton.jit
def _load_pairs(ptr, row_off, k, mask, BK: tl.constexpr):
    """(re, im) of bins ``k`` of the frames at ``row_off``: one 8-byte load per complex value."""
    c = tl.arange(0, 2)
    p = ptr + row_off[:, None, None] + 2 * k[None, :, None] + c[None, None, :]  # (BT, BK, 2)
    z = tl.load(p, mask=mask[:, :, None], other=0.0)
    return tl.split(z)


@triton.jit
def _power(spec_ptr, row_off, k, lmask, NF, NFFT, scale, power, HANN3, POWER_MODE, BK):
    """|window * frame|^power at bins ``k`` (BT, BK), 0 where ``lmask`` is False."""
    re, im = _load_pairs(spec_ptr, row_off, k, lmask, BK)
    if HANN3:
        km = k - 1
        neg_m = km < 0  # X[-1] = conj X[1]
        km = tl.where(neg_m, -km, km)
        kp = k + 1
        neg_p = kp >= NF  # X[k] = conj X[N - k] above N // 2
        kp = tl.where(neg_p, NFFT - kp, kp)
        re_m, im_m = _load_pairs(spec_ptr, row_off, km, lmask, BK)
        re_p, im_p = _load_pairs(spec_ptr, row_off, kp, lmask, BK)
        im_m = tl.where(neg_m[None, :], -im_m, im_m)
        im_p = tl.where(neg_p[None, :], -im_p, im_p)
        re = 0.5 * re - 0.25 * (re_m + re_p)
        im = 0.5 * im - 0.25 * (im_m + im_p)
    s = (re * re + im * im) * scale
    if POWER_MODE == 0:  # power 2
        p = s
    elif POWER_MODE == 1:  # power 1: magnitude
        p = tl.sqrt(s)
    else:  # |X|^power = s^(power / 2); s = 0 -> 0
        pos = s > 0.0
        p = tl.where(pos, tl.exp2(0.5 * power * tl.log2(tl.where(pos, s, 1.0))), 0.0)
    return tl.where(lmask, p, 0.0)


@triton.jit
def _apply_log(acc, log_mult, LOG: tl.constexpr):
    if LOG == 1:  # natural log, floor 1e-10
        acc = tl.log(tl.maximum(acc, 1e-10))
    elif LOG == 2:  # log1p, accurate for small x: log(u) * x / (u - 1), u = 1 + x
        u = 1.0 + acc
        tiny = u == 1.0
        acc = tl.where(tiny, acc, tl.log(u) * (acc / tl.where(tiny, 1.0, u - 1.0)))
    elif LOG == 3:  # dB: log_mult * log10(max(x, amin))
        acc = tl.log2(tl.maximum(acc, 1e-10)) * (log_mult * 0.30102999566398120)
    return acc


@triton.jit
def _power_mel_kernel(
    spec_ptr,
    fb_ptr,
    lo_ptr,
    hi_ptr,
    flen_ptr,
    out_ptr,
    row0,
    t_start,
    t_end,
    j0,
    R,
    T,
    NF,
    NFFT,
    M,
    scale,
    power,
    log_mult,
    HANN3: tl.constexpr,
    POWER_MODE: tl.constexpr,
    LOG: tl.constexpr,
    PRECISION: tl.constexpr,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BM: tl.constexpr,
):
    row = row0 + tl.program_id(0)
    t = t_start + tl.program_id(1) * BT + tl.arange(0, BT)  # frames of this row
    m = tl.program_id(2) * BM + tl.arange(0, BM)  # bands of this tile
    fmask = t < t_end
    mmask = m < M
    flen = tl.load(flen_ptr + row)
    row64 = row.to(tl.int64)
    # frame t of row is flat frame row * R + t, spectrum row (row * R + t - j0) of the chunk
    row_off = (row64 * R + t - j0) * (2 * NF)  # (BT,)
    lo = tl.min(tl.load(lo_ptr + m, mask=mmask, other=NF), axis=0)
    hi = tl.max(tl.load(hi_ptr + m, mask=mmask, other=0), axis=0)
    acc = tl.zeros((BT, BM), dtype=tl.float32)
    for k0 in range(lo, hi, BK):
        k = k0 + tl.arange(0, BK)
        kmask = k < hi
        lmask = fmask[:, None] & kmask[None, :]
        p = _power(spec_ptr, row_off, k, lmask, NF, NFFT, scale, power, HANN3, POWER_MODE, BK)
        w = tl.load(
            fb_ptr + k[:, None] * M + m[None, :], mask=kmask[:, None] & mmask[None, :], other=0.0
        )
        acc = tl.dot(p, w, acc, input_precision=PRECISION)
    acc = _apply_log(acc, log_mult, LOG)
    acc = tl.where((t < flen)[:, None], acc, 0.0)
    # (N, M, T) output, frames contiguous: each band's BT frames are one coalesced segment
    dst = out_ptr + row64 * M * T + m.to(tl.int64)[None, :] * T + t[:, None]
    tl.store(dst, acc, mask=fmask[:, None] & mmask[None, :])


def chunk_bytes(device: torch.device) -> int:
    """Bytes of complex spectrum per FFT chunk on ``device`` (sized to stay in L2 on a GPU)."""
    return tile_config("mel.power_mel", device)["chunk_bytes"]


def pad_signal(
    x: torch.Tensor,
    row_lengths: torch.Tensor,
    S: int,
    pad: int,
    half: int,
    pad_mode: int,
    check: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """x (N, L) any float dtype/strides; row_lengths (N,) int32 -> (buf (N*S,) fp32, flags).

    ``pad_mode``: 0 constant, 1 reflect, 2 replicate, 3 circular. ``flags`` (int8, one per
    program, nonzero where a NaN/inf was read) when ``check``."""
    n_rows = x.shape[0]
    cfg = tile_config("mel.pad", x.device)
    block = pow2(S, 128, cfg["BLOCK"])
    grid = (n_rows, triton.cdiv(S, block))
    buf = empty(n_rows * S, dtype=torch.float32, device=x.device)
    flags = empty(grid[0] * grid[1] if check else 1, dtype=torch.int8, device=x.device)
    launch(
        _pad_kernel, grid, x, x.stride(0), x.stride(1), row_lengths, buf, flags, S, pad, half,
        num_warps=cfg["num_warps"], num_stages=1, MODE=pad_mode, CHECK=check,
        BLOCK=block,
    )  # fmt: skip
    return buf, (flags if check else None)


def power_mel(
    spec: torch.Tensor,
    fb: torch.Tensor,
    band_lo: torch.Tensor,
    band_hi: torch.Tensor,
    frame_lengths: torch.Tensor,
    out: torch.Tensor,
    *,
    rows: tuple[int, int],
    frames: tuple[int, int],
    j0: int,
    R: int,
    n_fft: int,
    scale: float,
    power: float,
    log: int,
    log_mult: float,
    hann3: bool,
) -> None:
    """spec (F, NF, 2) fp32 contiguous, the chunk of flat frames from ``j0`` -> ``out`` (N, M, T)
    for rows ``[rows[0], rows[1])`` and, in each, frames ``[frames[0], frames[1])``. ``log``: 0
    none, 1 ln, 2 log1p, 3 dB."""
    nf = spec.shape[1]
    m = fb.shape[1]
    t_out = out.shape[-1]
    t0, t1 = frames
    cfg = tile_config("mel.power_mel", spec.device)
    bt = pow2(t1 - t0, 16, cfg["BT"])
    bm = pow2(m, 16, cfg["BM"])
    power_mode = 0 if power == 2.0 else (1 if power == 1.0 else 2)
    grid = (rows[1] - rows[0], triton.cdiv(t1 - t0, bt), triton.cdiv(m, bm))
    launch(
        _power_mel_kernel, grid, spec, fb, band_lo, band_hi, frame_lengths, out, rows[0], t0, t1,
        j0, R, t_out, nf, n_fft, m, scale, power, log_mult,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], HANN3=hann3,
        POWER_MODE=power_mode, LOG=log, PRECISION=DOT_PRECISION, BT=bt, BK=cfg["BK"],
        BM=bm,
    )  # fmt: skip
