// cuda::cast against cpu::cast. Both convert through FP32 (exact for all three dtypes) and round once
// with round-to-nearest-even, so the results must be bit-identical, not merely close. The only freedom
// allowed is the NaN bit pattern (any NaN matches any NaN): the hardware's half -> float conversion is
// not promised to keep a NaN's payload.
#include <cmath>
#include <tuple>

#include "kernels/cast.h"
#include "tests/gpu/gpu_test_util.h"

namespace mpt::test {
namespace {

// None is a multiple of the 256-thread block; the last needs many blocks and the grid-stride loop.
const size_t kSizes[] = {1, 37, 1000, 4097, (size_t(1) << 20) + 3};
constexpr size_t kGuard = 64;  // elements past n that must stay untouched

// Source data of dtype t: for the 16-bit types every bit pattern is fair game (subnormals, infinities,
// NaNs with payloads); for fp32 a mix that exercises every rounding path of both target types.
std::vector<uint8_t> cast_source(Rng& r, DType t, size_t n) {
  std::vector<uint8_t> b(n * dtype_size(t));
  for (size_t i = 0; i < n; ++i) {
    if (t != DType::F32) {
      const uint16_t bits = uint16_t(r.next());
      std::memcpy(b.data() + 2 * i, &bits, 2);
      continue;
    }
    float v = 0.f;
    const float sign = r.below(2) ? -1.f : 1.f;
    switch (r.below(8)) {
      case 0: v = r.uniform(-1.f, 1.f); break;
      case 1: v = sign * std::ldexp(r.uniform(1.f, 2.f), int(r.below(70)) - 35); break;  // fp16 overflow .. subnormal
      case 2: v = sign * std::ldexp(r.uniform(0.f, 1.f), -14 - int(r.below(12))); break;  // fp16 subnormals, underflow
      case 3: {  // exactly halfway between two fp16 values: ties to even
        const float h = half_bits_to_float(uint16_t(r.below(0x7bff)));
        v = sign * bits_float(float_bits(h) + (1u << 12));
        break;
      }
      case 4: v = sign * bits_float((uint32_t(r.below(0x7f00)) << 16) | 0x8000u); break;  // bf16 ties
      case 5: {
        const float specials[] = {INFINITY, -INFINITY, NAN, 65504.f, 65519.99f, 65520.f, -0.f, 0.f, 3.4e38f, 1e-45f};
        v = specials[r.below(10)];
        break;
      }
      default: v = bits_float(uint32_t(r.next())); break;  // any fp32 bit pattern
    }
    std::memcpy(b.data() + 4 * i, &v, 4);
  }
  return b;
}

class CastGpu : public GpuTest, public ::testing::WithParamInterface<std::tuple<DType, DType>> {};

TEST_P(CastGpu, BitIdenticalToCpu) {
  const auto [xt, yt] = GetParam();
  Rng r = fresh_rng();
  for (size_t n : kSizes) {
    SCOPED_TRACE("n=" + std::to_string(n));
    const std::vector<uint8_t> x = cast_source(r, xt, n);
    std::vector<uint8_t> ref(n * dtype_size(yt));
    cpu::cast(x.data(), xt, ref.data(), yt, n);

    DeviceBuffer dx = to_device(x);
    DeviceBuffer dy((n + kGuard) * dtype_size(yt));
    dy.fill(0xA5, stream());
    cuda::cast(dx.get(), xt, dy.get(), yt, n, stream());
    std::vector<uint8_t> got = to_host<uint8_t>(dy, (n + kGuard) * dtype_size(yt));
    const std::vector<uint8_t> guard(got.begin() + std::ptrdiff_t(n * dtype_size(yt)), got.end());
    got.resize(n * dtype_size(yt));
    EXPECT_TRUE(same_bits("cast", got, ref, yt));
    EXPECT_EQ(guard, std::vector<uint8_t>(kGuard * dtype_size(yt), 0xA5)) << "wrote past n";
  }
}

INSTANTIATE_TEST_SUITE_P(AllPairs, CastGpu,
                         ::testing::Combine(::testing::Values(DType::F32, DType::F16, DType::BF16),
                                            ::testing::Values(DType::F32, DType::F16, DType::BF16)),
                         [](const ::testing::TestParamInfo<std::tuple<DType, DType>>& info) {
                           return std::string(dtype_name(std::get<0>(info.param))) + "_to_" +
                                  dtype_name(std::get<1>(info.param));
                         });

class CastGpuArgs : public GpuTest {};

TEST_F(CastGpuArgs, NullPointerThrowsAndEmptyIsANoOp) {
  DeviceBuffer b(16);
  EXPECT_THROW(cuda::cast(nullptr, DType::F32, b.get(), DType::F16, 4, stream()), std::invalid_argument);
  EXPECT_THROW(cuda::cast(b.get(), DType::F32, nullptr, DType::F16, 4, stream()), std::invalid_argument);
  EXPECT_NO_THROW(cuda::cast(nullptr, DType::F32, nullptr, DType::F16, 0, stream()));
}

}  // namespace
}  // namespace mpt::test
