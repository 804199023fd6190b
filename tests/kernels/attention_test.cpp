// mpt::cpu::attention_forward / attention_backward against a float64 reference; the reference backward and
// the FP32 kernel are both checked against central differences; causality is checked directly.
//
// The reference reads the same dtype-rounded inputs as the kernel (and, for the backward's delta term, the
// kernel's own rounded out, which the header defines delta from), so the kernel's errors are its FP32
// arithmetic and one rounding per stored output. Tolerance = 2 * E, plus storage_tol(dtype) for a half
// dtype's final rounding (an FP32 output has no rounding beyond what E covers). E is a first-order bound
// on the FP32 error carried through the formulas (a sum of n terms contributes u * n * sum |terms|, exp
// and log u-relative each, and an error e in a score s_j moves the softmax weight P_j by P_j * e); the
// factor 2 covers second-order terms. E is a worst case (observed FP32 errors reach ~15% of it), yet a
// wrong scale, an off-by-one causal mask or a missing softmax-backward term is orders of magnitude larger.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "tests/test_util.h"

namespace mpt {
namespace {

constexpr double kU = 0x1p-24;  // FP32 unit roundoff

struct Shape {
  int B, T, H, D;
};
std::string shape_name(const Shape& s) {
  return "B" + std::to_string(s.B) + "T" + std::to_string(s.T) + "H" + std::to_string(s.H) + "D" + std::to_string(s.D);
}

// Flat index helpers for the [B, T, 3C] / [B, T, C] / [B, H, T] layouts.
struct Layout {
  Shape s;
  size_t C() const { return size_t(s.H) * s.D; }
  size_t qkv(int b, int t, int part, int h, int i) const {
    return (size_t(b) * s.T + t) * 3 * C() + size_t(part) * C() + size_t(h) * s.D + i;
  }
  size_t o(int b, int t, int h, int i) const { return (size_t(b) * s.T + t) * C() + size_t(h) * s.D + i; }
  size_t bht(int b, int h, int t) const { return (size_t(b) * s.H + h) * s.T + t; }
  size_t n_qkv() const { return size_t(s.B) * s.T * 3 * C(); }
  size_t n_out() const { return size_t(s.B) * s.T * C(); }
  size_t n_bht() const { return size_t(s.B) * s.H * s.T; }
};

std::vector<double> as_doubles(const std::vector<uint8_t>& buf, DType t) {
  std::vector<double> d(buf.size() / dtype_size(t));
  for (size_t i = 0; i < d.size(); ++i) d[i] = load_elem(buf.data(), t, i);
  return d;
}

// q and k in [-2, 2) give scores with a spread of ~1.3, so the softmax is neither flat nor one-hot.
std::vector<uint8_t> random_qkv(Rng& r, DType t, const Layout& L) {
  std::vector<uint8_t> b(L.n_qkv() * dtype_size(t));
  for (int bb = 0; bb < L.s.B; ++bb)
    for (int tt = 0; tt < L.s.T; ++tt)
      for (int part = 0; part < 3; ++part)
        for (int h = 0; h < L.s.H; ++h)
          for (int i = 0; i < L.s.D; ++i)
            store_elem(b.data(), t, L.qkv(bb, tt, part, h, i), part < 2 ? r.uniform(-2.f, 2.f) : r.uniform(-1.f, 1.f));
  return b;
}

// Float64 forward and backward with first-order bounds on an FP32 implementation's error.
struct Reference {
  std::vector<double> out, out_e, lse, lse_e, dqkv, dqkv_e;
};

// x: qkv values; out_k: the kernel's stored out (delta is defined from it); lse_k: the kernel's lse, whose
// distance from the exact lse enters the bound of P = exp(s - lse). dout empty: forward only.
Reference reference(const Layout& L, const std::vector<double>& x, const std::vector<double>& dout,
                    const std::vector<double>& out_k) {
  const Shape s = L.s;
  const double scale = 1.0 / std::sqrt(double(float(s.D)));
  Reference R;
  R.out.assign(L.n_out(), 0), R.out_e.assign(L.n_out(), 0);
  R.lse.assign(L.n_bht(), 0), R.lse_e.assign(L.n_bht(), 0);
  const bool bwd = !dout.empty();
  if (bwd) R.dqkv.assign(L.n_qkv(), 0), R.dqkv_e.assign(L.n_qkv(), 0);
  const int T = s.T, D = s.D;
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.H; ++h) {
      // P[t][j], its relative error bound rho, and dS with its bound, kept for the dk / dv column sums.
      std::vector<std::vector<double>> P(T), rho(T), dS(T), dS_e(T);
      for (int t = 0; t < T; ++t) {
        std::vector<double> sc(t + 1), e_s(t + 1);
        for (int j = 0; j <= t; ++j) {
          double d = 0, a = 0;
          for (int i = 0; i < D; ++i) {
            const double p = x[L.qkv(b, t, 0, h, i)] * x[L.qkv(b, j, 1, h, i)];
            d += p;
            a += std::fabs(p);
          }
          sc[j] = d * scale;
          e_s[j] = kU * (D + 2) * a * scale;  // D-1 sums, products, scale and its rounding
        }
        const double m = *std::max_element(sc.begin(), sc.end());
        const double e_m = *std::max_element(e_s.begin(), e_s.end());
        double l = 0, span = 0;
        for (int j = 0; j <= t; ++j) l += std::exp(sc[j] - m), span = std::max(span, m - sc[j]);
        const double lse = m + std::log(l);
        const size_t ib = L.bht(b, h, t);
        R.lse[ib] = lse;
        R.lse_e[ib] = e_m + kU * (span + t + 4) + 2 * kU * (std::fabs(m) + std::fabs(std::log(l)));
        P[t].resize(t + 1), rho[t].resize(t + 1);
        for (int j = 0; j <= t; ++j) {
          P[t][j] = std::exp(sc[j] - lse);
          // Forward weights: exp(s_j - m) with m a computed score; the common part of the error cancels in
          // the normalisation but is kept, which only loosens the bound.
          rho[t][j] = e_s[j] + e_m + kU * (m - sc[j]) + 2 * kU;
        }
        for (int i = 0; i < D; ++i) {
          double o = 0, pv = 0;
          for (int j = 0; j <= t; ++j) o += P[t][j] * x[L.qkv(b, j, 2, h, i)];
          double e = 0;
          for (int j = 0; j <= t; ++j) {
            const double v = x[L.qkv(b, j, 2, h, i)];
            e += P[t][j] * std::fabs(v - o) * rho[t][j];
            pv += P[t][j] * std::fabs(v);
          }
          const size_t io = L.o(b, t, h, i);
          R.out[io] = o;
          R.out_e[io] = e + kU * (t + 2) * (pv + std::fabs(o));
        }
        if (!bwd) continue;
        // Backward row t: P from the kernel's lse (within lse_e of the exact one).
        double delta = 0, a_delta = 0;
        for (int i = 0; i < D; ++i) {
          const double p = dout[L.o(b, t, h, i)] * out_k[L.o(b, t, h, i)];
          delta += p;
          a_delta += std::fabs(p);
        }
        dS[t].resize(t + 1), dS_e[t].resize(t + 1);
        for (int j = 0; j <= t; ++j) {
          double dp = 0, a_dp = 0;
          for (int i = 0; i < D; ++i) {
            const double p = dout[L.o(b, t, h, i)] * x[L.qkv(b, j, 2, h, i)];
            dp += p;
            a_dp += std::fabs(p);
          }
          rho[t][j] = e_s[j] + R.lse_e[ib] + kU * std::fabs(sc[j] - lse) + 2 * kU;
          dS[t][j] = P[t][j] * (dp - delta);
          dS_e[t][j] = P[t][j] * (rho[t][j] * std::fabs(dp - delta) + kU * D * (a_dp + a_delta)) +
                       2 * kU * std::fabs(dS[t][j]);
        }
        for (int i = 0; i < D; ++i) {
          double g = 0, e = 0, a = 0;
          for (int j = 0; j <= t; ++j) {
            const double k = x[L.qkv(b, j, 1, h, i)];
            g += dS[t][j] * k;
            e += dS_e[t][j] * std::fabs(k);
            a += std::fabs(dS[t][j] * k);
          }
          const size_t iq = L.qkv(b, t, 0, h, i);
          R.dqkv[iq] = g * scale;
          R.dqkv_e[iq] = scale * (e + kU * (t + 2) * a) + kU * std::fabs(g * scale);
        }
      }
      if (!bwd) continue;
      for (int j = 0; j < T; ++j)
        for (int i = 0; i < D; ++i) {
          double gk = 0, ek = 0, ak = 0, gv = 0, ev = 0, av = 0;
          for (int t = j; t < T; ++t) {
            const double q = x[L.qkv(b, t, 0, h, i)], g = dout[L.o(b, t, h, i)];
            gk += dS[t][j] * q;
            ek += dS_e[t][j] * std::fabs(q);
            ak += std::fabs(dS[t][j] * q);
            gv += P[t][j] * g;
            ev += P[t][j] * rho[t][j] * std::fabs(g);
            av += P[t][j] * std::fabs(g);
          }
          const double n = T - j + 1;
          const size_t ik = L.qkv(b, j, 1, h, i), iv = L.qkv(b, j, 2, h, i);
          R.dqkv[ik] = gk * scale;
          R.dqkv_e[ik] = scale * (ek + kU * n * ak) + kU * std::fabs(gk * scale);
          R.dqkv[iv] = gv;
          R.dqkv_e[iv] = ev + kU * n * av;
        }
    }
  return R;
}

size_t count_bad(const std::string& what, const std::vector<double>& got, const std::vector<double>& ref,
                 const std::vector<double>& bound, test::Tol tol) {
  size_t bad = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double lim = tol.atol + tol.rtol * std::fabs(ref[i]) + 2 * bound[i];
    if (!(std::fabs(got[i] - ref[i]) <= lim) && ++bad <= 5)
      ADD_FAILURE() << what << " [" << i << "] got " << got[i] << " ref " << ref[i] << " limit " << lim;
  }
  return bad;
}

