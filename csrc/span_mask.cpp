// CPU kernels for muse_fast.ops.span_mask: span masks and the noise replacement. Random
// numbers follow muse::philox4x32 exactly as the eager references in muse_fast/ops/span_mask.py
// do, so every backend draws the same masks for one seed.
//
// The Python side validates shapes, dtypes, devices and index ranges before calling; the
// MUSE_CHECKs here only guard against a segfault.
#include <pybind11/stl.h>

#include <algorithm>
#include <vector>

#include "masking_store.h"

namespace {

using muse::DType;
using muse::from_float;
using muse::philox4x32;
using muse::to_float;

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
                out[off + d] = muse::store_acc<T>(noise_std * z);
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

void init_span_mask(py::module_& m) {
    m.def("span_mask", &span_mask, py::arg("seed_ptr"), py::arg("batch"), py::arg("frames"),
          py::arg("span"), py::arg("threshold"), py::arg("out_ptr"),
          "bool (batch, frames) span mask from Philox");
    m.def("span_noise_fill", &span_noise_fill, py::arg("x_ptr"), py::arg("dtype"),
          py::arg("mask_ptr"), py::arg("seed_ptr"), py::arg("batch"), py::arg("frames"),
          py::arg("dim"), py::arg("noise_std"), py::arg("out_ptr"),
          "x with masked frames replaced by N(0, noise_std^2) Philox/Box-Muller noise");
}
