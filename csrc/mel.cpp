// CPU kernels for muse_fast.ops.mel_spectrogram (see muse_fast/ops/mel.py for the pipeline).
//
//   mel_pad        waveform rows -> padded fp32 rows of S samples (torchaudio's constant `pad`,
//                  then center padding in pad_mode around each row's own end); returns the
//                  number of NaN/inf samples read.
//   mel_power_mel  a chunk of the one-sided complex spectrum (interleaved re/im, flat frames
//                  j = row * R + t) -> the mel of those frames: hann window as a 3-tap in the
//                  frequency domain (optional), power, the sparse filterbank (per band its
//                  [lo, hi) bins and weights), log; zeros past each row's valid frames.
#include <algorithm>
#include <limits>
#include <vector>

#include "common.h"

namespace {

using muse::DType;

enum PadMode { kConstant = 0, kReflect = 1, kReplicate = 2, kCircular = 3 };
enum LogMode { kNone = 0, kLog = 1, kLog1p = 2, kDb = 3 };

template <typename T>
int64_t pad_rows(const T* x, int64_t n_rows, int64_t stride_row, int64_t stride_col,
                 const int32_t* lens, float* out, int64_t S, int64_t pad, int64_t half, int mode) {
    int64_t bad = 0;
#pragma omp parallel for schedule(static) reduction(+ : bad)
    for (int64_t r = 0; r < n_rows; ++r) {
        const T* xr = x + r * stride_row;
        float* o = out + r * S;
        const int64_t n = lens[r];
        const int64_t lp = n + 2 * pad;
        const int64_t live = std::min<int64_t>(S, lp + 2 * half);
        for (int64_t i = 0; i < live; ++i) {
            int64_t q = i - half;
            if (mode == kReflect) {
                if (q < 0) q = -q;
                if (q >= lp) q = 2 * (lp - 1) - q;
            } else if (mode == kReplicate) {
                q = std::min<int64_t>(std::max<int64_t>(q, 0), lp - 1);
            } else if (mode == kCircular) {
                if (q < 0) q += lp;
                if (q >= lp) q -= lp;
            }
            const int64_t s = q - pad;
            float v = 0.0f;
            if (s >= 0 && s < n) {
                v = muse::to_float(xr[s * stride_col]);
                bad += !std::isfinite(v);
            }
            o[i] = v;
        }
        for (int64_t i = live; i < S; ++i) o[i] = 0.0f;
    }
    return bad;
}

int64_t mel_pad(std::uintptr_t x, const std::string& dtype, int64_t n_rows, int64_t stride_row,
                int64_t stride_col, std::uintptr_t lens, std::uintptr_t out, int64_t S, int64_t pad,
                int64_t half, int mode) {
    MUSE_CHECK(n_rows >= 0 && S >= 0 && pad >= 0 && half >= 0, "mel_pad: bad sizes");
    MUSE_CHECK(mode >= 0 && mode <= 3, "pad_mode: unknown mode");
    const DType dt = muse::parse_dtype(dtype, "waveform");
    int64_t bad = 0;
    py::gil_scoped_release nogil;
    muse::dispatch_floating(dt, "waveform", [&](auto tag) {
        using T = decltype(tag);
        bad = pad_rows(muse::ptr<const T>(x), n_rows, stride_row, stride_col,
                       muse::ptr<const int32_t>(lens), muse::ptr<float>(out), S, pad, half, mode);
    });
    return bad;
}

inline float log_value(float v, int log_mode, float log_mult) {
    switch (log_mode) {
        case kLog:
            return std::log(std::max(v, 1e-10f));
        case kLog1p:
            return std::log1p(v);
        case kDb:
            return log_mult * std::log10(std::max(v, 1e-10f));
        default:
            return v;
    }
}

// |Y[k]|^power * scale^(power/2) for k in [k0, k1), Y the (optionally 3-tap windowed) spectrum.
template <bool HANN3, int POWER_MODE>
void power_row(const float* X, float* pw, int64_t k0, int64_t k1, int64_t NF, int64_t n_fft,
               float scale, float power) {
    auto finish = [&](float re, float im) {
        const float s = (re * re + im * im) * scale;
        if constexpr (POWER_MODE == 0)
            return s;
        else if constexpr (POWER_MODE == 1)
            return std::sqrt(s);
        else
            return std::pow(s, 0.5f * power);
    };
    if constexpr (!HANN3) {
        for (int64_t k = k0; k < k1; ++k) pw[k] = finish(X[2 * k], X[2 * k + 1]);
        return;
    }
    // general form at the two ends, where a neighbour is mirrored (X[-k] = conj X[k])
    auto edge = [&](int64_t k) {
        int64_t km = k - 1, kp = k + 1;
        float sm = 1.0f, sp = 1.0f;
        if (km < 0) {
            km = -km;
            sm = -1.0f;
        }
        if (kp >= NF) {
            kp = n_fft - kp;
            sp = -1.0f;
        }
        const float re = 0.5f * X[2 * k] - 0.25f * (X[2 * km] + X[2 * kp]);
        const float im = 0.5f * X[2 * k + 1] - 0.25f * (sm * X[2 * km + 1] + sp * X[2 * kp + 1]);
        pw[k] = finish(re, im);
    };
    const int64_t a = std::max<int64_t>(k0, 1), b = std::min<int64_t>(k1, NF - 1);
    for (int64_t k = k0; k < std::min(a, k1); ++k) edge(k);
#pragma omp simd
    for (int64_t k = a; k < b; ++k) {
        const float re = 0.5f * X[2 * k] - 0.25f * (X[2 * k - 2] + X[2 * k + 2]);
        const float im = 0.5f * X[2 * k + 1] - 0.25f * (X[2 * k - 1] + X[2 * k + 3]);
        pw[k] = finish(re, im);
    }
    for (int64_t k = std::max(b, k0); k < k1; ++k) edge(k);
}

using PowerFn = void (*)(const float*, float*, int64_t, int64_t, int64_t, int64_t, float, float);

template <bool HANN3>
PowerFn pick_power(int power_mode) {
    if (power_mode == 0) return &power_row<HANN3, 0>;
    if (power_mode == 1) return &power_row<HANN3, 1>;
    return &power_row<HANN3, 2>;
}

void mel_power_mel(std::uintptr_t spec_p, int64_t n_frames, int64_t j0, int64_t R, int64_t T,
                   int64_t n_fft, std::uintptr_t fb_p, std::uintptr_t lo_p, std::uintptr_t hi_p,
                   int64_t M, std::uintptr_t flen_p, std::uintptr_t out_p, double scale_d,
                   double power_d, int log_mode, double log_mult_d, bool hann3) {
    const int64_t NF = n_fft / 2 + 1;
    MUSE_CHECK(n_frames >= 0 && R >= 1 && T >= 1 && M >= 1 && n_fft >= 2,
               "mel_power_mel: bad sizes");
    MUSE_CHECK(log_mode >= 0 && log_mode <= 3, "log: unknown mode");
    const float* spec = muse::ptr<const float>(spec_p);
    const float* fb = muse::ptr<const float>(fb_p);  // (NF, M)
    const int32_t* lo = muse::ptr<const int32_t>(lo_p);
    const int32_t* hi = muse::ptr<const int32_t>(hi_p);
    const int32_t* flen = muse::ptr<const int32_t>(flen_p);
    float* out = muse::ptr<float>(out_p);
    const float scale = static_cast<float>(scale_d);
    const float power = static_cast<float>(power_d);
    const float log_mult = static_cast<float>(log_mult_d);
    const int power_mode = power_d == 2.0 ? 0 : (power_d == 1.0 ? 1 : 2);
    const PowerFn power_fn = hann3 ? pick_power<true>(power_mode) : pick_power<false>(power_mode);

    // Compact filterbank: band m's weights for bins [lo[m], hi[m]) at wts[off[m] ...].
    std::vector<int64_t> off(M + 1, 0);
    int64_t kmin = NF, kmax = 0;
    for (int64_t m = 0; m < M; ++m) {
        MUSE_CHECK(lo[m] >= 0 && hi[m] <= NF, "band_lo/band_hi: out of range");
        const int64_t w = std::max<int64_t>(0, hi[m] - lo[m]);
        off[m + 1] = off[m] + w;
        if (w > 0) {
            kmin = std::min<int64_t>(kmin, lo[m]);
            kmax = std::max<int64_t>(kmax, hi[m]);
        }
    }
    std::vector<float> wts(off[M]);
    for (int64_t m = 0; m < M; ++m)
        for (int64_t k = lo[m]; k < hi[m]; ++k) wts[off[m] + (k - lo[m])] = fb[k * M + m];

    // Blocks of FB frames: the mel of a block is gathered in a (M, FB) tile, then written as
    // FB-long runs along time (the output is (rows, M, T)), not 128 scattered floats per frame.
    constexpr int64_t FB = 16;
    const int64_t n_blocks = (n_frames + FB - 1) / FB;
    py::gil_scoped_release nogil;
#pragma omp parallel
    {
        std::vector<float> pw(NF + 1, 0.0f), tile(M * FB);
        int64_t base[FB];
        bool live[FB], keep[FB];
#pragma omp for schedule(static)
        for (int64_t blk = 0; blk < n_blocks; ++blk) {
            const int64_t f0 = blk * FB, nb = std::min(FB, n_frames - f0);
            for (int64_t i = 0; i < nb; ++i) {
                const int64_t j = j0 + f0 + i;
                const int64_t row = j / R, t = j - row * R;
                keep[i] = t < T;  // frames t >= T are the gap between rows: never stored
                live[i] = keep[i] && t < flen[row];
                base[i] = row * M * T + t;
                if (!live[i]) continue;
                power_fn(spec + (f0 + i) * 2 * NF, pw.data(), kmin, kmax, NF, n_fft, scale, power);
                for (int64_t m = 0; m < M; ++m) {
                    const float* w = wts.data() + off[m];
                    const float* p = pw.data() + lo[m];
                    const int64_t n = off[m + 1] - off[m];
                    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
                    for (int64_t q = 0; q < n; ++q) acc += w[q] * p[q];
                    tile[m * FB + i] = acc;
                }
            }
            for (int64_t m = 0; m < M; ++m) {
                const float* tm = tile.data() + m * FB;
                for (int64_t i = 0; i < nb; ++i) {
                    if (!keep[i]) continue;
                    out[base[i] + m * T] = live[i] ? log_value(tm[i], log_mode, log_mult) : 0.0f;
                }
            }
        }
    }
}

}  // namespace

void init_mel(py::module_& m) {
    m.def("mel_pad", &mel_pad, py::arg("x"), py::arg("dtype"), py::arg("n_rows"),
          py::arg("stride_row"), py::arg("stride_col"), py::arg("lens"), py::arg("out"),
          py::arg("S"), py::arg("pad"), py::arg("half"), py::arg("mode"),
          "Padded fp32 rows for the mel pipeline; returns the count of NaN/inf samples read");
    m.def("mel_power_mel", &mel_power_mel, py::arg("spec"), py::arg("n_frames"), py::arg("j0"),
          py::arg("R"), py::arg("T"), py::arg("n_fft"), py::arg("fb"), py::arg("band_lo"),
          py::arg("band_hi"), py::arg("M"), py::arg("frame_lengths"), py::arg("out"),
          py::arg("scale"), py::arg("power"), py::arg("log_mode"), py::arg("log_mult"),
          py::arg("hann3"), "Power + sparse mel filterbank + log over a chunk of the spectrum");
}
