// mpt::cpu::cast: agreement with round_to for every dtype pair, exhaustive round trips of the 16-bit
// formats through FP32, and rounding-error bounds against double (independent of dtype.h).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cast.h"
#include "tests/test_util.h"

namespace mpt {
namespace {

const DType kAll[] = {DType::F32, DType::F16, DType::BF16};

// Values that exercise rounding, overflow to inf in fp16, subnormals and zeros of both signs.
std::vector<float> interesting_values(Rng& rng, size_t n) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) {
    switch (rng.below(6)) {
      case 0: v[i] = rng.normal(); break;
      case 1: v[i] = rng.normal() * 3e4f; break;     // near and beyond the fp16 maximum 65504
      case 2: v[i] = rng.normal() * 1e-6f; break;    // fp16 subnormals
      case 3: v[i] = rng.normal() * 1e30f; break;    // bf16 range, inf in fp16
      case 4: v[i] = rng.uniform(-1.f, 1.f) * 1e-40f; break;  // FP32 subnormals
      default: v[i] = rng.uniform(-8.f, 8.f);
    }
  }
  v[0] = 0.f;
  v[1] = -0.f;
  v[2] = INFINITY;
  v[3] = -INFINITY;
  v[4] = NAN;
  v[5] = 65519.f;  // rounds down to 65504 in fp16
  v[6] = 65520.f;  // rounds up to inf in fp16
  return v;
}

bool same_value(float a, float b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return float_bits(a) == float_bits(b);  // also tells -0 from +0
}

TEST(Cast, AgreesWithRoundToForEveryPair) {
  Rng rng = test::fresh_rng();
  const size_t n = 4099;  // odd, and crosses the kernel's chunk size
  const std::vector<float> src = interesting_values(rng, n);
  for (DType xt : kAll) {
    std::vector<uint8_t> x(n * dtype_size(xt));
    for (size_t i = 0; i < n; ++i) store_elem(x.data(), xt, i, src[i]);
    for (DType yt : kAll) {
      std::vector<uint8_t> y(n * dtype_size(yt));
      cpu::cast(x.data(), xt, y.data(), yt, n);
      size_t bad = 0;
      for (size_t i = 0; i < n; ++i) {
        const float want = round_to(yt, load_elem(x.data(), xt, i));
        const float got = load_elem(y.data(), yt, i);
        if (!same_value(got, want) && ++bad <= 5)
          ADD_FAILURE() << dtype_name(xt) << "->" << dtype_name(yt) << " [" << i << "] got " << got << " want " << want;
      }
      EXPECT_EQ(bad, 0u) << dtype_name(xt) << "->" << dtype_name(yt);
    }
  }
}

// Every 16-bit pattern survives half -> fp32 -> half unchanged, except that NaNs come back as the one
// canonical NaN (0x7fff), as CUDA's conversions do.
TEST(Cast, HalfFormatsRoundTripExhaustively) {
  const size_t n = 65536;
  for (DType t : {DType::F16, DType::BF16}) {
    std::vector<uint16_t> bits(n), back(n);
    std::vector<float> wide(n);
    for (size_t i = 0; i < n; ++i) bits[i] = uint16_t(i);
    cpu::cast(bits.data(), t, wide.data(), DType::F32, n);
    cpu::cast(wide.data(), DType::F32, back.data(), t, n);
    size_t bad = 0;
    for (size_t i = 0; i < n; ++i) {
      const bool nan = std::isnan(wide[i]);
      const uint16_t want = nan ? uint16_t(0x7fff) : bits[i];
      if (back[i] != want && ++bad <= 5) ADD_FAILURE() << dtype_name(t) << " bits 0x" << std::hex << i;
    }
    EXPECT_EQ(bad, 0u) << dtype_name(t);
  }
}

// Independent of dtype.h: a finite result is within half an ulp of the input (relative 2^-11 for fp16,
// 2^-8 for bf16 in the normal range; absolute 2^-25 in fp16's subnormal range), and fp16 overflows to
// inf exactly from 65520 up.
TEST(Cast, RoundingErrorWithinHalfUlp) {
  Rng rng = test::fresh_rng();
  const size_t n = 10007;
  std::vector<float> x(n);
  for (size_t i = 0; i < n; ++i) x[i] = rng.normal() * std::ldexp(1.f, int(rng.below(40)) - 30);
  for (DType t : {DType::F16, DType::BF16}) {
    std::vector<uint16_t> y(n);
    cpu::cast(x.data(), DType::F32, y.data(), t, n);
    const double rel = t == DType::F16 ? 0x1p-11 : 0x1p-8;
    const double abs = t == DType::F16 ? 0x1p-25 : 0.0;
    size_t bad = 0;
    for (size_t i = 0; i < n; ++i) {
      const double got = load_elem(y.data(), t, i), ref = x[i];
      bool ok;
      if (t == DType::F16 && std::fabs(ref) >= 65520.0) {
        ok = std::isinf(got) && (got > 0) == (ref > 0);
      } else {
        ok = std::fabs(got - ref) <= rel * std::fabs(ref) + abs;
      }
      if (!ok && ++bad <= 5) ADD_FAILURE() << dtype_name(t) << " " << ref << " -> " << got;
    }
    EXPECT_EQ(bad, 0u) << dtype_name(t);
  }
}

TEST(Cast, SameDtypeIsABitCopyAndHalfToHalfRoundsOnce) {
  Rng rng = test::fresh_rng();
  const size_t n = 1001;
  for (DType t : kAll) {
    const auto x = test::random_buffer(rng, t, n, -100.f, 100.f);
    std::vector<uint8_t> y(x.size());
    cpu::cast(x.data(), t, y.data(), t, n);
    EXPECT_EQ(x, y) << dtype_name(t);
  }
  // fp16 -> bf16 must equal one rounding of the exact fp16 value (no detour that rounds twice).
  const auto h = test::random_buffer(rng, DType::F16, n, -100.f, 100.f);
  std::vector<uint16_t> b(n);
  cpu::cast(h.data(), DType::F16, b.data(), DType::BF16, n);
  for (size_t i = 0; i < n; ++i)
    ASSERT_EQ(b[i], float_to_bf16_bits(load_elem(h.data(), DType::F16, i))) << i;
}

}  // namespace
}  // namespace mpt
