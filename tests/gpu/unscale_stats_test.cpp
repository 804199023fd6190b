// cuda::unscale_stats against cpu::unscale_stats.
//
// out[i] = g[i] * inv_scale is one FP32 multiply on both sides: bit-identical. The non-finite count is an
// integer: exact. For the sum of squares two kinds of input:
//  (1) g = k/16 with |k| <= 15 and inv_scale a power of two: every square is a multiple of 2^-8 (times
//      inv_scale^2) below 1, and for n <= 65536 every partial sum stays below 2^16 in those units, which
//      FP32 holds exactly. The sums are exact in any order, so the GPU must equal the CPU bit for bit; this
//      catches any element missed, counted twice or counted although non-finite.
//  (2) General values: both sides sum positive terms in different fixed orders. Their relative rounding
//      error behaves like a random walk of ~2^-24 sqrt(length of the summation chain) <= 2^-24 sqrt(n);
//      the tolerance 2^-22 sqrt(n) relative is far above that and still far below any real mistake, which
//      case (1) pins down anyway.
#include <algorithm>
#include <cmath>

#include "kernels/unscale_stats.h"
#include "tests/gpu/gpu_test_util.h"

namespace mpt::test {
namespace {

// Gradient of dtype t with about one element in 200 non-finite (inf, -inf or NaN); `exact` selects k/16.
std::vector<uint8_t> grads(Rng& r, DType t, size_t n, bool exact) {
  std::vector<uint8_t> b(n * dtype_size(t));
  const float bad[] = {INFINITY, -INFINITY, NAN};
  for (size_t i = 0; i < n; ++i) {
    float v;
    if (r.below(200) == 0)
      v = bad[r.below(3)];
    else if (exact)
      v = float(int(r.below(31)) - 15) / 16.f;
    else
      v = r.uniform(-1.f, 1.f) * std::ldexp(1.f, int(r.below(16)));  // loss-scaled gradients span many binades
    store_elem(b.data(), t, i, v);
  }
  return b;
}

class UnscaleStatsGpu : public GpuTest, public ::testing::WithParamInterface<DType> {
 protected:
  // Returns {out, stats} from the GPU, stats starting at stats0.
  std::pair<std::vector<float>, std::vector<float>> run(const std::vector<uint8_t>& g, DType t, size_t n, float inv,
                                                        const std::vector<float>& stats0, bool with_out) {
    DeviceBuffer dg = to_device(g), dout(n * sizeof(float)), dstats = to_device(stats0);
    dout.fill(0xFF, stream());
    cuda::unscale_stats(dg.get(), t, n, inv, with_out ? dout.as<float>() : nullptr, dstats.as<float>(), stream());
    return {with_out ? to_host<float>(dout, n) : std::vector<float>(), to_host<float>(dstats, 2)};
  }
};

std::vector<uint8_t> float_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

TEST_P(UnscaleStatsGpu, ExactSumsBitIdentical) {
  const DType t = GetParam();
  Rng r = fresh_rng();
  for (size_t n : {size_t(1), size_t(37), size_t(1000), size_t(4097), size_t(65536)}) {
    SCOPED_TRACE("n=" + std::to_string(n));
    const std::vector<uint8_t> g = grads(r, t, n, true);
    const float inv = std::ldexp(1.f, -int(r.below(13)));
    const std::vector<float> stats0 = {3.f, 0.5f};
    std::vector<float> ref_out(n), ref_stats = stats0;
    cpu::unscale_stats(g.data(), t, n, inv, ref_out.data(), ref_stats.data());
    const auto [out, stats] = run(g, t, n, inv, stats0, true);
    EXPECT_TRUE(same_bits("out", float_bytes(out), float_bytes(ref_out), DType::F32));
    EXPECT_EQ(stats[0], ref_stats[0]) << "non-finite count";
    EXPECT_EQ(stats[1], ref_stats[1]) << "sum of squares";
  }
}

TEST_P(UnscaleStatsGpu, GeneralValuesWithinTolerance) {
  const DType t = GetParam();
  Rng r = fresh_rng();
  for (size_t n : {size_t(1), size_t(37), size_t(1000), size_t(4097), (size_t(1) << 22) + 5}) {
    SCOPED_TRACE("n=" + std::to_string(n));
    const std::vector<uint8_t> g = grads(r, t, n, false);
    const float inv = 1.f / 3072.f;  // not a power of two: the products round
    const std::vector<float> stats0 = {0.f, 1.25f};
    std::vector<float> ref_out(n), ref_stats = stats0;
    cpu::unscale_stats(g.data(), t, n, inv, ref_out.data(), ref_stats.data());
    const auto [out, stats] = run(g, t, n, inv, stats0, true);
    EXPECT_TRUE(same_bits("out", float_bytes(out), float_bytes(ref_out), DType::F32));
    EXPECT_EQ(stats[0], ref_stats[0]) << "non-finite count";
    EXPECT_NEAR(stats[1], ref_stats[1], std::ldexp(std::sqrt(double(n)), -22) * ref_stats[1]) << "sum of squares";
  }
}

TEST_P(UnscaleStatsGpu, StatsOnlyAndDeterministic) {
  const DType t = GetParam();
  Rng r = fresh_rng();
  const size_t n = (size_t(1) << 20) + 17;
  const std::vector<uint8_t> g = grads(r, t, n, false);
  const std::vector<float> stats0 = {1.f, 2.f};
  const std::vector<float> first = run(g, t, n, 0.5f, stats0, true).second;
  for (int rep = 0; rep < 3; ++rep) {
    const std::vector<float> again = run(g, t, n, 0.5f, stats0, rep == 1).second;  // rep 1: out == nullptr
    EXPECT_EQ(float_bits(again[0]), float_bits(first[0])) << "run " << rep;
    EXPECT_EQ(float_bits(again[1]), float_bits(first[1])) << "run " << rep;
  }
}

// The segment form over a buffer with gaps between segments: exact inputs (case 1) must give the CPU's bits,
// general ones the sum within the tolerance above; the count is exact either way, and elements outside the
// segments (non-finite ones among them) must not count. Repeated runs give the same bits.
TEST_P(UnscaleStatsGpu, SegmentsMatchCpu) {
  const DType t = GetParam();
  Rng r = fresh_rng();
  for (bool exact : {true, false}) {
    const size_t n = exact ? 60000 : (size_t(1) << 21);
    const std::vector<uint8_t> g = grads(r, t, n, exact);
    std::vector<StatSegment> segs;
    int64_t covered = 0;
    for (int64_t off = 0; off < int64_t(n);) {
      const int64_t len = std::min<int64_t>(1 + int64_t(r.below(kStatSegmentMax)), int64_t(n) - off);
      if (r.below(4) != 0) segs.push_back(StatSegment{off, len}), covered += len;
      off += len;
    }
    const float inv = exact ? 0.25f : 1.f / 3072.f;
    std::vector<float> ref = {2.f, 0.75f};
    cpu::unscale_stats_segments(g.data(), t, segs.data(), int(segs.size()), inv, ref.data());
    DeviceBuffer dg = to_device(g), dsegs = to_device(segs);
    std::vector<float> first;
    for (int rep = 0; rep < 2; ++rep) {
      DeviceBuffer dstats = to_device(std::vector<float>{2.f, 0.75f});
      cuda::unscale_stats_segments(dg.get(), t, dsegs.as<StatSegment>(), int(segs.size()), inv, dstats.as<float>(),
                                   stream());
      const std::vector<float> got = to_host<float>(dstats, 2);
      EXPECT_EQ(got[0], ref[0]) << "non-finite count";
      if (exact) EXPECT_EQ(got[1], ref[1]) << "sum of squares";
      else EXPECT_NEAR(got[1], ref[1], std::ldexp(std::sqrt(double(covered)), -22) * ref[1]) << "sum of squares";
      if (rep == 0) first = got;
      else EXPECT_EQ(float_bits(got[1]), float_bits(first[1])) << "not deterministic";
    }
  }
}

TEST_P(UnscaleStatsGpu, BadArgumentsThrowAndEmptyIsANoOp) {
  const DType t = GetParam();
  DeviceBuffer b(64);
  EXPECT_THROW(cuda::unscale_stats(nullptr, t, 4, 1.f, nullptr, b.as<float>(), stream()), std::invalid_argument);
  EXPECT_THROW(cuda::unscale_stats(b.get(), t, 4, 1.f, nullptr, nullptr, stream()), std::invalid_argument);
  DeviceBuffer stats = to_device(std::vector<float>{7.f, 9.f});
  cuda::unscale_stats(b.get(), t, 0, 1.f, nullptr, stats.as<float>(), stream());
  EXPECT_EQ(to_host<float>(stats, 2), (std::vector<float>{7.f, 9.f}));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, UnscaleStatsGpu, ::testing::Values(DType::F32, DType::F16, DType::BF16),
                         dtype_param_name);

}  // namespace
}  // namespace mpt::test
