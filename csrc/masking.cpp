// CPU kernels for muse_fast.ops.masking: random token masks, token gather/scatter, gather of
// kept spectrogram patches (with an optional LayerNorm) and its backward, span masks and the
// noise replacement. Random numbers follow muse::philox4x32 exactly as the eager references
// in muse_fast/ops/masking.py do, so every backend draws the same masks for one seed.
//
// The Python side validates shapes, dtypes, devices and index ranges before calling; the
// MUSE_CHECKs here only guard against a segfault.
#include <pybind11/stl.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "common.h"

namespace {

using muse::DType;
using muse::from_float;
using muse::philox4x32;
using muse::to_float;

// Store an accumulator value (float, or double for float64 data) as T without going through
// float for double.
template <typename T, typename Acc>
inline T store(Acc v) {
    if constexpr (std::is_same_v<T, double>) {
        return static_cast<double>(v);
    } else {
        return from_float<T>(static_cast<float>(v));
    }
}

// ---------------------------------------------------------------------------------------
// random_token_mask: key(b, l) = philox(seed, l, b, 0, 0)[0] >> 1, packed (key << 32) | l;
// keep the n_keep smallest packed values, write their l ascending.
// ---------------------------------------------------------------------------------------
void random_token_mask(std::uintptr_t seed_ptr, int64_t batch, int64_t length, int64_t n_keep,
                       std::uintptr_t out_ptr) {
    MUSE_CHECK(batch >= 0 && length >= 1, "length: expected >= 1");
    MUSE_CHECK(n_keep >= 1 && n_keep <= length, "n_keep: expected 1 <= n_keep <= length");
    const uint64_t seed = static_cast<uint64_t>(*muse::ptr<int64_t>(seed_ptr));
    int64_t* out = muse::ptr<int64_t>(out_ptr);
    py::gil_scoped_release nogil;
    // small problems stay on one thread: waking a team costs more than the work
#pragma omp parallel if (batch * length >= 16384)
    {
        std::vector<uint64_t> packed(length), sel(length);
#pragma omp for schedule(static)
        for (int64_t b = 0; b < batch; ++b) {
            int64_t* o = out + b * n_keep;
            if (n_keep == length) {
                for (int64_t l = 0; l < length; ++l) o[l] = l;
                continue;
            }
            for (int64_t l = 0; l < length; ++l) {
                const uint32_t w =
                    philox4x32(seed, static_cast<uint32_t>(l), static_cast<uint32_t>(b), 0u, 0u)
                        .v[0];
                packed[l] = (static_cast<uint64_t>(w >> 1) << 32) | static_cast<uint64_t>(l);
            }
            std::copy(packed.begin(), packed.end(), sel.begin());
            std::nth_element(sel.begin(), sel.begin() + (n_keep - 1), sel.end());
            const uint64_t thr = sel[n_keep - 1];
            int64_t j = 0;
            for (int64_t l = 0; l < length; ++l)
                if (packed[l] <= thr) o[j++] = l;
        }
    }
}

// ---------------------------------------------------------------------------------------
// gather_tokens: out[b, k, :] = x[b, idx[b, k], :] (x, out contiguous; any element size).
// ---------------------------------------------------------------------------------------
void gather_rows(std::uintptr_t x_ptr, std::uintptr_t idx_ptr, std::uintptr_t out_ptr,
                 int64_t batch, int64_t length, int64_t n_keep, int64_t dim, int64_t elem_size) {
    MUSE_CHECK(elem_size == 1 || elem_size == 2 || elem_size == 4 || elem_size == 8,
               "x: unsupported element size");
    const char* x = muse::ptr<const char>(x_ptr);
    const int64_t* idx = muse::ptr<const int64_t>(idx_ptr);
    char* out = muse::ptr<char>(out_ptr);
    const int64_t row = dim * elem_size;
    py::gil_scoped_release nogil;
#pragma omp parallel for schedule(static) if (batch * n_keep * row >= (1 << 18))
    for (int64_t r = 0; r < batch * n_keep; ++r) {
        const int64_t b = r / n_keep;
        const int64_t l = idx[r];
        std::memcpy(out + r * row, x + (b * length + l) * row, row);
    }
}

// grad_x = zeros, then grad_x[b, idx[b, k], :] += grad[b, k, :] (repeated indices add up).
// Each batch row's block is zeroed and filled while it is hot in cache: one pass over grad_x.
template <typename T>
void scatter_add_rows_impl(const T* g, const int64_t* idx, T* out, int64_t batch, int64_t length,
                           int64_t n_keep, int64_t dim) {
#pragma omp parallel for schedule(static) if (batch * length * dim >= (1 << 18))
    for (int64_t b = 0; b < batch; ++b) {
        std::memset(static_cast<void*>(out + b * length * dim), 0, sizeof(T) * length * dim);
        for (int64_t k = 0; k < n_keep; ++k) {
            const T* src = g + (b * n_keep + k) * dim;
            T* dst = out + (b * length + idx[b * n_keep + k]) * dim;
            for (int64_t d = 0; d < dim; ++d)
                dst[d] = store<T>(to_float(dst[d]) + to_float(src[d]));
        }
    }
}

void scatter_add_rows(std::uintptr_t g_ptr, std::uintptr_t idx_ptr, std::uintptr_t out_ptr,
                      int64_t batch, int64_t length, int64_t n_keep, int64_t dim,
                      const std::string& dtype) {
    const DType dt = muse::parse_dtype(dtype, "grad");
    py::gil_scoped_release nogil;
    muse::dispatch_floating(dt, "grad", [&](auto tag) {
        using T = decltype(tag);
        scatter_add_rows_impl<T>(muse::ptr<const T>(g_ptr), muse::ptr<const int64_t>(idx_ptr),
                                 muse::ptr<T>(out_ptr), batch, length, n_keep, dim);
    });
}

// ---------------------------------------------------------------------------------------
// Patches. spec (B, C, H, W) with element strides s[4]; patch p = i * gw + j covers rows
// i*ph .. i*ph+ph-1 and columns j*pw .. j*pw+pw-1; its vector is laid out (p1 p2 c):
// element k = (p1 * pw + p2) * C + c. Optional LayerNorm (no affine) over the K = ph*pw*C
// elements, statistics in double for float64 input, float otherwise.
// ---------------------------------------------------------------------------------------
struct PatchGeom {
    int64_t C, ph, pw, gw, K;
    int64_t s0, s1, s2, s3;
};

template <typename T, typename Acc>
inline void load_patch(const T* spec, const PatchGeom& g, int64_t b, int64_t p, Acc* buf) {
    const int64_t i = p / g.gw, j = p % g.gw;
    const T* base = spec + b * g.s0 + (i * g.ph) * g.s2 + (j * g.pw) * g.s3;
    int64_t k = 0;
    for (int64_t p1 = 0; p1 < g.ph; ++p1)
        for (int64_t p2 = 0; p2 < g.pw; ++p2)
            for (int64_t c = 0; c < g.C; ++c)
                buf[k++] = static_cast<Acc>(to_float(base[c * g.s1 + p1 * g.s2 + p2 * g.s3]));
}

template <typename Acc>
inline void moments(const Acc* v, int64_t n, Acc eps, Acc& mean, Acc& rstd) {
    Acc s = 0;
    for (int64_t k = 0; k < n; ++k) s += v[k];
    mean = s / static_cast<Acc>(n);
    Acc q = 0;
    for (int64_t k = 0; k < n; ++k) q += (v[k] - mean) * (v[k] - mean);
    rstd = Acc(1) / std::sqrt(q / static_cast<Acc>(n) + eps);
}

template <typename T>
void patch_gather_impl(const T* spec, const PatchGeom& g, const int64_t* idx, int64_t batch,
                       int64_t n_keep, double eps, T* out) {
    using Acc = std::conditional_t<std::is_same_v<T, double>, double, float>;
#pragma omp parallel if (batch * n_keep * g.K >= (1 << 16))
    {
        std::vector<Acc> buf(g.K);
#pragma omp for schedule(static)
        for (int64_t r = 0; r < batch * n_keep; ++r) {
            load_patch<T, Acc>(spec, g, r / n_keep, idx[r], buf.data());
            T* o = out + r * g.K;
            if (eps >= 0) {
                Acc mean, rstd;
                moments<Acc>(buf.data(), g.K, static_cast<Acc>(eps), mean, rstd);
                for (int64_t k = 0; k < g.K; ++k) o[k] = store<T>((buf[k] - mean) * rstd);
            } else {
                for (int64_t k = 0; k < g.K; ++k) o[k] = store<T>(buf[k]);
            }
        }
    }
}

// grad_spec (contiguous (B, C, H, W), zero-filled) += d patch / d spec of grad_patches (M, K),
// through the LayerNorm when eps >= 0: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)).
template <typename T>
void patch_scatter_impl(const T* grad, const T* spec, const PatchGeom& g, const int64_t* idx,
                        int64_t batch, int64_t n_keep, double eps, int64_t H, int64_t W, T* out) {
    using Acc = std::conditional_t<std::is_same_v<T, double>, double, float>;
    const int64_t o1 = H * W, o0 = g.C * H * W;
#pragma omp parallel if (batch * n_keep * g.K >= (1 << 16))
    {
        std::vector<Acc> xv(g.K), gv(g.K);
#pragma omp for schedule(static)
        for (int64_t b = 0; b < batch; ++b) {  // one thread per batch row: no write races
            for (int64_t q = 0; q < n_keep; ++q) {
                const int64_t r = b * n_keep + q, p = idx[r];
                const T* gr = grad + r * g.K;
                for (int64_t k = 0; k < g.K; ++k) gv[k] = static_cast<Acc>(to_float(gr[k]));
                if (eps >= 0) {
                    load_patch<T, Acc>(spec, g, b, p, xv.data());
                    Acc mean, rstd;
                    moments<Acc>(xv.data(), g.K, static_cast<Acc>(eps), mean, rstd);
                    Acc sg = 0, sgx = 0;
                    for (int64_t k = 0; k < g.K; ++k) {
                        xv[k] = (xv[k] - mean) * rstd;
                        sg += gv[k];
                        sgx += gv[k] * xv[k];
                    }
                    sg /= static_cast<Acc>(g.K);
                    sgx /= static_cast<Acc>(g.K);
                    for (int64_t k = 0; k < g.K; ++k) gv[k] = rstd * (gv[k] - sg - xv[k] * sgx);
                }
                const int64_t i = p / g.gw, j = p % g.gw;
                T* base = out + b * o0 + (i * g.ph) * W + j * g.pw;
                int64_t k = 0;
                for (int64_t p1 = 0; p1 < g.ph; ++p1)
                    for (int64_t p2 = 0; p2 < g.pw; ++p2)
                        for (int64_t c = 0; c < g.C; ++c, ++k) {
                            T& d = base[c * o1 + p1 * W + p2];
                            d = store<T>(static_cast<Acc>(to_float(d)) + gv[k]);
                        }
            }
        }
    }
}

PatchGeom make_geom(int64_t C, int64_t H, int64_t W, int64_t ph, int64_t pw,
                    const std::vector<int64_t>& strides) {
    MUSE_CHECK(strides.size() == 4, "spec: expected 4 strides");
    MUSE_CHECK(ph >= 1 && pw >= 1 && H % ph == 0 && W % pw == 0,
               "patch_size: must divide the spectrogram size");
    return PatchGeom{C,          ph,         pw,         W / pw,    ph * pw * C,
                     strides[0], strides[1], strides[2], strides[3]};
}

void patch_gather(std::uintptr_t spec_ptr, const std::string& dtype,
                  const std::vector<int64_t>& strides, int64_t batch, int64_t C, int64_t H,
                  int64_t W, int64_t ph, int64_t pw, std::uintptr_t idx_ptr, int64_t n_keep,
                  double eps, std::uintptr_t out_ptr) {
    const DType dt = muse::parse_dtype(dtype, "spec");
    const PatchGeom g = make_geom(C, H, W, ph, pw, strides);
    py::gil_scoped_release nogil;
    muse::dispatch_floating(dt, "spec", [&](auto tag) {
        using T = decltype(tag);
        patch_gather_impl<T>(muse::ptr<const T>(spec_ptr), g, muse::ptr<const int64_t>(idx_ptr),
                             batch, n_keep, eps, muse::ptr<T>(out_ptr));
    });
}

void patch_scatter(std::uintptr_t grad_ptr, std::uintptr_t spec_ptr, const std::string& dtype,
                   const std::vector<int64_t>& strides, int64_t batch, int64_t C, int64_t H,
                   int64_t W, int64_t ph, int64_t pw, std::uintptr_t idx_ptr, int64_t n_keep,
                   double eps, std::uintptr_t out_ptr) {
    const DType dt = muse::parse_dtype(dtype, "spec");
    const PatchGeom g = make_geom(C, H, W, ph, pw, strides);
    py::gil_scoped_release nogil;
    muse::dispatch_floating(dt, "spec", [&](auto tag) {
        using T = decltype(tag);
        patch_scatter_impl<T>(muse::ptr<const T>(grad_ptr), muse::ptr<const T>(spec_ptr), g,
                              muse::ptr<const int64_t>(idx_ptr), batch, n_keep, eps, H, W,
                              muse::ptr<T>(out_ptr));
    });
}

// ---------------------------------------------------------------------------------------
// span_mask: span s of row b masked iff (philox(seed, s, b, 1, 0)[0] >> 8) < threshold,
// threshold = ceil(prob * 2^24); frames past the last whole span are never masked.
// ---------------------------------------------------------------------------------------
void span_mask(std::uintptr_t seed_ptr, int64_t batch, int64_t frames, int64_t span,
               int64_t threshold, std::uintptr_t out_ptr) {
    MUSE_CHECK(span >= 1, "span: expected >= 1");
    const uint64_t seed = static_cast<uint64_t>(*muse::ptr<int64_t>(seed_ptr));
    bool* out = muse::ptr<bool>(out_ptr);
    const int64_t n_spans = frames / span;
    py::gil_scoped_release nogil;
#pragma omp parallel for schedule(static) if (batch * frames >= (1 << 20))
    for (int64_t b = 0; b < batch; ++b) {
        bool* o = out + b * frames;
        for (int64_t s = 0; s < n_spans; ++s) {
            const uint32_t w =
                philox4x32(seed, static_cast<uint32_t>(s), static_cast<uint32_t>(b), 1u, 0u).v[0];
            const bool m = static_cast<int64_t>(w >> 8) < threshold;
            std::fill(o + s * span, o + (s + 1) * span, m);
        }
        std::fill(o + n_spans * span, o + frames, false);
    }
}

// out[b, t, d] = mask[b, t] ? noise_std * z(b, t, d) : x[b, t, d], z from Box-Muller on words
// 0 and 1 of philox(seed, t, b, 2, d), in float.
template <typename T>
void span_noise_fill_impl(const T* x, const bool* mask, uint64_t seed, int64_t batch,
                          int64_t frames, int64_t dim, float noise_std, T* out) {
#pragma omp parallel for schedule(static) if (batch * frames * dim >= (1 << 14))
    for (int64_t b = 0; b < batch; ++b) {
        for (int64_t t = 0; t < frames; ++t) {
            const int64_t off = (b * frames + t) * dim;
            if (!mask[b * frames + t]) {
                std::memcpy(out + off, x + off, sizeof(T) * dim);
                continue;
            }
            for (int64_t d = 0; d < dim; ++d) {
                const auto r = philox4x32(seed, static_cast<uint32_t>(t), static_cast<uint32_t>(b),
                                          2u, static_cast<uint32_t>(d));
                const float u1 = static_cast<float>((r.v[0] >> 8) + 1u) * (1.0f / 16777216.0f);
                const float u2 = static_cast<float>(r.v[1] >> 8) * (1.0f / 16777216.0f);
                const float z = std::sqrt(-2.0f * std::log(u1)) * std::cos(u2 * 6.28318530717958f);
                out[off + d] = store<T>(noise_std * z);
            }
        }
    }
}

void span_noise_fill(std::uintptr_t x_ptr, const std::string& dtype, std::uintptr_t mask_ptr,
                     std::uintptr_t seed_ptr, int64_t batch, int64_t frames, int64_t dim,
                     double noise_std, std::uintptr_t out_ptr) {
    const DType dt = muse::parse_dtype(dtype, "x");
    const uint64_t seed = static_cast<uint64_t>(*muse::ptr<int64_t>(seed_ptr));
    py::gil_scoped_release nogil;
    muse::dispatch_floating(dt, "x", [&](auto tag) {
        using T = decltype(tag);
        span_noise_fill_impl<T>(muse::ptr<const T>(x_ptr), muse::ptr<const bool>(mask_ptr), seed,
                                batch, frames, dim, static_cast<float>(noise_std),
                                muse::ptr<T>(out_ptr));
    });
}

}  // namespace

