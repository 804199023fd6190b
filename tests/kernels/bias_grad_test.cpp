// mpt::cpu::bias_grad against a float64 reference: db[j] += sum_i dy[i, j].
//
// The reference sums the same dtype-rounded dy in double. The kernel's error is its FP32 column sum
// (bounded by u * sum_i |partial sum_i|, computed alongside the reference), the FP32 add to db, and one
// rounding to db's dtype (storage_tol). An exact-sum case (integers) checks the accumulation bit for bit.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/bias_grad.h"
#include "tests/test_util.h"

namespace mpt {
namespace {

constexpr double kU32 = 0x1p-24;

struct Case {
  DType dyt, dbt;
};
std::string case_name(const Case& c) { return std::string(dtype_name(c.dyt)) + "_to_" + dtype_name(c.dbt); }

class BiasGradTest : public ::testing::TestWithParam<Case> {};

TEST_P(BiasGradTest, AccumulatesColumnSums) {
  const Case c = GetParam();
  const test::Tol tol = test::storage_tol(c.dbt);
  Rng rng = test::fresh_rng();
  const int shapes[][2] = {{37, 129}, {1001, 37}, {1, 5}};
  for (const auto& s : shapes) {
    const int rows = s[0], cols = s[1];
    const auto dy = test::random_buffer(rng, c.dyt, size_t(rows) * cols);
    auto db = test::random_buffer(rng, c.dbt, size_t(cols));
    std::vector<double> ref(cols), bound(cols);
    for (int j = 0; j < cols; ++j) {
      double sum = 0, b = 0;
      for (int i = 0; i < rows; ++i) {
        sum += load_elem(dy.data(), c.dyt, size_t(i) * cols + j);
        b += std::fabs(sum);
      }
      ref[j] = load_elem(db.data(), c.dbt, j) + sum;
      bound[j] = kU32 * (b + std::fabs(ref[j]));
    }
    cpu::bias_grad(dy.data(), c.dyt, rows, cols, db.data(), c.dbt);
    size_t bad = 0;
    for (int j = 0; j < cols; ++j) {
      const double got = load_elem(db.data(), c.dbt, j);
      const double lim = tol.atol + tol.rtol * std::fabs(ref[j]) + bound[j];
      if (!(std::fabs(got - ref[j]) <= lim) && ++bad <= 5)
        ADD_FAILURE() << rows << "x" << cols << " col " << j << ": got " << got << " ref " << ref[j];
    }
    EXPECT_EQ(bad, 0u) << rows << "x" << cols;
  }
}

// Small integers are exact in every dtype and their sums stay exact in FP32, so two calls (two
// micro-batches) must add up bit for bit; this also catches a kernel that overwrites db instead of adding.
TEST_P(BiasGradTest, ExactIntegerSumsAccumulateOverCalls) {
  const Case c = GetParam();
  Rng rng = test::fresh_rng();
  const int rows = 61, cols = 37;
  std::vector<uint8_t> dy(size_t(rows) * cols * dtype_size(c.dyt)), db(size_t(cols) * dtype_size(c.dbt));
  std::vector<double> expect(cols);
  for (int j = 0; j < cols; ++j) {
    const float v = float(int(rng.below(9)) - 4);
    store_elem(db.data(), c.dbt, j, v);
    expect[j] = v;
  }
  for (int call = 0; call < 2; ++call) {
    for (int i = 0; i < rows; ++i)
      for (int j = 0; j < cols; ++j) {
        const float v = float(int(rng.below(5)) - 2);
        store_elem(dy.data(), c.dyt, size_t(i) * cols + j, v);
        expect[j] += v;
      }
    cpu::bias_grad(dy.data(), c.dyt, rows, cols, db.data(), c.dbt);
  }
  // Every partial result is an integer of magnitude <= 4 + 2 * 61 * 2 = 248, exact even in bf16.
  for (int j = 0; j < cols; ++j) EXPECT_EQ(load_elem(db.data(), c.dbt, j), expect[j]) << "col " << j;
}

TEST(BiasGrad, ZeroRowsLeavesDbUnchanged) {
  Rng rng = test::fresh_rng();
  auto db = test::random_buffer(rng, DType::F16, 7);
  const auto before = db;
  cpu::bias_grad(nullptr, DType::F16, 0, 7, db.data(), DType::F16);
  EXPECT_EQ(db, before);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, BiasGradTest,
                         ::testing::Values(Case{DType::F32, DType::F32}, Case{DType::F16, DType::F16},
                                           Case{DType::BF16, DType::BF16}, Case{DType::F16, DType::F32},
                                           Case{DType::BF16, DType::F32}),
                         [](const auto& info) { return case_name(info.param); });

}  // namespace
}  // namespace mpt
