// CUDA version of kernels/unscale_stats.h, two kernels and no atomics:
//  1. a grid-stride pass writes out[i] = g[i] * inv_scale and leaves, per block, the FP32 sum of squares of
//     the finite elements and the integer count of non-finite ones in the per-stream scratch;
//  2. one block adds the partials (tree order fixed by the block size) and adds them into stats[0..1].
// The grid size depends only on n (not on the device), every thread visits its elements in a fixed order,
// and the block reductions are fixed-order, so equal inputs give equal bits on every run and device.
#include "kernels/cuda/cuda_util.cuh"
#include "kernels/unscale_stats.h"

namespace mpt::cuda {

using namespace mpt::cuda_detail;

namespace {
constexpr int kStatBlock = 256;
constexpr int kMaxParts = 1024;     // = the finishing block's size
constexpr int kItemsPerThread = 8;  // below this much work per thread, fewer blocks
}  // namespace

template <class T>
static __global__ void __launch_bounds__(kStatBlock)
    unscale_partial_kernel(const T* g, size_t n, float inv_scale, float* out, float* __restrict__ part_sum,
                           unsigned long long* __restrict__ part_count) {
  __shared__ float fshm[33];
  __shared__ unsigned long long cshm[33];
  float s = 0.f;
  unsigned long long c = 0;
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float v = to_f32(g[i]);
    const float o = v * inv_scale;
    if (out) out[i] = o;
    if (isfinite(v))
      s += o * o;
    else
      ++c;
  }
  s = block_sum(s, fshm);
  c = block_sum(c, cshm);
  if (threadIdx.x == 0) {
    part_sum[blockIdx.x] = s;
    part_count[blockIdx.x] = c;
  }
}

static __global__ void __launch_bounds__(kMaxParts)
    unscale_finish_kernel(const float* __restrict__ part_sum, const unsigned long long* __restrict__ part_count,
                          int parts, float* __restrict__ stats) {
  __shared__ float fshm[33];
  __shared__ unsigned long long cshm[33];
  const int t = threadIdx.x;
  const float s = block_sum(t < parts ? part_sum[t] : 0.f, fshm);
  const unsigned long long c = block_sum(t < parts ? part_count[t] : 0ull, cshm);
  if (t == 0) {
    stats[0] += float(c);
    stats[1] += s;
  }
}

// One block per segment: its sum of squares and non-finite count into part_sum / part_count[blockIdx.x].
template <class T>
static __global__ void __launch_bounds__(kStatBlock)
    unscale_segments_kernel(const T* __restrict__ g, const StatSegment* __restrict__ segs, float inv_scale,
                            float* __restrict__ part_sum, unsigned long long* __restrict__ part_count) {
  __shared__ float fshm[33];
  __shared__ unsigned long long cshm[33];
  const StatSegment sg = segs[blockIdx.x];
  const T* p = g + sg.off;
  float s = 0.f;
  unsigned long long c = 0;
  for (int64_t i = threadIdx.x; i < sg.len; i += blockDim.x) {
    const float v = to_f32(p[i]);
    const float o = v * inv_scale;
    if (isfinite(v))
      s += o * o;
    else
      ++c;
  }
  s = block_sum(s, fshm);
  c = block_sum(c, cshm);
  if (threadIdx.x == 0) {
    part_sum[blockIdx.x] = s;
    part_count[blockIdx.x] = c;
  }
}

// Adds `parts` partials in a fixed order (thread t takes t, t + 1024, ... in turn, then a fixed tree).
static __global__ void __launch_bounds__(kMaxParts)
    unscale_segments_finish_kernel(const float* __restrict__ part_sum,
                                   const unsigned long long* __restrict__ part_count, int parts,
                                   float* __restrict__ stats) {
  __shared__ float fshm[33];
  __shared__ unsigned long long cshm[33];
  float s = 0.f;
  unsigned long long c = 0;
  for (int i = int(threadIdx.x); i < parts; i += int(blockDim.x)) s += part_sum[i], c += part_count[i];
  s = block_sum(s, fshm);
  c = block_sum(c, cshm);
  if (threadIdx.x == 0) {
    stats[0] += float(c);
    stats[1] += s;
  }
}

void unscale_stats_segments(const void* g, DType gt, const StatSegment* segs, int nsegs, float inv_scale,
                            float* stats, Stream s) {
  if (nsegs <= 0) return;
  if (!g || !segs || !stats) kernel_arg_error("unscale_stats_segments", "null pointer");
  auto* part_count = static_cast<unsigned long long*>(
      stream_scratch(s, size_t(nsegs) * (sizeof(unsigned long long) + sizeof(float))));
  auto* part_sum = reinterpret_cast<float*>(part_count + nsegs);
  const cudaStream_t st = to_cuda(s);
  dispatch_dtype(gt, "unscale_stats_segments", [&](auto tag) {
    using T = typename decltype(tag)::type;
    unscale_segments_kernel<T><<<unsigned(nsegs), kStatBlock, 0, st>>>(static_cast<const T*>(g), segs, inv_scale,
                                                                       part_sum, part_count);
  });
  MPT_LAUNCH_CHECK("unscale_segments_kernel");
  unscale_segments_finish_kernel<<<1, kMaxParts, 0, st>>>(part_sum, part_count, nsegs, stats);
  MPT_LAUNCH_CHECK("unscale_segments_finish_kernel");
}

void unscale_stats(const void* g, DType gt, size_t n, float inv_scale, float* out, float* stats, Stream s) {
  if (n == 0) return;
  if (!g || !stats) kernel_arg_error("unscale_stats", "null pointer");
  const size_t per_block = size_t(kStatBlock) * kItemsPerThread;
  const int parts = int(std::min<size_t>((n + per_block - 1) / per_block, kMaxParts));
  // Partials: `parts` counts (8-byte aligned first) then `parts` sums.
  auto* part_count = static_cast<unsigned long long*>(
      stream_scratch(s, size_t(parts) * (sizeof(unsigned long long) + sizeof(float))));
  auto* part_sum = reinterpret_cast<float*>(part_count + parts);
  const cudaStream_t st = to_cuda(s);
  dispatch_dtype(gt, "unscale_stats", [&](auto tag) {
    using T = typename decltype(tag)::type;
    unscale_partial_kernel<T><<<unsigned(parts), kStatBlock, 0, st>>>(static_cast<const T*>(g), n, inv_scale, out,
                                                                      part_sum, part_count);
  });
  MPT_LAUNCH_CHECK("unscale_partial_kernel");
  unscale_finish_kernel<<<1, kMaxParts, 0, st>>>(part_sum, part_count, parts, stats);
  MPT_LAUNCH_CHECK("unscale_finish_kernel");
}

}  // namespace mpt::cuda
