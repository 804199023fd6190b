// cuda::attention_forward / attention_backward against the CPU twins. FP32 storage runs the CUDA-core
// kernels; half and bf16 run the tensor-core kernels (kernels/cuda/attention_flash.cu) on sm_80+.
//
// Tolerances, FP32 part. Both sides run the same FP32 formulas and differ in summation order (tiles, shuffle
// trees, tensor-core accumulation, FMA contraction) and in exp / log against glibc's. The rounding error of
// an FP32 sum of n terms behaves like a random walk, ~2^-24 sqrt(n) times the terms' size; the bounds use
// 2^-20 (16x) and generous sizes:
//   score s_tj = scale q_t.k_j      error ~ u sqrt(D) S_t, S_t = scale |q_t| max_j |k_j| (Cauchy-Schwarz)
//   P_tj = exp(s_tj - m)            relative error ~ u (sqrt(D) S_t + 2 S_t + 2) (score error, the rounded
//                                   argument |s - m| <= 2 S_t, exp)
//   out_td = sum_j P_tj v_jd        P's relative errors times |v - out| <= 2 max|v_.d|, plus the sum over
//                                   t + 1 keys ~ u sqrt(t + 1) max|v_.d|
//   lse_t = m + log sum_j exp       score error, u sqrt(t + 1) for the sum, u |lse| for the final add
//   delta_t = dout_t . out_t        u sqrt(D) |dout_t| |out_t|
//   dS_tj = P_tj (dP_tj - delta_t)  |dP - delta| <= W_t = |dout_t| (max_j |v_j| + |out_t|); error ~ P_tj W_t
//                                   u F_t with F_t = sqrt(D) (S_t + 1) + 2 S_t + log(t + 1) + 4
//   dq_td = scale sum_j dS_tj k_jd  sum_j P_tj = 1, so ~ u scale max|k_.d| W_t (F_t + sqrt(t + 1))
//   dk_jd = scale sum_t dS_tj q_td  ~ u scale max|q_.d| sum_{t>=j} P_tj W_t (F_t + sqrt(T - j))
//   dv_jd = sum_t P_tj dout_td      ~ u max|dout_.d| sum_{t>=j} P_tj (F_t + sqrt(T - j))
// (the column sums of P come from a float64 pass over the scores).
//
// Tolerances, half part. The tensor-core kernels round P (out, dv) and dS (dq, dk) to the storage dtype as
// the A operand of a product (the CPU twin keeps them FP32): with u_t = 2^-8 (bf16) or 2^-11 (fp16) each
// term P_tj v_jd moves by at most u_t P_tj |v_jd|, so an element moves by at most
//   out_td: u_t sum_j P_tj |v_jd|        dv_jd: u_t sum_t P_tj |dout_td|
//   dq_td:  u_t scale sum_j |dS_tj k_jd|  dk_jd: u_t scale sum_t |dS_tj q_td|
// and one ulp for the two final roundings. That worst case is loose at large T (the roundings are
// independent and mostly cancel), so each output also passes a statistical test: a rounding error uniform
// in +-u_t |x| has variance <= u_t^2 x^2 / 3, so the sum over all elements of diff^2 must stay below the sum
// of the predicted variances, sigma^2 = u_t^2 / 3 sum_j term_j^2 + ulp^2 / 4 (two final roundings of values
// that differ by d differ by at most ulp with probability d / ulp; ulp d <= d^2 + ulp^2 / 4) + (FP32 bound
// / 3)^2. The test requires the ratio to be <= 2 (a correct kernel measures well under 1). Dropping one key of
// a row at T = 1024 raises the ratio by ~(P v)^2 / (u_t^2 / 3 sum (P v)^2) ~ 3 / (u_t^2 T), over 100 for bf16,
// so the statistic sees errors far below the elementwise worst case.
// Every output is first filled with NaN bytes, so an unwritten element fails.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/attention.h"
#include "tests/gpu/gpu_test_util.h"

