// CUDA version of kernels/activation.h: elementwise, FP32 from the storage dtype, one rounding on store.
// The formulas mirror the CPU twin term for term (same ReLU NaN and zero conventions), so the two differ
// only by tanhf against std::tanh and FMA contraction: a few FP32 ulps before the final rounding.
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

void act_forward(Act act, const void* z, void* y, DType t, size_t n, Stream s) {
  if (n == 0) return;
  if (!z || !y) kernel_arg_error("act_forward", "null pointer");
  if (act != Act::Gelu && act != Act::Relu) kernel_arg_error("act_forward", "unknown activation");
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
