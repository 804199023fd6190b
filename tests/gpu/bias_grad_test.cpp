// cuda::bias_grad against cpu::bias_grad.
//
// Two kinds of input. (1) dy made of multiples of 2^-8 in (-1, 1): every partial sum of a column is a
// multiple of 2^-8 below 2^16 in magnitude, which FP32 holds exactly, so the column sums are exact in any
// order and the results must be bit-identical to the CPU twin's. This catches any missing, repeated or
// misplaced element. (2) General uniform values: the two sides add in different orders. Rounding errors
// of a sum of R terms behave like a random walk of size ~2^-24 sqrt(R) times the running sums; the
// tolerance 2^-20 sqrt(R) ||dy[:, j]||_2 is about 40x the typical error (and still far below the size of
// any one element, so a missing row shows). A half db adds one ulp of its dtype (one final rounding on
// each side).
#include <cmath>
#include <tuple>

#include "kernels/bias_grad.h"
#include "tests/gpu/gpu_test_util.h"

namespace mpt::test {
namespace {

struct Shape { int rows, cols; };
// Column counts are not multiples of the 32-column tile; 4097 and 65000 rows need several row chunks
// (65000 x 255/256 < 2^16 keeps the exact-sum test exact).
// Widths that are multiples of 8 (1000, 768, 3072) take the 16-byte path for half dy.
const Shape kShapes[] = {{1, 1}, {1, 37}, {37, 1000}, {4097, 37}, {1000, 4097}, {65000, 3}, {300, 1}, {2048, 768}, {513, 3072}};

std::vector<uint8_t> multiples_of_2m8(Rng& r, DType t, size_t n) {
  std::vector<uint8_t> b(n * dtype_size(t));
  for (size_t i = 0; i < n; ++i) store_elem(b.data(), t, i, float(int(r.below(511)) - 255) / 256.f);
  return b;
}

class BiasGradGpu : public GpuTest, public ::testing::WithParamInterface<std::tuple<DType, DType>> {
 protected:
  std::vector<uint8_t> run(const std::vector<uint8_t>& dy, DType dyt, Shape s, const std::vector<uint8_t>& db0,
                           DType dbt) {
    DeviceBuffer ddy = to_device(dy), ddb = to_device(db0);
    cuda::bias_grad(ddy.get(), dyt, s.rows, s.cols, ddb.get(), dbt, stream());
    return to_host<uint8_t>(ddb, db0.size());
  }
};

TEST_P(BiasGradGpu, ExactSumsAreBitIdentical) {
  const auto [dyt, dbt] = GetParam();
  Rng r = fresh_rng();
  for (Shape s : kShapes) {
    SCOPED_TRACE("rows=" + std::to_string(s.rows) + " cols=" + std::to_string(s.cols));
    const std::vector<uint8_t> dy = multiples_of_2m8(r, dyt, size_t(s.rows) * size_t(s.cols));
    const std::vector<uint8_t> db0 = multiples_of_2m8(r, dbt, size_t(s.cols));
    std::vector<uint8_t> ref = db0;
    cpu::bias_grad(dy.data(), dyt, s.rows, s.cols, ref.data(), dbt);
    EXPECT_TRUE(same_bits("db", run(dy, dyt, s, db0, dbt), ref, dbt));
  }
}

TEST_P(BiasGradGpu, GeneralValuesWithinTolerance) {
  const auto [dyt, dbt] = GetParam();
  Rng r = fresh_rng();
  for (Shape s : kShapes) {
    SCOPED_TRACE("rows=" + std::to_string(s.rows) + " cols=" + std::to_string(s.cols));
    const size_t nc = size_t(s.cols);
    const std::vector<uint8_t> dy = random_buffer(r, dyt, size_t(s.rows) * nc, -1.f, 1.f);
    const std::vector<uint8_t> db0 = random_buffer(r, dbt, nc, -4.f, 4.f);
    std::vector<uint8_t> ref = db0;
    cpu::bias_grad(dy.data(), dyt, s.rows, s.cols, ref.data(), dbt);
    const std::vector<float> dyf = to_floats(dy, dyt), rf = to_floats(ref, dbt), db0f = to_floats(db0, dbt);
    std::vector<double> norm(nc, 0.0);
    for (size_t i = 0; i < size_t(s.rows); ++i)
      for (size_t j = 0; j < nc; ++j) norm[j] += double(dyf[i * nc + j]) * dyf[i * nc + j];
    const auto tol = [&](size_t j) {
      return (is_half(dbt) ? ulp(dbt, rf[j]) : 0.0) + std::ldexp(std::sqrt(double(s.rows) * norm[j]), -20) +
             std::ldexp(std::fabs(db0f[j]), -23);
    };
    EXPECT_TRUE(all_close("db", to_floats(run(dy, dyt, s, db0, dbt), dbt), rf, tol));
  }
}

TEST_P(BiasGradGpu, DeterministicAcrossRuns) {
  const auto [dyt, dbt] = GetParam();
  Rng r = fresh_rng();
  const Shape s{4097, 129};
  const std::vector<uint8_t> dy = random_buffer(r, dyt, size_t(s.rows) * size_t(s.cols));
  const std::vector<uint8_t> db0 = random_buffer(r, dbt, size_t(s.cols));
  const std::vector<uint8_t> first = run(dy, dyt, s, db0, dbt);
  for (int rep = 0; rep < 3; ++rep) EXPECT_EQ(run(dy, dyt, s, db0, dbt), first) << "run " << rep;
}

INSTANTIATE_TEST_SUITE_P(DtypePairs, BiasGradGpu,
                         ::testing::Combine(::testing::Values(DType::F32, DType::F16, DType::BF16),
                                            ::testing::Values(DType::F32, DType::F16, DType::BF16)),
                         [](const ::testing::TestParamInfo<std::tuple<DType, DType>>& info) {
                           return std::string("dy_") + dtype_name(std::get<0>(info.param)) + "_db_" +
                                  dtype_name(std::get<1>(info.param));
                         });

class BiasGradGpuArgs : public GpuTest {};

TEST_F(BiasGradGpuArgs, BadArgumentsThrow) {
  DeviceBuffer b(256);
  EXPECT_THROW(cuda::bias_grad(nullptr, DType::F32, 4, 4, b.get(), DType::F32, stream()), std::invalid_argument);
  EXPECT_THROW(cuda::bias_grad(b.get(), DType::F32, 4, 4, nullptr, DType::F32, stream()), std::invalid_argument);
  EXPECT_THROW(cuda::bias_grad(b.get(), DType::F32, -1, 4, b.get(), DType::F32, stream()), std::invalid_argument);
}

}  // namespace
}  // namespace mpt::test
