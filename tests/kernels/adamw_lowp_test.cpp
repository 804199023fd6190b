// mpt::cpu::adamw_lowp (bf16 and int8 AdamW states) against a float64 reference of the same algorithm
// (kernels/adamw_lowp.h), and the quantisation error bounds.
//
// One step from a given quantised state: the reference dequantises the same codes in double, updates in
// double, takes the block maxima of the new values and computes each element's ideal (unrounded) code
// r = 127 * sqrt(|m| / M) or 255 * sqrt(u / U). The kernel's code must be within 0.5 + d of r, where d is
// how far the FP32 error bounds of m, v and the maxima can move r (typically ~1e-5, never a whole step),
// i.e. rounded to nearest; a code kept from before the step
// (requantisation skipped) or computed against the old block maximum (a stale absmax) misses r by whole
// steps, since every block's values and maximum change. Scales must match the reference maxima to the FP32
// error of m and v. The master weight carries a bound from the FP32 evaluation, as in adamw_test.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "kernels/adamw_lowp.h"
#include "tests/test_util.h"

namespace mpt {
namespace {

constexpr double kU = 0x1p-24;

struct Layout {
  std::vector<AdamWSegment> segs;
  std::vector<AdamWQBlock> blocks;
  int64_t store = 0, flat = 0;
};

// Blocks of 1..block elements (some full), each tiled by 1..4 segments whose gradients and parameters
// sit elsewhere in a flat buffer, with gaps; decay on some segments.
Layout random_layout(Rng& rng, int64_t block) {
  Layout L;
  const int nb = 3 + int(rng.below(6));
  int64_t off = int64_t(rng.below(50));
  for (int b = 0; b < nb; ++b) {
    AdamWQBlock q;
    q.store = L.store;
    q.seg_begin = int32_t(L.segs.size());
    const int64_t len = b % 3 == 0 ? block : 1 + int64_t(rng.below(uint64_t(block)));
    int64_t left = len;
    while (left > 0) {
      AdamWSegment s;
      s.store = q.store + (len - left);
      s.len = q.nsegs == 3 ? left : std::min(left, 1 + int64_t(rng.below(uint64_t(len))));
      s.grad_off = off;
      s.param_off = off + 3;
      s.decay = int(rng.below(2));
      L.segs.push_back(s);
      q.nsegs++;
      left -= s.len;
      off += s.len + int64_t(rng.below(20));
    }
    q.len = len;
    L.blocks.push_back(q);
    L.store += len;
  }
  L.flat = off + 3;
  return L;
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
  h.grad_coef = rng.uniform(0.3f, 1.f);
  return h;
}

// Values spread over four decades, so that the companding matters; every third block all zero.
float spread(Rng& rng) { return rng.normal() * std::pow(10.f, rng.uniform(-4.f, 0.f)); }

struct QState {
  std::vector<float> master;
  std::vector<uint8_t> m, v;  // storage bytes
  std::vector<float> scales;
};

QState random_state(Rng& rng, const Layout& L, StateDType sd) {
  const size_t n = size_t(L.store);
  std::vector<float> m(n), v(n);
  QState s;
  s.master.resize(n);
  for (size_t i = 0; i < n; ++i) {
    s.master[i] = rng.normal();
    m[i] = 0.01f * spread(rng);
    v[i] = 1e-4f * std::fabs(spread(rng));
  }
  for (size_t b = 2; b < L.blocks.size(); b += 3)
    for (int64_t e = L.blocks[b].store; e < L.blocks[b].store + L.blocks[b].len; ++e) m[size_t(e)] = v[size_t(e)] = 0.f;
  const size_t bytes = sd == StateDType::BF16 ? 2 : 1;
  s.m.resize(n * bytes);
  s.v.resize(n * bytes);
  s.scales.assign(2 * L.blocks.size(), 0.f);
  cpu::lowp_state_from_f32(m.data(), v.data(), sd, L.blocks.data(), int(L.blocks.size()), s.m.data(), s.v.data(),
                           s.scales.data());
  return s;
}

double bf16_value(const std::vector<uint8_t>& b, size_t i) { return load_elem(b.data(), DType::BF16, i); }

// One step of the kernel checked against the float64 reference; returns the number of bad values.
size_t check_step(StateDType sd, const Layout& L, const QState& s0, const QState& s, const std::vector<uint8_t>& grad,
                  DType gt, float unscale, const std::vector<uint8_t>& params, DType pt, const AdamWHyper& h) {
  size_t bad = 0;
  auto fail = [&](const std::string& what) {
    if (++bad <= 8) ADD_FAILURE() << what;
  };
  // The scalars the kernel derives in FP32 are its inputs; the reference takes them as they are.
  const float decay_on = 1.f - h.lr * h.weight_decay, step = h.lr / h.bc1, sqrt_bc2 = std::sqrt(h.bc2);
  const double b1 = h.beta1, b2 = h.beta2, ob1 = 1.f - h.beta1, ob2 = 1.f - h.beta2;
  for (size_t bi = 0; bi < L.blocks.size(); ++bi) {
    const AdamWQBlock& b = L.blocks[bi];
    const size_t n = size_t(b.len);
    std::vector<double> m(n), v(n), em(n), ev(n);
    double M = 0, U = 0, eM = 0, eU = 0;
    for (int j = 0; j < b.nsegs; ++j) {
      const AdamWSegment& sg = L.segs[size_t(b.seg_begin + j)];
      for (int64_t i = 0; i < sg.len; ++i) {
        const size_t e = size_t(sg.store + i), l = e - size_t(b.store);
        const double g = double(float(load_elem(grad.data(), gt, size_t(sg.grad_off + i)) * unscale)) * h.grad_coef;
        double m0, v0, e_in_m, e_in_v;
        if (sd == StateDType::BF16) {
          m0 = bf16_value(s0.m, e);
          v0 = bf16_value(s0.v, e);
          e_in_m = e_in_v = 0;
        } else {
          const int q = int(int8_t(s0.m[e]));
          const double t = std::abs(q) / 127.0;
          m0 = (q < 0 ? -1 : 1) * s0.scales[2 * bi] * t * t;
          const double tu = s0.v[e] / 255.0, u0 = s0.scales[2 * bi + 1] * tu * tu;
          v0 = u0 * u0;
          e_in_m = 3 * kU * std::fabs(m0);  // the FP32 dequantisation: three roundings
          e_in_v = 8 * kU * v0;
        }
        const double decay = sg.decay ? double(decay_on) : 1.0;
        const double p1 = double(s0.master[e]) * decay;
        m[l] = b1 * m0 + ob1 * g;
        v[l] = b2 * v0 + ob2 * g * g;
        em[l] = b1 * e_in_m + kU * (std::fabs(b1 * m0) + 2 * std::fabs(ob1 * g) + std::fabs(m[l])) + ob1 * kU * std::fabs(g);
        ev[l] = b2 * e_in_v + kU * (b2 * v0 + 3 * ob2 * g * g + v[l]) + ob2 * 2 * kU * g * g;
        const double denom = std::sqrt(v[l]) / sqrt_bc2 + h.eps;
        const double upd = double(step) * m[l] / denom, p = p1 - upd;
        const double rel_den = (v[l] > 0 ? 0.5 * ev[l] / v[l] : 0.0) + 4 * kU;
        const double e_p = 3 * kU * std::fabs(p1) + std::fabs(double(step)) * (em[l] + std::fabs(m[l]) * (rel_den + 3 * kU)) / denom +
                           kU * std::fabs(p);
        if (!(std::fabs(double(s.master[e]) - p) <= 2 * e_p))
          fail("master[" + std::to_string(e) + "] got " + std::to_string(s.master[e]) + " ref " + std::to_string(p));
        if (load_elem(params.data(), pt, size_t(sg.param_off + i)) != round_to(pt, s.master[e]))
          fail("param[" + std::to_string(sg.param_off + i) + "] is not round_to(master)");
        M = std::max(M, std::fabs(m[l]));
        U = std::max(U, std::sqrt(v[l]));
        eM = std::max(eM, 2 * em[l]);
        eU = std::max(eU, v[l] > 0 ? ev[l] / std::sqrt(v[l]) + kU * std::sqrt(v[l]) : 0.0);
      }
    }
    if (sd == StateDType::BF16) {
      for (size_t l = 0; l < n; ++l) {
        const size_t e = size_t(b.store) + l;
        // Round to nearest: within half a bf16 ulp (2^-8 relative) of the FP32 value, itself within em.
        const double gm = bf16_value(s.m, e), gv = bf16_value(s.v, e);
        if (!(std::fabs(gm - m[l]) <= 0x1p-8 * std::fabs(m[l]) + 2 * em[l] + 1e-38))
          fail("bf16 m[" + std::to_string(e) + "] got " + std::to_string(gm) + " ref " + std::to_string(m[l]));
        if (!(std::fabs(gv - v[l]) <= 0x1p-8 * v[l] + 2 * ev[l] + 1e-38))
          fail("bf16 v[" + std::to_string(e) + "] got " + std::to_string(gv) + " ref " + std::to_string(v[l]));
      }
      continue;
    }
    const double gotM = s.scales[2 * bi], gotU = s.scales[2 * bi + 1];
    if (!(std::fabs(gotM - M) <= eM)) fail("block " + std::to_string(bi) + " M got " + std::to_string(gotM) + " ref " + std::to_string(M));
    if (!(std::fabs(gotU - U) <= eU)) fail("block " + std::to_string(bi) + " U got " + std::to_string(gotU) + " ref " + std::to_string(U));
    // How far the kernel's FP32 value x (within ex of the reference) and maximum X (within eX) can move the
    // ideal code k sqrt(x / X): the rounding may then go either way within that distance of a midpoint.
    auto slack = [](double k, double x, double ex, double X, double eX) {
      if (!(X > 0)) return 1e-4;
      const double lo = std::sqrt(std::max(0.0, x - ex) / X), hi = std::sqrt((x + ex) / X);
      return k * (hi - lo) + k * std::sqrt(x / X) * eX / X + 1e-4;
    };
    for (size_t l = 0; l < n; ++l) {
      const size_t e = size_t(b.store) + l;
      const int qm = int(int8_t(s.m[e])), cu = int(s.v[e]);
      const double rm = M > 0 ? 127.0 * std::sqrt(std::fabs(m[l]) / M) : 0.0;
      const double tm = 0.5 + slack(127.0, std::fabs(m[l]), 2 * em[l], M, eM);
      const double want_sign = m[l] < 0 ? -1 : 1;
      if (!(std::fabs(std::abs(qm) - rm) <= tm) || (qm != 0 && rm > tm && (qm < 0) != (want_sign < 0)))
        fail("m code [" + std::to_string(e) + "] " + std::to_string(qm) + ", ideal " + std::to_string(want_sign * rm));
      const double u = std::sqrt(v[l]);
      const double eu = v[l] > 0 ? ev[l] / u + kU * u : 0.0;
      const double ru = U > 0 ? 255.0 * std::sqrt(u / U) : 0.0;
      const double tu = 0.5 + slack(255.0, u, eu, U, eU);
      const bool ok_u = (u > 0 && ru < tu) ? (cu == 1 || std::fabs(cu - ru) <= tu) : std::fabs(cu - ru) <= tu;
      if (!ok_u) fail("u code [" + std::to_string(e) + "] " + std::to_string(cu) + ", ideal " + std::to_string(ru));
      if (u > 0 && cu == 0) fail("a non-zero v was stored as code 0");
    }
  }
  return bad;
}

struct Case { StateDType sd; DType gt; };
class AdamWLowpTest : public ::testing::TestWithParam<Case> {};

// Several steps in a row, each checked from the state the previous one left: scales and codes must follow
// the new values every step.
TEST_P(AdamWLowpTest, StepsMatchFloat64Reference) {
  const auto [sd, gt] = GetParam();
  Rng rng = test::fresh_rng();
  for (int64_t block : {int64_t(64), int64_t(256), kQBlock}) {
    const Layout L = random_layout(rng, block);
    QState s = random_state(rng, L, sd);
    const DType pt = gt;
    std::vector<uint8_t> params(size_t(L.flat) * dtype_size(pt), 0);
    for (int t = 0; t < 4; ++t) {
      const AdamWHyper h = random_hyper(rng);
      const float unscale = 1.f / 1024.f;
      std::vector<uint8_t> grad = test::random_buffer(rng, gt, size_t(L.flat), -100.f, 100.f);
      // Wide gradient magnitudes within a block, and zero gradients where the state is zero (padding).
      for (size_t i = 0; i < size_t(L.flat); ++i) store_elem(grad.data(), gt, i, load_elem(grad.data(), gt, i) * std::pow(10.f, rng.uniform(-3.f, 0.f)));
      for (size_t b = 2; b < L.blocks.size(); b += 3)
        for (int j = 0; j < L.blocks[b].nsegs; ++j) {
          const AdamWSegment& sg = L.segs[size_t(L.blocks[b].seg_begin + j)];
          for (int64_t i = 0; i < sg.len; ++i) store_elem(grad.data(), gt, size_t(sg.grad_off + i), t == 0 ? 0.f : 1.f);
        }
      const QState s0 = s;
      cpu::adamw_lowp(s.master.data(), s.m.data(), s.v.data(), sd == StateDType::I8 ? s.scales.data() : nullptr, sd,
                      grad.data(), gt, unscale, params.data(), pt, L.segs.data(), L.blocks.data(), int(L.blocks.size()),
                      h);
      EXPECT_EQ(check_step(sd, L, s0, s, grad, gt, unscale, params, pt, h), 0u)
          << state_dtype_name(sd) << " block " << block << " step " << t;
      if (sd == StateDType::I8 && t == 0)
        for (size_t b = 2; b < L.blocks.size(); b += 3) {
          EXPECT_EQ(s.scales[2 * b], 0.f) << "an all-zero block keeps zero scales";
          EXPECT_EQ(s.scales[2 * b + 1], 0.f);
        }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(States, AdamWLowpTest,
                         ::testing::Values(Case{StateDType::I8, DType::F32}, Case{StateDType::I8, DType::BF16},
                                           Case{StateDType::I8, DType::F16}, Case{StateDType::BF16, DType::F32},
                                           Case{StateDType::BF16, DType::F16}),
                         [](const auto& info) {
                           return std::string(state_dtype_name(info.param.sd)) + "_" + dtype_name(info.param.gt);
                         });

// Storing then reading back an FP32 value: int8 m is off by at most half a code step in the companded
// domain, |m - m'| <= M * (|r| + 1/4) / 127^2 with r = 127 sqrt(|m|/M) (|k^2 - r^2| = |k - r| |k + r|),
// and likewise for u = sqrt(v) with 255; a u below half the first step is stored as the first step
// (error <= U / 255^2). bf16 is within half an ulp. Plus a few FP32 roundings.
TEST(AdamWLowp, QuantisationErrorBound) {
  Rng rng = test::fresh_rng();
  const Layout L = random_layout(rng, kQBlock);
  const size_t n = size_t(L.store);
  std::vector<float> m(n), v(n);
  for (size_t i = 0; i < n; ++i) {
    m[i] = spread(rng);
    v[i] = spread(rng) * spread(rng);
    v[i] = v[i] * v[i];
  }
  for (StateDType sd : {StateDType::I8, StateDType::BF16}) {
    const size_t bytes = sd == StateDType::BF16 ? 2 : 1;
    std::vector<uint8_t> mq(n * bytes), vq(n * bytes);
    std::vector<float> sc(2 * L.blocks.size()), m2(n), v2(n);
    cpu::lowp_state_from_f32(m.data(), v.data(), sd, L.blocks.data(), int(L.blocks.size()), mq.data(), vq.data(), sc.data());
    cpu::lowp_state_to_f32(mq.data(), vq.data(), sc.data(), sd, L.blocks.data(), int(L.blocks.size()), m2.data(), v2.data());
    size_t bad = 0;
    double worst_m = 0;
    for (size_t bi = 0; bi < L.blocks.size(); ++bi)
      for (int64_t e = L.blocks[bi].store; e < L.blocks[bi].store + L.blocks[bi].len; ++e) {
        const size_t i = size_t(e);
        double lim_m, lim_u;
        const double u = std::sqrt(double(v[i])), u2 = std::sqrt(double(v2[i]));
        if (sd == StateDType::BF16) {
          lim_m = 0x1p-8 * std::fabs(m[i]);
          lim_u = 0.5 * 0x1p-8 * u + 2 * kU * u;
          if (!(std::fabs(double(v2[i]) - v[i]) <= 0x1p-8 * v[i])) ++bad;
        } else {
          const double M = sc[2 * bi], U = sc[2 * bi + 1];
          const double rm = 127.0 * std::sqrt(std::fabs(m[i]) / M), ru = 255.0 * std::sqrt(u / U);
          lim_m = M * (rm + 0.25) / (127.0 * 127.0) + 8 * kU * M;
          lim_u = (ru < 0.5 ? U / (255.0 * 255.0) : U * (ru + 0.25) / (255.0 * 255.0)) + 8 * kU * U;
          worst_m = std::max(worst_m, std::fabs(double(m2[i]) - m[i]) / lim_m);
        }
        if (!(std::fabs(double(m2[i]) - m[i]) <= lim_m)) ++bad;
        if (!(std::fabs(u2 - u) <= lim_u)) ++bad;
      }
    EXPECT_EQ(bad, 0u) << state_dtype_name(sd);
    // The bound is not loose: some element uses most of it.
    if (sd == StateDType::I8) {
      EXPECT_GT(worst_m, 0.5);
    }
  }
}

// A checkpoint carries the FP32 values the states stand for; storing them again gives the same codes and
// scales, bit for bit, so a resume is exact.
TEST(AdamWLowp, StoringTheDequantisedStateIsExact) {
  Rng rng = test::fresh_rng();
  for (StateDType sd : {StateDType::I8, StateDType::BF16}) {
    const Layout L = random_layout(rng, kQBlock);
    QState s = random_state(rng, L, sd);
    const size_t n = size_t(L.store);
    std::vector<uint8_t> grad = test::random_buffer(rng, DType::F32, size_t(L.flat), -1.f, 1.f);
    cpu::adamw_lowp(s.master.data(), s.m.data(), s.v.data(), s.scales.data(), sd, grad.data(), DType::F32, 1.f,
                    nullptr, DType::F32, L.segs.data(), L.blocks.data(), int(L.blocks.size()), random_hyper(rng));
    std::vector<float> mf(n), vf(n), sc2(s.scales.size());
    cpu::lowp_state_to_f32(s.m.data(), s.v.data(), s.scales.data(), sd, L.blocks.data(), int(L.blocks.size()), mf.data(), vf.data());
    std::vector<uint8_t> m2(s.m.size()), v2(s.v.size());
    cpu::lowp_state_from_f32(mf.data(), vf.data(), sd, L.blocks.data(), int(L.blocks.size()), m2.data(), v2.data(), sc2.data());
    EXPECT_EQ(m2, s.m) << state_dtype_name(sd);
    EXPECT_EQ(v2, s.v) << state_dtype_name(sd);
    if (sd == StateDType::I8) {
      EXPECT_EQ(sc2, s.scales);
    }
  }
}

// Segments that do not tile their block are refused.
TEST(AdamWLowp, BadBlocksAreRefused) {
  std::vector<float> master(8), scales(2);
  std::vector<uint8_t> m(8), v(8);
  std::vector<float> grad(8);
  AdamWSegment sg;
  sg.store = 0;
  sg.len = 4;
  AdamWQBlock b;
  b.len = 8;  // the one segment covers half of it
  b.nsegs = 1;
  EXPECT_THROW(cpu::adamw_lowp(master.data(), m.data(), v.data(), scales.data(), StateDType::I8, grad.data(),
                               DType::F32, 1.f, nullptr, DType::F32, &sg, &b, 1, AdamWHyper{}),
               std::exception);
}

}  // namespace
}  // namespace mpt
