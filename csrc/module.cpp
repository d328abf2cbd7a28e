// muse_fast._C: one PYBIND11_MODULE; each op's file adds its functions through init_<op>.
#include "common.h"

void init_crops(py::module_& m);
void init_patch_embed(py::module_& m);
void init_span_mask(py::module_& m);
void init_token_mask(py::module_& m);
void init_quantize(py::module_& m);
void init_mel(py::module_& m);
void init_nt_xent(py::module_& m);

PYBIND11_MODULE(_C, m) {
    m.doc() = "muse_fast CPU kernels (C++17, OpenMP, pybind11; no libtorch linkage)";
#ifdef _OPENMP
    m.attr("has_openmp") = true;
#else
    m.attr("has_openmp") = false;
#endif
    m.def("max_threads", &muse::max_threads, "OpenMP threads the kernels use");
    m.def(
        "philox4x32",
        [](uint64_t seed, uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3) {
            auto r = muse::philox4x32(seed, c0, c1, c2, c3);
            return py::make_tuple(r.v[0], r.v[1], r.v[2], r.v[3]);
        },
        py::arg("seed"), py::arg("c0"), py::arg("c1"), py::arg("c2") = 0, py::arg("c3") = 0,
        "Philox-4x32-10 block (for cross-checking the Python and Triton generators)");
    init_crops(m);
    init_token_mask(m);
    init_patch_embed(m);
    init_span_mask(m);
    init_quantize(m);
    init_mel(m);
    init_nt_xent(m);
}
