// CPU kernel for muse_fast.ops.quantize: the BEST-RQ random-projection quantizer.
//
//   out[r, g] = argmax_i <C^_g[i], normalize(x[r] . A_g)>      (ties -> lowest i)
//
// x (N, d) in float32 / bfloat16 / float16 with any row / column strides; A (G, d, h) float32
// contiguous; C^ (G, n, h) float32 contiguous and ALREADY row-normalized (the op layer does that
// once on the host, n x h is cheap); out (N, G) int64 contiguous.
//
// Layout of the work (no N x n buffer anywhere; scratch is O(threads x block) + O(G n h)):
//   * OpenMP over blocks of kRowBlock rows. A block's rows are gathered into an fp32 scratch
//     (this converts bf16/fp16 and handles strides), projected (x . A, fp32 FMA with 8 independent
//     chains) and L2-normalized.
//   * The normalized codebook is packed once per call in groups of 16 codes:
//     packed[((grp * h) + k) * 16 + lane] = C^[grp * 16 + lane][k], so one code group is two AVX2
//     registers per k. Lanes past n are NaN: their scores are NaN, which the running max skips
//     and which never compares equal, so the ragged tail needs no masking.
//   * The codebook is walked in tiles of kTileGroups groups (256 codes, 16 KiB for h = 16) that
//     stay in L1 while every row of the block is scored against them, kRowsPerPass rows at a time
//     (register block: rows x 16 codes of accumulators; h = 16 is a compile-time specialization).
//   * Arg-max in two passes (see tile_max / find_in_tile): the hot loop keeps only a running
//     per-lane max (one vmaxps per 8 scores, no index bookkeeping) and, per row, the first tile
//     whose max strictly exceeds the running best; afterwards that single tile is re-scored
//     (bit-identical scores) and its lowest code equal to the best is taken. Ties therefore go
//     to the lowest index overall, as torch.argmin / argmax do. A zero row (x A = 0) scores 0
//     everywhere and returns 0.
//   * A row whose scores are all NaN (NaN in x) returns 0.
// Without AVX2 + FMA the same algorithm runs in scalar code (std::fma, so both passes round
// identically).
#include <algorithm>
#include <cstdlib>
#include <limits>
#include <memory>
#include <vector>

#include "common.h"

#ifndef MUSE_RPQ_ROWS
#define MUSE_RPQ_ROWS 3
#endif

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define MUSE_RPQ_AVX2 1
#endif

