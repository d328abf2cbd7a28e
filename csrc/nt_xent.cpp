// CPU kernels for muse_fast.ops.nt_xent: tiled contrastive statistics (forward) and the
// similarity gradient (backward), memory O(N·D) — the 2N x 2N similarity is never stored.
//
// Same algorithm and notation as kernels/nt_xent.py (read its docstring first):
//   z (M = 2N rows, D), positive p(i) = i ± N, active rows (i mod N) in [row_start, +row_count).
//   forward : per active row  lse_i = log sum_{k valid} exp(beta s_ik), pos_i = s_{i,p(i)},
//             t_i = sum_k softmax_ik s_ik (optional)
//   backward: dz = alpha (G + G^T) zn, G_ik = exp(beta s_ik - c_i)[k valid] - [i active][k = p(i)],
//             pulled back through the L2 normalization.
//
// Layout. A prepare pass writes, into one scratch buffer the caller allocates (so the caller's
// allocator accounts for it):   zn  (M x Dp)   rows normalized (or copied) in the compute type,
//                                                zero-padded to Dp = roundup(D, 16);
//                                zp  (Mp x Dp)  the same rows packed in column panels of NR rows,
//                                                panel p = zn[p*NR .. p*NR+NR)^T (Dp x NR), so the
//                                                GEMM micro-kernels stream contiguous memory;
//                                norm (M)       row norms (for the normalization's backward).
// bf16 / fp16 inputs are converted once there (fp32 compute); float64 computes in double.
// OpenMP over row blocks (or tile rows); per thread one similarity tile.
//
// Symmetry. s is symmetric, so both passes need only the tiles s_IK with K >= I:
//  * forward_sym: row I's online log-sum-exp comes from the tile's rows, row K's from its
//    columns (column max, then column sums of exp) — half the dot products of a row-block pass;
//  * backward_sym: dz = (G + G^T) zn and both G_IK (row softmax, offsets c_I) and G_KI^T
//    (column softmax, offsets c_K) are built from the one tile s_IK; the tile's coefficients W
//    give dz_I += W zn_K and dz_K += W^T zn_I — three quarters of the row-block flops.
// Each thread keeps private statistics (3 M values) or gradient accumulators (M x D) in the
// caller's scratch, merged in a fixed order; with a static schedule the result is deterministic.
// The row-block variants (forward / backward: one thread owns a block of rows and loops over
// all columns) serve row subsets (one rank's share of a gathered batch) and batches whose
// per-thread accumulators would be too large; the Triton kernels use the row-block scheme too
// (with the same one-tile G + G^T trick in the backward).

//
// The tile products and helpers live in nt_xent_tiles.h.

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#include "common.h"
#include "nt_xent_tiles.h"

