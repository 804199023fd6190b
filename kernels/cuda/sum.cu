// CUDA version of kernels/sum.h. One block: each thread sums a strided slice in double (coalesced
// loads), the block combines the partials by a fixed shared-memory tree, and thread 0 adds the result
// into acc with one rounding. The loss rows of a micro-batch are B*T floats (64 KiB at B = 16, T = 1024):
// a few microseconds on one SM, so a multi-block pass would gain nothing and cost determinism work.
#include "kernels/sum.h"
#include "kernels/cuda/cuda_util.cuh"

namespace mpt::cuda {

using namespace mpt::cuda_detail;

namespace {
constexpr int kSumThreads = 512;
}

static __global__ void __launch_bounds__(kSumThreads) sum_kernel(const float* __restrict__ x, int64_t n,
                                                                 float* __restrict__ acc) {
  __shared__ double part[kSumThreads];
  double s = 0;
  for (int64_t i = threadIdx.x; i < n; i += kSumThreads) s = __dadd_rn(s, double(x[i]));
  part[threadIdx.x] = s;
  __syncthreads();
  for (int w = kSumThreads / 2; w > 0; w /= 2) {
    if (int(threadIdx.x) < w) part[threadIdx.x] = __dadd_rn(part[threadIdx.x], part[threadIdx.x + w]);
    __syncthreads();
  }
  if (threadIdx.x == 0) acc[0] = __double2float_rn(__dadd_rn(double(acc[0]), part[0]));
}

void sum(const float* x, int64_t n, float* acc, Stream s) {
  if (n < 0) kernel_arg_error("sum", "negative length");
  if (!acc || (n > 0 && !x)) kernel_arg_error("sum", "null pointer");
  sum_kernel<<<1, kSumThreads, 0, to_cuda(s)>>>(x, n, acc);
  MPT_LAUNCH_CHECK("sum_kernel");
}

}  // namespace mpt::cuda