namespace {

constexpr int kLanes = 16;                   // codes per group
constexpr int kRowsPerPass = MUSE_RPQ_ROWS;  // rows scored together against one code group
constexpr int kRowPad = 12;    // row blocks are padded (zero rows) to a multiple of 3 and 4
constexpr int kRowBlock = 48;  // rows per OpenMP task (a multiple of kRowPad)
static_assert(kRowPad % kRowsPerPass == 0 && kRowPad % 4 == 0, "row padding");
constexpr int kTileGroups = 16;  // code groups per L1 tile (256 codes)

struct AlignedFree {
    void operator()(float* p) const { std::free(p); }
};
using FloatBuf = std::unique_ptr<float, AlignedFree>;

FloatBuf alloc_floats(size_t count) {
    const size_t bytes = ((count * sizeof(float) + 63) / 64) * 64;
    void* p = std::aligned_alloc(64, bytes > 0 ? bytes : 64);
    if (p == nullptr) throw std::bad_alloc();
    return FloatBuf(static_cast<float*>(p));
}

// Gather rows [row0, row0 + rows) of x into dst (rows_pad x d, fp32); rows past `rows` are zero.
template <typename T>
void gather_rows(const T* x, int64_t row0, int rows, int rows_pad, int64_t d, int64_t s0,
                 int64_t s1, float* dst) {
    for (int r = 0; r < rows; ++r) {
        const T* src = x + (row0 + r) * s0;
        float* out = dst + static_cast<int64_t>(r) * d;
        if (s1 == 1) {
            for (int64_t k = 0; k < d; ++k) out[k] = muse::to_float(src[k]);
        } else {
            for (int64_t k = 0; k < d; ++k) out[k] = muse::to_float(src[k * s1]);
        }
    }
    std::fill(dst + static_cast<int64_t>(rows) * d, dst + static_cast<int64_t>(rows_pad) * d, 0.0f);
}

// y[r, :] = xf[r, :] . Ap for rows_pad rows (a multiple of 4). Ap is (d, h8), h8 a
// multiple of 8 with zero columns past h; y is (rows_pad, h8).
void project_rows(const float* xf, int rows_pad, int64_t d, const float* Ap, int h8, float* y) {
#ifdef MUSE_RPQ_AVX2
    for (int r0 = 0; r0 < rows_pad; r0 += 4) {
        const float* x0 = xf + (r0 + 0) * d;
        const float* x1 = xf + (r0 + 1) * d;
        const float* x2 = xf + (r0 + 2) * d;
        const float* x3 = xf + (r0 + 3) * d;
        int j = 0;
        for (; j + 16 <= h8; j += 16) {  // 8 independent FMA chains
            __m256 a00 = _mm256_setzero_ps(), a01 = _mm256_setzero_ps();
            __m256 a10 = _mm256_setzero_ps(), a11 = _mm256_setzero_ps();
            __m256 a20 = _mm256_setzero_ps(), a21 = _mm256_setzero_ps();
            __m256 a30 = _mm256_setzero_ps(), a31 = _mm256_setzero_ps();
            for (int64_t k = 0; k < d; ++k) {
                const float* ap = Ap + k * h8 + j;
                const __m256 c0 = _mm256_loadu_ps(ap), c1 = _mm256_loadu_ps(ap + 8);
                __m256 b = _mm256_broadcast_ss(x0 + k);
                a00 = _mm256_fmadd_ps(b, c0, a00);
                a01 = _mm256_fmadd_ps(b, c1, a01);
                b = _mm256_broadcast_ss(x1 + k);
                a10 = _mm256_fmadd_ps(b, c0, a10);
                a11 = _mm256_fmadd_ps(b, c1, a11);
                b = _mm256_broadcast_ss(x2 + k);
                a20 = _mm256_fmadd_ps(b, c0, a20);
                a21 = _mm256_fmadd_ps(b, c1, a21);
                b = _mm256_broadcast_ss(x3 + k);
                a30 = _mm256_fmadd_ps(b, c0, a30);
                a31 = _mm256_fmadd_ps(b, c1, a31);
            }
            float* yr = y + static_cast<int64_t>(r0) * h8 + j;
            _mm256_storeu_ps(yr, a00);
            _mm256_storeu_ps(yr + 8, a01);
            _mm256_storeu_ps(yr + h8, a10);
            _mm256_storeu_ps(yr + h8 + 8, a11);
            _mm256_storeu_ps(yr + 2 * h8, a20);
            _mm256_storeu_ps(yr + 2 * h8 + 8, a21);
            _mm256_storeu_ps(yr + 3 * h8, a30);
            _mm256_storeu_ps(yr + 3 * h8 + 8, a31);
        }
        for (; j < h8; j += 8) {
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
            __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
            for (int64_t k = 0; k < d; ++k) {
                const __m256 c = _mm256_loadu_ps(Ap + k * h8 + j);
                a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(x0 + k), c, a0);
                a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(x1 + k), c, a1);
                a2 = _mm256_fmadd_ps(_mm256_broadcast_ss(x2 + k), c, a2);
                a3 = _mm256_fmadd_ps(_mm256_broadcast_ss(x3 + k), c, a3);
            }
            float* yr = y + static_cast<int64_t>(r0) * h8 + j;
            _mm256_storeu_ps(yr, a0);
            _mm256_storeu_ps(yr + h8, a1);
            _mm256_storeu_ps(yr + 2 * h8, a2);
            _mm256_storeu_ps(yr + 3 * h8, a3);
        }
    }
#else
    for (int r = 0; r < rows_pad; ++r) {
        float* yr = y + static_cast<int64_t>(r) * h8;
        std::fill(yr, yr + h8, 0.0f);
        const float* xr = xf + r * d;
        for (int64_t k = 0; k < d; ++k) {
            const float a = xr[k];
            const float* ap = Ap + k * h8;
            for (int j = 0; j < h8; ++j) yr[j] += a * ap[j];
        }
    }
