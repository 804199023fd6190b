// CPU twin of kernels/accumulate.h. Converts in chunks through FP32 so that the half formats round once
// per element with the same rounding as src/core/dtype.h (and hence as CUDA's _rn conversions).
#include "kernels/accumulate.h"

#include <algorithm>

namespace mpt::cpu {

void accumulate(const void* src, void* dst, DType t, size_t n) {
  if (n == 0) return;
  if (!src || !dst) kernel_arg_error("accumulate", "null pointer");
  if (t == DType::F32) {
    const float* s = static_cast<const float*>(src);
    float* d = static_cast<float*>(dst);
    for (size_t i = 0; i < n; ++i) d[i] += s[i];
    return;
  }
  constexpr size_t kChunk = 2048;
  float a[kChunk], b[kChunk];
  const size_t es = dtype_size(t);
  for (size_t i0 = 0; i0 < n; i0 += kChunk) {
    const size_t len = std::min(kChunk, n - i0);
    char* d = static_cast<char*>(dst) + i0 * es;
    to_float_n(d, t, a, len);
    to_float_n(static_cast<const char*>(src) + i0 * es, t, b, len);
    for (size_t i = 0; i < len; ++i) a[i] += b[i];
    from_float_n(a, d, t, len);
  }
}

void sum_parts(const void* parts, void* dst, DType t, size_t n, int p) {
  if (n == 0) return;
  if (!parts || !dst) kernel_arg_error("sum_parts", "null pointer");
  if (p < 1) kernel_arg_error("sum_parts", "needs at least one block");
  constexpr size_t kChunk = 2048;
  float acc[kChunk], b[kChunk];
  const size_t es = dtype_size(t);
  const char* src = static_cast<const char*>(parts);
  for (size_t i0 = 0; i0 < n; i0 += kChunk) {
    const size_t len = std::min(kChunk, n - i0);
    to_float_n(src + i0 * es, t, acc, len);
    for (int r = 1; r < p; ++r) {
      to_float_n(src + (size_t(r) * n + i0) * es, t, b, len);
      for (size_t i = 0; i < len; ++i) acc[i] += b[i];
    }
    from_float_n(acc, static_cast<char*>(dst) + i0 * es, t, len);
  }
}

}  // namespace mpt::cpu
