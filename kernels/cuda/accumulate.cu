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

}  // namespace mpt::cuda
