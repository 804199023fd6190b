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

// The one-launch update of a shard: segments of every length up to the maximum, gradients in the storage
// dtype still loss-scaled, decay on some segments only; three steps. Same operations in the same order as
// the CPU twin: master, m and v bit for bit, the parameter within one rounding (the same one, so equal).
TEST_P(AdamWGpu, SegmentsMatchCpu) {
  const DType pt = GetParam();
  Rng r = fresh_rng();
  std::vector<AdamWSegment> segs;
  int64_t store = 0, off = 0;
  for (int64_t len : {kAdamWSegmentMax, int64_t(1), int64_t(37), int64_t(1000), int64_t(4097), kAdamWSegmentMax - 1}) {
    AdamWSegment a;
    a.store = store;
    a.len = len;
    a.grad_off = off;
    a.param_off = off + 3;
    a.decay = int(r.below(2));
    segs.push_back(a);
    store += len;
    off += len + 64;
  }
  const size_t shard = size_t(store), flat = size_t(off + 3);
  std::vector<float> master(shard), m(shard, 0.f), v(shard, 0.f);
  for (auto& x : master) x = r.uniform(-1.f, 1.f);
  std::vector<uint8_t> params(flat * dtype_size(pt), 0x5A);
  DeviceBuffer dmaster = to_device(master), dm = to_device(m), dv = to_device(v), dparams = to_device(params);
  DeviceBuffer dsegs = to_device(segs);
  for (int step = 1; step <= kSteps; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    std::vector<uint8_t> grad(flat * dtype_size(pt));
    for (size_t i = 0; i < flat; ++i) store_elem(grad.data(), pt, i, r.uniform(-1.f, 1.f) * 4096.f);
    const AdamWHyper h = hyper_for_step(step, r);
    const float unscale = 1.f / 3000.f;
    cpu::adamw_segments(master.data(), m.data(), v.data(), grad.data(), pt, unscale, params.data(), pt, segs.data(),
                        int(segs.size()), h);
    DeviceBuffer dgrad = to_device(grad);
    cuda::adamw_segments(dmaster.as<float>(), dm.as<float>(), dv.as<float>(), dgrad.get(), pt, unscale, dparams.get(),
                         pt, dsegs.as<AdamWSegment>(), int(segs.size()), h, stream());
    EXPECT_EQ(to_host<float>(dmaster, shard), master);
    EXPECT_EQ(to_host<float>(dm, shard), m);
    EXPECT_EQ(to_host<float>(dv, shard), v);
    EXPECT_TRUE(same_bits("params", to_host<uint8_t>(dparams, params.size()), params, pt));
  }
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
