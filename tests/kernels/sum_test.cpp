// mpt::cpu::sum against an (effectively) exact reference: the values summed with a compensated
// double-double sum (TwoSum; error ~n * 2^-106 relative), added to acc and rounded to FP32 once.
// The kernel sums in double, so |got - want| <= ulp32(want) + n * 2^-53 * (sum |x| + |acc|): one FP32
// rounding plus the double sum's own bound. The cancelling inputs make an FP32 running sum (one
// skipped widening) miss that bound by orders of magnitude; the test asserts that too, so the data
// keeps its power to catch the mutation.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/sum.h"
#include "tests/test_util.h"

namespace mpt {
namespace {

struct Exact { double hi = 0, lo = 0; };
void two_sum_add(Exact& e, double v) {
  const double s = e.hi + v;
  const double bp = s - e.hi;
  const double err = (e.hi - (s - bp)) + (v - bp);
  e.hi = s;
  e.lo += err;
}

double ulp32(double v) {
  const int e = std::max(std::ilogb(std::fabs(v) > 0 ? v : 1e-45), -126);
  return std::ldexp(1.0, e - 23);
}

struct Case { std::vector<float> x; float acc; };

// Loss-like values (positive, a few units), or a cancelling case: +B first, -B last (B ~ 1e7, where FP32's
// spacing is 1) around small values in [0.1, 0.5): an FP32 running sum drops every one of them (each add
// rounds back to B), the exact total is their sum.
Case make_case(Rng& r, int64_t n, bool cancel) {
  Case c;
  c.x.resize(size_t(n));
  for (int64_t i = 0; i < n; ++i) c.x[size_t(i)] = cancel ? r.uniform(0.1f, 0.5f) : r.uniform(0.f, 12.f);
  if (cancel && n >= 3) {
    const float big = float(int64_t(1) << 23) * float(1 + r.below(2));
    c.x[0] = big;
    c.x[size_t(n - 1)] = -big;
  }
  c.acc = r.below(2) ? r.uniform(-50.f, 50.f) : 0.f;
  return c;
}

double bound(const Case& c, double want) {
  double abs_sum = std::fabs(double(c.acc));
  for (float v : c.x) abs_sum += std::fabs(double(v));
  return ulp32(want) + double(c.x.size()) * std::ldexp(1.0, -53) * abs_sum;
}

double exact_want(const Case& c) {
  Exact e;
  for (float v : c.x) two_sum_add(e, double(v));
  Exact t;
  two_sum_add(t, double(c.acc));
  two_sum_add(t, e.hi);
  two_sum_add(t, e.lo);
  return double(float(t.hi + t.lo));
}

TEST(Sum, WithinOneRoundingOfTheExactSum) {
  Rng rng = test::fresh_rng();
  for (bool cancel : {false, true})
    for (int64_t n : {int64_t(1), int64_t(511), int64_t(513), int64_t(16384 + 7), int64_t(200003)}) {
      Case c = make_case(rng, n, cancel);
      const double want = exact_want(c);
      float acc = c.acc;
      cpu::sum(c.x.data(), n, &acc);
      EXPECT_LE(std::fabs(double(acc) - want), bound(c, want))
          << "n=" << n << (cancel ? " cancelling" : " positive") << " got " << acc << " want " << want;
      if (cancel && n >= 3) {
        // An FP32 running sum (the widening skipped) must fail the same bound on these inputs.
        float f = 0;
        for (float v : c.x) f += v;
        f += c.acc;
        EXPECT_GT(std::fabs(double(f) - want), bound(c, want)) << "inputs too easy to catch an FP32 sum, n=" << n;
      }
    }
}

TEST(Sum, AddsIntoTheAccumulatorAndPropagatesNonFinite) {
  std::vector<float> x = {1.f, 2.f, 3.f};
  float acc = 10.f;
  cpu::sum(x.data(), 3, &acc);
  EXPECT_EQ(acc, 16.f);
  cpu::sum(x.data(), 0, &acc);  // nothing to add
  EXPECT_EQ(acc, 16.f);
  x[1] = INFINITY;
  cpu::sum(x.data(), 3, &acc);
  EXPECT_TRUE(std::isinf(acc) && acc > 0);
  x[1] = NAN;
  acc = 0;
  cpu::sum(x.data(), 3, &acc);
  EXPECT_TRUE(std::isnan(acc));
  // 2^24 + 1 is not an FP32 value: a sum formed in FP32 would drop the ones; in double it rounds once.
  std::vector<float> y = {16777216.f, 1.f, 1.f};
  acc = 0;
  cpu::sum(y.data(), 3, &acc);
  EXPECT_EQ(acc, 16777218.f);
}

TEST(Sum, ChecksArguments) {
  std::vector<float> x(4, 1.f);
  float acc = 0;
  EXPECT_THROW(cpu::sum(nullptr, 4, &acc), std::invalid_argument);
  EXPECT_THROW(cpu::sum(x.data(), 4, nullptr), std::invalid_argument);
  EXPECT_THROW(cpu::sum(x.data(), -1, &acc), std::invalid_argument);
  EXPECT_NO_THROW(cpu::sum(nullptr, 0, &acc));
}

}  // namespace
}  // namespace mpt
