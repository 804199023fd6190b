// mpt::cpu::act_forward / act_backward against float64 references; the reference derivative is itself
// checked against central differences of the float64 forward.
//
// The reference reads the same dtype-rounded z and dy as the kernel, so the kernel's error is its FP32
// evaluation plus one rounding to the dtype. Tolerance: storage_tol(dtype) for the rounding, plus a bound
// on the FP32 evaluation (tanhf and a handful of operations; see fp32_bound_*), which only matters for fp32.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/activation.h"
#include "tests/test_util.h"

namespace mpt {
namespace {

constexpr double kU32 = 0x1p-24;
constexpr double kC = 0.7978845608028654;  // sqrt(2/pi)
constexpr double kA = 0.044715;

double gelu_ref(double z) { return 0.5 * z * (1.0 + std::tanh(kC * (z + kA * z * z * z))); }
double gelu_grad_ref(double z) {
  const double t = std::tanh(kC * (z + kA * z * z * z));
  return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * kC * (1.0 + 3.0 * kA * z * z);
}
double act_ref(Act a, double z) { return a == Act::Gelu ? gelu_ref(z) : (z > 0 ? z : 0.0); }
double grad_ref(Act a, double z) { return a == Act::Gelu ? gelu_grad_ref(z) : (z > 0 ? 1.0 : 0.0); }

// FP32 evaluation error: 0.5 z (1 + t) loses a few ulps of max(|z|, 1) where 1 + t cancels; in the
// derivative 1 - t^2 carries an absolute error of a few ulps, multiplied by 0.5 |z| sqrt(2/pi)(1 + 0.134 z^2).
double fp32_bound_fwd(Act a, double z) { return a == Act::Gelu ? 4 * kU32 * (std::fabs(z) + 1.0) : 0.0; }
double fp32_bound_bwd(Act a, double z, double dy) {
  if (a != Act::Gelu) return 0.0;
  return 4 * kU32 * std::fabs(dy) * (1.0 + std::fabs(z) * (1.0 + 0.134 * z * z));
}

std::vector<double> load_all(const std::vector<uint8_t>& b, DType t, size_t n) {
  std::vector<double> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = load_elem(b.data(), t, i);
  return v;
}

const char* act_name(Act a) { return a == Act::Gelu ? "gelu" : "relu"; }

class ActivationTest : public ::testing::TestWithParam<DType> {};

TEST_P(ActivationTest, ForwardMatchesReference) {
  const DType t = GetParam();
  const test::Tol tol = test::storage_tol(t);
  Rng rng = test::fresh_rng();
  // 1001 and 2085 are odd and cross the kernel's internal chunk boundaries.
  for (size_t n : {size_t(1001), size_t(2085)}) {
    for (Act a : {Act::Gelu, Act::Relu}) {
      const auto zb = test::random_buffer(rng, t, n, -5.f, 5.f);
      std::vector<uint8_t> yb(n * dtype_size(t));
      cpu::act_forward(a, zb.data(), yb.data(), t, n);
      const auto z = load_all(zb, t, n), y = load_all(yb, t, n);
      size_t bad = 0;
      for (size_t i = 0; i < n; ++i) {
        const double ref = act_ref(a, z[i]);
        const double lim = tol.atol + tol.rtol * std::fabs(ref) + fp32_bound_fwd(a, z[i]);
        if (!(std::fabs(y[i] - ref) <= lim) && ++bad <= 5)
          ADD_FAILURE() << act_name(a) << " z=" << z[i] << " got " << y[i] << " ref " << ref;
      }
      EXPECT_EQ(bad, 0u) << act_name(a) << " n=" << n;
    }
  }
}

TEST_P(ActivationTest, BackwardMatchesReference) {
  const DType t = GetParam();
  const test::Tol tol = test::storage_tol(t);
  Rng rng = test::fresh_rng();
  for (size_t n : {size_t(1001), size_t(2085)}) {
    for (Act a : {Act::Gelu, Act::Relu}) {
      const auto zb = test::random_buffer(rng, t, n, -5.f, 5.f);
      const auto dyb = test::random_buffer(rng, t, n, -2.f, 2.f);
      std::vector<uint8_t> dzb(n * dtype_size(t));
      cpu::act_backward(a, zb.data(), dyb.data(), dzb.data(), t, n);
      const auto z = load_all(zb, t, n), dy = load_all(dyb, t, n), dz = load_all(dzb, t, n);
      size_t bad = 0;
      for (size_t i = 0; i < n; ++i) {
        const double ref = dy[i] * grad_ref(a, z[i]);
        const double lim = tol.atol + tol.rtol * std::fabs(ref) + fp32_bound_bwd(a, z[i], dy[i]);
        if (!(std::fabs(dz[i] - ref) <= lim) && ++bad <= 5)
          ADD_FAILURE() << act_name(a) << " z=" << z[i] << " dy=" << dy[i] << " got " << dz[i] << " ref " << ref;
      }
      EXPECT_EQ(bad, 0u) << act_name(a) << " n=" << n;

      // In place (dz aliasing dy), as a backward pass that reuses its gradient buffer does.
      std::vector<uint8_t> inplace = dyb;
      cpu::act_backward(a, zb.data(), inplace.data(), inplace.data(), t, n);
      EXPECT_EQ(inplace, dzb) << act_name(a) << " in place";
    }
  }
}

// The float64 reference derivative against central differences of the float64 forward. With h = 1e-5
// the truncation error is ~h^2 |f'''| < 1e-9 and the cancellation error ~1e-16 / h = 1e-11, so 1e-8
// is tight; a wrong constant in the derivative (e.g. 3 * 0.044715 replaced by 0.044715) is off by > 1e-3.
TEST(ActivationReference, DerivativeMatchesFiniteDifferences) {
  Rng rng = test::fresh_rng();
  const double h = 1e-5;
  for (Act a : {Act::Gelu, Act::Relu}) {
    for (int i = 0; i < 2000; ++i) {
      const double z = rng.uniform(-6.f, 6.f);
      if (a == Act::Relu && std::fabs(z) < 2 * h) continue;  // the kink
      const double fd = (act_ref(a, z + h) - act_ref(a, z - h)) / (2 * h);
      ASSERT_NEAR(fd, grad_ref(a, z), 1e-8) << act_name(a) << " z=" << z;
    }
  }
}

TEST_P(ActivationTest, InPlaceForwardAndSpecialValues) {
  const DType t = GetParam();
  Rng rng = test::fresh_rng();
  const size_t n = 1537;
  const auto zb = test::random_buffer(rng, t, n, -3.f, 3.f);
  std::vector<uint8_t> out(zb.size()), inplace = zb;
  cpu::act_forward(Act::Gelu, zb.data(), out.data(), t, n);
  cpu::act_forward(Act::Gelu, inplace.data(), inplace.data(), t, n);
  EXPECT_EQ(out, inplace);

  // ReLU lets a NaN through (an overflowed forward must reach the loss and be detected) and keeps +inf.
  std::vector<uint8_t> sp(4 * dtype_size(t)), y(sp.size());
  store_elem(sp.data(), t, 0, NAN);
  store_elem(sp.data(), t, 1, INFINITY);
  store_elem(sp.data(), t, 2, -INFINITY);
  store_elem(sp.data(), t, 3, -0.5f);
  cpu::act_forward(Act::Relu, sp.data(), y.data(), t, 4);
  EXPECT_TRUE(std::isnan(load_elem(y.data(), t, 0)));
  EXPECT_EQ(load_elem(y.data(), t, 1), INFINITY);
  EXPECT_EQ(load_elem(y.data(), t, 2), 0.f);
  EXPECT_EQ(load_elem(y.data(), t, 3), 0.f);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, ActivationTest, ::testing::Values(DType::F32, DType::F16, DType::BF16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

}  // namespace
}  // namespace mpt
