// A store helper shared by the masking families' CPU kernels (token_mask.cpp,
// patch_embed.cpp, span_mask.cpp).
#pragma once

#include <type_traits>

#include "common.h"

namespace muse {

// Store an accumulator value (float, or double for float64 data) as T without going through
// float for double.
template <typename T, typename Acc>
inline T store_acc(Acc v) {
    if constexpr (std::is_same_v<T, double>) {
        return static_cast<double>(v);
    } else {
        return from_float<T>(static_cast<float>(v));
    }
}

}  // namespace muse