namespace mpt::test {
namespace {

struct Shape {
  int B, T, H, D;
  bool large_scores;  // q and k near 10: scores of several hundred, exp overflows without the running max
};
std::string shape_name(const Shape& s) {
  return "B" + std::to_string(s.B) + " T" + std::to_string(s.T) + " H" + std::to_string(s.H) + " D" +
         std::to_string(s.D) + (s.large_scores ? " large scores" : "");
}

// One key; less than a tile; exactly one tile; one row into the second tile; odd lengths; every head dim;
// large scores; GPT-2 124M attention (T = 1024, 12 heads of 64) at B = 2.
const Shape kShapes[] = {{1, 1, 1, 64, false},    {3, 1, 2, 16, false},    {2, 7, 3, 32, false},
                         {1, 64, 2, 64, false},   {2, 65, 1, 16, false},   {2, 77, 2, 32, false},
                         {1, 130, 2, 128, false}, {2, 129, 3, 64, false},  {1, 200, 2, 64, true},
                         {1, 191, 1, 128, true},  {2, 1024, 12, 64, false}};

// ---- layout and inputs

struct Layout {
  Shape s;
  size_t C() const { return size_t(s.H) * size_t(s.D); }
  size_t qkv(int b, int t, int part, int h, int i) const {
    return (size_t(b) * size_t(s.T) + size_t(t)) * 3 * C() + size_t(part) * C() + size_t(h) * size_t(s.D) + size_t(i);
  }
  size_t o(int b, int t, int h, int i) const {
    return (size_t(b) * size_t(s.T) + size_t(t)) * C() + size_t(h) * size_t(s.D) + size_t(i);
  }
  size_t bht(int b, int h, int t) const { return (size_t(b) * size_t(s.H) + size_t(h)) * size_t(s.T) + size_t(t); }
  size_t n_qkv() const { return size_t(s.B) * size_t(s.T) * 3 * C(); }
  size_t n_out() const { return size_t(s.B) * size_t(s.T) * C(); }
  size_t n_bht() const { return size_t(s.B) * size_t(s.H) * size_t(s.T); }
};

// q and k in [-2, 2) (score spread ~1.3: neither flat nor one-hot), v in [-1, 1).
std::vector<uint8_t> make_qkv(Rng& r, DType t, const Layout& L) {
  std::vector<uint8_t> b(L.n_qkv() * dtype_size(t));
  const size_t C = L.C();
  for (size_t i = 0; i < L.n_qkv(); ++i) {
    const bool qk = (i % (3 * C)) < 2 * C;
    const float v = qk ? (L.s.large_scores ? 10.f + r.uniform(-1.f, 1.f) : r.uniform(-2.f, 2.f)) : r.uniform(-1.f, 1.f);
    store_elem(b.data(), t, i, v);
  }
  return b;
}

// ---- tolerances: the FP32 part of each element's bound (see the top of the file), without the half ulp.

struct Bounds {
  std::vector<double> out, lse, delta, dqkv;
};

Bounds fp32_bounds(const Layout& L, const std::vector<float>& x, const std::vector<float>& o,
                   const std::vector<float>& g, const std::vector<float>& lse) {
  const Shape s = L.s;
  const int T = s.T, D = s.D;
  const double u = std::ldexp(1.0, -20), scale = 1.0 / std::sqrt(double(D)), sqD = std::sqrt(double(D));
  const bool bwd = !g.empty();
  Bounds R;
  R.out.assign(L.n_out(), 0), R.lse.assign(L.n_bht(), 0);
  if (bwd) R.delta.assign(L.n_bht(), 0), R.dqkv.assign(L.n_qkv(), 0);
  auto norm = [&](auto at) {
    double a = 0;
    for (int i = 0; i < D; ++i) a += double(at(i)) * double(at(i));
    return std::sqrt(a);
  };
  std::vector<double> S(T), W(T), F(T), colW(T), colP(T), srow(T);
  std::vector<double> qmax(D), kmax(D), vmax(D), gmax(D);
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.H; ++h) {
      double Kn = 0, Vn = 0;
      std::fill(qmax.begin(), qmax.end(), 0.0), std::fill(kmax.begin(), kmax.end(), 0.0);
      std::fill(vmax.begin(), vmax.end(), 0.0), std::fill(gmax.begin(), gmax.end(), 0.0);
      for (int t = 0; t < T; ++t) {
        Kn = std::max(Kn, norm([&](int i) { return x[L.qkv(b, t, 1, h, i)]; }));
        Vn = std::max(Vn, norm([&](int i) { return x[L.qkv(b, t, 2, h, i)]; }));
        for (int i = 0; i < D; ++i) {
          qmax[i] = std::max(qmax[i], std::fabs(double(x[L.qkv(b, t, 0, h, i)])));
          kmax[i] = std::max(kmax[i], std::fabs(double(x[L.qkv(b, t, 1, h, i)])));
          vmax[i] = std::max(vmax[i], std::fabs(double(x[L.qkv(b, t, 2, h, i)])));
          if (bwd) gmax[i] = std::max(gmax[i], std::fabs(double(g[L.o(b, t, h, i)])));
        }
      }
      for (int t = 0; t < T; ++t) {
        S[t] = scale * norm([&](int i) { return x[L.qkv(b, t, 0, h, i)]; }) * Kn;
        const double n = std::sqrt(double(t + 1));
        for (int i = 0; i < D; ++i) R.out[L.o(b, t, h, i)] = u * vmax[i] * (n + 2 * sqD * S[t] + 4 * S[t] + 4);
        const size_t ib = L.bht(b, h, t);
        R.lse[ib] = u * (sqD * S[t] + 2 * S[t] + n + std::fabs(double(lse[ib])) + 1);
        if (!bwd) continue;
        const double gn = norm([&](int i) { return g[L.o(b, t, h, i)]; });
        const double on = norm([&](int i) { return o[L.o(b, t, h, i)]; });
        R.delta[ib] = u * sqD * gn * on;
        W[t] = gn * (Vn + on);
        F[t] = sqD * (S[t] + 1) + 2 * S[t] + std::log(double(t + 1)) + 4;
        for (int i = 0; i < D; ++i) R.dqkv[L.qkv(b, t, 0, h, i)] = u * scale * kmax[i] * W[t] * (F[t] + n);
      }
      if (!bwd) continue;
      // Column sums of P (from the given lse) for the key-side bounds.
      std::fill(colW.begin(), colW.end(), 0.0), std::fill(colP.begin(), colP.end(), 0.0);
      for (int t = 0; t < T; ++t) {
        const size_t qb = L.qkv(b, t, 0, h, 0), ib = L.bht(b, h, t);
        for (int j = 0; j <= t; ++j) {
          const size_t kb = L.qkv(b, j, 1, h, 0);
          double d = 0;
          for (int i = 0; i < D; ++i) d += double(x[qb + size_t(i)]) * double(x[kb + size_t(i)]);
          const double p = std::exp(d * scale - double(lse[ib]));
          const double n = std::sqrt(double(T - j));
          colW[j] += p * W[t] * (F[t] + n);
          colP[j] += p * (F[t] + n);
        }
      }
      for (int j = 0; j < T; ++j)
        for (int i = 0; i < D; ++i) {
          R.dqkv[L.qkv(b, j, 1, h, i)] = u * scale * qmax[i] * colW[j];
          R.dqkv[L.qkv(b, j, 2, h, i)] = u * gmax[i] * colP[j];
        }
    }
  return R;
}

// The half part of the bounds (top of the file): per element, the worst case W = sum e_j and the random-walk
// variance V = sum e_j^2 / 3 of rounding P and dS to t, e_j the bound on term j's rounding error (u_t |term|;
// for fp16 at least 2^-25 |factor|, half the smallest subnormal). Zero for FP32 storage.
struct HalfTerms {
  std::vector<double> out_w, out_v, dqkv_w, dqkv_v;
};

HalfTerms half_terms(const Layout& L, DType t, const std::vector<float>& x, const std::vector<float>& o,
                     const std::vector<float>& g, const std::vector<float>& lse) {
  const Shape s = L.s;
  const int T = s.T, D = s.D;
  const bool bwd = !g.empty();
  HalfTerms R;
  R.out_w.assign(L.n_out(), 0), R.out_v.assign(L.n_out(), 0);
  if (bwd) R.dqkv_w.assign(L.n_qkv(), 0), R.dqkv_v.assign(L.n_qkv(), 0);
  if (!is_half(t)) return R;
  // Rounding error bound of a value x: u_t |x|, or half fp16's smallest subnormal below its normal range.
  const double u = t == DType::BF16 ? 0x1p-8 : 0x1p-11, tiny = t == DType::F16 ? 0x1p-25 : 0.0;
  auto rerr = [&](double v) { return std::max(u * std::fabs(v), tiny); };
  const double scale = 1.0 / std::sqrt(double(D));
  std::vector<double> q(D), gr(D);
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.H; ++h)
      for (int tt = 0; tt < T; ++tt) {
        double delta = 0;
        for (int i = 0; i < D; ++i) {
          q[i] = x[L.qkv(b, tt, 0, h, i)];
          if (bwd) gr[i] = g[L.o(b, tt, h, i)], delta += gr[i] * double(o[L.o(b, tt, h, i)]);
        }
        const double l = lse[L.bht(b, h, tt)];
        for (int j = 0; j <= tt; ++j) {
          const float* kj = &x[L.qkv(b, j, 1, h, 0)];
          const float* vj = &x[L.qkv(b, j, 2, h, 0)];
          double sc = 0, dp = 0;
          for (int i = 0; i < D; ++i) {
            sc += q[i] * double(kj[i]);
            if (bwd) dp += gr[i] * double(vj[i]);
          }
          const double p = std::exp(sc * scale - l), ep = rerr(p);
          for (int i = 0; i < D; ++i) {
            const double a = ep * std::fabs(double(vj[i]));
            R.out_w[L.o(b, tt, h, i)] += a;
            R.out_v[L.o(b, tt, h, i)] += a * a / 3;
          }
          if (!bwd) continue;
          const double eds = rerr(p * (dp - delta)) * scale;
          for (int i = 0; i < D; ++i) {
            const double aq = eds * std::fabs(double(kj[i]));  // dq_t
            const double ak = eds * std::fabs(q[i]);           // dk_j
            const double av = ep * std::fabs(gr[i]);           // dv_j
            const size_t iq = L.qkv(b, tt, 0, h, i), ik = L.qkv(b, j, 1, h, i), iv = L.qkv(b, j, 2, h, i);
            R.dqkv_w[iq] += aq, R.dqkv_v[iq] += aq * aq / 3;
            R.dqkv_w[ik] += ak, R.dqkv_v[ik] += ak * ak / 3;
            R.dqkv_w[iv] += av, R.dqkv_v[iv] += av * av / 3;
          }
        }
      }
  return R;
}

