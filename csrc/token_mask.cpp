// CPU kernels for muse_fast.ops.token_mask: random token masks and the token gather/scatter.
// Random numbers follow muse::philox4x32 exactly as the eager references in
// muse_fast/ops/token_mask.py do, so every backend draws the same masks for one seed.
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
                dst[d] = muse::store_acc<T>(to_float(dst[d]) + to_float(src[d]));
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

}  // namespace

void init_token_mask(py::module_& m) {
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
}