namespace {

using namespace muse::ntx;

template <typename T>
void forward(const Scratch<T>& sc, const Geometry& g, T beta, bool exclude_pos, bool with_t, T* lse,
             T* pos, T* tout) {
    constexpr T NEG = Traits<T>::NEG;
    const int64_t nb1 = (g.row_count + BM - 1) / BM;
#pragma omp parallel if (2 * g.row_count * g.M * g.D >= kParallelWork)
    {
        std::vector<T> S(BM * BN);
        std::vector<T> m(BM), l(BM), t(BM), ps(BM);
#pragma omp for schedule(dynamic, 1)
        for (int64_t b = 0; b < 2 * nb1; ++b) {
            const int64_t half = b < nb1 ? 0 : 1;
            const int64_t off = (b - half * nb1) * BM;
            const int64_t bm = std::min(BM, g.row_count - off);
            const int64_t r0 = half * g.N + g.row_start + off;
            for (int64_t i = 0; i < bm; ++i) m[i] = NEG, l[i] = 0, t[i] = 0, ps[i] = 0;
            for (int64_t k0 = 0; k0 < g.M; k0 += BN) {
                const int64_t kn = std::min(BN, g.M - k0);
                sim_tile(sc, g.Dp, r0, bm, k0, kn, S.data());
                for (int64_t i = 0; i < bm; ++i) {
                    const int64_t row = r0 + i, prow = g.partner(row);
                    T* srow = S.data() + i * BN;
                    if (prow >= k0 && prow < k0 + kn) ps[i] = srow[prow - k0];
                    T mx = scale_max(srow, kn, beta);
                    // masked entries: the diagonal (and the positive) — recompute the max
                    // without them only when they are in this tile
                    const bool has_diag = row >= k0 && row < k0 + kn;
                    const bool has_pos = exclude_pos && prow >= k0 && prow < k0 + kn;
                    if (has_diag || has_pos) {
                        if (has_diag) srow[row - k0] = NEG;
                        if (has_pos) srow[prow - k0] = NEG;
                        mx = max_of(srow, kn);
                    }
                    if (mx == NEG) continue;  // nothing valid for this row in this tile
                    const T mnew = std::max(m[i], mx);
                    T sum, tsum;
                    exp_sums(srow, kn, mnew, with_t, sum, tsum);
                    const T sc_old = exp1(m[i] - mnew);
                    l[i] = l[i] * sc_old + sum;
                    t[i] = t[i] * sc_old + tsum;
                    m[i] = mnew;
                }
            }
            const int64_t j0 = half * g.row_count + off;
            for (int64_t i = 0; i < bm; ++i) {
                lse[j0 + i] = m[i] + std::log(l[i]);
                pos[j0 + i] = ps[i];
                if (with_t) tout[j0 + i] = t[i] / (l[i] * beta);  // t accumulated beta*s
            }
        }
    }
}

// dz_row = alpha * (the normalization's backward of gr) in the output dtype
template <typename T, typename S>
inline void write_row_grad(const Scratch<T>& sc, const Geometry& g, bool normalize, T eps, T alpha,
                           int64_t row, const T* gr, S* out) {
    if (normalize) {
        const T nrm = sc.norm[row];
        const T rn = T(1) / std::max(nrm, eps);
        const T* zr = sc.zn + row * g.Dp;
        T proj = 0;
        if (nrm >= eps)
            for (int64_t d = 0; d < g.D; ++d) proj += zr[d] * gr[d];
        for (int64_t d = 0; d < g.D; ++d) out[d] = store_as<S>(alpha * rn * (gr[d] - zr[d] * proj));
    } else {
        for (int64_t d = 0; d < g.D; ++d) out[d] = store_as<S>(alpha * gr[d]);
    }
}

template <typename T, typename S>
void backward(const Scratch<T>& sc, const Geometry& g, T beta, bool exclude_pos, bool normalize,
              T eps, const T* c, T alpha, S* dz, int64_t dz_stride) {
    const int64_t nblocks = (g.M + BM - 1) / BM;
    const int64_t Dp = g.Dp;
#pragma omp parallel if (g.M * g.M * g.D >= kParallelWork)
    {
        std::vector<T> W(BM * BN);
        std::vector<T> acc(BM * Dp);
#pragma omp for schedule(dynamic, 1)
        for (int64_t b = 0; b < nblocks; ++b) {
            const int64_t r0 = b * BM, bm = std::min(BM, g.M - r0);
            const bool rows_any = g.any_active(r0, r0 + bm);
            std::fill(acc.begin(), acc.begin() + bm * Dp, T(0));
            for (int64_t k0 = 0; k0 < g.M; k0 += BN) {
                const int64_t kn = std::min(BN, g.M - k0);
                if (!rows_any && !g.any_active(k0, k0 + kn)) continue;
                sim_tile(sc, Dp, r0, bm, k0, kn, W.data());
                const T* ck = c + k0;
                for (int64_t i = 0; i < bm; ++i) {
                    const int64_t row = r0 + i, prow = g.partner(row);
                    const T ci = c[row];
                    T* w = W.data() + i * BN;
                    grad_weights(w, ck, kn, beta, ci);
                    if (row >= k0 && row < k0 + kn) w[row - k0] = 0;
                    if (prow >= k0 && prow < k0 + kn) {
                        T& wp = w[prow - k0];
                        if (exclude_pos) wp = 0;
                        if (g.active(row)) wp -= 2;
                    }
                }
                wz_tile(W.data(), bm, kn, sc.zn + k0 * Dp, Dp, acc.data());
            }
            for (int64_t i = 0; i < bm; ++i)
                write_row_grad(sc, g, normalize, eps, alpha, r0 + i, acc.data() + i * Dp,
                               dz + (r0 + i) * dz_stride);
        }
    }
}

inline int thread_id() {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

// ---------------------------------------------------------------------------------------
// Symmetric variants (all rows active): only the tiles s_IK with K >= I are computed, each
// once. Row I's statistics come from the tile's rows, row K's from its columns; each thread
// keeps private statistics / gradient accumulators for all M rows (in the caller's scratch),
// merged in a fixed order afterwards, with a static schedule: deterministic. The forward does
// half the dot products of the row-block version, the backward three quarters.
// ---------------------------------------------------------------------------------------
constexpr int64_t SB = 64;  // square tile side

template <typename T>
void forward_sym(const Scratch<T>& sc, const Geometry& g, T beta, bool exclude_pos, bool with_t,
                 int threads, T* stats, T* lse, T* pos, T* tout) {
    constexpr T NEG = Traits<T>::NEG;
    const int64_t M = g.M, nb = (M + SB - 1) / SB;
    for (int64_t j = 0; j < int64_t(threads) * M; ++j) {
        T* st = stats + (j / M) * 3 * M + j % M;
        st[0] = NEG, st[M] = 0, st[2 * M] = 0;
    }
#pragma omp parallel num_threads(threads)
    {
        const int tid = thread_id();
        T* m = stats + int64_t(tid) * 3 * M;
        T* l = m + M;
        T* t = l + M;
        std::vector<T> S(SB * BN), cm(SB), mk(SB), cs(SB), ct(SB);
#pragma omp for schedule(static, 1)
        for (int64_t I = 0; I < nb; ++I) {
            const int64_t r0 = I * SB, bm = std::min(SB, M - r0);
            for (int64_t K = I; K < nb; ++K) {
                const int64_t k0 = K * SB, kn = std::min(SB, M - k0);
                sim_tile(sc, g.Dp, r0, bm, k0, kn, S.data());
                for (int64_t i = 0; i < bm; ++i) {
                    const int64_t row = r0 + i, prow = g.partner(row);
                    T* srow = S.data() + i * BN;
                    if (prow >= k0 && prow < k0 + kn) pos[row] = pos[prow] = srow[prow - k0];
                    scale_max(srow, kn, beta);  // logits
                    if (exclude_pos && prow >= k0 && prow < k0 + kn) srow[prow - k0] = NEG;
                    if (I == K) srow[i] = NEG;
                }
                // rows of I
                for (int64_t i = 0; i < bm; ++i) {
                    const int64_t row = r0 + i;
                    T* srow = S.data() + i * BN;
                    const T mx = max_of(srow, kn);
                    if (mx == NEG) continue;  // nothing valid for this row in this tile
                    const T mnew = std::max(m[row], mx);
                    T sum, tsum;
                    exp_sums(srow, kn, mnew, with_t, sum, tsum);
                    const T sc_old = exp1(m[row] - mnew);
                    l[row] = l[row] * sc_old + sum;
                    t[row] = t[row] * sc_old + tsum;
                    m[row] = mnew;
                }
                if (I == K) continue;
                // rows of K, from the columns (the logits are already scaled by beta)
                std::fill(cm.begin(), cm.end(), NEG);
                for (int64_t i = 0; i < bm; ++i) col_max(cm.data(), S.data() + i * BN, kn);
                for (int64_t k = 0; k < kn; ++k) mk[k] = std::max(m[k0 + k], cm[k]);
                std::fill(cs.begin(), cs.end(), T(0));
                std::fill(ct.begin(), ct.end(), T(0));
                for (int64_t i = 0; i < bm; ++i)
                    col_exp_acc(cs.data(), ct.data(), S.data() + i * BN, mk.data(), kn, with_t);
                for (int64_t k = 0; k < kn; ++k) {
                    if (cm[k] == NEG) continue;  // no valid entry in this column
                    const T sc_old = exp1(m[k0 + k] - mk[k]);
                    l[k0 + k] = l[k0 + k] * sc_old + cs[k];
                    t[k0 + k] = t[k0 + k] * sc_old + ct[k];
                    m[k0 + k] = mk[k];
                }
            }
        }
    }
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t j = 0; j < M; ++j) {
        T mm = NEG;
        for (int th = 0; th < threads; ++th) mm = std::max(mm, stats[int64_t(th) * 3 * M + j]);
        T ls = 0, ts = 0;
        for (int th = 0; th < threads; ++th) {
            const T* st = stats + int64_t(th) * 3 * M;
            const T f = exp1(st[j] - mm);
            ls += st[M + j] * f;
            ts += st[2 * M + j] * f;
        }
        lse[j] = mm + std::log(ls);
        if (with_t) tout[j] = ts / (ls * beta);
    }
}

template <typename T, typename S>
void backward_sym(const Scratch<T>& sc, const Geometry& g, T beta, bool exclude_pos, bool normalize,
                  T eps, const T* c, T alpha, S* dz, int64_t dz_stride, int threads, T* accs) {
    const int64_t M = g.M, Dp = g.Dp, nb = (M + SB - 1) / SB;
#pragma omp parallel num_threads(threads)
    {
        const int tid = thread_id();
        T* acc = accs + int64_t(tid) * M * Dp;
        std::vector<T> W(SB * BN);
#pragma omp for schedule(static)
        for (int64_t j = 0; j < int64_t(threads) * M * Dp; ++j) accs[j] = 0;
#pragma omp for schedule(static, 1)
        for (int64_t I = 0; I < nb; ++I) {
            const int64_t r0 = I * SB, bm = std::min(SB, M - r0);
            for (int64_t K = I; K < nb; ++K) {
                const int64_t k0 = K * SB, kn = std::min(SB, M - k0);
                sim_tile(sc, Dp, r0, bm, k0, kn, W.data());
                for (int64_t i = 0; i < bm; ++i) {
                    const int64_t row = r0 + i, prow = g.partner(row);
                    T* w = W.data() + i * BN;
                    grad_weights(w, c + k0, kn, beta, c[row]);
                    if (I == K) w[i] = 0;
                    if (prow >= k0 && prow < k0 + kn) {
                        T& wp = w[prow - k0];
                        if (exclude_pos) wp = 0;
                        wp -= 2;  // every row is active here
                    }
                }
                wz_tile(W.data(), bm, kn, sc.zn + k0 * Dp, Dp, acc + r0 * Dp);
                if (I != K) wzt_tile(W.data(), bm, kn, sc.zn + r0 * Dp, Dp, acc + k0 * Dp);
            }
        }
        // implicit barrier: every thread's accumulators are complete
#pragma omp for schedule(static)
        for (int64_t row = 0; row < M; ++row) {
            T* gr = accs + row * Dp;  // thread 0's rows collect the sum
            for (int th = 1; th < threads; ++th) {
                const T* o = accs + int64_t(th) * M * Dp + row * Dp;
                for (int64_t d = 0; d < Dp; ++d) gr[d] += o[d];
            }
            write_row_grad(sc, g, normalize, eps, alpha, row, gr, dz + row * dz_stride);
        }
    }
}

// scratch: zn, zp, norm (+ per-thread statistics or gradient accumulators for the symmetric
// variants: kind 1 = forward, 2 = backward)
int64_t scratch_elems(int64_t M, int64_t D, int64_t threads, int64_t kind) {
    const int64_t Dp = round_up(D, kPad);
    const int64_t base = M * Dp + round_up(M, kPad) * Dp + M;
    if (kind == 1) return base + threads * 3 * M;
    if (kind == 2) return base + threads * M * Dp;
    return base;
}

Geometry check_geometry(int64_t M, int64_t D, int64_t stride, int64_t n_pairs, int64_t row_start,
                        int64_t row_count) {
    MUSE_CHECK(n_pairs >= 2, "z: need at least 2 pairs (N >= 2)");
    MUSE_CHECK(M == 2 * n_pairs, "z: expected 2 * n_pairs rows");
    MUSE_CHECK(D >= 1, "z: expected at least one feature");
    MUSE_CHECK(stride >= D, "z: row stride smaller than the row length");
    MUSE_CHECK(row_start >= 0 && row_count >= 1 && row_start + row_count <= n_pairs,
               "row_start/row_count: active rows out of range");
    return Geometry{M, n_pairs, D, round_up(D, kPad), row_start, row_count};
}

}  // namespace