class AttentionTest : public ::testing::TestWithParam<DType> {};

TEST_P(AttentionTest, ForwardAndBackwardMatchReference) {
  const DType t = GetParam();
  Rng rng = test::fresh_rng();
  // T = 1 (a single key), odd T, a D that is no power of two, and the CI sizes of GPT-2 tiny.
  const Shape shapes[] = {{3, 1, 2, 16}, {2, 37, 3, 16}, {1, 7, 2, 5}, {4, 64, 2, 32}, {1, 130, 1, 16}};
  for (const Shape& s : shapes) {
    const Layout L{s};
    const std::string tag = shape_name(s) + " " + dtype_name(t);
    const std::vector<uint8_t> qkv = random_qkv(rng, t, L);
    const std::vector<uint8_t> dout = test::random_buffer(rng, t, L.n_out());
    // NaN everywhere first: every output element must be written.
    std::vector<uint8_t> out(L.n_out() * dtype_size(t), 0xFF), dqkv(qkv.size(), 0xFF);
    std::vector<float> lse(L.n_bht(), NAN), delta(L.n_bht(), NAN);
    cpu::attention_forward(qkv.data(), out.data(), lse.data(), t, s.B, s.T, s.H, s.D);
    cpu::attention_backward(dout.data(), qkv.data(), out.data(), lse.data(), delta.data(), dqkv.data(), t, s.B, s.T,
                            s.H, s.D);

    const std::vector<double> x = as_doubles(qkv, t), g = as_doubles(dout, t), o = as_doubles(out, t);
    const Reference R = reference(L, x, g, o);
    const test::Tol fp32{0, 0}, st = t == DType::F32 ? fp32 : test::storage_tol(t);
    EXPECT_EQ(count_bad(tag + " out", o, R.out, R.out_e, st), 0u);
    EXPECT_EQ(count_bad(tag + " lse", std::vector<double>(lse.begin(), lse.end()), R.lse, R.lse_e, fp32), 0u);
    EXPECT_EQ(count_bad(tag + " dqkv", as_doubles(dqkv, t), R.dqkv, R.dqkv_e, st), 0u);
    // delta = dout . out over the stored out: FP32 dot products of D terms.
    std::vector<double> dref(L.n_bht()), de(L.n_bht());
    for (int b = 0; b < s.B; ++b)
      for (int h = 0; h < s.H; ++h)
        for (int tt = 0; tt < s.T; ++tt) {
          double d = 0, a = 0;
          for (int i = 0; i < s.D; ++i) {
            d += g[L.o(b, tt, h, i)] * o[L.o(b, tt, h, i)];
            a += std::fabs(g[L.o(b, tt, h, i)] * o[L.o(b, tt, h, i)]);
          }
          dref[L.bht(b, h, tt)] = d;
          de[L.bht(b, h, tt)] = kU * s.D * a;
        }
    EXPECT_EQ(count_bad(tag + " delta", std::vector<double>(delta.begin(), delta.end()), dref, de, fp32), 0u);
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, AttentionTest, ::testing::Values(DType::F32, DType::F16, DType::BF16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

// Scores of several hundred: exp without the running maximum overflows FP32 (exp(89) > FLT_MAX).
TEST(Attention, LargeScoresStayFinite) {
  Rng rng = test::fresh_rng();
  const Shape s{1, 33, 2, 16};
  const Layout L{s};
  const DType t = DType::F32;
  std::vector<uint8_t> qkv = random_qkv(rng, t, L);
  for (int tt = 0; tt < s.T; ++tt)
    for (int h = 0; h < s.H; ++h)
      for (int i = 0; i < s.D; ++i) {
        store_elem(qkv.data(), t, L.qkv(0, tt, 0, h, i), 10.f + rng.uniform(-1.f, 1.f));
        store_elem(qkv.data(), t, L.qkv(0, tt, 1, h, i), 10.f + rng.uniform(-1.f, 1.f));
      }
  const std::vector<uint8_t> dout = test::random_buffer(rng, t, L.n_out());
  std::vector<uint8_t> out(L.n_out() * 4), dqkv(qkv.size());
  std::vector<float> lse(L.n_bht()), delta(L.n_bht());
  cpu::attention_forward(qkv.data(), out.data(), lse.data(), t, s.B, s.T, s.H, s.D);
  cpu::attention_backward(dout.data(), qkv.data(), out.data(), lse.data(), delta.data(), dqkv.data(), t, s.B, s.T,
                          s.H, s.D);
  const std::vector<double> x = as_doubles(qkv, t), o = as_doubles(out, t);
  const Reference R = reference(L, x, as_doubles(dout, t), o);
  EXPECT_GT(*std::min_element(R.lse.begin(), R.lse.end()), 300.0);  // the case is what it claims to be
  EXPECT_EQ(count_bad("out", o, R.out, R.out_e, {0, 0}), 0u);
  EXPECT_EQ(count_bad("lse", std::vector<double>(lse.begin(), lse.end()), R.lse, R.lse_e, {0, 0}), 0u);
  EXPECT_EQ(count_bad("dqkv", as_doubles(dqkv, t), R.dqkv, R.dqkv_e, {0, 0}), 0u);
}

// L = sum(w * out) on a tiny FP32 case. (1) The float64 reference gradient against central differences of
// the float64 forward: with h = 1e-5, truncation ~h^2 |L'''| ~ 1e-10 and cancellation ~1e-16 |L| / h, so
// 1e-7 is tight. (2) The FP32 kernel gradient against the same differences, within its FP32 bound.
// (3) Central differences through the FP32 kernel forward itself (h = 1e-2: truncation ~h^2/6 |L'''| and
// FP32 noise ~1e-6 / h, both ~1e-4), which ties the kernel's backward to its own forward. Dropping the
// delta term or the score scale moves a gradient by ~0.1.
TEST(AttentionReference, BackwardMatchesFiniteDifferences) {
  Rng rng = test::fresh_rng();
  const Shape s{1, 5, 2, 4};
  const Layout L{s};
  const DType t = DType::F32;
  std::vector<uint8_t> qkv = random_qkv(rng, t, L);
  std::vector<double> x = as_doubles(qkv, t);
  const std::vector<uint8_t> wbuf = test::random_buffer(rng, t, L.n_out());
  const std::vector<double> w = as_doubles(wbuf, t);
  auto loss64 = [&] {
    const Reference R = reference(L, x, {}, {});
    double l = 0;
    for (size_t i = 0; i < w.size(); ++i) l += w[i] * R.out[i];
    return l;
  };
  std::vector<uint8_t> out(L.n_out() * 4), dqkv(qkv.size());
  auto loss32 = [&] {
    cpu::attention_forward(qkv.data(), out.data(), nullptr, t, s.B, s.T, s.H, s.D);
    double l = 0;
    for (size_t i = 0; i < w.size(); ++i) l += w[i] * load_elem(out.data(), t, i);
    return l;
  };
  // Exact out (float64) for the reference's delta; dout = w.
  const std::vector<double> exact_out = reference(L, x, {}, {}).out;
  const Reference R = reference(L, x, w, exact_out);
  std::vector<float> lse(L.n_bht()), delta(L.n_bht());
  cpu::attention_forward(qkv.data(), out.data(), lse.data(), t, s.B, s.T, s.H, s.D);
  cpu::attention_backward(wbuf.data(), qkv.data(), out.data(), lse.data(), delta.data(), dqkv.data(), t, s.B, s.T,
                          s.H, s.D);
  const std::vector<double> got = as_doubles(dqkv, t);
  for (size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i];
    const double h64 = 1e-5;
    x[i] = x0 + h64;
    const double lp = loss64();
    x[i] = x0 - h64;
    const double lm = loss64();
    x[i] = x0;
    const double fd = (lp - lm) / (2 * h64);
    EXPECT_NEAR(R.dqkv[i], fd, 1e-7 * (1 + std::fabs(fd))) << "reference, element " << i;
    EXPECT_NEAR(got[i], fd, 1e-5 + 1e-5 * std::fabs(fd) + 2 * R.dqkv_e[i]) << "kernel, element " << i;

    const float h32 = 1e-2f, xf = float(x0);
    store_elem(qkv.data(), t, i, xf + h32);
    const double lp32 = loss32();
    store_elem(qkv.data(), t, i, xf - h32);
    const double lm32 = loss32();
    store_elem(qkv.data(), t, i, xf);
    const double fd32 = (lp32 - lm32) / (double(xf + h32) - double(xf - h32));
    EXPECT_NEAR(got[i], fd32, 5e-4 + 1e-3 * std::fabs(fd32)) << "kernel vs its own forward, element " << i;
  }
}

// Changing token t0 leaves every earlier output bit for bit (and the other batch element) unchanged; a
// gradient arriving only at token t0 reaches no later token and no query but t0.
TEST(Attention, IsCausal) {
  Rng rng = test::fresh_rng();
  const Shape s{2, 37, 2, 16};
  const Layout L{s};
  for (DType t : {DType::F32, DType::BF16}) {
    SCOPED_TRACE(dtype_name(t));
    const int t0 = 1 + int(rng.below(uint64_t(s.T - 2)));
    std::vector<uint8_t> qkv = random_qkv(rng, t, L);
    std::vector<uint8_t> out1(L.n_out() * dtype_size(t)), out2(out1.size());
    std::vector<float> lse1(L.n_bht()), lse2(L.n_bht());
    cpu::attention_forward(qkv.data(), out1.data(), lse1.data(), t, s.B, s.T, s.H, s.D);
    std::vector<uint8_t> qkv2 = qkv;
    for (int part = 0; part < 3; ++part)
      for (int h = 0; h < s.H; ++h)
        for (int i = 0; i < s.D; ++i) store_elem(qkv2.data(), t, L.qkv(0, t0, part, h, i), rng.uniform(-2.f, 2.f));
    cpu::attention_forward(qkv2.data(), out2.data(), lse2.data(), t, s.B, s.T, s.H, s.D);
    const size_t es = dtype_size(t), row = L.C() * es;
    for (int tt = 0; tt < s.T; ++tt) {
      const bool same0 = std::memcmp(&out1[L.o(0, tt, 0, 0) * es], &out2[L.o(0, tt, 0, 0) * es], row) == 0;
      // Later rows must change too, but a small weight on token t0 may round away in bf16: F32 only there.
      if (tt <= t0 || t == DType::F32) {
        EXPECT_EQ(same0, tt < t0) << "batch 0 token " << tt << " (changed token " << t0 << ")";
      }
      EXPECT_EQ(std::memcmp(&out1[L.o(1, tt, 0, 0) * es], &out2[L.o(1, tt, 0, 0) * es], row), 0) << "batch 1 " << tt;
      for (int h = 0; h < s.H; ++h) {
        EXPECT_EQ(lse1[L.bht(0, h, tt)] == lse2[L.bht(0, h, tt)], tt < t0) << "lse token " << tt;
        EXPECT_EQ(lse1[L.bht(1, h, tt)], lse2[L.bht(1, h, tt)]);
      }
    }

    std::vector<uint8_t> dout(out1.size(), 0);
    for (int h = 0; h < s.H; ++h)
      for (int i = 0; i < s.D; ++i) store_elem(dout.data(), t, L.o(0, t0, h, i), rng.uniform(0.5f, 1.f));
    std::vector<uint8_t> dqkv(qkv.size(), 0xFF);
    std::vector<float> delta(L.n_bht());
    cpu::attention_backward(dout.data(), qkv.data(), out1.data(), lse1.data(), delta.data(), dqkv.data(), t, s.B, s.T,
                            s.H, s.D);
    for (int b = 0; b < s.B; ++b)
      for (int tt = 0; tt < s.T; ++tt)
        for (int part = 0; part < 3; ++part) {
          // Nonzero exactly where the causal graph connects token t0's output: q of t0, k and v of tokens <= t0.
          const bool reach = b == 0 && (part == 0 ? tt == t0 : tt <= t0);
          double sum_abs = 0;
          for (int h = 0; h < s.H; ++h)
            for (int i = 0; i < s.D; ++i) sum_abs += std::fabs(load_elem(dqkv.data(), t, L.qkv(b, tt, part, h, i)));
          if (reach)
            EXPECT_GT(sum_abs, 0.0) << "b " << b << " token " << tt << " part " << part;
          else
            EXPECT_EQ(sum_abs, 0.0) << "b " << b << " token " << tt << " part " << part;
        }
  }
}

TEST(Attention, ForwardWithoutLseGivesTheSameOutput) {
  Rng rng = test::fresh_rng();
  const Shape s{2, 19, 3, 16};
  const Layout L{s};
  const DType t = DType::F16;
  const std::vector<uint8_t> qkv = random_qkv(rng, t, L);
  std::vector<uint8_t> a(L.n_out() * 2), b(a.size());
  std::vector<float> lse(L.n_bht());
  cpu::attention_forward(qkv.data(), a.data(), lse.data(), t, s.B, s.T, s.H, s.D);
  cpu::attention_forward(qkv.data(), b.data(), nullptr, t, s.B, s.T, s.H, s.D);
  EXPECT_EQ(a, b);
}

TEST(Attention, BadArgumentsThrow) {
  std::vector<float> buf(3 * 4 * 16), lse(4);
  EXPECT_THROW(cpu::attention_forward(buf.data(), buf.data(), lse.data(), DType::F32, 1, 1, 1, 0),
               std::invalid_argument);
  EXPECT_THROW(cpu::attention_forward(buf.data(), buf.data(), lse.data(), DType::F32, -1, 1, 1, 16),
               std::invalid_argument);
  EXPECT_THROW(cpu::attention_forward(nullptr, buf.data(), lse.data(), DType::F32, 1, 1, 1, 16), std::invalid_argument);
  EXPECT_THROW(cpu::attention_backward(buf.data(), buf.data(), buf.data(), nullptr, lse.data(), buf.data(), DType::F32,
                                       1, 1, 1, 16),
               std::invalid_argument);
  // Empty shapes are no-ops, even with null pointers.
  EXPECT_NO_THROW(cpu::attention_forward(nullptr, nullptr, nullptr, DType::F32, 0, 5, 1, 16));
}

}  // namespace
}  // namespace mpt
