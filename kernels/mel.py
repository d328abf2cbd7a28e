"""Triton kernels for :func:`muse_fast.ops.mel_spectrogram` (launchers included; no autograd).

Two kernels bracket the FFT, which is ``torch.fft.rfft`` (cuFFT on CUDA):

``_pad_kernel``
    Builds the padded signal of every row — torchaudio's constant ``pad``, then ``center``
    padding by ``n_fft // 2`` in ``pad_mode``, each row padded around *its own* end when
    ``lengths`` are given — as fp32 rows of ``S = R · hop`` samples in one flat buffer, and
    counts NaN/inf among the samples it reads (one atomic per program into ``flag``). With rows
    ``R · hop`` apart, flat frame ``j = row · R + t`` is frame ``t`` of ``row``, so the frames of
    the whole batch are ONE strided view ``buf.as_strided((F, n_fft), (hop, 1))`` that the FFT
    reads in place: no frames × n_fft tensor exists.

``_power_mel_kernel``
    Reads a chunk of the complex spectrum (interleaved re/im) and writes only the mel:
    hann window (see below), power, the sparse mel filterbank, the log, zeros past each row's
    valid frames. The filterbank is applied band-tile by band-tile: bands ``[m0, m0 + BM)`` only
    touch bins ``[min lo, max hi)`` of their triangles, so a tile multiplies a (frames × bins of
    its support) power tile by the (support × BM) slice of the filterbank (``tl.dot`` in IEEE
    fp32). Each bin feeds at most two triangles; with BM = 16 the tiles' supports overlap by
    about one triangle, so each spectrum element is read ~1.1 times (L1/L2 hits) instead of the
    dense ``n_mels`` MACs per bin (16 per bin here, vs 128 dense for 128 mels).

Windowing in the frequency domain: for a periodic hann window with ``win_length == n_fft``,
``w[n] = 0.5 - 0.25 (e^{2πin/N} + e^{-2πin/N})``, so the DFT of the windowed frame is
``Y[k] = 0.5 X[k] - 0.25 (X[k-1] + X[k+1])`` of the *unwindowed* frame (``X[-k] = conj X[k]``
at both ends of the one-sided spectrum). The FFT therefore runs on the raw strided frames and
the window costs 3 loads per bin that hit the same cache lines. Its fp32 error against a float64
ground truth is the same size as windowing in the time domain (both are dominated by the FFT's
own rounding, which is absolute, ~eps·‖x‖). Other ``win_length`` (the window is zero-padded
inside n_fft, not a 3-tap in the n_fft-point DFT): the op multiplies each chunk of frames by the
window (materialized, chunk by chunk) and the kernel runs with ``HANN3=False``; the magnitude
does not depend on where in the n_fft buffer the win_length samples sit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from muse_fast._runtime import empty, triton_interpret

PAD_MODES = {"constant": 0, "reflect": 1, "replicate": 2, "circular": 3}
LOG_MODES = {"none": 0, "log": 1, "log1p": 2, "db": 3}


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
    v = tl.load(x_ptr + row64 * stride_row + s.to(tl.int64) * stride_col, mask=ok, other=0.0).to(
        tl.float32
    )
    tl.store(out_ptr + row64 * S + i, v, mask=i < S)
    bad = ok & ((v != v) | (tl.abs(v) == float("inf")))
    tl.atomic_max(flag_ptr, tl.max(bad.to(tl.int32), axis=0))


@triton.jit
def _power_mel_kernel(
    spec_ptr,
    fb_ptr,
    lo_ptr,
    hi_ptr,
    flen_ptr,
    out_ptr,
    j0,
    n_frames,
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
    BT: tl.constexpr,
    BK: tl.constexpr,
    BM: tl.constexpr,
):
    f = tl.program_id(0) * BT + tl.arange(0, BT)  # frame within the chunk
    fmask = f < n_frames
    j = j0 + f  # flat frame: row * R + t
    row = j // R
    t = j - row * R
    flen = tl.load(flen_ptr + row, mask=fmask, other=0)
    valid = fmask & (t < flen)
    keep = fmask & (t < T)  # frames t >= T are the gap between rows: never stored
    spec_row = spec_ptr + f.to(tl.int64)[:, None] * (2 * NF)
    out_base = out_ptr + (row.to(tl.int64) * M * T + t)[:, None]
    for tile in range(0, (M + BM - 1) // BM):
        m = tile * BM + tl.arange(0, BM)
        mmask = m < M
        lo = tl.min(tl.load(lo_ptr + m, mask=mmask, other=NF), axis=0)
        hi = tl.max(tl.load(hi_ptr + m, mask=mmask, other=0), axis=0)
        acc = tl.zeros((BT, BM), dtype=tl.float32)
        for k0 in range(lo, hi, BK):
            k = k0 + tl.arange(0, BK)
            kmask = k < hi
            lmask = fmask[:, None] & kmask[None, :]
            re = tl.load(spec_row + 2 * k[None, :], mask=lmask, other=0.0)
            im = tl.load(spec_row + 2 * k[None, :] + 1, mask=lmask, other=0.0)
            if HANN3:
                km = k - 1
                neg_m = km < 0  # X[-1] = conj X[1]
                km = tl.where(neg_m, -km, km)
                kp = k + 1
                neg_p = kp >= NF  # X[k] = conj X[N - k] above N // 2
                kp = tl.where(neg_p, NFFT - kp, kp)
                re_m = tl.load(spec_row + 2 * km[None, :], mask=lmask, other=0.0)
                im_m = tl.load(spec_row + 2 * km[None, :] + 1, mask=lmask, other=0.0)
                re_p = tl.load(spec_row + 2 * kp[None, :], mask=lmask, other=0.0)
                im_p = tl.load(spec_row + 2 * kp[None, :] + 1, mask=lmask, other=0.0)
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
            p = tl.where(lmask, p, 0.0)
            w = tl.load(
                fb_ptr + k[:, None] * M + m[None, :],
                mask=kmask[:, None] & mmask[None, :],
                other=0.0,
            )
            acc += tl.dot(p, w, input_precision="ieee")
        if LOG == 1:  # natural log, floor 1e-10
            acc = tl.log(tl.maximum(acc, 1e-10))
        elif LOG == 2:  # log1p, accurate for small x: log(u) * x / (u - 1), u = 1 + x
            u = 1.0 + acc
            tiny = u == 1.0
            acc = tl.where(tiny, acc, tl.log(u) * (acc / tl.where(tiny, 1.0, u - 1.0)))
        elif LOG == 3:  # dB: log_mult * log10(max(x, amin))
            acc = tl.log2(tl.maximum(acc, 1e-10)) * (log_mult * 0.30102999566398120)
        acc = tl.where(valid[:, None], acc, 0.0)
        tl.store(out_base + (m * T)[None, :], acc, mask=keep[:, None] & mmask[None, :])


def pad_signal(
    x: torch.Tensor,
    row_lengths: torch.Tensor,
    S: int,
    pad: int,
    half: int,
    pad_mode: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x (N, L) any float dtype/strides; row_lengths (N,) int32 → (buf (N·S,) fp32, flag (1,) int32)."""
    n_rows = x.shape[0]
    buf = empty(n_rows * S, dtype=torch.float32, device=x.device)
    flag = torch.zeros(1, dtype=torch.int32, device=x.device)
    block = 16384 if triton_interpret() else 1024
    grid = (n_rows, triton.cdiv(S, block))
    _pad_kernel[grid](
        x,
        x.stride(0),
        x.stride(1),
        row_lengths,
        buf,
        flag,
        S,
        pad,
        half,
        MODE=PAD_MODES[pad_mode],
        BLOCK=block,
    )
    return buf, flag


