// CUDA version of kernels/accumulate.h. The add is a plain FP32 add (no multiply, so nothing to
// contract into an FMA) and the store rounds once with the _rn intrinsics, so the result equals the CPU
// twin bit for bit.
#include "kernels/accumulate.h"
#include "kernels/cuda/cuda_util.cuh"

namespace mpt::cuda {

using namespace mpt::cuda_detail;

template <class T>
static __global__ void accumulate_kernel(const T* __restrict__ src, T* __restrict__ dst, size_t n) {
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    store_f32(dst, i, __fadd_rn(load_f32(dst, i), load_f32(src, i)));
}

void accumulate(const void* src, void* dst, DType t, size_t n, Stream s) {
  if (n == 0) return;
  if (!src || !dst) kernel_arg_error("accumulate", "null pointer");
  const unsigned grid = grid_for(n);
  dispatch_dtype(t, "accumulate", [&](auto tag) {
    using T = typename decltype(tag)::type;
    accumulate_kernel<T><<<grid, kBlock, 0, to_cuda(s)>>>(static_cast<const T*>(src), static_cast<T*>(dst), n);
  });
  MPT_LAUNCH_CHECK("accumulate_kernel");
}

template <class T>
static __global__ void sum_parts_kernel(const T* __restrict__ parts, T* __restrict__ dst, size_t n, int p) {
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    float acc = load_f32(parts, i);
    for (int r = 1; r < p; ++r) acc = __fadd_rn(acc, load_f32(parts, size_t(r) * n + i));
    store_f32(dst, i, acc);
  }
}

void sum_parts(const void* parts, void* dst, DType t, size_t n, int p, Stream s) {
  if (n == 0) return;
  if (!parts || !dst) kernel_arg_error("sum_parts", "null pointer");
  if (p < 1) kernel_arg_error("sum_parts", "needs at least one block");
  const unsigned grid = grid_for(n);
  dispatch_dtype(t, "sum_parts", [&](auto tag) {
    using T = typename decltype(tag)::type;
    sum_parts_kernel<T><<<grid, kBlock, 0, to_cuda(s)>>>(static_cast<const T*>(parts), static_cast<T*>(dst), n, p);
  });
  MPT_LAUNCH_CHECK("sum_parts_kernel");
}

}  // namespace mpt::cuda
