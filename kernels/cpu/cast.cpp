// CPU twin of kernels/cast.h. Goes through FP32, which holds every fp16 and bf16 value exactly, so a
// half -> half cast rounds once, the same as round_to(yt, x).
#include "kernels/cast.h"

#include <algorithm>
#include <cstring>

namespace mpt::cpu {

void cast(const void* x, DType xt, void* y, DType yt, size_t n) {
  if (n == 0) return;
  if (!x || !y) kernel_arg_error("cast", "null pointer");
  if (xt == yt) {
    std::memmove(y, x, n * dtype_size(xt));
    return;
  }
  if (xt == DType::F32) {
    from_float_n(static_cast<const float*>(x), y, yt, n);
    return;
  }
  if (yt == DType::F32) {
    to_float_n(x, xt, static_cast<float*>(y), n);
    return;
  }
  constexpr size_t kChunk = 2048;
  float buf[kChunk];
  const size_t xs = dtype_size(xt), ys = dtype_size(yt);
  for (size_t i0 = 0; i0 < n; i0 += kChunk) {
    const size_t len = std::min(kChunk, n - i0);
    to_float_n(static_cast<const char*>(x) + i0 * xs, xt, buf, len);
    from_float_n(buf, static_cast<char*>(y) + i0 * ys, yt, len);
  }
}

}  // namespace mpt::cpu
