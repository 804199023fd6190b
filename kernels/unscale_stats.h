// The fused pass of step 3 in DESIGN.md over one gradient shard:
//   out[i] = float(g[i]) * inv_scale                      (out may be null: statistics only)
//   stats[0] += number of non-finite g[i] (inf or nan)
//   stats[1] += sum of out[i]^2 over the finite elements
// stats is FP32, two floats (device memory for cuda::). The sum runs in FP32 in a fixed order:
// deterministic, no float atomics, so equal inputs give equal bits run after run.
#pragma once
#include "kernels/exec.h"

namespace mpt {
namespace cpu {
void unscale_stats(const void* g, DType gt, size_t n, float inv_scale, float* out, float* stats);
}
namespace cuda {
void unscale_stats(const void* g, DType gt, size_t n, float inv_scale, float* out, float* stats, Stream s);
}
namespace ops {
inline void unscale_stats(const Exec& e, const void* g, DType gt, size_t n, float inv_scale, float* out, float* stats) {
  OpScope scope(e, [&] { return OpInfo{"unscale_stats", 3.0 * double(n), double(n) * (double(dtype_size(gt)) + 4)}; });
  e.cuda() ? cuda::unscale_stats(g, gt, n, inv_scale, out, stats, e.stream)
           : cpu::unscale_stats(g, gt, n, inv_scale, out, stats);
}
}  // namespace ops
}  // namespace mpt
