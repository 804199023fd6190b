// CUDA version of kernels/cast.h. Every conversion goes through FP32 (exact for all three storage
// types) and rounds once with the _rn intrinsics, which src/core/dtype.h matches bit for bit, so the result
// equals the CPU twin exactly, NaN included.
#include "kernels/cast.h"
#include "kernels/cuda/cuda_util.cuh"

namespace mpt::cuda {

using namespace mpt::cuda_detail;

template <class X, class Y>
static __global__ void cast_kernel(const X* __restrict__ x, Y* __restrict__ y, size_t n) {
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) store_f32(y, i, load_f32(x, i));
}

void cast(const void* x, DType xt, void* y, DType yt, size_t n, Stream s) {
  if (n == 0) return;
  if (!x || !y) kernel_arg_error("cast", "null pointer");
  if (xt == yt) {
    if (x != y) MPT_CUDA_CHECK(cudaMemcpyAsync(y, x, n * dtype_size(xt), cudaMemcpyDeviceToDevice, to_cuda(s)));
    return;
  }
  const unsigned grid = grid_for(n);
  dispatch_dtype(xt, "cast", [&](auto xtag) {
    using X = typename decltype(xtag)::type;
    dispatch_dtype(yt, "cast", [&](auto ytag) {
      using Y = typename decltype(ytag)::type;
      cast_kernel<X, Y><<<grid, kBlock, 0, to_cuda(s)>>>(static_cast<const X*>(x), static_cast<Y*>(y), n);
    });
  });
  MPT_LAUNCH_CHECK("cast_kernel");
}

}  // namespace mpt::cuda