// Sum of squared differences over the sum of predicted variances (see the top of the file); <= 2 passes.
::testing::AssertionResult random_walk(const std::string& what, const std::vector<float>& got,
                                       const std::vector<float>& ref, const std::vector<double>& fp32,
                                       const std::vector<double>& var, DType t) {
  if (!is_half(t)) return ::testing::AssertionSuccess();
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = double(got[i]) - double(ref[i]), e = ulp(t, ref[i]), f = fp32[i] / 3;
    num += d * d;
    den += var[i] + e * e / 4 + f * f;
  }
  const double ratio = den > 0 ? num / den : 0;
  if (!(ratio <= 2.0))
    return ::testing::AssertionFailure() << what << ": sum diff^2 / sum predicted variance = " << ratio << " > 2";
  return ::testing::AssertionSuccess() << what << ": ratio " << ratio;
}

std::vector<double> plus(std::vector<double> a, const std::vector<double>& b) {
  for (size_t i = 0; i < a.size(); ++i) a[i] += b[i];
  return a;
}

// got vs ref (values of dtype t), |diff| <= bound + (half dtypes) one ulp of ref.
::testing::AssertionResult matches(const std::string& what, const std::vector<float>& got,
                                   const std::vector<float>& ref, const std::vector<double>& bound, DType t) {
  return all_close(what, got, ref, [&](size_t i) { return bound[i] + (is_half(t) ? ulp(t, ref[i]) : 0.0); });
}

