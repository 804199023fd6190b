// cuda::sum against cpu::sum. Both form the sum in double (in different orders) and round once into the
// FP32 accumulator, so they agree within one FP32 ulp plus twice the double sum's error bound
// n * 2^-53 * sum |x|. The cancelling inputs (+B first, -B last around small values, B ~ 1e7) make a
// kernel that sums in FP32 miss that by orders of magnitude: thread 0's FP32 partial drops every small
// value it adds to B. A second launch on the same inputs must give the same bits.
#include <cmath>
#include <vector>

#include "kernels/sum.h"
#include "tests/gpu/gpu_test_util.h"

namespace mpt::test {
namespace {

class SumGpu : public GpuTest {};

TEST_F(SumGpu, MatchesCpuWithinOneRoundingAndIsDeterministic) {
  Rng r = fresh_rng();
  for (bool cancel : {false, true})
    for (int64_t n : {int64_t(1), int64_t(511), int64_t(513), int64_t(16384 + 7), int64_t((1 << 20) + 3)}) {
      SCOPED_TRACE("n=" + std::to_string(n) + (cancel ? " cancelling" : " positive"));
      std::vector<float> x(static_cast<size_t>(n));
      double abs_sum = 0;
      for (int64_t i = 0; i < n; ++i) x[size_t(i)] = cancel ? r.uniform(0.1f, 0.5f) : r.uniform(0.f, 12.f);
      if (cancel && n >= 3) {  // +B first, -B last, B = 2^23..2^24: an FP32 sum drops the small values
        x[0] = float(int64_t(1) << 23) * float(1 + r.below(2));
        x[size_t(n - 1)] = -x[0];
      }
      for (float v : x) abs_sum += std::fabs(double(v));
      const float acc0 = r.uniform(-50.f, 50.f);
      float want = acc0;
      cpu::sum(x.data(), n, &want);
      DeviceBuffer dx = to_device(x), dacc = to_device(std::vector<float>{acc0});
      cuda::sum(dx.as<float>(), n, dacc.as<float>(), stream());
      const float got = to_host<float>(dacc, 1)[0];
      const double tol = ulp(DType::F32, want) + 2.0 * double(n) * std::ldexp(1.0, -53) * (abs_sum + std::fabs(acc0));
      EXPECT_LE(std::fabs(double(got) - double(want)), tol) << "got " << got << " want " << want;
      DeviceBuffer dacc2 = to_device(std::vector<float>{acc0});
      cuda::sum(dx.as<float>(), n, dacc2.as<float>(), stream());
      EXPECT_EQ(float_bits(to_host<float>(dacc2, 1)[0]), float_bits(got)) << "two launches differ";
      EXPECT_EQ(to_host<float>(dx, size_t(n)), x) << "input was modified";
    }
}

TEST_F(SumGpu, EmptyLeavesTheAccumulatorAndBadArgumentsThrow) {
  DeviceBuffer dacc = to_device(std::vector<float>{3.5f});
  cuda::sum(nullptr, 0, dacc.as<float>(), stream());
  EXPECT_EQ(to_host<float>(dacc, 1)[0], 3.5f);
  EXPECT_THROW(cuda::sum(nullptr, 4, dacc.as<float>(), stream()), std::invalid_argument);
  EXPECT_THROW(cuda::sum(dacc.as<float>(), 1, nullptr, stream()), std::invalid_argument);
}

}  // namespace
}  // namespace mpt::test