def power_mel(
    spec: torch.Tensor,
    fb: torch.Tensor,
    band_lo: torch.Tensor,
    band_hi: torch.Tensor,
    frame_lengths: torch.Tensor,
    out: torch.Tensor,
    *,
    j0: int,
    R: int,
    n_fft: int,
    scale: float,
    power: float,
    log: str,
    log_mult: float,
    hann3: bool,
) -> None:
    """spec (F, NF, 2) fp32 contiguous (a chunk of flat frames starting at ``j0``) → out (N, M, T)."""
    n_frames, nf, _ = spec.shape
    m = fb.shape[1]
    t_out = out.shape[-1]
    power_mode = 0 if power == 2.0 else (1 if power == 1.0 else 2)
    if triton_interpret():  # few, large programs: the interpreter pays per op, not per element
        bt, bk, bm, warps, stages = 128, 256, min(128, triton.next_power_of_2(m)), 4, 1
    else:
        # Untuned (no GPU yet). Compiled for sm_90: 58 KiB shared memory with 2 stages (the six
        # (BT, BK) loads of the 3-tap are staged), 108 KiB with the default 3.
        bt, bk, bm, warps, stages = 64, 32, 16, 4, 2
    grid = (triton.cdiv(n_frames, bt),)
    _power_mel_kernel[grid](
        spec,
        fb,
        band_lo,
        band_hi,
        frame_lengths,
        out,
        j0,
        n_frames,
        R,
        t_out,
        nf,
        n_fft,
        m,
        scale,
        power,
        log_mult,
        HANN3=hann3,
        POWER_MODE=power_mode,
        LOG=LOG_MODES[log],
        BT=bt,
        BK=bk,
        BM=bm,
        num_warps=warps,
        num_stages=stages,
    )