void init_masking(py::module_& m) {
    m.def("random_token_mask", &random_token_mask, py::arg("seed_ptr"), py::arg("batch"),
          py::arg("length"), py::arg("n_keep"), py::arg("out_ptr"),
          "keep_idx (batch, n_keep) int64: the n_keep smallest Philox keys of each row, ascending");
    m.def("gather_rows", &gather_rows, py::arg("x_ptr"), py::arg("idx_ptr"), py::arg("out_ptr"),
          py::arg("batch"), py::arg("length"), py::arg("n_keep"), py::arg("dim"),
          py::arg("elem_size"), "out[b, k] = x[b, idx[b, k]] (rows of dim elements)");
    m.def("scatter_add_rows", &scatter_add_rows, py::arg("grad_ptr"), py::arg("idx_ptr"),
          py::arg("out_ptr"), py::arg("batch"), py::arg("length"), py::arg("n_keep"),
          py::arg("dim"), py::arg("dtype"),
          "out = 0; out[b, idx[b, k]] += grad[b, k] (writes all of out)");
    m.def("patch_gather", &patch_gather, py::arg("spec_ptr"), py::arg("dtype"), py::arg("strides"),
          py::arg("batch"), py::arg("channels"), py::arg("height"), py::arg("width"), py::arg("ph"),
          py::arg("pw"), py::arg("idx_ptr"), py::arg("n_keep"), py::arg("eps"), py::arg("out_ptr"),
          "kept patches (batch * n_keep, ph * pw * C), LayerNorm-ed when eps >= 0");
    m.def("patch_scatter", &patch_scatter, py::arg("grad_ptr"), py::arg("spec_ptr"),
          py::arg("dtype"), py::arg("strides"), py::arg("batch"), py::arg("channels"),
          py::arg("height"), py::arg("width"), py::arg("ph"), py::arg("pw"), py::arg("idx_ptr"),
          py::arg("n_keep"), py::arg("eps"), py::arg("out_ptr"),
          "backward of patch_gather into a zero-filled contiguous (B, C, H, W)");
    m.def("span_mask", &span_mask, py::arg("seed_ptr"), py::arg("batch"), py::arg("frames"),
          py::arg("span"), py::arg("threshold"), py::arg("out_ptr"),
          "bool (batch, frames) span mask from Philox");
    m.def("span_noise_fill", &span_noise_fill, py::arg("x_ptr"), py::arg("dtype"),
          py::arg("mask_ptr"), py::arg("seed_ptr"), py::arg("batch"), py::arg("frames"),
          py::arg("dim"), py::arg("noise_std"), py::arg("out_ptr"),
          "x with masked frames replaced by N(0, noise_std^2) Philox/Box-Muller noise");
}
