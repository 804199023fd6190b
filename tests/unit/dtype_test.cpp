// fp16/bf16 conversions against CUDA's own host-side conversions (cuda_fp16.h / cuda_bf16.h), which are
// the ones the GPU kernels use: every one of the 65,536 bit patterns each way, plus a large random set of
// floats covering normals, subnormals, values that overflow to inf, inf and NaN.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstring>
#include <limits>

#include <gtest/gtest.h>

#include "src/core/dtype.h"
#include "tests/test_util.h"

namespace {

uint16_t cuda_f2h(float f) { __half h = __float2half_rn(f); uint16_t b; std::memcpy(&b, &h, 2); return b; }
uint16_t cuda_f2bf(float f) { __nv_bfloat16 h = __float2bfloat16_rn(f); uint16_t b; std::memcpy(&b, &h, 2); return b; }
float cuda_h2f(uint16_t b) { __half_raw r; r.x = b; return __half2float(__half(r)); }
float cuda_bf2f(uint16_t b) { __nv_bfloat16_raw r; r.x = b; return __bfloat162float(__nv_bfloat16(r)); }

// Same bits, or both NaN: CUDA's host-side half->float returns one canonical NaN while the device
// instruction keeps the payload, so NaN payloads carry no meaning across the two.
bool same_float(float a, float b) {
  return mpt::float_bits(a) == mpt::float_bits(b) || (std::isnan(a) && std::isnan(b));
}

TEST(Dtype, EveryHalfPatternToFloatAndBack) {
  int wrong = 0;
  for (uint32_t b = 0; b < 65536; ++b) {
    const float mine = mpt::half_bits_to_float(uint16_t(b));
    const float ref = cuda_h2f(uint16_t(b));
    if (!same_float(mine, ref)) ++wrong;
    // Every finite or infinite half survives the round trip through float exactly.
    if (!std::isnan(ref) && mpt::float_to_half_bits(ref) != cuda_f2h(ref)) ++wrong;
    if (!std::isnan(ref) && mpt::float_to_half_bits(ref) != b) ++wrong;
  }
  EXPECT_EQ(wrong, 0);
}

TEST(Dtype, EveryBf16PatternToFloatAndBack) {
  int wrong = 0;
  for (uint32_t b = 0; b < 65536; ++b) {
    const float mine = mpt::bf16_bits_to_float(uint16_t(b));
    const float ref = cuda_bf2f(uint16_t(b));
    if (!same_float(mine, ref)) ++wrong;
    if (mpt::float_to_bf16_bits(ref) != cuda_f2bf(ref)) ++wrong;
    if (!std::isnan(ref) && mpt::float_to_bf16_bits(ref) != b) ++wrong;
  }
  EXPECT_EQ(wrong, 0);
}

// Midpoints between neighbouring 16-bit values are where round-to-nearest-even is decided.
TEST(Dtype, EveryMidpointAndNeighbour) {
  int wrong = 0;
  for (uint32_t b = 0; b < 65535; ++b) {
    for (int kind = 0; kind < 2; ++kind) {
      const float lo = kind ? mpt::bf16_bits_to_float(uint16_t(b)) : mpt::half_bits_to_float(uint16_t(b));
      const float hi = kind ? mpt::bf16_bits_to_float(uint16_t(b + 1)) : mpt::half_bits_to_float(uint16_t(b + 1));
      if (std::isnan(lo) || std::isnan(hi) || std::isinf(lo) || std::isinf(hi) || (b & 0x7fffu) == 0x7fffu) continue;
      const float mid = float((double(lo) + double(hi)) / 2);
      for (float f : {mid, std::nextafter(mid, -INFINITY), std::nextafter(mid, INFINITY)}) {
        if (kind == 0 && mpt::float_to_half_bits(f) != cuda_f2h(f)) ++wrong;
        if (kind == 1 && mpt::float_to_bf16_bits(f) != cuda_f2bf(f)) ++wrong;
      }
    }
  }
  EXPECT_EQ(wrong, 0);
}

TEST(Dtype, RandomFloatsIncludingSubnormalsOverflowAndNaN) {
  mpt::Rng r = mpt::test::fresh_rng();
  int wrong_h = 0, wrong_b = 0;
  int64_t subnormal = 0, overflow = 0, nan = 0;
  const int n = 4'000'000;
  for (int i = 0; i < n; ++i) {
    uint32_t bits;
    switch (i % 4) {
      case 0: bits = uint32_t(r.next()); break;                                // anything: NaN, inf, subnormals
      case 1: bits = (uint32_t(r.next()) & 0x807fffffu) | ((100u + uint32_t(r.below(20))) << 23); break;  // half subnormal range
      case 2: bits = (uint32_t(r.next()) & 0x807fffffu) | ((140u + uint32_t(r.below(4))) << 23); break;   // near 65504
      default: bits = uint32_t(r.next()) & 0x807fffffu; break;                  // float subnormals
    }
    const float f = mpt::bits_float(bits);
    if (std::isnan(f)) ++nan;
    if (std::fabs(f) >= 65520.f) ++overflow;
    if (std::fabs(f) < 6.103515625e-05f && f != 0) ++subnormal;
    if (mpt::float_to_half_bits(f) != cuda_f2h(f)) ++wrong_h;
    if (mpt::float_to_bf16_bits(f) != cuda_f2bf(f)) ++wrong_b;
  }
  EXPECT_EQ(wrong_h, 0);
  EXPECT_EQ(wrong_b, 0);
  // The generator really produced the cases this test is about.
  EXPECT_GT(subnormal, n / 8);
  EXPECT_GT(overflow, n / 16);
  EXPECT_GT(nan, 1000);
}

TEST(Dtype, SpecialValues) {
  EXPECT_EQ(mpt::float_to_half_bits(65504.f), 0x7bffu);
  EXPECT_EQ(mpt::float_to_half_bits(65519.99f), 0x7bffu);
  EXPECT_EQ(mpt::float_to_half_bits(65520.f), 0x7c00u);
  EXPECT_EQ(mpt::float_to_half_bits(-INFINITY), 0xfc00u);
  EXPECT_EQ(mpt::float_to_half_bits(std::ldexp(1.f, -24)), 0x0001u);
  EXPECT_EQ(mpt::float_to_half_bits(std::ldexp(1.f, -25)), 0x0000u);  // tie to even (zero)
  EXPECT_EQ(mpt::float_to_half_bits(-0.f), 0x8000u);
  EXPECT_EQ(mpt::float_to_bf16_bits(1.f + std::ldexp(1.f, -8)), 0x3f80u);  // tie to even
  EXPECT_TRUE(std::isnan(mpt::half_bits_to_float(mpt::float_to_half_bits(NAN))));
  EXPECT_TRUE(std::isnan(mpt::bf16_bits_to_float(mpt::float_to_bf16_bits(NAN))));
}

TEST(Dtype, BulkConversionsMatchScalar) {
  mpt::Rng r = mpt::test::fresh_rng();
  std::vector<float> src(1001);
  for (auto& v : src) v = r.normal() * 1000.f;
  for (mpt::DType t : {mpt::DType::F32, mpt::DType::F16, mpt::DType::BF16}) {
    std::vector<uint8_t> buf(src.size() * mpt::dtype_size(t));
    mpt::from_float_n(src.data(), buf.data(), t, src.size());
    std::vector<float> back(src.size());
    mpt::to_float_n(buf.data(), t, back.data(), back.size());
    for (size_t i = 0; i < src.size(); ++i) {
      ASSERT_EQ(back[i], mpt::round_to(t, src[i])) << mpt::dtype_name(t) << " at " << i;
      ASSERT_EQ(back[i], mpt::load_elem(buf.data(), t, i));
    }
  }
}

}  // namespace