// ---- tests

class AttentionGpu : public GpuTest, public ::testing::WithParamInterface<DType> {};

TEST_P(AttentionGpu, ForwardMatchesCpu) {
  const DType t = GetParam();
  Rng r = fresh_rng();
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(shape_name(s));
    const Layout L{s};
    const std::vector<uint8_t> qkv = make_qkv(r, t, L);
    std::vector<uint8_t> ref_out(L.n_out() * dtype_size(t));
    std::vector<float> ref_lse(L.n_bht());
    cpu::attention_forward(qkv.data(), ref_out.data(), ref_lse.data(), t, s.B, s.T, s.H, s.D);

    DeviceBuffer dx = to_device(qkv), dout(ref_out.size()), dlse(ref_lse.size() * sizeof(float));
    dout.fill(0xFF, stream());
    dlse.fill(0xFF, stream());
    cuda::attention_forward(dx.get(), dout.get(), dlse.as<float>(), t, s.B, s.T, s.H, s.D, stream());
    const std::vector<uint8_t> got_out = to_host<uint8_t>(dout, ref_out.size());
    const std::vector<float> got_lse = to_host<float>(dlse, ref_lse.size());

    const std::vector<float> ro = to_floats(ref_out, t), go = to_floats(got_out, t), xf = to_floats(qkv, t);
    const Bounds bd = fp32_bounds(L, xf, ro, {}, ref_lse);
    const HalfTerms ht = half_terms(L, t, xf, ro, {}, ref_lse);
    EXPECT_TRUE(matches("out", go, ro, plus(bd.out, ht.out_w), t));
    EXPECT_TRUE(random_walk("out", go, ro, bd.out, ht.out_v, t));
    EXPECT_TRUE(matches("lse", got_lse, ref_lse, bd.lse, DType::F32));

    // Without lse (evaluation) the output is the same, bit for bit.
    DeviceBuffer dout2(ref_out.size());
    cuda::attention_forward(dx.get(), dout2.get(), nullptr, t, s.B, s.T, s.H, s.D, stream());
    EXPECT_TRUE(same_bits("out without lse", to_host<uint8_t>(dout2, ref_out.size()), got_out, t));
  }
}

