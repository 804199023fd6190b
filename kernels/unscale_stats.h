// The fused pass of step 3 in DESIGN.md over one gradient shard:
//   out[i] = float(g[i]) * inv_scale                      (out may be null: statistics only)
//   stats[0] += number of non-finite g[i] (inf or nan)
//   stats[1] += sum of out[i]^2 over the finite elements
// stats is FP32, two floats (device memory for cuda::). The sum runs in FP32 in a fixed order:
// deterministic, no float atomics, so equal inputs give equal bits run after run.
#pragma once
#include "kernels/exec.h"

namespace mpt {
//
// The statistics of a whole shard in one launch (unscale_stats_segments): segment k is g[off, off + len),
// at most kStatSegmentMax elements; the partial sums of the segments are added in segment order, so the
// result depends only on the segment list (not on the device, and not on how many blocks run). No output
// values: the update reads the scaled gradient itself (adamw_segments). `segs` points to memory of the
// executing device.
inline constexpr int64_t kStatSegmentMax = 8192;
struct StatSegment {
  int64_t off = 0, len = 0;
};

namespace cpu {
void unscale_stats(const void* g, DType gt, size_t n, float inv_scale, float* out, float* stats);
void unscale_stats_segments(const void* g, DType gt, const StatSegment* segs, int nsegs, float inv_scale,
                            float* stats);
}
namespace cuda {
void unscale_stats(const void* g, DType gt, size_t n, float inv_scale, float* out, float* stats, Stream s);
void unscale_stats_segments(const void* g, DType gt, const StatSegment* segs, int nsegs, float inv_scale,
                            float* stats, Stream s);
}
namespace ops {
inline void unscale_stats(const Exec& e, const void* g, DType gt, size_t n, float inv_scale, float* out, float* stats) {
  OpScope scope(e, [&] { return OpInfo{"unscale_stats", 3.0 * double(n), double(n) * (double(dtype_size(gt)) + 4)}; });
  e.cuda() ? cuda::unscale_stats(g, gt, n, inv_scale, out, stats, e.stream)
           : cpu::unscale_stats(g, gt, n, inv_scale, out, stats);
}
// elems: the total length of the segments (for the profile only).
inline void unscale_stats_segments(const Exec& e, const void* g, DType gt, const StatSegment* segs, int nsegs,
                                   int64_t elems, float inv_scale, float* stats) {
  OpScope scope(e, [&] { return OpInfo{"unscale_stats_segments", 3.0 * double(elems), double(elems) * double(dtype_size(gt))}; });
  e.cuda() ? cuda::unscale_stats_segments(g, gt, segs, nsegs, inv_scale, stats, e.stream)
           : cpu::unscale_stats_segments(g, gt, segs, nsegs, inv_scale, stats);
}
}  // namespace ops
}  // namespace mpt
