// cuda::accumulate and cuda::sum_parts against their CPU twins. Both read the operands exactly into FP32, add once and round
// once to nearest even, so the results must be bit-identical; only NaN payloads may differ (any NaN
// matches any NaN). The CPU twin itself is checked against a float64 reference in tests/kernels.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/accumulate.h"
#include "tests/gpu/gpu_test_util.h"

namespace mpt::test {
namespace {

// None is a multiple of the 256-thread block; the last needs many blocks and the grid-stride loop.
const size_t kSizes[] = {1, 37, 1000, 4097, (size_t(1) << 20) + 3};
constexpr size_t kGuard = 64;  // elements past n that must stay untouched

// Operands of dtype t. Half formats: any bit pattern half the time (subnormals, infinities, NaNs), and
// otherwise values of similar size so that sums round, tie and (fp16) overflow often. FP32: any bit
// pattern or values of similar size.
std::vector<uint8_t> operands(Rng& r, DType t, size_t n) {
  std::vector<uint8_t> b(n * dtype_size(t));
  for (size_t i = 0; i < n; ++i) {
    if (r.below(2)) {
      if (t == DType::F32) {
        const uint32_t bits = uint32_t(r.next());
        std::memcpy(b.data() + 4 * i, &bits, 4);
      } else {
        const uint16_t bits = uint16_t(r.next());
        std::memcpy(b.data() + 2 * i, &bits, 2);
      }
      continue;
    }
    const float scale = t == DType::F16 ? 4e4f : std::ldexp(1.f, int(r.below(60)) - 30);
    store_elem(b.data(), t, i, r.uniform(-1.f, 1.f) * scale);
  }
  return b;
}

class AccumulateGpu : public GpuTest, public ::testing::WithParamInterface<DType> {};

TEST_P(AccumulateGpu, BitIdenticalToCpu) {
  const DType t = GetParam();
  const size_t es = dtype_size(t);
  Rng r = fresh_rng();
  for (size_t n : kSizes) {
    SCOPED_TRACE("n=" + std::to_string(n));
    const std::vector<uint8_t> src = operands(r, t, n);
    std::vector<uint8_t> dst = operands(r, t, n + kGuard);
    const std::vector<uint8_t> dst_before = dst;
    DeviceBuffer dsrc = to_device(src), ddst = to_device(dst);
    cpu::accumulate(src.data(), dst.data(), t, n);
    cuda::accumulate(dsrc.get(), ddst.get(), t, n, stream());
    const std::vector<uint8_t> got = to_host<uint8_t>(ddst, (n + kGuard) * es);
    EXPECT_TRUE(same_bits("accumulate", std::vector<uint8_t>(got.begin(), got.begin() + std::ptrdiff_t(n * es)),
                          std::vector<uint8_t>(dst.begin(), dst.begin() + std::ptrdiff_t(n * es)), t));
    EXPECT_TRUE(std::equal(got.begin() + std::ptrdiff_t(n * es), got.end(), dst_before.begin() + std::ptrdiff_t(n * es)))
        << "wrote past n";
    EXPECT_EQ(to_host<uint8_t>(dsrc, n * es), src) << "src was modified";
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, AccumulateGpu, ::testing::Values(DType::F32, DType::F16, DType::BF16),
                         dtype_param_name);

// cuda::sum_parts against cpu::sum_parts (itself checked against a float64 reference in tests/kernels):
// the same block-order FP32 adds and one rounding, so bit-identical.
TEST_P(AccumulateGpu, SumPartsBitIdenticalToCpu) {
  const DType t = GetParam();
  const size_t es = dtype_size(t);
  Rng r = fresh_rng();
  for (int p : {2, 3, 4})
    for (size_t n : kSizes) {
      SCOPED_TRACE("p=" + std::to_string(p) + " n=" + std::to_string(n));
      const std::vector<uint8_t> parts = operands(r, t, size_t(p) * n);
      std::vector<uint8_t> dst = operands(r, t, n + kGuard);
      const std::vector<uint8_t> dst_before = dst;
      DeviceBuffer dparts = to_device(parts), ddst = to_device(dst);
      cpu::sum_parts(parts.data(), dst.data(), t, n, p);
      cuda::sum_parts(dparts.get(), ddst.get(), t, n, p, stream());
      const std::vector<uint8_t> got = to_host<uint8_t>(ddst, (n + kGuard) * es);
      EXPECT_TRUE(same_bits("sum_parts", std::vector<uint8_t>(got.begin(), got.begin() + std::ptrdiff_t(n * es)),
                            std::vector<uint8_t>(dst.begin(), dst.begin() + std::ptrdiff_t(n * es)), t));
      EXPECT_TRUE(std::equal(got.begin() + std::ptrdiff_t(n * es), got.end(), dst_before.begin() + std::ptrdiff_t(n * es)))
          << "wrote past n";
      EXPECT_EQ(to_host<uint8_t>(dparts, size_t(p) * n * es), parts) << "the blocks were modified";
    }
}

class AccumulateGpuArgs : public GpuTest {};

TEST_F(AccumulateGpuArgs, NullPointerThrowsAndEmptyIsANoOp) {
  DeviceBuffer b(16);
  EXPECT_THROW(cuda::accumulate(nullptr, b.get(), DType::F16, 4, stream()), std::invalid_argument);
  EXPECT_THROW(cuda::accumulate(b.get(), nullptr, DType::F16, 4, stream()), std::invalid_argument);
  EXPECT_NO_THROW(cuda::accumulate(nullptr, nullptr, DType::F16, 0, stream()));
  EXPECT_THROW(cuda::sum_parts(nullptr, b.get(), DType::F16, 4, 2, stream()), std::invalid_argument);
  EXPECT_THROW(cuda::sum_parts(b.get(), b.get(), DType::F16, 2, 0, stream()), std::invalid_argument);
}

}  // namespace
}  // namespace mpt::test