#endif
}

// y[r] /= max(||y[r]||, eps), as torch.nn.functional.normalize.
void normalize_rows(float* y, int rows_pad, int h, int h8) {
    for (int r = 0; r < rows_pad; ++r) {
        float* yr = y + static_cast<int64_t>(r) * h8;
        float ss = 0.0f;
        for (int k = 0; k < h; ++k) ss += yr[k] * yr[k];
        const float denom = std::max(std::sqrt(ss), 1e-12f);
        for (int k = 0; k < h; ++k) yr[k] = yr[k] / denom;
    }
}

// ---------------------------------------------------------------------------------------
// Scoring: two passes per codebook tile.
//   tile_max:     the largest score of each of R rows over the tile's codes (a running vmaxps
//                 per lane: no compare/blend/index bookkeeping in the hot loop);
//   find_in_tile: after all tiles, for each row, re-scores the one tile that first reached the
//                 row's maximum and returns its lowest code whose score equals it.
// Both compute every score with the same instruction sequence (acc = fma(y[k], c[k], acc) for
// k = 0..h-1, starting from 0), so the re-scored values are bit-identical to the first pass.
// A later tile replaces the running best only when strictly greater, so the first tile holding
// the maximum is the one re-scored, and the overall result is the lowest maximizing index.
// The re-scoring costs one tile (256 codes) per row: 1/32 of the work at n = 8192.
// NaN lanes (padding past n) never win: max_ps(acc, m) keeps m when acc is NaN, and NaN never
// compares equal.
// ---------------------------------------------------------------------------------------
#ifdef MUSE_RPQ_AVX2
inline float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}

template <int H, int R>
void tile_max(const float* y, int h8, int h_rt, const float* packed, int groups, float* out) {
    const int h = H > 0 ? H : h_rt;
    const __m256 ninf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    __m256 m[R][2];
    for (int r = 0; r < R; ++r) m[r][0] = m[r][1] = ninf;
    for (int gi = 0; gi < groups; ++gi) {
        const float* p = packed + static_cast<int64_t>(gi) * h * kLanes;
        __m256 acc[R][2];
        for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
        for (int k = 0; k < h; ++k) {
            const __m256 c0 = _mm256_load_ps(p + k * kLanes);
            const __m256 c1 = _mm256_load_ps(p + k * kLanes + 8);
            for (int r = 0; r < R; ++r) {
                const __m256 b = _mm256_broadcast_ss(y + r * h8 + k);
                acc[r][0] = _mm256_fmadd_ps(b, c0, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(b, c1, acc[r][1]);
            }
        }
        for (int r = 0; r < R; ++r) {  // second operand returned when the first is NaN
            m[r][0] = _mm256_max_ps(acc[r][0], m[r][0]);
            m[r][1] = _mm256_max_ps(acc[r][1], m[r][1]);
        }
    }
    for (int r = 0; r < R; ++r) out[r] = hmax8(_mm256_max_ps(m[r][0], m[r][1]));
}

template <int H>
int32_t find_in_tile(const float* y, int h_rt, const float* packed, int groups, float target) {
    const int h = H > 0 ? H : h_rt;
    const __m256 t = _mm256_set1_ps(target);
    for (int gi = 0; gi < groups; ++gi) {
        const float* p = packed + static_cast<int64_t>(gi) * h * kLanes;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        for (int k = 0; k < h; ++k) {
            const __m256 b = _mm256_broadcast_ss(y + k);
            a0 = _mm256_fmadd_ps(b, _mm256_load_ps(p + k * kLanes), a0);
            a1 = _mm256_fmadd_ps(b, _mm256_load_ps(p + k * kLanes + 8), a1);
        }
        const unsigned mask =
            static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(a0, t, _CMP_EQ_OQ))) |
            (static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(a1, t, _CMP_EQ_OQ))) << 8);
        if (mask != 0) return gi * kLanes + __builtin_ctz(mask);
    }
    return -1;
}
#else
template <int H, int R>
void tile_max(const float* y, int h8, int h_rt, const float* packed, int groups, float* out) {
    const int h = H > 0 ? H : h_rt;
    for (int r = 0; r < R; ++r) {
        float m = -std::numeric_limits<float>::infinity();
        for (int gi = 0; gi < groups; ++gi) {
            const float* p = packed + static_cast<int64_t>(gi) * h * kLanes;
            for (int l = 0; l < kLanes; ++l) {
                float acc = 0.0f;
                for (int k = 0; k < h; ++k) acc = std::fma(y[r * h8 + k], p[k * kLanes + l], acc);
                if (acc > m) m = acc;  // false for NaN
            }
        }
        out[r] = m;
    }
}

