// CPU kernels for muse_fast.ops.patch_embed: gather of the kept spectrogram patches (with an
// optional LayerNorm) and its backward; torch's GEMM does the projection.
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
                for (int64_t k = 0; k < g.K; ++k) o[k] = muse::store_acc<T>((buf[k] - mean) * rstd);
            } else {
                for (int64_t k = 0; k < g.K; ++k) o[k] = muse::store_acc<T>(buf[k]);
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
                            d = muse::store_acc<T>(static_cast<Acc>(to_float(d)) + gv[k]);
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

}  // namespace

void init_patch_embed(py::module_& m) {
    m.def("patch_gather", &patch_gather, py::arg("spec_ptr"), py::arg("dtype"), py::arg("strides"),
          py::arg("batch"), py::arg("channels"), py::arg("height"), py::arg("width"), py::arg("ph"),
          py::arg("pw"), py::arg("idx_ptr"), py::arg("n_keep"), py::arg("eps"), py::arg("out_ptr"),
          "kept patches (batch * n_keep, ph * pw * C), LayerNorm-ed when eps >= 0");
    m.def("patch_scatter", &patch_scatter, py::arg("grad_ptr"), py::arg("spec_ptr"),
          py::arg("dtype"), py::arg("strides"), py::arg("batch"), py::arg("channels"),
          py::arg("height"), py::arg("width"), py::arg("ph"), py::arg("pw"), py::arg("idx_ptr"),
          py::arg("n_keep"), py::arg("eps"), py::arg("out_ptr"),
          "backward of patch_gather into a zero-filled contiguous (B, C, H, W)");
}
