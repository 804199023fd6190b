// CUDA version of kernels/activation.h: elementwise, FP32 from the storage dtype, one rounding on store.
// Half and bf16 buffers of a multiple of 8 elements, 16-byte aligned, move as 16-byte packs.
// The formulas mirror the CPU twin term for term (same ReLU NaN and zero conventions), so the two differ
// only by tanhf against std::tanh and FMA contraction: a few FP32 ulps before the final rounding.
#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "kernels/activation.h"
#include "kernels/cuda/cuda_util.cuh"

namespace mpt::cuda {

using namespace mpt::cuda_detail;

// dy and dz may be the same buffer: each element is read before it is written, by the same thread.
template <class T, Act A>
static __global__ void act_forward_kernel(const T* z, T* y, size_t n) {
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float v = load_f32(z, i);
    store_f32(y, i, A == Act::Gelu ? gelu_tanh(v) : relu_nan(v));
  }
}

template <class T, Act A>
static __global__ void act_backward_kernel(const T* z, const T* dy, T* dz, size_t n) {
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float v = load_f32(z, i), g = load_f32(dy, i);
    store_f32(dz, i, A == Act::Gelu ? g * gelu_tanh_grad(v) : (v > 0.f ? g : 0.f));
  }
}

// 16-byte version for half and bf16 storage (n a multiple of 8, pointers 16-byte aligned): the same
// per-element formulas, eight elements per load.
template <class T> struct alignas(16) Pack8 {
  T v[8];
};
template <class T, Act A>
static __global__ void act_forward_vec_kernel(const Pack8<T>* z, Pack8<T>* y, size_t n8) {
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n8; i += stride) {
    const Pack8<T> zv = z[i];
    Pack8<T> o;
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float v = to_f32(zv.v[e]);
      o.v[e] = from_f32<T>(A == Act::Gelu ? gelu_tanh(v) : relu_nan(v));
    }
    y[i] = o;
  }
}
template <class T, Act A>
static __global__ void act_backward_vec_kernel(const Pack8<T>* z, const Pack8<T>* dy, Pack8<T>* dz, size_t n8) {
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n8; i += stride) {
    const Pack8<T> zv = z[i], gv = dy[i];
    Pack8<T> o;
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float v = to_f32(zv.v[e]), g = to_f32(gv.v[e]);
      o.v[e] = from_f32<T>(A == Act::Gelu ? g * gelu_tanh_grad(v) : (v > 0.f ? g : 0.f));
    }
    dz[i] = o;
  }
}

namespace {
bool vec_ok(DType t, size_t n, std::initializer_list<const void*> ps) {
  if (!is_half(t) || n % 8 != 0) return false;
  for (const void* p : ps)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}
}  // namespace

void act_forward(Act act, const void* z, void* y, DType t, size_t n, Stream s) {
  if (n == 0) return;
  if (!z || !y) kernel_arg_error("act_forward", "null pointer");
  if (act != Act::Gelu && act != Act::Relu) kernel_arg_error("act_forward", "unknown activation");
  if (vec_ok(t, n, {z, y})) {
    const size_t n8 = n / 8;
    dispatch_dtype(t, "act_forward", [&](auto tag) {
      using T = typename decltype(tag)::type;
      if constexpr (!std::is_same_v<T, float>) {
        const auto* zp = static_cast<const Pack8<T>*>(z);
        auto* yp = static_cast<Pack8<T>*>(y);
        if (act == Act::Gelu) act_forward_vec_kernel<T, Act::Gelu><<<grid_for(n8), kBlock, 0, to_cuda(s)>>>(zp, yp, n8);
        else act_forward_vec_kernel<T, Act::Relu><<<grid_for(n8), kBlock, 0, to_cuda(s)>>>(zp, yp, n8);
      }
    });
    MPT_LAUNCH_CHECK("act_forward_vec_kernel");
    return;
  }
  const unsigned grid = grid_for(n);
  dispatch_dtype(t, "act_forward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (act == Act::Gelu)
      act_forward_kernel<T, Act::Gelu><<<grid, kBlock, 0, to_cuda(s)>>>(static_cast<const T*>(z), static_cast<T*>(y), n);
    else
      act_forward_kernel<T, Act::Relu><<<grid, kBlock, 0, to_cuda(s)>>>(static_cast<const T*>(z), static_cast<T*>(y), n);
  });
  MPT_LAUNCH_CHECK("act_forward_kernel");
}

void act_backward(Act act, const void* z, const void* dy, void* dz, DType t, size_t n, Stream s) {
  if (n == 0) return;
  if (!z || !dy || !dz) kernel_arg_error("act_backward", "null pointer");
  if (act != Act::Gelu && act != Act::Relu) kernel_arg_error("act_backward", "unknown activation");
  if (vec_ok(t, n, {z, dy, dz})) {
    const size_t n8 = n / 8;
    dispatch_dtype(t, "act_backward", [&](auto tag) {
      using T = typename decltype(tag)::type;
      if constexpr (!std::is_same_v<T, float>) {
        const auto* zp = static_cast<const Pack8<T>*>(z);
        const auto* gp = static_cast<const Pack8<T>*>(dy);
        auto* dp = static_cast<Pack8<T>*>(dz);
        if (act == Act::Gelu)
          act_backward_vec_kernel<T, Act::Gelu><<<grid_for(n8), kBlock, 0, to_cuda(s)>>>(zp, gp, dp, n8);
        else
          act_backward_vec_kernel<T, Act::Relu><<<grid_for(n8), kBlock, 0, to_cuda(s)>>>(zp, gp, dp, n8);
      }
    });
    MPT_LAUNCH_CHECK("act_backward_vec_kernel");
    return;
  }
  const unsigned grid = grid_for(n);
  dispatch_dtype(t, "act_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* zp = static_cast<const T*>(z);
    const T* dyp = static_cast<const T*>(dy);
    T* dzp = static_cast<T*>(dz);
    if (act == Act::Gelu)
      act_backward_kernel<T, Act::Gelu><<<grid, kBlock, 0, to_cuda(s)>>>(zp, dyp, dzp, n);
    else
      act_backward_kernel<T, Act::Relu><<<grid, kBlock, 0, to_cuda(s)>>>(zp, dyp, dzp, n);
  });
  MPT_LAUNCH_CHECK("act_backward_kernel");
}

}  // namespace mpt::cuda
