// CPU kernel for muse_fast.data.PreparedCorpus: gather a batch of int16 crops from
// memory-mapped shard files into one contiguous (pinned) buffer.
//
//     out[i, :] = shards[shard[i]][offset[i] : offset[i] + length]      i < n_crops
//
// Which crops to take is decided on the host (numpy, from the seed), so the result does not
// depend on the thread count: the threads only split the copies. Traffic: 2 bytes read and
// 2 bytes written per sample; page faults of cold shards are taken by whichever thread
// touches the page first.
//
// The Python side checks every (shard, offset, length) against the shard sizes before
// calling; the MUSE_CHECKs here only guard against a segfault.
#include <algorithm>
#include <cstring>

#include "common.h"

namespace {

void gather_crops_i16(std::uintptr_t shard_ptrs, std::uintptr_t shard_sizes, int64_t n_shards,
                      std::uintptr_t shard_idx, std::uintptr_t offsets, int64_t n_crops,
                      int64_t length, std::uintptr_t out_ptr, int threads) {
    MUSE_CHECK(n_shards >= 1, "n_shards: expected >= 1");
    MUSE_CHECK(n_crops >= 0 && length >= 1, "length: expected >= 1");
    const int64_t* bases = muse::ptr<int64_t>(shard_ptrs);
    const int64_t* sizes = muse::ptr<int64_t>(shard_sizes);
    const int64_t* sidx = muse::ptr<int64_t>(shard_idx);
    const int64_t* off = muse::ptr<int64_t>(offsets);
    int16_t* out = muse::ptr<int16_t>(out_ptr);
    for (int64_t i = 0; i < n_crops; ++i) {  // cheap O(n) guard, before any thread starts
        MUSE_CHECK(sidx[i] >= 0 && sidx[i] < n_shards, "shard_idx: out of range");
        MUSE_CHECK(off[i] >= 0 && off[i] + length <= sizes[sidx[i]],
                   "offsets: crop past shard end");
    }
    py::gil_scoped_release nogil;
    const int nt = threads > 0 ? threads : muse::max_threads();
    // one crop is >= tens of KiB: a plain static split keeps every thread streaming
#pragma omp parallel for schedule(static) num_threads(nt) if (n_crops * length >= (1 << 18))
    for (int64_t i = 0; i < n_crops; ++i) {
        const int16_t* src = reinterpret_cast<const int16_t*>(bases[sidx[i]]) + off[i];
        std::memcpy(out + i * length, src, static_cast<size_t>(length) * sizeof(int16_t));
    }
}

}  // namespace

void init_crops(py::module_& m) {
    m.def("gather_crops_i16", &gather_crops_i16, py::arg("shard_ptrs"), py::arg("shard_sizes"),
          py::arg("n_shards"), py::arg("shard_idx"), py::arg("offsets"), py::arg("n_crops"),
          py::arg("length"), py::arg("out_ptr"), py::arg("threads") = 0,
          "out[i] = shards[shard_idx[i]][offsets[i]:offsets[i]+length] (int16, OpenMP over i; "
          "threads <= 0: the OpenMP default)");
}