// Both forms of the tensor-core dq: with a scratch buffer (dS stored by the dK/dV pass, dq from it) and
// without (dq recomputed). The scratch is lent with guard bytes after it that must stay as they were, and it
// must have been written (else the stored-dS form did not run).
TEST_P(AttentionGpu, BackwardMatchesCpu) {
  const DType t = GetParam();
  Rng r = fresh_rng();
  for (const bool lend : {true, false})
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(shape_name(s) + (lend ? ", dS scratch" : ", no scratch"));
    const Layout L{s};
    const std::vector<uint8_t> qkv = make_qkv(r, t, L);
    const std::vector<uint8_t> dout = random_buffer(r, t, L.n_out());
    // The CPU forward's out and lse feed both backwards, so the backward is tested on its own.
    std::vector<uint8_t> out(L.n_out() * dtype_size(t));
    std::vector<float> lse(L.n_bht()), ref_delta(L.n_bht());
    cpu::attention_forward(qkv.data(), out.data(), lse.data(), t, s.B, s.T, s.H, s.D);
    std::vector<uint8_t> ref_dqkv(qkv.size());
    cpu::attention_backward(dout.data(), qkv.data(), out.data(), lse.data(), ref_delta.data(), ref_dqkv.data(), t,
                            s.B, s.T, s.H, s.D);

    DeviceBuffer dg = to_device(dout), dx = to_device(qkv), dout_fwd = to_device(out), dlse = to_device(lse);
    DeviceBuffer ddelta(lse.size() * sizeof(float)), ddqkv(qkv.size());
    ddelta.fill(0xFF, stream());
    ddqkv.fill(0xFF, stream());
    const size_t need = lend ? cuda::attention_backward_scratch_bytes(t, s.B, s.T, s.H, s.D) : 0, guard = 4096;
    EXPECT_EQ(need > 0, lend && is_half(t));
    DeviceBuffer scratch(need + guard);
    scratch.fill(0xA5, stream());
    cuda::attention_backward(dg.get(), dx.get(), dout_fwd.get(), dlse.as<float>(), ddelta.as<float>(), ddqkv.get(), t,
                             s.B, s.T, s.H, s.D, stream(), need ? scratch.get() : nullptr, need);
    if (need) {
      const std::vector<uint8_t> sc = to_host<uint8_t>(scratch, need + guard);
      EXPECT_TRUE(std::all_of(sc.begin() + ptrdiff_t(need), sc.end(), [](uint8_t v) { return v == 0xA5; }))
          << "written past the scratch's " << need << " bytes";
      EXPECT_FALSE(std::all_of(sc.begin(), sc.begin() + ptrdiff_t(need), [](uint8_t v) { return v == 0xA5; }))
          << "scratch never written: dq was not formed from stored dS";
    }
    const std::vector<float> got_delta = to_host<float>(ddelta, lse.size());
    const std::vector<float> got_dqkv = to_floats(to_host<uint8_t>(ddqkv, qkv.size()), t);

    const std::vector<float> xf = to_floats(qkv, t), of = to_floats(out, t), gf = to_floats(dout, t);
    const std::vector<float> rd = to_floats(ref_dqkv, t);
    const Bounds bd = fp32_bounds(L, xf, of, gf, lse);
    const HalfTerms ht = half_terms(L, t, xf, of, gf, lse);
    EXPECT_TRUE(matches("delta", got_delta, ref_delta, bd.delta, DType::F32));
    EXPECT_TRUE(matches("dqkv", got_dqkv, rd, plus(bd.dqkv, ht.dqkv_w), t));
    // The statistic per part: q, k and v gradients have different sizes and error sources.
    const size_t C = L.C();
    for (int part = 0; part < 3; ++part) {
      std::vector<float> a, r;
      std::vector<double> f, v;
      for (size_t i = 0; i < rd.size(); ++i)
        if ((i % (3 * C)) / C == size_t(part)) {
          a.push_back(got_dqkv[i]), r.push_back(rd[i]), f.push_back(bd.dqkv[i]), v.push_back(ht.dqkv_v[i]);
        }
      EXPECT_TRUE(random_walk(std::string("d") + "qkv"[part], a, r, f, v, t));
    }
  }
}