void init_nt_xent(py::module_& m) {
    m.def("nt_xent_scratch_elems", &scratch_elems, py::arg("M"), py::arg("D"),
          py::arg("threads") = 1, py::arg("kind") = 0,
          "elements (float32, or float64 for float64 inputs) of the scratch buffer; kind 1 / 2: "
          "the symmetric forward / backward with `threads` private accumulators");
    m.def(
        "nt_xent_fwd",
        [](std::uintptr_t z, const std::string& dtype, int64_t M, int64_t D, int64_t stride,
           int64_t n_pairs, bool normalize, double eps, double beta, int64_t row_start,
           int64_t row_count, bool exclude_pos, bool with_t, int64_t sym_threads,
           std::uintptr_t scratch, std::uintptr_t lse, std::uintptr_t pos, std::uintptr_t t) {
            const Geometry g = check_geometry(M, D, stride, n_pairs, row_start, row_count);
            MUSE_CHECK(sym_threads == 0 || row_count == n_pairs,
                       "sym_threads: the symmetric forward needs every row active");
            const DType dt = muse::parse_dtype(dtype, "z");
            py::gil_scoped_release nogil;
            muse::dispatch_floating(dt, "z", [&](auto tag) {
                using S = decltype(tag);
                using T = std::conditional_t<std::is_same_v<S, double>, double, float>;
                const Scratch<T> sc = layout(muse::ptr<T>(scratch), M, g.Dp);
                prepare<S, T>(muse::ptr<const S>(z), M, D, stride, normalize, T(eps), sc);
                if (sym_threads > 0)
                    forward_sym<T>(sc, g, T(beta), exclude_pos, with_t, int(sym_threads),
                                   sc.norm + M, muse::ptr<T>(lse), muse::ptr<T>(pos),
                                   muse::ptr<T>(t));
                else
                    forward<T>(sc, g, T(beta), exclude_pos, with_t, muse::ptr<T>(lse),
                               muse::ptr<T>(pos), muse::ptr<T>(t));
            });
        },
        py::arg("z"), py::arg("dtype"), py::arg("M"), py::arg("D"), py::arg("stride"),
        py::arg("n_pairs"), py::arg("normalize"), py::arg("eps"), py::arg("beta"),
        py::arg("row_start"), py::arg("row_count"), py::arg("exclude_pos"), py::arg("with_t"),
        py::arg("sym_threads"), py::arg("scratch"), py::arg("lse"), py::arg("pos"), py::arg("t"),
        "contrastive row statistics (lse, positive similarity, softmax-mean similarity); "
        "sym_threads > 0: the symmetric variant with that many threads (scratch kind 1)");
    m.def(
        "nt_xent_bwd",
        [](std::uintptr_t z, const std::string& dtype, int64_t M, int64_t D, int64_t stride,
           int64_t n_pairs, bool normalize, double eps, double beta, int64_t row_start,
           int64_t row_count, bool exclude_pos, std::uintptr_t c, double alpha, int64_t sym_threads,
           std::uintptr_t scratch, std::uintptr_t dz, int64_t dz_stride) {
            const Geometry g = check_geometry(M, D, stride, n_pairs, row_start, row_count);
            MUSE_CHECK(dz_stride >= D, "dz: row stride smaller than the row length");
            MUSE_CHECK(sym_threads == 0 || row_count == n_pairs,
                       "sym_threads: the symmetric backward needs every row active");
            const DType dt = muse::parse_dtype(dtype, "z");
            py::gil_scoped_release nogil;
            muse::dispatch_floating(dt, "z", [&](auto tag) {
                using S = decltype(tag);
                using T = std::conditional_t<std::is_same_v<S, double>, double, float>;
                const Scratch<T> sc = layout(muse::ptr<T>(scratch), M, g.Dp);
                prepare<S, T>(muse::ptr<const S>(z), M, D, stride, normalize, T(eps), sc);
                if (sym_threads > 0)
                    backward_sym<T, S>(sc, g, T(beta), exclude_pos, normalize, T(eps),
                                       muse::ptr<const T>(c), T(alpha), muse::ptr<S>(dz), dz_stride,
                                       int(sym_threads), sc.norm + M);
                else
                    backward<T, S>(sc, g, T(beta), exclude_pos, normalize, T(eps),
                                   muse::ptr<const T>(c), T(alpha), muse::ptr<S>(dz), dz_stride);
            });
        },
        py::arg("z"), py::arg("dtype"), py::arg("M"), py::arg("D"), py::arg("stride"),
        py::arg("n_pairs"), py::arg("normalize"), py::arg("eps"), py::arg("beta"),
        py::arg("row_start"), py::arg("row_count"), py::arg("exclude_pos"), py::arg("c"),
        py::arg("alpha"), py::arg("sym_threads"), py::arg("scratch"), py::arg("dz"),
        py::arg("dz_stride"),
        "gradient of the contrastive losses wrt z (memory O(M D)); sym_threads > 0: the "
        "symmetric variant (scratch kind 2)");
}
