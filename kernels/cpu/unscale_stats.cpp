// CPU twin of kernels/unscale_stats.h.
// The sum of squares is a fixed two-level order: eight interleaved FP32 lanes over blocks of kBlock
// elements, the lanes combined in a fixed order, block totals added in sequence. Deterministic, and the
// rounding error grows with kBlock / 8 + n / kBlock instead of n.
#include "kernels/unscale_stats.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace mpt::cpu {
namespace {

constexpr size_t kBlock = 4096;
constexpr int kLanes = 8;

// Widening to FP32 keeps inf as inf and NaN as NaN, so the test can run on the converted value.
inline bool finite(float x) { return (float_bits(x) & 0x7f800000u) != 0x7f800000u; }

}  // namespace

void unscale_stats(const void* g, DType gt, size_t n, float inv_scale, float* out, float* stats) {
  if (n == 0) return;
  if (!g || !stats) kernel_arg_error("unscale_stats", "null pointer");
  float buf[kBlock];
  const size_t es = dtype_size(gt);
  size_t nonfinite = 0;
  float total = 0.f;
  for (size_t i0 = 0; i0 < n; i0 += kBlock) {
    const size_t len = std::min(kBlock, n - i0);
    const char* src = static_cast<const char*>(g) + i0 * es;
    to_float_n(src, gt, buf, len);
    float lane[kLanes] = {};
    for (size_t i = 0; i < len; ++i) {
      const float u = buf[i] * inv_scale;
      if (finite(buf[i])) {
        lane[i % kLanes] += u * u;
      } else {
        ++nonfinite;
      }
      buf[i] = u;
    }
    // Written after g's block was read in full, so out may alias an FP32 g.
    if (out) std::copy(buf, buf + len, out + i0);
    float block = 0.f;
    for (int l = 0; l < kLanes; ++l) block += lane[l];
    total += block;
  }
  stats[0] += float(nonfinite);
  stats[1] += total;
}

void unscale_stats_segments(const void* g, DType gt, const StatSegment* segs, int nsegs, float inv_scale,
                            float* stats) {
  if (nsegs <= 0) return;
  if (!g || !segs || !stats) kernel_arg_error("unscale_stats_segments", "null pointer");
  const size_t es = dtype_size(gt);
  float buf[kStatSegmentMax];
  float count = 0.f, total = 0.f;
  for (int k = 0; k < nsegs; ++k) {
    const StatSegment& s = segs[k];
    if (s.len < 0 || s.len > kStatSegmentMax) kernel_arg_error("unscale_stats_segments", "segment length out of range");
    to_float_n(static_cast<const char*>(g) + size_t(s.off) * es, gt, buf, size_t(s.len));
    // Per segment: eight interleaved lanes combined in order, as in unscale_stats; then segment order.
    float lane[kLanes] = {};
    size_t bad = 0;
    for (int64_t i = 0; i < s.len; ++i) {
      const float u = buf[i] * inv_scale;
      if (finite(buf[i])) lane[i % kLanes] += u * u;
      else ++bad;
    }
    float seg = 0.f;
    for (int l = 0; l < kLanes; ++l) seg += lane[l];
    total += seg;
    count += float(bad);
  }
  stats[0] += count;
  stats[1] += total;
}

}  // namespace mpt::cpu