template <int H>
int32_t find_in_tile(const float* y, int h_rt, const float* packed, int groups, float target) {
    const int h = H > 0 ? H : h_rt;
    for (int gi = 0; gi < groups; ++gi) {
        const float* p = packed + static_cast<int64_t>(gi) * h * kLanes;
        for (int l = 0; l < kLanes; ++l) {
            float acc = 0.0f;
            for (int k = 0; k < h; ++k) acc = std::fma(y[k], p[k * kLanes + l], acc);
            if (acc == target) return gi * kLanes + l;
        }
    }
    return -1;
}
#endif

template <typename T>
void rpq_forward_impl(const T* x, int64_t N, int64_t d, int64_t s0, int64_t s1, const float* A,
                      const float* chat, int64_t G, int64_t n, int64_t h, int64_t* out) {
    const int h8 = static_cast<int>((h + 7) / 8 * 8);
    const int64_t ngroups = (n + kLanes - 1) / kLanes;

    // Pack the projection (G, d, h8) with zero columns past h.
    FloatBuf Ap = alloc_floats(static_cast<size_t>(G * d * h8));
    for (int64_t g = 0; g < G; ++g) {
        for (int64_t k = 0; k < d; ++k) {
            float* dst = Ap.get() + (g * d + k) * h8;
            const float* src = A + (g * d + k) * h;
            for (int j = 0; j < h8; ++j) dst[j] = j < h ? src[j] : 0.0f;
        }
    }
    // Pack the normalized codebook: (G, ngroups, h, 16), NaN lanes past n.
    const float qnan = std::numeric_limits<float>::quiet_NaN();
    const int64_t per_group = ngroups * h * kLanes;
    FloatBuf P = alloc_floats(static_cast<size_t>(G * per_group));
    for (int64_t g = 0; g < G; ++g) {
        for (int64_t grp = 0; grp < ngroups; ++grp) {
            for (int64_t k = 0; k < h; ++k) {
                float* dst = P.get() + g * per_group + (grp * h + k) * kLanes;
                for (int l = 0; l < kLanes; ++l) {
                    const int64_t code = grp * kLanes + l;
                    dst[l] = code < n ? chat[(g * n + code) * h + k] : qnan;
                }
            }
        }
    }

    const int64_t nblocks = (N + kRowBlock - 1) / kRowBlock;
    const int64_t ntiles = (ngroups + kTileGroups - 1) / kTileGroups;
    const int hi = static_cast<int>(h);
#pragma omp parallel
    {
        constexpr int RB = kRowBlock;
        FloatBuf xf = alloc_floats(static_cast<size_t>(RB * d));
        FloatBuf y = alloc_floats(static_cast<size_t>(RB * h8));
        std::vector<float> best(RB);
        std::vector<int32_t> best_tile(RB);
        float tmax[kRowsPerPass];
#pragma omp for schedule(dynamic, 1)
        for (int64_t blk = 0; blk < nblocks; ++blk) {
            const int64_t row0 = blk * kRowBlock;
            const int rows = static_cast<int>(std::min<int64_t>(kRowBlock, N - row0));
            const int rows_pad = (rows + kRowPad - 1) / kRowPad * kRowPad;
            gather_rows(x, row0, rows, rows_pad, d, s0, s1, xf.get());
            for (int64_t g = 0; g < G; ++g) {
                project_rows(xf.get(), rows_pad, d, Ap.get() + g * d * h8, h8, y.get());
                normalize_rows(y.get(), rows_pad, hi, h8);
                std::fill(best.begin(), best.end(), -std::numeric_limits<float>::infinity());
                std::fill(best_tile.begin(), best_tile.end(), 0);
                const float* Pg = P.get() + g * per_group;
                for (int64_t t = 0; t < ntiles; ++t) {
                    const int64_t t0 = t * kTileGroups;
                    const int groups =
                        static_cast<int>(std::min<int64_t>(kTileGroups, ngroups - t0));
                    const float* tile = Pg + t0 * h * kLanes;
                    for (int r0 = 0; r0 < rows_pad; r0 += kRowsPerPass) {
                        const float* yb = y.get() + static_cast<int64_t>(r0) * h8;
                        if (h == 16) {
                            tile_max<16, kRowsPerPass>(yb, h8, 16, tile, groups, tmax);
                        } else {
                            tile_max<0, kRowsPerPass>(yb, h8, hi, tile, groups, tmax);
                        }
                        for (int r = 0; r < kRowsPerPass; ++r) {
                            if (tmax[r] > best[r0 + r]) {  // strict: the first tile keeps ties
                                best[r0 + r] = tmax[r];
                                best_tile[r0 + r] = static_cast<int32_t>(t);
                            }
                        }
                    }
                }
                for (int r = 0; r < rows; ++r) {
                    const int64_t t0 = static_cast<int64_t>(best_tile[r]) * kTileGroups;
                    const int groups =
                        static_cast<int>(std::min<int64_t>(kTileGroups, ngroups - t0));
                    const float* tile = Pg + t0 * h * kLanes;
                    const float* yr = y.get() + static_cast<int64_t>(r) * h8;
                    const int32_t j = h == 16 ? find_in_tile<16>(yr, 16, tile, groups, best[r])
                                              : find_in_tile<0>(yr, hi, tile, groups, best[r]);
                    // j < 0 only when no score is comparable (NaN in x): index 0
                    out[(row0 + r) * G + g] = j < 0 ? 0 : t0 * kLanes + j;
                }
            }
        }
    }
}

