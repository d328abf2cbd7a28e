// Shared helpers for muse_fast CPU kernels.
//
// The extension links against pybind11 only (never libtorch), so kernels take raw
// pointers (Python ints from `tensor.data_ptr()`), shapes, strides and a dtype name.
// The Python side (muse_fast/_ext.py) validates devices and shapes before calling;
// the checks here are the last line against a segfault.
#pragma once

#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

namespace muse {

// ---------------------------------------------------------------------------------------
// Argument checks: raise ValueError (std::invalid_argument) naming the argument.
// ---------------------------------------------------------------------------------------
#define MUSE_CHECK(cond, msg)                                       \
    do {                                                            \
        if (!(cond)) throw std::invalid_argument(std::string(msg)); \
    } while (0)

enum class DType { f32, f64, f16, bf16, i64, i32, u8, b8 };

inline DType parse_dtype(const std::string& s, const char* arg) {
    if (s == "float32") return DType::f32;
    if (s == "float64") return DType::f64;
    if (s == "float16") return DType::f16;
    if (s == "bfloat16") return DType::bf16;
    if (s == "int64") return DType::i64;
    if (s == "int32") return DType::i32;
    if (s == "uint8") return DType::u8;
    if (s == "bool") return DType::b8;
    throw std::invalid_argument(std::string(arg) + ": unsupported dtype '" + s + "'");
}

template <typename T>
inline T* ptr(std::uintptr_t p) {
    return reinterpret_cast<T*>(p);
}

// ---------------------------------------------------------------------------------------
// 16-bit floats: storage types with float conversion (round-to-nearest-even on store).
// ---------------------------------------------------------------------------------------
struct bf16_t {
    uint16_t x;
};
struct f16_t {
    uint16_t x;
};

inline float to_float(float v) { return v; }
inline double to_float(double v) { return v; }
inline float to_float(bf16_t v) {
    uint32_t u = static_cast<uint32_t>(v.x) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline float to_float(f16_t v) {
    const uint32_t h = v.x;
    const uint32_t sign = (h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t u;
    if (exp == 0) {
        if (mant == 0) {
            u = sign;
        } else {  // subnormal: renormalize
            exp = 127 - 15 + 1;
            while ((mant & 0x400u) == 0) {
                mant <<= 1;
                --exp;
            }
            mant &= 0x3ffu;
            u = sign | (exp << 23) | (mant << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (mant << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

template <typename T>
inline T from_float(float v);
template <>
inline float from_float<float>(float v) {
    return v;
}
template <>
inline double from_float<double>(float v) {
    return v;
}
template <>
inline bf16_t from_float<bf16_t>(float v) {
    uint32_t u;
    std::memcpy(&u, &v, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return bf16_t{static_cast<uint16_t>((u >> 16) | 0x40u)};
    u += 0x7fffu + ((u >> 16) & 1u);
    return bf16_t{static_cast<uint16_t>(u >> 16)};
}
template <>
inline f16_t from_float<f16_t>(float v) {
    uint32_t u;
    std::memcpy(&u, &v, 4);
    const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
    const uint32_t au = u & 0x7fffffffu;
    if (au > 0x7f800000u) return f16_t{static_cast<uint16_t>(sign | 0x7e00u)};   // NaN
    if (au >= 0x477ff000u) return f16_t{static_cast<uint16_t>(sign | 0x7c00u)};  // overflow -> inf
    if (au < 0x38800000u) {  // subnormal or zero in half
        if (au < 0x33000000u) return f16_t{sign};
        const uint32_t e = au >> 23;
        const uint32_t m = (au & 0x7fffffu) | 0x800000u;
        const uint32_t shift = 126 - e;  // half subnormal unit is 2^-24: m * 2^(e-150) / 2^-24
        const uint32_t hm = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1u);
        const uint32_t half = 1u << (shift - 1);
        const uint32_t res = hm + ((rem > half || (rem == half && (hm & 1u))) ? 1u : 0u);
        return f16_t{static_cast<uint16_t>(sign | res)};
    }
    uint32_t r = au + 0xc8000fffu + ((au >> 13) & 1u);  // rebias exponent (-112 << 23) and round
    return f16_t{static_cast<uint16_t>(sign | (r >> 13))};
}

// Call `f(T{})` with the storage type named by `dt` (floating types only).
template <typename F>
inline void dispatch_floating(DType dt, const char* arg, F&& f) {
    switch (dt) {
        case DType::f32:
            f(float{});
            break;
        case DType::f64:
            f(double{});
            break;
        case DType::bf16:
            f(bf16_t{});
            break;
        case DType::f16:
            f(f16_t{});
            break;
        default:
            throw std::invalid_argument(std::string(arg) + ": expected a floating dtype");
    }
}

// ---------------------------------------------------------------------------------------
// Philox-4x32-10 (Salmon et al. 2011), the generator Triton, cuRAND and our eager
// references share. muse_fast draws every random number as
//     philox(seed, c0, c1, c2, c3)[word]
// with the seed split into key (lo, hi) 32-bit halves, so the reference (torch integer
// ops), the C++ and the Triton kernels give bit-identical streams for one seed.
// ---------------------------------------------------------------------------------------
struct Philox4 {
    uint32_t v[4];
};

inline Philox4 philox4x32(uint64_t seed, uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3) {
    uint32_t k0 = static_cast<uint32_t>(seed & 0xffffffffu);
    uint32_t k1 = static_cast<uint32_t>(seed >> 32);
    for (int r = 0; r < 10; ++r) {
        const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
        const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
        const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
        const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
        c1 = static_cast<uint32_t>(p1);
        c3 = static_cast<uint32_t>(p0);
        c0 = n0;
        c2 = n2;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    return Philox4{{c0, c1, c2, c3}};
}

// 24 random bits -> float uniform in [0, 1), exactly representable.
inline float u32_to_unit(uint32_t x) { return static_cast<float>(x >> 8) * (1.0f / 16777216.0f); }

inline int max_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

}  // namespace muse
