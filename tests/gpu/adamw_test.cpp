// cuda::adamw against cpu::adamw, over several consecutive steps (the state feeds back).
//
// Tolerances. The kernel performs the CPU twin's FP32 operations in the same order with explicitly
// rounded intrinsics (no FMA contraction; IEEE division and square root), so the results are expected to
// be bit-identical; the test allows 1e-6 relative on master, m and v (plus 1e-6 lr on master and 1e-6 |g|
// on m, 1e-6 g^2 on v, for values near zero after cancellation), which is still about 100x below the
// effect of any wrong term (a missing bias correction, weight decay applied to the update, a swapped beta,
// the clip coefficient applied twice). The half param is the master rounded once on each side: within one
// ulp of the output dtype.
#include <cmath>

#include "kernels/adamw.h"
#include "tests/gpu/gpu_test_util.h"

namespace mpt::test {
namespace {

const size_t kSizes[] = {1, 37, 1000, 4097, (size_t(1) << 20) + 7};
constexpr int kSteps = 3;

class AdamWGpu : public GpuTest, public ::testing::WithParamInterface<DType> {};

AdamWHyper hyper_for_step(int t, Rng& r) {
  AdamWHyper h;
  h.lr = 3e-3f;
  h.beta1 = 0.9f;
  h.beta2 = 0.95f;
  h.eps = 1e-8f;
  h.weight_decay = 0.1f;
  h.bc1 = 1.f - std::pow(h.beta1, float(t));
  h.bc2 = 1.f - std::pow(h.beta2, float(t));
  h.grad_coef = r.uniform(0.25f, 1.f);  // a clip coefficient
  return h;
}

TEST_P(AdamWGpu, StepsMatchCpu) {
  const DType pt = GetParam();
  Rng r = fresh_rng();
  for (size_t n : kSizes) {
    SCOPED_TRACE("n=" + std::to_string(n));
    std::vector<float> master(n), m(n, 0.f), v(n, 0.f);
    for (auto& x : master) x = r.uniform(-1.f, 1.f);
    DeviceBuffer dmaster = to_device(master), dm = to_device(m), dv = to_device(v);
    DeviceBuffer dparam(n * dtype_size(pt));
    for (int step = 1; step <= kSteps; ++step) {
      SCOPED_TRACE("step " + std::to_string(step));
      std::vector<float> grad(n);
      for (auto& g : grad) g = r.uniform(-1.f, 1.f) * std::ldexp(1.f, int(r.below(8)) - 4);
      const AdamWHyper h = hyper_for_step(step, r);
      std::vector<uint8_t> ref_param(n * dtype_size(pt));
      cpu::adamw(master.data(), m.data(), v.data(), grad.data(), ref_param.data(), pt, n, h);

      DeviceBuffer dgrad = to_device(grad);
      dparam.fill(0xFF, stream());
      cuda::adamw(dmaster.as<float>(), dm.as<float>(), dv.as<float>(), dgrad.as<float>(), dparam.get(), pt, n, h,
                  stream());
      const std::vector<float> gm = to_host<float>(dmaster, n), gmm = to_host<float>(dm, n), gv = to_host<float>(dv, n);
      const std::vector<float> gp = to_floats(to_host<uint8_t>(dparam, n * dtype_size(pt)), pt);
      const std::vector<float> rp = to_floats(ref_param, pt);
      EXPECT_TRUE(all_close("master", gm, master, [&](size_t i) { return 1e-6 * (std::fabs(master[i]) + h.lr); }));
      EXPECT_TRUE(all_close("m", gmm, m, [&](size_t i) { return 1e-6 * (std::fabs(m[i]) + std::fabs(grad[i])); }));
      EXPECT_TRUE(all_close("v", gv, v, [&](size_t i) { return 1e-6 * (std::fabs(v[i]) + grad[i] * grad[i]); }));
      EXPECT_TRUE(all_close("param", gp, rp, [&](size_t i) { return is_half(pt) ? ulp(pt, rp[i]) : 1e-6 * (std::fabs(rp[i]) + h.lr); }));
      // Carry the GPU state forward so that each step is compared from identical inputs.
      master = gm;
      m = gmm;
      v = gv;
    }
  }
}

TEST_P(AdamWGpu, NullParamOutUpdatesStateOnly) {
  const DType pt = GetParam();
  Rng r = fresh_rng();
  const size_t n = 4097;
  std::vector<float> master(n), grad(n), m(n), v(n);
  for (size_t i = 0; i < n; ++i) {
    master[i] = r.uniform(-1.f, 1.f);
    grad[i] = r.uniform(-1.f, 1.f);
    m[i] = r.uniform(-0.1f, 0.1f);
    v[i] = r.uniform(0.f, 0.01f);
  }
  const AdamWHyper h = hyper_for_step(5, r);
  DeviceBuffer a_master = to_device(master), a_m = to_device(m), a_v = to_device(v), dgrad = to_device(grad);
  DeviceBuffer b_master = to_device(master), b_m = to_device(m), b_v = to_device(v), dparam(n * dtype_size(pt));
  cuda::adamw(a_master.as<float>(), a_m.as<float>(), a_v.as<float>(), dgrad.as<float>(), nullptr, pt, n, h, stream());
  cuda::adamw(b_master.as<float>(), b_m.as<float>(), b_v.as<float>(), dgrad.as<float>(), dparam.get(), pt, n, h,
              stream());
  EXPECT_EQ(to_host<float>(a_master, n), to_host<float>(b_master, n));
  EXPECT_EQ(to_host<float>(a_m, n), to_host<float>(b_m, n));
  EXPECT_EQ(to_host<float>(a_v, n), to_host<float>(b_v, n));
  EXPECT_NE(to_host<float>(a_master, n), master) << "no update happened";
}

TEST_P(AdamWGpu, BadArgumentsThrow) {
  const DType pt = GetParam();
  DeviceBuffer b(64);
  float* f = b.as<float>();
  AdamWHyper h;
  EXPECT_THROW(cuda::adamw(nullptr, f, f, f, nullptr, pt, 4, h, stream()), std::invalid_argument);
  EXPECT_THROW(cuda::adamw(f, f, f, nullptr, nullptr, pt, 4, h, stream()), std::invalid_argument);
  EXPECT_NO_THROW(cuda::adamw(nullptr, nullptr, nullptr, nullptr, nullptr, pt, 0, h, stream()));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, AdamWGpu, ::testing::Values(DType::F32, DType::F16, DType::BF16), dtype_param_name);

}  // namespace
}  // namespace mpt::test
