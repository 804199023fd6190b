// mpt::cpu::unscale_stats: out = g * inv_scale, stats[0] += non-finite count, stats[1] += sum of squares
// of the finite unscaled values.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/unscale_stats.h"
#include "tests/test_util.h"

namespace mpt {
namespace {

constexpr double kU = 0x1p-24;

// Writes inf, -inf and NaN at `count` distinct random positions; returns the positions' mask.
std::vector<bool> inject_nonfinite(Rng& rng, std::vector<uint8_t>& g, DType t, size_t n, size_t count) {
  std::vector<bool> bad(n, false);
  const float specials[] = {INFINITY, -INFINITY, NAN};
  for (size_t c = 0; c < count;) {
    const size_t i = size_t(rng.below(n));
    if (bad[i]) continue;
    bad[i] = true;
    store_elem(g.data(), t, i, specials[c % 3]);
    ++c;
  }
  return bad;
}

bool same_float(float a, float b) { return (std::isnan(a) && std::isnan(b)) || a == b; }

class UnscaleStatsTest : public ::testing::TestWithParam<DType> {};

// Gradients that are small integers times the loss scale 1024: unscaled they are integers of magnitude
// <= 16, their squares <= 256 and every sum below 2^24, so the FP32 sum of squares is exact in any order
// and the statistics can be compared exactly. A dropped, doubled or non-finite element shows up at once.
TEST_P(UnscaleStatsTest, ExactStatisticsAccumulateOverCalls) {
  const DType t = GetParam();
  Rng rng = test::fresh_rng();
  const float inv_scale = 1.f / 1024.f;
  float stats[2] = {2.f, 10.f};  // nonzero: the kernel must add to them
  double want_count = 2, want_sumsq = 10;
  int call = 0;
  for (size_t n : {size_t(1001), size_t(3 * 4096 + 17)}) {
    std::vector<uint8_t> g(n * dtype_size(t));
    for (size_t i = 0; i < n; ++i) {
      int k = int(rng.below(33)) - 16;
      if (k == 0) k = 1;
      store_elem(g.data(), t, i, float(k) * 1024.f);
    }
    const size_t nbad = 3 + rng.below(9);
    const std::vector<bool> bad = inject_nonfinite(rng, g, t, n, nbad);
    std::vector<float> out(n, -12345.f);
    // The second call passes out = nullptr: statistics only.
    const bool with_out = call++ == 0;
    cpu::unscale_stats(g.data(), t, n, inv_scale, with_out ? out.data() : nullptr, stats);
    for (size_t i = 0; i < n; ++i) {
      const float gi = load_elem(g.data(), t, i);
      if (!bad[i]) want_sumsq += double(gi * inv_scale) * double(gi * inv_scale);
      if (with_out) {
        if (!same_float(out[i], gi * inv_scale)) ADD_FAILURE() << "out[" << i << "] = " << out[i];
      } else if (out[i] != -12345.f) {
        ADD_FAILURE() << "out written although null was passed";
      }
    }
    want_count += double(nbad);
    EXPECT_EQ(stats[0], want_count) << "after call " << call;
    EXPECT_EQ(stats[1], want_sumsq) << "after call " << call;
  }
}

// Random magnitudes and a scale that is not a power of two. out must be the FP32 product exactly. The sum
// of squares of non-negative terms, in any summation order, is within (n + 1) * u of the exact sum; that
// bound holds for the CUDA kernel's order too (the exact test above is the one that catches single
// dropped elements).
TEST_P(UnscaleStatsTest, RandomValuesMatchReference) {
  const DType t = GetParam();
  Rng rng = test::fresh_rng();
  for (size_t n : {size_t(37), size_t(1001), size_t(2 * 4096 + 1)}) {
    std::vector<uint8_t> g(n * dtype_size(t));
    for (size_t i = 0; i < n; ++i) store_elem(g.data(), t, i, rng.normal() * std::ldexp(1.f, int(rng.below(12))));
    const std::vector<bool> bad = inject_nonfinite(rng, g, t, n, 1 + n / 200);
    const float inv_scale = 1.f / rng.uniform(100.f, 3000.f);
    std::vector<float> out(n);
    float stats[2] = {0.f, 0.f};
    cpu::unscale_stats(g.data(), t, n, inv_scale, out.data(), stats);
    double sumsq = 0;
    size_t count = 0;
    for (size_t i = 0; i < n; ++i) {
      const float gi = load_elem(g.data(), t, i);
      ASSERT_TRUE(same_float(out[i], gi * inv_scale)) << "out[" << i << "]";
      if (bad[i]) {
        ++count;
      } else {
        const double u = double(gi) * double(inv_scale);
        sumsq += u * u;
      }
    }
    EXPECT_EQ(stats[0], double(count)) << n;
    // out is the rounded product (relative error u), so its square is within 3u of u^2, plus the sum.
    EXPECT_NEAR(stats[1], sumsq, (double(n) + 4) * kU * sumsq) << n;

    // Deterministic: the same input gives the same bits.
    float again[2] = {0.f, 0.f};
    cpu::unscale_stats(g.data(), t, n, inv_scale, nullptr, again);
    EXPECT_EQ(float_bits(again[1]), float_bits(stats[1]));
    EXPECT_EQ(again[0], stats[0]);
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, UnscaleStatsTest, ::testing::Values(DType::F32, DType::F16, DType::BF16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

// The segment form: exact statistics (the integer gradients of the exact test above) over segments that
// skip parts of the buffer; elements outside every segment, non-finite ones included, must not count.
TEST(UnscaleStats, SegmentsCountOnlyTheirElements) {
  Rng rng = test::fresh_rng();
  for (DType t : {DType::F32, DType::F16, DType::BF16}) {
    const size_t n = 40000;
    std::vector<uint8_t> g(n * dtype_size(t));
    for (size_t i = 0; i < n; ++i) {
      int k = int(rng.below(33)) - 16;
      if (k == 0) k = 1;
      store_elem(g.data(), t, i, float(k) * 1024.f);
    }
    const std::vector<bool> bad = inject_nonfinite(rng, g, t, n, 40);
    std::vector<StatSegment> segs;
    for (int64_t off = 0; off < int64_t(n);) {
      const int64_t len = std::min<int64_t>(1 + int64_t(rng.below(kStatSegmentMax)), int64_t(n) - off);
      if (rng.below(3) != 0) segs.push_back(StatSegment{off, len});
      off += len;
    }
    double want_count = 0, want_sumsq = 0;
    for (const StatSegment& s : segs)
      for (int64_t i = s.off; i < s.off + s.len; ++i) {
        if (bad[size_t(i)]) {
          ++want_count;
        } else {
          const double u = double(load_elem(g.data(), t, size_t(i))) / 1024.0;
          want_sumsq += u * u;
        }
      }
    float stats[2] = {1.f, 3.f};
    cpu::unscale_stats_segments(g.data(), t, segs.data(), int(segs.size()), 1.f / 1024.f, stats);
    EXPECT_EQ(stats[0], 1.0 + want_count) << dtype_name(t);
    EXPECT_EQ(stats[1], 3.0 + want_sumsq) << dtype_name(t);
  }
}

TEST(UnscaleStats, EmptyShardLeavesStatsUnchanged) {
  float stats[2] = {1.f, 2.5f};
  cpu::unscale_stats(nullptr, DType::F16, 0, 0.5f, nullptr, stats);
  EXPECT_EQ(stats[0], 1.f);
  EXPECT_EQ(stats[1], 2.5f);
}

TEST(UnscaleStats, OutMayAliasAnFp32Gradient) {
  Rng rng = test::fresh_rng();
  const size_t n = 5003;
  auto g = test::random_buffer(rng, DType::F32, n, -100.f, 100.f);
  std::vector<float> out(n);
  float s1[2] = {0, 0}, s2[2] = {0, 0};
  cpu::unscale_stats(g.data(), DType::F32, n, 0.125f, out.data(), s1);
  cpu::unscale_stats(g.data(), DType::F32, n, 0.125f, reinterpret_cast<float*>(g.data()), s2);
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(load_elem(g.data(), DType::F32, i), out[i]) << i;
  EXPECT_EQ(s1[1], s2[1]);
}

}  // namespace
}  // namespace mpt
