// mpt::cpu::adamw against a float64 reference of the update written in kernels/adamw.h.
//
// The reference takes the same FP32 state and hyperparameters, so the kernel's only error is FP32
// arithmetic: a bound B per element is carried through the formulas (u per operation on the operation's
// result), and master/m/v must be within 2 * B (the factor covers second-order terms). The half-precision
// parameter copy must be exactly round_to(pt, new master).
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/adamw.h"
#include "tests/test_util.h"

namespace mpt {
namespace {

constexpr double kU = 0x1p-24;

struct State {
  std::vector<float> p, m, v, g;
};
State random_state(Rng& rng, size_t n) {
  State s{std::vector<float>(n), std::vector<float>(n), std::vector<float>(n), std::vector<float>(n)};
  for (size_t i = 0; i < n; ++i) {
    s.p[i] = rng.normal();
    s.m[i] = 0.01f * rng.normal();
    s.v[i] = 1e-4f * rng.uniform();  // >= 0, as a second moment is
    s.g[i] = 0.1f * rng.normal();
  }
  return s;
}

AdamWHyper random_hyper(Rng& rng) {
  AdamWHyper h;
  h.lr = rng.uniform(1e-4f, 1e-2f);
  h.beta1 = 0.9f;
  h.beta2 = rng.below(2) ? 0.999f : 0.95f;
  h.eps = 1e-8f;
  h.weight_decay = rng.uniform(0.f, 0.1f);
  const int step = 1 + int(rng.below(50));
  h.bc1 = float(1.0 - std::pow(double(h.beta1), step));
  h.bc2 = float(1.0 - std::pow(double(h.beta2), step));
  h.grad_coef = rng.uniform(0.3f, 1.f);  // a clip coefficient
  return h;
}

class AdamWTest : public ::testing::TestWithParam<DType> {};

// Random segments over a shard, as the optimizer builds them: store ranges in order, gradients and
// parameters at other offsets, decay on some. Segment lengths 1..kAdamWSegmentMax.
std::vector<AdamWSegment> random_segments(Rng& rng, int64_t* shard, int64_t* flat) {
  std::vector<AdamWSegment> s;
  int64_t store = 0, off = 64 * int64_t(rng.below(4));
  const int n = 2 + int(rng.below(6));
  for (int k = 0; k < n; ++k) {
    AdamWSegment a;
    a.store = store;
    a.len = k == 0 ? kAdamWSegmentMax : 1 + int64_t(rng.below(3000));
    a.grad_off = off;
    a.param_off = off + 7;  // parameters at another place than their gradients
    a.decay = int(rng.below(2));
    s.push_back(a);
    store += a.len;
    off += a.len + int64_t(rng.below(100));
  }
  *shard = store;
  *flat = off + 7;
  return s;
}

// adamw_segments is the per-element update of adamw after g = (grad * grad_unscale) rounded to FP32: equal,
// bit for bit, to unscaling each segment into an FP32 buffer and calling adamw with the segment's decay.
TEST_P(AdamWTest, SegmentsEqualUnscaleThenUpdate) {
  const DType gt = GetParam();
  Rng rng = test::fresh_rng();
  int64_t shard = 0, flat = 0;
  const std::vector<AdamWSegment> segs = random_segments(rng, &shard, &flat);
  const AdamWHyper h = random_hyper(rng);
  const float unscale = 1.f / 3072.f;
  State a = random_state(rng, size_t(shard));
  State b = a;
  std::vector<uint8_t> grad = test::random_buffer(rng, gt, size_t(flat), -300.f, 300.f);
  std::vector<uint8_t> pa(size_t(flat) * dtype_size(gt), 0xAB), pb = pa;
  cpu::adamw_segments(a.p.data(), a.m.data(), a.v.data(), grad.data(), gt, unscale, pa.data(), gt, segs.data(),
                      int(segs.size()), h);
  for (const AdamWSegment& s : segs) {
    std::vector<float> g32(size_t(s.len));
    for (int64_t i = 0; i < s.len; ++i) g32[size_t(i)] = load_elem(grad.data(), gt, size_t(s.grad_off + i)) * unscale;
    AdamWHyper hs = h;
    if (!s.decay) hs.weight_decay = 0.f;
    cpu::adamw(b.p.data() + s.store, b.m.data() + s.store, b.v.data() + s.store, g32.data(),
               pb.data() + size_t(s.param_off) * dtype_size(gt), gt, size_t(s.len), hs);
  }
  EXPECT_EQ(a.p, b.p);
  EXPECT_EQ(a.m, b.m);
  EXPECT_EQ(a.v, b.v);
  EXPECT_EQ(pa, pb);  // including the bytes outside every segment, untouched on both sides
}

TEST_P(AdamWTest, StepMatchesReference) {
  const DType pt = GetParam();
  Rng rng = test::fresh_rng();
  for (size_t n : {size_t(37), size_t(1001)}) {
    const AdamWHyper h = random_hyper(rng);
    const State s0 = random_state(rng, n);
    State s = s0;
    std::vector<uint8_t> param(n * dtype_size(pt));
    cpu::adamw(s.p.data(), s.m.data(), s.v.data(), s.g.data(), param.data(), pt, n, h);
    size_t bad = 0;
    for (size_t i = 0; i < n; ++i) {
      // Header order, in double, from the same FP32 inputs.
      const double g = double(s0.g[i]) * h.grad_coef, e_g = kU * std::fabs(g);
      const double b1 = h.beta1, b2 = h.beta2;
      const double p1 = s0.p[i] * (1.0 - double(h.lr) * h.weight_decay);
      const double m = b1 * s0.m[i] + (1.0 - b1) * g;
      const double v = b2 * s0.v[i] + (1.0 - b2) * g * g;
      const double denom = std::sqrt(v) / std::sqrt(double(h.bc2)) + h.eps;
      const double upd = (double(h.lr) / h.bc1) * m / denom;
      const double p = p1 - upd;
      // Error bounds of the FP32 evaluation.
      const double e_p1 = 3 * kU * std::fabs(p1);
      const double e_m = kU * (std::fabs(b1 * s0.m[i]) + 2 * std::fabs((1.0 - b1) * g) + std::fabs(m)) + (1.0 - b1) * e_g;
      const double e_v = kU * (std::fabs(b2 * s0.v[i]) + 3 * (1.0 - b2) * g * g + v) + (1.0 - b2) * 2 * std::fabs(g) * e_g;
      const double rel_den = (v > 0 ? 0.5 * e_v / v : 0.0) + 4 * kU;
      const double e_upd = std::fabs(double(h.lr) / h.bc1) * (e_m + std::fabs(m) * (rel_den + 3 * kU)) / denom;
      const double e_p = e_p1 + e_upd + kU * std::fabs(p);
      const double got[3] = {s.p[i], s.m[i], s.v[i]}, ref[3] = {p, m, v}, lim[3] = {2 * e_p, 2 * e_m, 2 * e_v};
      const char* names[3] = {"master", "m", "v"};
      for (int q = 0; q < 3; ++q)
        if (!(std::fabs(got[q] - ref[q]) <= lim[q]) && ++bad <= 5)
          ADD_FAILURE() << names[q] << "[" << i << "] got " << got[q] << " ref " << ref[q] << " limit " << lim[q];
      const float want = round_to(pt, s.p[i]);
      if (load_elem(param.data(), pt, i) != want && ++bad <= 5)
        ADD_FAILURE() << "param_out[" << i << "] is not round_to(master)";
    }
    EXPECT_EQ(bad, 0u) << "n=" << n;

    // Without param_out the master state is bit-identical.
    State s2 = s0;
    cpu::adamw(s2.p.data(), s2.m.data(), s2.v.data(), s2.g.data(), nullptr, pt, n, h);
    EXPECT_EQ(s2.p, s.p);
    EXPECT_EQ(s2.m, s.m);
    EXPECT_EQ(s2.v, s.v);
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, AdamWTest, ::testing::Values(DType::F32, DType::F16, DType::BF16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

// Decoupled weight decay comes first and does not go through the moments: with zero gradient and zero
// moments the step is p * (1 - lr * wd) to FP32 rounding and the moments stay exactly zero. (L2-regularised Adam would
// instead fold wd * p into g and move m and v.)
TEST(AdamW, WeightDecayIsDecoupled) {
  Rng rng = test::fresh_rng();
  const size_t n = 129;
  AdamWHyper h = random_hyper(rng);
  h.weight_decay = 0.05f;
  std::vector<float> p(n), m(n, 0.f), v(n, 0.f), g(n, 0.f);
  for (auto& x : p) x = rng.normal();
  const std::vector<float> p0 = p;
  cpu::adamw(p.data(), m.data(), v.data(), g.data(), nullptr, DType::F32, n, h);
  const double decay = 1.0 - double(h.lr) * h.weight_decay;
  for (size_t i = 0; i < n; ++i) {
    // Two FP32 roundings (the decay factor and the product); the update term is exactly zero.
    EXPECT_NEAR(p[i], p0[i] * decay, 3 * kU * std::fabs(p0[i])) << i;
    EXPECT_EQ(m[i], 0.f);
    EXPECT_EQ(v[i], 0.f);
  }
}

// On the first step (bc1 = 1 - beta1, bc2 = 1 - beta2, zero moments, no decay) Adam moves every
// parameter by lr * sign(g) up to eps: a check of the bias corrections independent of the formula above.
TEST(AdamW, FirstStepMovesByLearningRate) {
  Rng rng = test::fresh_rng();
  const size_t n = 257;
  AdamWHyper h;
  h.lr = 1e-3f;
  h.bc1 = 1.f - h.beta1;
  h.bc2 = 1.f - h.beta2;
  std::vector<float> p(n), m(n, 0.f), v(n, 0.f), g(n);
  for (auto& x : p) x = rng.normal();
  for (auto& x : g) x = (rng.below(2) ? 1.f : -1.f) * rng.uniform(0.01f, 1.f);
  const std::vector<float> p0 = p;
  cpu::adamw(p.data(), m.data(), v.data(), g.data(), nullptr, DType::F32, n, h);
  for (size_t i = 0; i < n; ++i) {
    const double step = double(p0[i]) - double(p[i]);
    // |g| >= 0.01 makes eps / |g| <= 1e-6 relative; FP32 rounding of p adds ~1e-7 absolute.
    EXPECT_NEAR(step, (g[i] > 0 ? 1 : -1) * 1e-3, 1e-3 * 2e-5 + 4 * kU * std::fabs(p0[i])) << i;
  }
}

}  // namespace
}  // namespace mpt