// Two runs of each pass give the same bits (no atomics, fixed reduction orders), with the dS scratch as
// training lends it; the scratch holds different data before each run.
TEST_P(AttentionGpu, Deterministic) {
  const DType t = GetParam();
  Rng r = fresh_rng();
  const Shape s{2, 1024, 12, 64, false};
  const Layout L{s};
  const std::vector<uint8_t> qkv = make_qkv(r, t, L), dout = random_buffer(r, t, L.n_out());
  DeviceBuffer dx = to_device(qkv), dg = to_device(dout);
  std::vector<uint8_t> first_out, first_dqkv;
  std::vector<float> first_lse, first_delta;
  const size_t need = cuda::attention_backward_scratch_bytes(t, s.B, s.T, s.H, s.D);
  for (int rep = 0; rep < 2; ++rep) {
    DeviceBuffer o(L.n_out() * dtype_size(t)), lse(L.n_bht() * sizeof(float)), delta(L.n_bht() * sizeof(float)),
        dqkv(qkv.size()), scratch(need);
    dqkv.fill(0xFF, stream());
    if (need) scratch.fill(rep ? 0x00 : 0xFF, stream());
    cuda::attention_forward(dx.get(), o.get(), lse.as<float>(), t, s.B, s.T, s.H, s.D, stream());
    cuda::attention_backward(dg.get(), dx.get(), o.get(), lse.as<float>(), delta.as<float>(), dqkv.get(), t, s.B, s.T,
                             s.H, s.D, stream(), scratch.get(), need);
    std::vector<uint8_t> go = to_host<uint8_t>(o, L.n_out() * dtype_size(t)), gd = to_host<uint8_t>(dqkv, qkv.size());
    std::vector<float> gl = to_host<float>(lse, L.n_bht()), gdl = to_host<float>(delta, L.n_bht());
    if (rep == 0) {
      first_out = std::move(go), first_dqkv = std::move(gd), first_lse = std::move(gl), first_delta = std::move(gdl);
      // The run must produce numbers, or equal bits would prove nothing.
      const std::vector<float> f = to_floats(first_dqkv, t);
      ASSERT_TRUE(std::all_of(f.begin(), f.end(), [](float v) { return std::isfinite(v); }));
      continue;
    }
    EXPECT_EQ(go, first_out) << "out";
    EXPECT_EQ(gl, first_lse) << "lse";
    EXPECT_EQ(gdl, first_delta) << "delta";
    EXPECT_EQ(gd, first_dqkv) << "dqkv";
  }
}

