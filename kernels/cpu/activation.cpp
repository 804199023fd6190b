// CPU twin of kernels/activation.h. Works through FP32 chunks so that every element is converted once,
// computed in FP32 and rounded once on store, as the CUDA kernels do.
#include "kernels/activation.h"

#include <algorithm>
#include <cmath>

namespace mpt::cpu {
namespace {

constexpr float kGeluC = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kGeluA = 0.044715f;
constexpr size_t kChunk = 1024;

inline float gelu(float z) {
  const float t = std::tanh(kGeluC * (z + kGeluA * z * z * z));
  return 0.5f * z * (1.f + t);
}
inline float gelu_grad(float z) {
  const float t = std::tanh(kGeluC * (z + kGeluA * z * z * z));
  const float dinner = kGeluC * (1.f + 3.f * kGeluA * z * z);
  return 0.5f * (1.f + t) + 0.5f * z * (1.f - t * t) * dinner;
}
// `z < 0 ? 0 : z` rather than max(z, 0): a NaN from an overflowed forward must reach the loss so that the
// step is detected as non-finite instead of being silently zeroed here.
inline float relu(float z) { return z < 0.f ? 0.f : z; }
inline float relu_grad_mul(float z, float dy) { return z > 0.f ? dy : 0.f; }

}  // namespace

void act_forward(Act act, const void* z, void* y, DType t, size_t n) {
  if (n == 0) return;
  if (!z || !y) kernel_arg_error("act_forward", "null pointer");
  float buf[kChunk];
  const size_t es = dtype_size(t);
  for (size_t i0 = 0; i0 < n; i0 += kChunk) {
    const size_t len = std::min(kChunk, n - i0);
    to_float_n(static_cast<const char*>(z) + i0 * es, t, buf, len);
    if (act == Act::Gelu) {
      for (size_t i = 0; i < len; ++i) buf[i] = gelu(buf[i]);
    } else {
      for (size_t i = 0; i < len; ++i) buf[i] = relu(buf[i]);
    }
    from_float_n(buf, static_cast<char*>(y) + i0 * es, t, len);
  }
}

void act_backward(Act act, const void* z, const void* dy, void* dz, DType t, size_t n) {
  if (n == 0) return;
  if (!z || !dy || !dz) kernel_arg_error("act_backward", "null pointer");
  float zb[kChunk], gb[kChunk];
  const size_t es = dtype_size(t);
  for (size_t i0 = 0; i0 < n; i0 += kChunk) {
    const size_t len = std::min(kChunk, n - i0);
    to_float_n(static_cast<const char*>(z) + i0 * es, t, zb, len);
    to_float_n(static_cast<const char*>(dy) + i0 * es, t, gb, len);
    if (act == Act::Gelu) {
      for (size_t i = 0; i < len; ++i) gb[i] = gb[i] * gelu_grad(zb[i]);
    } else {
      for (size_t i = 0; i < len; ++i) gb[i] = relu_grad_mul(zb[i], gb[i]);
    }
    from_float_n(gb, static_cast<char*>(dz) + i0 * es, t, len);
  }
}

}  // namespace mpt::cpu
