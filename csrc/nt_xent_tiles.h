// Building blocks of the nt_xent CPU kernels (csrc/nt_xent.cpp): the vectorized exp and row
// reductions, the scratch layout and the prepare pass, the similarity and gradient tile products
// (GEMM micro-kernels over packed column panels), and the batch geometry.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "common.h"

namespace muse::ntx {

using muse::bf16_t;
using muse::DType;
using muse::f16_t;

constexpr int64_t kPad = 16;  // Dp and Mp are multiples of this
constexpr int64_t BM = 64;    // rows per block (one OpenMP work item)
constexpr int64_t BN = 256;   // columns per similarity tile
// below this much work (multiply-adds) a call runs on one thread: waking an OpenMP team costs
// more than it saves, and far more on an oversubscribed machine
constexpr int64_t kParallelWork = int64_t(1) << 22;

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// ---------------------------------------------------------------------------------------
// exp and the row reductions. float: 8-lane GCC vector extensions (portable: lowered to AVX2,
// SSE or scalar code by the target), so the exp is vectorized whatever the FP flags — plain
// loops around a scalar exp are not, under the default -ftrapping-math. double (the float64
// path, for gradcheck): scalar std::exp.
// ---------------------------------------------------------------------------------------
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

inline v8f load8(const float* p) {
    v8f v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}
inline void store8(float* p, v8f v) { std::memcpy(p, &v, sizeof(v)); }
inline v8f splat8(float x) { return v8f{x, x, x, x, x, x, x, x}; }

// e^x (Cephes expf polynomial after range reduction, ~1 ulp on [-87.3, 88]); 0 below -87.3
// (e^x < 1.2e-38), -inf included; the argument is clamped at 88.
inline v8f exp8(v8f x) {
    const v8f lo = splat8(-87.3365447504f), hi = splat8(88.0f);
    const v8f magic = splat8(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
    v8f xc = x < lo ? lo : x;
    xc = xc > hi ? hi : xc;
    const v8f kb = xc * 1.44269504088896341f + magic;
    const v8f k = kb - magic;
    v8f r = xc - k * 0.693359375f;
    r = r - k * -2.12194440e-4f;
    v8f y = splat8(1.9875691500E-4f);
    y = y * r + 1.3981999507E-3f;
    y = y * r + 8.3334519073E-3f;
    y = y * r + 4.1665795894E-2f;
    y = y * r + 1.6666665459E-1f;
    y = y * r + 5.0000001201E-1f;
    y = y * r * r + r + 1.0f;
    // kb's low mantissa bits hold 2^22 + k: shifting (bits + 127) left by 23 gives 2^k
    const v8i bits = ((v8i)kb + 127) << 23;
    const v8f res = y * (v8f)bits;
    return x < lo ? splat8(0.0f) : res;
}

inline float hmax8(v8f v) {
    float m = v[0];
    for (int j = 1; j < 8; ++j) m = std::max(m, v[j]);
    return m;
}
inline float hsum8(v8f v) {
    float s = 0;
    for (int j = 0; j < 8; ++j) s += v[j];
    return s;
}

// x *= beta; return max(x)
inline float scale_max(float* x, int64_t n, float beta) {
    v8f acc = splat8(-std::numeric_limits<float>::infinity());
    int64_t k = 0;
    for (; k + 8 <= n; k += 8) {
        const v8f v = load8(x + k) * beta;
        store8(x + k, v);
        acc = v > acc ? v : acc;
    }
    float m = hmax8(acc);
    for (; k < n; ++k) m = std::max(m, x[k] *= beta);
    return m;
}
inline double scale_max(double* x, int64_t n, double beta) {
    double m = -std::numeric_limits<double>::infinity();
    for (int64_t k = 0; k < n; ++k) m = std::max(m, x[k] *= beta);
    return m;
}

inline float max_of(const float* x, int64_t n) {
    v8f acc = splat8(-std::numeric_limits<float>::infinity());
    int64_t k = 0;
    for (; k + 8 <= n; k += 8) {
        const v8f v = load8(x + k);
        acc = v > acc ? v : acc;
    }
    float m = hmax8(acc);
    for (; k < n; ++k) m = std::max(m, x[k]);
    return m;
}
inline double max_of(const double* x, int64_t n) {
    double m = -std::numeric_limits<double>::infinity();
    for (int64_t k = 0; k < n; ++k) m = std::max(m, x[k]);
    return m;
}

inline float exp1(float x) {
    float buf[8] = {x, 0, 0, 0, 0, 0, 0, 0};
    return exp8(load8(buf))[0];
}
inline double exp1(double x) { return std::exp(x); }

// sum_k exp(x_k - m) and, with t, sum_k exp(x_k - m) x_k
inline void exp_sums(const float* x, int64_t n, float m, bool with_t, float& sum, float& tsum) {
    v8f a = splat8(0.0f), b = splat8(0.0f);
    const v8f mv = splat8(m);
    int64_t k = 0;
    for (; k + 8 <= n; k += 8) {
        const v8f v = load8(x + k);
        const v8f p = exp8(v - mv);
        a += p;
        if (with_t) b += p * v;
    }
    sum = hsum8(a), tsum = hsum8(b);
    for (; k < n; ++k) {
        const float p = exp1(x[k] - m);
        sum += p;
        tsum += p * x[k];
    }
}
inline void exp_sums(const double* x, int64_t n, double m, bool, double& sum, double& tsum) {
    sum = 0, tsum = 0;
    for (int64_t k = 0; k < n; ++k) {
        const double p = std::exp(x[k] - m);
        sum += p;
        tsum += p * x[k];
    }
}

// w_k <- exp(beta w_k - ci) + exp(beta w_k - ck_k)   (in place)
inline void grad_weights(float* w, const float* ck, int64_t n, float beta, float ci) {
    const v8f civ = splat8(ci);
    int64_t k = 0;
    for (; k + 8 <= n; k += 8) {
        const v8f lg = load8(w + k) * beta;
        store8(w + k, exp8(lg - civ) + exp8(lg - load8(ck + k)));
    }
    for (; k < n; ++k) {
        const float lg = w[k] * beta;
        w[k] = exp1(lg - ci) + exp1(lg - ck[k]);
    }
}
inline void grad_weights(double* w, const double* ck, int64_t n, double beta, double ci) {
    for (int64_t k = 0; k < n; ++k) {
        const double lg = w[k] * beta;
        w[k] = std::exp(lg - ci) + std::exp(lg - ck[k]);
    }
}

// column pass of the symmetric forward: cm[k] = max(cm[k], x[k])
inline void col_max(float* cm, const float* x, int64_t n) {
    int64_t k = 0;
    for (; k + 8 <= n; k += 8) {
        const v8f a = load8(cm + k), v = load8(x + k);
        store8(cm + k, v > a ? v : a);
    }
    for (; k < n; ++k) cm[k] = std::max(cm[k], x[k]);
}
inline void col_max(double* cm, const double* x, int64_t n) {
    for (int64_t k = 0; k < n; ++k) cm[k] = std::max(cm[k], x[k]);
}
// cs[k] += exp(x[k] - mk[k]); ct[k] += exp(x[k] - mk[k]) x[k]
inline void col_exp_acc(float* cs, float* ct, const float* x, const float* mk, int64_t n,
                        bool with_t) {
    int64_t k = 0;
    for (; k + 8 <= n; k += 8) {
        const v8f v = load8(x + k);
        const v8f p = exp8(v - load8(mk + k));
        store8(cs + k, load8(cs + k) + p);
        if (with_t) store8(ct + k, load8(ct + k) + p * v);
    }
    for (; k < n; ++k) {
        const float p = exp1(x[k] - mk[k]);
        cs[k] += p;
        ct[k] += p * x[k];
    }
}
inline void col_exp_acc(double* cs, double* ct, const double* x, const double* mk, int64_t n,
                        bool) {
    for (int64_t k = 0; k < n; ++k) {
        const double p = std::exp(x[k] - mk[k]);
        cs[k] += p;
        ct[k] += p * x[k];
    }
}

template <typename T>
struct Traits;
template <>
struct Traits<float> {
    static constexpr int NR = 16;  // panel width: two AVX2 registers
    static constexpr int MR = 4;   // rows per micro-kernel
    static constexpr float NEG = -1.0e30f;
};
template <>
struct Traits<double> {
    static constexpr int NR = 8;
    static constexpr int MR = 4;
    static constexpr double NEG = -1.0e300;
};

template <typename T>
struct Scratch {
    T* zn;
    T* zp;
    T* norm;
};

template <typename T>
Scratch<T> layout(T* base, int64_t M, int64_t Dp) {
    const int64_t Mp = round_up(M, kPad);
    return {base, base + M * Dp, base + M * Dp + Mp * Dp};
}

// zn = z / max(|z|, eps) (or z), zero-padded; zp = its panels; norm = |z|.
template <typename S, typename T>
void prepare(const S* z, int64_t M, int64_t D, int64_t stride, bool normalize, T eps,
             Scratch<T> sc) {
    constexpr int NR = Traits<T>::NR;
    const int64_t Dp = round_up(D, kPad);
    const int64_t Mp = round_up(M, kPad);
    const bool par = M * M * D >= kParallelWork;
#pragma omp parallel for schedule(static) if (par)
    for (int64_t i = 0; i < M; ++i) {
        const S* zi = z + i * stride;
        T* out = sc.zn + i * Dp;
        T ss = 0;
        for (int64_t d = 0; d < D; ++d) {
            const T v = static_cast<T>(muse::to_float(zi[d]));
            out[d] = v;
            ss += v * v;
        }
        const T nrm = std::sqrt(ss);
        sc.norm[i] = nrm;
        const T rn = normalize ? T(1) / std::max(nrm, eps) : T(1);
        for (int64_t d = 0; d < D; ++d) out[d] *= rn;
        for (int64_t d = D; d < Dp; ++d) out[d] = 0;
    }
    const int64_t npanel = Mp / NR;
#pragma omp parallel for schedule(static) if (par)
    for (int64_t p = 0; p < npanel; ++p) {
        T* panel = sc.zp + p * Dp * NR;
        for (int64_t j = 0; j < NR; ++j) {
            const int64_t row = p * NR + j;
            if (row < M) {
                const T* src = sc.zn + row * Dp;
                for (int64_t d = 0; d < Dp; ++d) panel[d * NR + j] = src[d];
            } else {
                for (int64_t d = 0; d < Dp; ++d) panel[d * NR + j] = 0;
            }
        }
    }
}

// out[r][j] = <a_r, panel column j> for MR rows a (stride Dp) and one panel (Dp x NR).
template <typename T, int MR>
inline void sim_micro(const T* a, int64_t Dp, const T* panel, T* out, int64_t ldo) {
    constexpr int NR = Traits<T>::NR;
    T acc[MR][NR] = {};
    for (int64_t d = 0; d < Dp; ++d) {
        const T* b = panel + d * NR;
        for (int r = 0; r < MR; ++r) {
            const T av = a[r * Dp + d];
#pragma omp simd
            for (int j = 0; j < NR; ++j) acc[r][j] += av * b[j];
        }
    }
    for (int r = 0; r < MR; ++r)
        for (int j = 0; j < NR; ++j) out[r * ldo + j] = acc[r][j];
}

// S (bm x BN, ld BN) = zn[r0 .. r0+bm) . zn[k0 .. k0+kn)^T   (kn rounded up to panels)
template <typename T>
void sim_tile(const Scratch<T>& sc, int64_t Dp, int64_t r0, int64_t bm, int64_t k0, int64_t kn,
              T* S) {
    constexpr int NR = Traits<T>::NR;
    constexpr int MR = Traits<T>::MR;
    const int64_t np = (kn + NR - 1) / NR;
    const T* panels = sc.zp + (k0 / NR) * Dp * NR;
    int64_t i = 0;
    for (; i + MR <= bm; i += MR)
        for (int64_t p = 0; p < np; ++p)
            sim_micro<T, MR>(sc.zn + (r0 + i) * Dp, Dp, panels + p * Dp * NR, S + i * BN + p * NR,
                             BN);
    for (; i < bm; ++i)
        for (int64_t p = 0; p < np; ++p)
            sim_micro<T, 1>(sc.zn + (r0 + i) * Dp, Dp, panels + p * Dp * NR, S + i * BN + p * NR,
                            BN);
}

// acc[r][d0 .. d0+NR) += sum_k W[r][k] zn[k0+k][d0 .. d0+NR) for MR rows.
template <typename T, int MR>
inline void wz_micro(const T* W, int64_t kn, const T* zk, int64_t Dp, int64_t d0, T* acc) {
    constexpr int NR = Traits<T>::NR;
    T c[MR][NR];
    for (int r = 0; r < MR; ++r)
        for (int j = 0; j < NR; ++j) c[r][j] = acc[r * Dp + d0 + j];
    for (int64_t k = 0; k < kn; ++k) {
        const T* b = zk + k * Dp + d0;
        for (int r = 0; r < MR; ++r) {
            const T w = W[r * BN + k];
#pragma omp simd
            for (int j = 0; j < NR; ++j) c[r][j] += w * b[j];
        }
    }
    for (int r = 0; r < MR; ++r)
        for (int j = 0; j < NR; ++j) acc[r * Dp + d0 + j] = c[r][j];
}

template <typename T>
void wz_tile(const T* W, int64_t bm, int64_t kn, const T* zk, int64_t Dp, T* acc) {
    constexpr int NR = Traits<T>::NR;
    constexpr int MR = Traits<T>::MR;
    int64_t i = 0;
    for (; i + MR <= bm; i += MR)
        for (int64_t d0 = 0; d0 < Dp; d0 += NR)
            wz_micro<T, MR>(W + i * BN, kn, zk, Dp, d0, acc + i * Dp);
    for (; i < bm; ++i)
        for (int64_t d0 = 0; d0 < Dp; d0 += NR)
            wz_micro<T, 1>(W + i * BN, kn, zk, Dp, d0, acc + i * Dp);
}

// acc[r][d0 .. d0+NR) += sum_i W[i][k+r] zn_i[d0 .. d0+NR) for MR output rows k+r:
// the transposed product W^T z_I of the symmetric backward.
template <typename T, int MR>
inline void wzt_micro(const T* W, int64_t bm, int64_t k, const T* zi, int64_t Dp, int64_t d0,
                      T* acc) {
    constexpr int NR = Traits<T>::NR;
    T c[MR][NR];
    for (int r = 0; r < MR; ++r)
        for (int j = 0; j < NR; ++j) c[r][j] = acc[r * Dp + d0 + j];
    for (int64_t i = 0; i < bm; ++i) {
        const T* b = zi + i * Dp + d0;
        for (int r = 0; r < MR; ++r) {
            const T w = W[i * BN + k + r];
#pragma omp simd
            for (int j = 0; j < NR; ++j) c[r][j] += w * b[j];
        }
    }
    for (int r = 0; r < MR; ++r)
        for (int j = 0; j < NR; ++j) acc[r * Dp + d0 + j] = c[r][j];
}

// acc (kn x Dp) += W(bm x kn)^T zi (bm x Dp)
template <typename T>
void wzt_tile(const T* W, int64_t bm, int64_t kn, const T* zi, int64_t Dp, T* acc) {
    constexpr int NR = Traits<T>::NR;
    constexpr int MR = Traits<T>::MR;
    int64_t k = 0;
    for (; k + MR <= kn; k += MR)
        for (int64_t d0 = 0; d0 < Dp; d0 += NR)
            wzt_micro<T, MR>(W, bm, k, zi, Dp, d0, acc + k * Dp);
    for (; k < kn; ++k)
        for (int64_t d0 = 0; d0 < Dp; d0 += NR) wzt_micro<T, 1>(W, bm, k, zi, Dp, d0, acc + k * Dp);
}

template <typename S, typename T>
inline S store_as(T v) {
    if constexpr (std::is_same_v<S, double> || std::is_same_v<S, float>)
        return static_cast<S>(v);
    else
        return muse::from_float<S>(static_cast<float>(v));
}

struct Geometry {
    int64_t M, N, D, Dp, row_start, row_count;
    bool active(int64_t i) const {
        const int64_t r = (i < N ? i : i - N) - row_start;
        return r >= 0 && r < row_count;
    }
    // does [a, b) contain an active row?
    bool any_active(int64_t a, int64_t b) const {
        const int64_t lo1 = row_start, hi1 = row_start + row_count;
        const int64_t lo2 = N + row_start, hi2 = N + row_start + row_count;
        return (a < hi1 && lo1 < b) || (a < hi2 && lo2 < b);
    }
    int64_t partner(int64_t i) const { return i < N ? i + N : i - N; }
};

}  // namespace muse::ntx