void rpq_forward(std::uintptr_t x, const std::string& x_dtype, int64_t N, int64_t d, int64_t s0,
                 int64_t s1, std::uintptr_t projection, std::uintptr_t codebook, int64_t G,
                 int64_t n, int64_t h, std::uintptr_t out) {
    MUSE_CHECK(N >= 0, "x: number of rows must be >= 0");
    MUSE_CHECK(d >= 1, "x: the feature dimension d must be >= 1");
    MUSE_CHECK(G >= 1, "projection: number of codebooks G must be >= 1");
    MUSE_CHECK(n >= 1 && n <= (int64_t{1} << 31) - kLanes,
               "codebook: codebook size n must be in [1, 2^31 - 16]");
    MUSE_CHECK(h >= 1, "codebook: code dimension h must be >= 1");
    const muse::DType dt = muse::parse_dtype(x_dtype, "x");
    MUSE_CHECK(dt == muse::DType::f32 || dt == muse::DType::bf16 || dt == muse::DType::f16,
               "x: expected float32, bfloat16 or float16");
    if (N == 0) return;
    MUSE_CHECK(x != 0 && projection != 0 && codebook != 0 && out != 0,
               "rpq_forward: null data pointer");
    const float* A = muse::ptr<const float>(projection);
    const float* C = muse::ptr<const float>(codebook);
    int64_t* o = muse::ptr<int64_t>(out);
    py::gil_scoped_release release;
    muse::dispatch_floating(dt, "x", [&](auto tag) {
        using T = decltype(tag);
        rpq_forward_impl<T>(muse::ptr<const T>(x), N, d, s0, s1, A, C, G, n, h, o);
    });
}

}  // namespace

void init_quantize(py::module_& m) {
    m.def("rpq_forward", &rpq_forward, py::arg("x"), py::arg("x_dtype"), py::arg("N"), py::arg("d"),
          py::arg("stride0"), py::arg("stride1"), py::arg("projection"), py::arg("codebook"),
          py::arg("G"), py::arg("n"), py::arg("h"), py::arg("out"),
          "Random-projection quantizer: out (N, G) int64 = argmax_i <C^_g[i], normalize(x A_g)>, "
          "ties to the lowest index. x (N, d) float32/bfloat16/float16 with strides (stride0, "
          "stride1) in elements; projection (G, d, h) float32 contiguous; codebook (G, n, h) "
          "float32 contiguous and row-normalized.");
}