// An overflowed (infinite) query element must surface as a non-finite output row, for the loss scaler to
// see, and leave every other row bit for bit as it was.
TEST_P(AttentionGpu, NonFiniteQueryStaysInItsRow) {
  const DType t = GetParam();
  Rng r = fresh_rng();
  const Shape s{2, 77, 2, 64, false};
  const Layout L{s};
  std::vector<uint8_t> qkv = make_qkv(r, t, L);
  const int t0 = int(r.below(uint64_t(s.T)));
  const size_t nbytes = L.n_out() * dtype_size(t);
  DeviceBuffer dx = to_device(qkv), o1(nbytes), o2(nbytes);
  cuda::attention_forward(dx.get(), o1.get(), nullptr, t, s.B, s.T, s.H, s.D, stream());
  store_elem(qkv.data(), t, L.qkv(0, t0, 0, 1, 5), INFINITY);
  DeviceBuffer dx2 = to_device(qkv);
  cuda::attention_forward(dx2.get(), o2.get(), nullptr, t, s.B, s.T, s.H, s.D, stream());
  const std::vector<uint8_t> a = to_host<uint8_t>(o1, nbytes), b = to_host<uint8_t>(o2, nbytes);
  size_t bad = 0;
  for (int bb = 0; bb < s.B; ++bb)
    for (int tt = 0; tt < s.T; ++tt)
      for (int h = 0; h < s.H; ++h)
        for (int i = 0; i < s.D; ++i) {
          const size_t o = L.o(bb, tt, h, i), es = dtype_size(t);
          const bool hit = bb == 0 && tt == t0 && h == 1;
          const bool ok = hit ? !std::isfinite(load_elem(b.data(), t, o))
                              : std::memcmp(&a[o * es], &b[o * es], es) == 0;
          if (!ok && ++bad <= 5)
            ADD_FAILURE() << "b " << bb << " t " << tt << " h " << h << " i " << i << " (t0 " << t0 << ")";
        }
  EXPECT_EQ(bad, 0u);
}

TEST_P(AttentionGpu, BadArgumentsThrow) {
  const DType t = GetParam();
  DeviceBuffer b(1 << 16);
  float* f = b.as<float>();
  // Head dims without a kernel instantiation.
  for (int D : {8, 48, 96, 256})
    EXPECT_THROW(cuda::attention_forward(b.get(), b.get(), f, t, 1, 4, 1, D, stream()), std::invalid_argument) << D;
  EXPECT_THROW(cuda::attention_backward(b.get(), b.get(), b.get(), f, f, b.get(), t, 1, 4, 1, 48, stream()),
               std::invalid_argument);
  EXPECT_THROW(cuda::attention_forward(nullptr, b.get(), f, t, 1, 4, 1, 64, stream()), std::invalid_argument);
  EXPECT_THROW(cuda::attention_forward(b.get(), b.get(), f, t, -1, 4, 1, 64, stream()), std::invalid_argument);
  EXPECT_THROW(cuda::attention_backward(b.get(), b.get(), b.get(), nullptr, f, b.get(), t, 1, 4, 1, 64, stream()),
               std::invalid_argument);
  // Empty shapes are no-ops.
  EXPECT_NO_THROW(cuda::attention_forward(nullptr, nullptr, nullptr, t, 0, 4, 1, 64, stream()));
  EXPECT_NO_THROW(cuda::attention_backward(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, t, 2, 0, 1, 64,
                                           stream()));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, AttentionGpu, ::testing::Values(DType::F32, DType::F16, DType::BF16),
                         dtype_param_name);

}  // namespace
}  // namespace mpt::test
