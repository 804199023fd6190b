// mpt::cpu::accumulate against a float64 reference: dst[i] = dst[i] + src[i] rounded once to the dtype;
// mpt::cpu::sum_parts likewise (its test below).
//
// The reference adds in double and rounds to the dtype with its own round-half-to-even (scaling by the
// dtype's spacing and nearbyint), independent of src/core/dtype.h. The sum of two fp16 values is exact in
// double; for fp32 and bf16 it may not be, but rounding to double first and then to the dtype gives the
// correctly rounded sum because double has more than 2p + 2 bits for every p-bit dtype here. So the
// kernel must match the reference bit for bit: one rounding, ties to even, overflow to inf, signed zeros.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "kernels/accumulate.h"
#include "tests/test_util.h"

namespace mpt {
namespace {

struct Format { int mant, emin; double max; };
Format format(DType t) {
  if (t == DType::F16) return {10, -14, 65504.0};
  return {7, -126, std::ldexp(2.0 - std::ldexp(1.0, -7), 127)};  // bf16
}

// Round-to-nearest-even of x to dtype t, with IEEE overflow (a rounded magnitude above the largest
// finite value is inf) and the sign of an underflowed zero kept.
double round_ref(double x, DType t) {
  if (t == DType::F32) return double(float(x));
  if (!std::isfinite(x) || x == 0) return x;
  const Format f = format(t);
  const int e = std::max(std::ilogb(x), f.emin);
  const double q = std::ldexp(1.0, e - f.mant);
  const double r = std::nearbyint(x / q) * q;  // default rounding mode: half to even
  if (std::fabs(r) > f.max) return std::copysign(INFINITY, x);
  return r;
}

bool same_value(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return float_bits(a) == float_bits(b);  // also tells -0 from +0
}

// Spacing of dtype t's values at v (the subnormal spacing below the normal range).
double spacing(DType t, double v) {
  if (t == DType::F32) {
    const int e = std::max(std::ilogb(v), -126);
    return std::ldexp(1.0, e - 23);
  }
  const Format f = format(t);
  return std::ldexp(1.0, std::max(std::ilogb(v), f.emin) - f.mant);
}

// Pairs (dst, src), already representable in t, that exercise every rounding path.
void make_pairs(Rng& r, DType t, size_t n, std::vector<uint8_t>* dst, std::vector<uint8_t>* src) {
  dst->assign(n * dtype_size(t), 0);
  src->assign(n * dtype_size(t), 0);
  const double big = t == DType::F16 ? 65504.0 : (t == DType::BF16 ? format(t).max : 3.4028234663852886e38);
  for (size_t i = 0; i < n; ++i) {
    float a = round_to(t, r.normal()), b = round_to(t, r.normal());
    switch (r.below(8)) {
      case 0: break;
      case 1: {  // a tie: b is half a spacing of a, so the exact sum lies halfway between two values
        a = round_to(t, r.uniform(-100.f, 100.f));
        if (a == 0.f) a = 1.f;
        b = float(std::copysign(spacing(t, a) / 2, r.below(2) ? 1.0 : -1.0));
        break;
      }
      case 2: {  // near the largest finite value: overflow to inf or round back below it
        a = round_to(t, float(big * (1.0 - r.uniform() * 0.01)));
        b = round_to(t, float(big * r.uniform() * 0.02));
        if (r.below(2)) { a = -a; b = -b; }
        break;
      }
      case 3:  // cancellation: the result is small or an exact +0
        b = r.below(2) ? -a : round_to(t, -a * (1.f + r.uniform(-1e-2f, 1e-2f)));
        break;
      case 4:  // very different magnitudes: b is lost or decides the rounding
        b = round_to(t, a * std::ldexp(r.uniform(0.5f, 1.f), -int(r.below(t == DType::F32 ? 30 : 14))));
        break;
      case 5:  // subnormals of the dtype
        a = round_to(t, float(spacing(t, 0.0) * double(int64_t(r.below(2000)) - 1000)));
        b = round_to(t, float(spacing(t, 0.0) * double(int64_t(r.below(2000)) - 1000)));
        break;
      case 6: {
        const float specials[] = {INFINITY, -INFINITY, NAN, 0.f, -0.f};
        a = specials[r.below(5)];
        if (r.below(2)) b = specials[r.below(5)];
        break;
      }
      default:  // wide range of exponents
        a = round_to(t, r.normal() * std::ldexp(1.f, int(r.below(24)) - 12));
        b = round_to(t, r.normal() * std::ldexp(1.f, int(r.below(24)) - 12));
    }
    store_elem(dst->data(), t, i, a);
    store_elem(src->data(), t, i, b);
  }
}

class AccumulateTest : public ::testing::TestWithParam<DType> {};

TEST_P(AccumulateTest, MatchesFloat64ReferenceBitForBit) {
  const DType t = GetParam();
  Rng rng = test::fresh_rng();
  for (size_t n : {size_t(1), size_t(37), size_t(5003)}) {  // 5003 crosses the kernel's 2048-element chunks
    std::vector<uint8_t> dst, src;
    make_pairs(rng, t, n, &dst, &src);
    const std::vector<uint8_t> src_before = src;
    std::vector<double> ref(n);
    for (size_t i = 0; i < n; ++i)
      ref[i] = round_ref(double(load_elem(dst.data(), t, i)) + double(load_elem(src.data(), t, i)), t);
    cpu::accumulate(src.data(), dst.data(), t, n);
    size_t bad = 0;
    for (size_t i = 0; i < n; ++i) {
      const float got = load_elem(dst.data(), t, i);
      if (!same_value(got, float(ref[i])) && ++bad <= 5)
        ADD_FAILURE() << dtype_name(t) << " n=" << n << " [" << i << "] got " << got << " want " << ref[i];
    }
    EXPECT_EQ(bad, 0u) << dtype_name(t) << " n=" << n;
    EXPECT_EQ(src, src_before) << "src was modified";
  }
}

// Hand-picked cases whose answers are known without any reference code.
TEST(Accumulate, KnownRoundingTiesAndOverflow) {
  struct Case { DType t; float a, b, want; };
  const Case cases[] = {
      {DType::F16, 2048.f, 1.f, 2048.f},       // 2049 is halfway between 2048 and 2050: even mantissa wins
      {DType::F16, 2050.f, 1.f, 2052.f},       // 2051: halfway, rounds up to the even 2052
      {DType::F16, 65504.f, 15.984375f, 65504.f},  // below the overflow threshold 65520
      {DType::F16, 65504.f, 16.f, INFINITY},    // exactly 65520: ties to even goes to 65536 = inf
      {DType::F16, -65504.f, -32.f, -INFINITY},
      {DType::F16, 1.f, -1.f, 0.f},             // exact cancellation is +0
      {DType::F16, -0.f, -0.f, -0.f},
      {DType::F16, 0x1p-24f, 0x1p-24f, 0x1p-23f},  // subnormals add exactly
      {DType::BF16, 256.f, 1.f, 256.f},         // 257: halfway between 256 and 258, even wins
      {DType::BF16, 258.f, 1.f, 260.f},
      {DType::BF16, 0x1.fcp127f, 0x1.fcp127f, INFINITY},
      {DType::F32, 1.f, 0x1p-24f, 1.f},         // halfway to the next float: even wins
      {DType::F32, 1.f + 0x1p-23f, 0x1p-24f, 1.f + 0x1p-22f},
  };
  for (const Case& c : cases) {
    std::vector<uint8_t> dst(dtype_size(c.t)), src(dtype_size(c.t));
    store_elem(dst.data(), c.t, 0, c.a);
    store_elem(src.data(), c.t, 0, c.b);
    ASSERT_EQ(load_elem(dst.data(), c.t, 0), c.a) << "operand not representable";
    ASSERT_EQ(load_elem(src.data(), c.t, 0), c.b) << "operand not representable";
    cpu::accumulate(src.data(), dst.data(), c.t, 1);
    EXPECT_TRUE(same_value(load_elem(dst.data(), c.t, 0), c.want))
        << dtype_name(c.t) << " " << c.a << " + " << c.b << " = " << load_elem(dst.data(), c.t, 0) << ", want " << c.want;
  }
  // inf - inf is NaN in every dtype.
  for (DType t : {DType::F32, DType::F16, DType::BF16}) {
    std::vector<uint8_t> dst(dtype_size(t)), src(dtype_size(t));
    store_elem(dst.data(), t, 0, INFINITY);
    store_elem(src.data(), t, 0, -INFINITY);
    cpu::accumulate(src.data(), dst.data(), t, 1);
    EXPECT_TRUE(std::isnan(load_elem(dst.data(), t, 0))) << dtype_name(t);
  }
}

TEST(Accumulate, TouchesOnlyNElementsAndChecksArguments) {
  Rng rng = test::fresh_rng();
  const size_t n = 100, guard = 16;
  for (DType t : {DType::F32, DType::F16, DType::BF16}) {
    const auto src = test::random_buffer(rng, t, n + guard);
    auto dst = test::random_buffer(rng, t, n + guard);
    const auto before = dst;
    cpu::accumulate(src.data(), dst.data(), t, n);
    const size_t es = dtype_size(t);
    EXPECT_TRUE(std::equal(dst.begin() + std::ptrdiff_t(n * es), dst.end(), before.begin() + std::ptrdiff_t(n * es)))
        << dtype_name(t) << ": wrote past n";
    EXPECT_NE(std::vector<uint8_t>(dst.begin(), dst.begin() + std::ptrdiff_t(n * es)),
              std::vector<uint8_t>(before.begin(), before.begin() + std::ptrdiff_t(n * es)))
        << dtype_name(t) << ": nothing was added";
  }
  std::vector<float> b(4, 1.f);
  EXPECT_THROW(cpu::accumulate(nullptr, b.data(), DType::F32, 4), std::invalid_argument);
  EXPECT_THROW(cpu::accumulate(b.data(), nullptr, DType::F32, 4), std::invalid_argument);
  EXPECT_NO_THROW(cpu::accumulate(nullptr, nullptr, DType::F32, 0));
}

// sum_parts: p blocks summed in FP32 in block order, rounded once to the dtype. The reference forms each
// FP32 partial sum as the double sum of two floats rounded to float (the correctly rounded FP32 add, since
// double has more than 2 * 24 + 2 bits) and rounds the last one with round_ref. Block counts of 1 (a copy),
// 2 and more: with three or more blocks of mixed magnitudes, rounding a partial sum to the half dtype (or
// adding in another order) changes results, so those mutations fail here.
TEST_P(AccumulateTest, SumPartsIsTheBlockOrderFp32SumRoundedOnce) {
  const DType t = GetParam();
  Rng rng = test::fresh_rng();
  for (int p : {1, 2, 3, 5})
    for (size_t n : {size_t(1), size_t(37), size_t(5003)}) {
      std::vector<uint8_t> parts(size_t(p) * n * dtype_size(t));
      for (size_t i = 0; i < size_t(p) * n; ++i) {
        const int r = int(rng.below(8));
        const float v = r == 0 ? 0.f : r == 1 ? -0.f : rng.normal() * std::ldexp(1.f, int(rng.below(20)) - 10);
        store_elem(parts.data(), t, i, round_to(t, v));
      }
      const std::vector<uint8_t> before = parts;
      std::vector<uint8_t> dst(n * dtype_size(t) + 8, 0x5a);
      cpu::sum_parts(parts.data(), dst.data(), t, n, p);
      size_t bad = 0;
      for (size_t i = 0; i < n; ++i) {
        double acc = load_elem(parts.data(), t, i);
        for (int b = 1; b < p; ++b) acc = double(float(acc + double(load_elem(parts.data(), t, size_t(b) * n + i))));
        const double want = round_ref(acc, t);
        const float got = load_elem(dst.data(), t, i);
        if (!same_value(got, float(want)) && ++bad <= 5)
          ADD_FAILURE() << dtype_name(t) << " p=" << p << " n=" << n << " [" << i << "] got " << got << " want " << want;
      }
      EXPECT_EQ(bad, 0u) << dtype_name(t) << " p=" << p << " n=" << n;
      EXPECT_EQ(parts, before) << "the blocks were modified";
      EXPECT_TRUE(std::all_of(dst.end() - 8, dst.end(), [](uint8_t c) { return c == 0x5a; })) << "wrote past n";
    }
  std::vector<float> b(4, 1.f);
  EXPECT_THROW(cpu::sum_parts(nullptr, b.data(), DType::F32, 2, 2), std::invalid_argument);
  EXPECT_THROW(cpu::sum_parts(b.data(), b.data() + 2, DType::F32, 2, 0), std::invalid_argument);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, AccumulateTest, ::testing::Values(DType::F32, DType::F16, DType::BF16),
                         [](const ::testing::TestParamInfo<DType>& info) { return std::string(dtype_name(info.param)); });

}  // namespace
}  // namespace mpt
