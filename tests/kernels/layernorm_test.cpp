// mpt::cpu::layernorm_forward / layernorm_backward against float64 references; the reference backward is
// itself checked against central differences of the float64 forward.
//
// The references read the same dtype-rounded inputs as the kernels, so the kernels' errors are their FP32
// arithmetic and one rounding per stored output. Tolerance = storage_tol(output dtype) + 2 * B, where B is
// a first-order bound on the FP32 error propagated through the formulas below (recursive sums contribute
// u * sum |partial sums|, every other operation u * |its result|); the factor 2 covers second-order terms.
// B is rigorous rather than typical, and still within ~50x of the errors actually seen.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <stdexcept>
#include <vector>

#include "kernels/layernorm.h"
#include "tests/test_util.h"

namespace mpt {
namespace {

constexpr double kU = 0x1p-24;  // FP32 unit roundoff
constexpr float kEps = 1e-5f;

struct Case {
  DType xt, pt;
};
std::string case_name(const Case& c) { return std::string("x") + dtype_name(c.xt) + "_p" + dtype_name(c.pt); }

struct Inputs {
  int rows, cols;
  DType xt, pt;
  std::vector<uint8_t> x, gamma, beta, dy, dgamma, dbeta;
  double X(int i, int j) const { return load_elem(x.data(), xt, size_t(i) * cols + j); }
  double DY(int i, int j) const { return load_elem(dy.data(), xt, size_t(i) * cols + j); }
  double G(int j) const { return load_elem(gamma.data(), pt, j); }
  double B(int j) const { return load_elem(beta.data(), pt, j); }
};

Inputs random_inputs(Rng& rng, const Case& c, int rows, int cols) {
  Inputs in{rows, cols, c.xt, c.pt, {}, {}, {}, {}, {}, {}};
  // A nonzero mean and unequal scales per row, so centering and the variance both matter.
  in.x.resize(size_t(rows) * cols * dtype_size(c.xt));
  for (int i = 0; i < rows; ++i) {
    const float offset = rng.uniform(-3.f, 3.f), scale = rng.uniform(0.2f, 2.f);
    for (int j = 0; j < cols; ++j) store_elem(in.x.data(), c.xt, size_t(i) * cols + j, offset + scale * rng.normal());
  }
  in.gamma = test::random_buffer(rng, c.pt, cols, 0.5f, 1.5f);
  in.beta = test::random_buffer(rng, c.pt, cols, -0.5f, 0.5f);
  in.dy = test::random_buffer(rng, c.xt, size_t(rows) * cols);
  in.dgamma = test::random_buffer(rng, c.pt, cols);  // nonzero: the kernel must add, not overwrite
  in.dbeta = test::random_buffer(rng, c.pt, cols);
  return in;
}

// Per-row float64 statistics plus bounds on the kernel's FP32 mean and rstd.
struct RowStats {
  double mu, rs, e_mu, e_rs;
};
RowStats row_stats(const Inputs& in, int i, double eps) {
  const int n = in.cols;
  double s = 0, ps = 0;
  for (int j = 0; j < n; ++j) {
    s += in.X(i, j);
    ps += std::fabs(s);
  }
  RowStats r;
  r.mu = s / n;
  r.e_mu = kU * (ps / n + 2 * std::fabs(r.mu));
  double ss = 0, pss = 0, e_ss = 0;
  for (int j = 0; j < n; ++j) {
    const double d = in.X(i, j) - r.mu, e_d = r.e_mu + kU * std::fabs(d);
    ss += d * d;
    pss += ss;
    e_ss += 2 * std::fabs(d) * e_d + kU * d * d;
  }
  e_ss += kU * pss + n * r.e_mu * r.e_mu;
  const double var = ss / n, e_var = e_ss / n + 2 * kU * var;
  r.rs = 1.0 / std::sqrt(var + eps);
  r.e_rs = r.rs * (0.5 * (e_var + kU * (var + eps)) / (var + eps) + 2 * kU);
  return r;
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

const test::Tol kNoTol{0.0, 0.0};

class LayerNormTest : public ::testing::TestWithParam<Case> {};

TEST_P(LayerNormTest, ForwardAndBackwardMatchReference) {
  const Case c = GetParam();
  Rng rng = test::fresh_rng();
  const int shapes[][2] = {{37, 129}, {5, 1001}, {1001, 37}};
  for (const auto& sh : shapes) {
    const int rows = sh[0], n = sh[1];
    const std::string tag = std::to_string(rows) + "x" + std::to_string(n);
    Inputs in = random_inputs(rng, c, rows, n);
    const size_t total = size_t(rows) * n;
    std::vector<uint8_t> y(total * dtype_size(c.xt)), dx(y.size());
    std::vector<float> mean(rows), rstd(rows);
    cpu::layernorm_forward(in.x.data(), c.xt, in.gamma.data(), in.beta.data(), c.pt, y.data(), mean.data(),
                           rstd.data(), rows, n, kEps);
    const std::vector<uint8_t> dg0 = in.dgamma, db0 = in.dbeta;
    cpu::layernorm_backward(in.dy.data(), in.x.data(), c.xt, in.gamma.data(), c.pt, mean.data(), rstd.data(),
                            dx.data(), in.dgamma.data(), in.dbeta.data(), rows, n);

    std::vector<double> mu_got(rows), mu_ref(rows), mu_b(rows), rs_got(rows), rs_ref(rows), rs_b(rows);
    std::vector<double> y_got(total), y_ref(total), y_b(total), dx_got(total), dx_ref(total), dx_b(total);
    std::vector<double> dg_sum(n, 0), dg_ps(n, 0), dg_e(n, 0), db_sum(n, 0), db_ps(n, 0);
    for (int i = 0; i < rows; ++i) {
      const RowStats st = row_stats(in, i, kEps);
      mu_got[i] = mean[i], mu_ref[i] = st.mu, mu_b[i] = st.e_mu;
      rs_got[i] = rstd[i], rs_ref[i] = st.rs, rs_b[i] = st.e_rs;
      // Forward: y = d * rs * g + b with d = x - mu.
      std::vector<double> xh(n), e_xh(n), gy(n);
      double sg = 0, psg = 0, sgx = 0, psgx = 0, e_sgx = 0;
      for (int j = 0; j < n; ++j) {
        const size_t o = size_t(i) * n + j;
        const double d = in.X(i, j) - st.mu, e_d = st.e_mu + kU * std::fabs(d);
        xh[j] = d * st.rs;
        e_xh[j] = e_d * st.rs + std::fabs(d) * st.e_rs + kU * std::fabs(xh[j]);
        y_ref[o] = xh[j] * in.G(j) + in.B(j);
        y_b[o] = std::fabs(in.G(j)) * e_xh[j] + 2 * kU * (std::fabs(xh[j] * in.G(j)) + std::fabs(y_ref[o]));
        y_got[o] = load_elem(y.data(), c.xt, o);
        // Backward sums, with the kernel's statistics errors carried through xhat.
        const double dyv = in.DY(i, j);
        gy[j] = dyv * in.G(j);
        sg += gy[j];
        psg += std::fabs(sg);
        const double t = gy[j] * xh[j];
        sgx += t;
        psgx += std::fabs(sgx);
        e_sgx += std::fabs(gy[j]) * e_xh[j] + 2 * kU * std::fabs(t);
        dg_sum[j] += dyv * xh[j];
        dg_ps[j] += std::fabs(dg_sum[j]);
        dg_e[j] += std::fabs(dyv) * e_xh[j] + kU * std::fabs(dyv * xh[j]);
        db_sum[j] += dyv;
        db_ps[j] += std::fabs(db_sum[j]);
      }
      double abs_gy = 0;
      for (int j = 0; j < n; ++j) abs_gy += std::fabs(gy[j]);
      const double mg = sg / n, e_mg = kU * (abs_gy + psg) / n + 2 * kU * std::fabs(mg);
      const double mgx = sgx / n, e_mgx = (e_sgx + kU * psgx) / n + 2 * kU * std::fabs(mgx);
      for (int j = 0; j < n; ++j) {
        const size_t o = size_t(i) * n + j;
        const double inner = gy[j] - mg - xh[j] * mgx;
        const double e_inner = kU * std::fabs(gy[j]) + e_mg + std::fabs(xh[j]) * e_mgx + e_xh[j] * std::fabs(mgx) +
                               3 * kU * (std::fabs(gy[j]) + std::fabs(mg) + std::fabs(xh[j] * mgx));
        dx_ref[o] = st.rs * inner;
        dx_b[o] = st.e_rs * std::fabs(inner) + st.rs * e_inner + kU * std::fabs(dx_ref[o]);
        dx_got[o] = load_elem(dx.data(), c.xt, o);
      }
    }
    std::vector<double> dg_got(n), dg_ref(n), dg_b(n), db_got(n), db_ref(n), db_b(n);
    for (int j = 0; j < n; ++j) {
      dg_ref[j] = load_elem(dg0.data(), c.pt, j) + dg_sum[j];
      dg_b[j] = dg_e[j] + kU * (dg_ps[j] + std::fabs(dg_ref[j]));
      dg_got[j] = load_elem(in.dgamma.data(), c.pt, j);
      db_ref[j] = load_elem(db0.data(), c.pt, j) + db_sum[j];
      db_b[j] = kU * (db_ps[j] + std::fabs(db_ref[j]));
      db_got[j] = load_elem(in.dbeta.data(), c.pt, j);
    }
    // mean and rstd are FP32 outputs: no storage rounding beyond what the bound covers.
    EXPECT_EQ(count_bad(tag + " mean", mu_got, mu_ref, mu_b, kNoTol), 0u);
    EXPECT_EQ(count_bad(tag + " rstd", rs_got, rs_ref, rs_b, kNoTol), 0u);
    EXPECT_EQ(count_bad(tag + " y", y_got, y_ref, y_b, test::storage_tol(c.xt)), 0u);
    EXPECT_EQ(count_bad(tag + " dx", dx_got, dx_ref, dx_b, test::storage_tol(c.xt)), 0u);
    EXPECT_EQ(count_bad(tag + " dgamma", dg_got, dg_ref, dg_b, test::storage_tol(c.pt)), 0u);
    EXPECT_EQ(count_bad(tag + " dbeta", db_got, db_ref, db_b, test::storage_tol(c.pt)), 0u);
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, LayerNormTest,
                         ::testing::Values(Case{DType::F32, DType::F32}, Case{DType::F16, DType::F16},
                                           Case{DType::BF16, DType::BF16}, Case{DType::F16, DType::F32},
                                           Case{DType::BF16, DType::F32}),
                         [](const auto& info) { return case_name(info.param); });

// The float64 backward formulas against central differences of the float64 forward, for
// L = sum(w o layernorm(x; gamma, beta)). With h = 1e-5 the truncation error is ~h^2 * |L'''| ~ 1e-9 and
// cancellation ~1e-16 * |L| / h ~ 1e-10, so 1e-7 is tight: dropping the xhat * mean(gy * xhat) term of
// dx changes it by ~0.1.
TEST(LayerNormReference, BackwardMatchesFiniteDifferences) {
  Rng rng = test::fresh_rng();
  const int rows = 3, n = 37;
  const double eps = 1e-5;
  std::vector<double> x(size_t(rows) * n), w(x.size()), g(n), b(n);
  for (int i = 0; i < rows; ++i) {
    const double off = rng.uniform(-2.f, 2.f);
    for (int j = 0; j < n; ++j) x[size_t(i) * n + j] = off + rng.normal();
  }
  for (auto& v : w) v = rng.uniform(-1.f, 1.f);
  for (auto& v : g) v = rng.uniform(0.5f, 1.5f);
  for (auto& v : b) v = rng.uniform(-0.5f, 0.5f);

  auto loss = [&] {
    double l = 0;
    for (int i = 0; i < rows; ++i) {
      double mu = 0, var = 0;
      for (int j = 0; j < n; ++j) mu += x[size_t(i) * n + j];
      mu /= n;
      for (int j = 0; j < n; ++j) var += (x[size_t(i) * n + j] - mu) * (x[size_t(i) * n + j] - mu);
      const double rs = 1.0 / std::sqrt(var / n + eps);
      for (int j = 0; j < n; ++j) l += w[size_t(i) * n + j] * ((x[size_t(i) * n + j] - mu) * rs * g[j] + b[j]);
    }
    return l;
  };
  // Reference backward: the same formulas the bound-carrying test above uses.
  std::vector<double> dx(x.size()), dg(n, 0), db(n, 0);
  for (int i = 0; i < rows; ++i) {
    double mu = 0, var = 0;
    for (int j = 0; j < n; ++j) mu += x[size_t(i) * n + j];
    mu /= n;
    for (int j = 0; j < n; ++j) var += (x[size_t(i) * n + j] - mu) * (x[size_t(i) * n + j] - mu);
    const double rs = 1.0 / std::sqrt(var / n + eps);
    double mg = 0, mgx = 0;
    for (int j = 0; j < n; ++j) {
      const double xh = (x[size_t(i) * n + j] - mu) * rs, gy = w[size_t(i) * n + j] * g[j];
      mg += gy / n;
      mgx += gy * xh / n;
      dg[j] += w[size_t(i) * n + j] * xh;
      db[j] += w[size_t(i) * n + j];
    }
    for (int j = 0; j < n; ++j) {
      const double xh = (x[size_t(i) * n + j] - mu) * rs, gy = w[size_t(i) * n + j] * g[j];
      dx[size_t(i) * n + j] = rs * (gy - mg - xh * mgx);
    }
  }
  const double h = 1e-5;
  auto fd = [&](double& v) {
    const double v0 = v;
    v = v0 + h;
    const double lp = loss();
    v = v0 - h;
    const double lm = loss();
    v = v0;
    return (lp - lm) / (2 * h);
  };
  for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(fd(x[i]), dx[i], 1e-7 * (1 + std::fabs(dx[i]))) << "dx " << i;
  for (int j = 0; j < n; ++j) EXPECT_NEAR(fd(g[j]), dg[j], 1e-7 * (1 + std::fabs(dg[j]))) << "dgamma " << j;
  for (int j = 0; j < n; ++j) EXPECT_NEAR(fd(b[j]), db[j], 1e-7 * (1 + std::fabs(db[j]))) << "dbeta " << j;
}

TEST(LayerNorm, BackwardAccumulatesParameterGradientsOverCalls) {
  // Two identical backward calls from zero must give exactly twice the first call's dgamma and dbeta:
  // the column sums are deterministic and x + x is exact.
  Rng rng = test::fresh_rng();
  const Case c{DType::F32, DType::F32};
  const int rows = 17, n = 65;
  Inputs in = random_inputs(rng, c, rows, n);
  std::vector<float> y(size_t(rows) * n), dx(y.size()), mean(rows), rstd(rows);
  cpu::layernorm_forward(in.x.data(), c.xt, in.gamma.data(), in.beta.data(), c.pt, y.data(), mean.data(),
                         rstd.data(), rows, n, kEps);
  std::vector<float> dg(n, 0.f), db(n, 0.f);
  cpu::layernorm_backward(in.dy.data(), in.x.data(), c.xt, in.gamma.data(), c.pt, mean.data(), rstd.data(),
                          dx.data(), dg.data(), db.data(), rows, n);
  const std::vector<float> dg1 = dg, db1 = db;
  cpu::layernorm_backward(in.dy.data(), in.x.data(), c.xt, in.gamma.data(), c.pt, mean.data(), rstd.data(),
                          dx.data(), dg.data(), db.data(), rows, n);
  for (int j = 0; j < n; ++j) {
    EXPECT_EQ(dg[j], 2 * dg1[j]) << j;  // x + x is exact in binary floating point
    EXPECT_EQ(db[j], 2 * db1[j]) << j;
  }
}

TEST(LayerNorm, ForwardWithoutStatisticsGivesTheSameOutput) {
  // Evaluation passes null mean / rstd; y must not depend on that.
  Rng rng = test::fresh_rng();
  const Case c{DType::BF16, DType::F32};
  const int rows = 9, n = 77;
  Inputs in = random_inputs(rng, c, rows, n);
  std::vector<uint8_t> y1(size_t(rows) * n * dtype_size(c.xt)), y2(y1.size());
  std::vector<float> mean(rows), rstd(rows);
  cpu::layernorm_forward(in.x.data(), c.xt, in.gamma.data(), in.beta.data(), c.pt, y1.data(), mean.data(),
                         rstd.data(), rows, n, kEps);
  cpu::layernorm_forward(in.x.data(), c.xt, in.gamma.data(), in.beta.data(), c.pt, y2.data(), nullptr, nullptr,
                         rows, n, kEps);
  EXPECT_EQ(y1, y2);
}


// ---- residual_layernorm_forward and accumulate_dx

// Checks y, mean and rstd of a forward over in.x against the float64 reference, with the bounds of
// ForwardAndBackwardMatchReference (same derivation, forward half only).
void expect_forward_matches_reference(const std::string& tag, const Inputs& in, const std::vector<uint8_t>& y,
                                      const std::vector<float>& mean, const std::vector<float>& rstd) {
  const int rows = in.rows, n = in.cols;
  const size_t total = size_t(rows) * n;
  std::vector<double> mu_got(rows), mu_ref(rows), mu_b(rows), rs_got(rows), rs_ref(rows), rs_b(rows);
  std::vector<double> y_got(total), y_ref(total), y_b(total);
  for (int i = 0; i < rows; ++i) {
    const RowStats st = row_stats(in, i, kEps);
    mu_got[i] = mean[i], mu_ref[i] = st.mu, mu_b[i] = st.e_mu;
    rs_got[i] = rstd[i], rs_ref[i] = st.rs, rs_b[i] = st.e_rs;
    for (int j = 0; j < n; ++j) {
      const size_t o = size_t(i) * n + j;
      const double d = in.X(i, j) - st.mu, e_d = st.e_mu + kU * std::fabs(d);
      const double xh = d * st.rs, e_xh = e_d * st.rs + std::fabs(d) * st.e_rs + kU * std::fabs(xh);
      y_ref[o] = xh * in.G(j) + in.B(j);
      y_b[o] = std::fabs(in.G(j)) * e_xh + 2 * kU * (std::fabs(xh * in.G(j)) + std::fabs(y_ref[o]));
      y_got[o] = load_elem(y.data(), in.xt, o);
    }
  }
  EXPECT_EQ(count_bad(tag + " mean", mu_got, mu_ref, mu_b, kNoTol), 0u);
  EXPECT_EQ(count_bad(tag + " rstd", rs_got, rs_ref, rs_b, kNoTol), 0u);
  EXPECT_EQ(count_bad(tag + " y", y_got, y_ref, y_b, test::storage_tol(in.xt)), 0u);
}

class ResidualLayerNormTest : public ::testing::TestWithParam<Case> {};

// res = a + b must be the FP32 sum rounded once to xt. In the ranges used the float64 sum of two stored
// values is exact and float() of it is the correctly rounded FP32 sum, so the check is exact. y, mean and
// rstd are then checked against the float64 reference over that rounded res (not over the exact a + b:
// for bf16 the two differ by ~1e-3 per element, far outside the reference bounds), and must be bit for
// bit what layernorm_forward gives on res, since the backward pass will see res as x.
TEST_P(ResidualLayerNormTest, MatchesReferenceOverRoundedSum) {
  const Case c = GetParam();
  Rng rng = test::fresh_rng();
  const int shapes[][2] = {{37, 129}, {5, 1001}, {64, 768}};
  for (const auto& sh : shapes) {
    const int rows = sh[0], n = sh[1];
    const std::string tag = std::to_string(rows) + "x" + std::to_string(n);
    const size_t total = size_t(rows) * n, bytes = total * dtype_size(c.xt);
    Inputs in = random_inputs(rng, c, rows, n);  // a = in.x: offset, scaled rows
    const std::vector<uint8_t> a = in.x, b = test::random_buffer(rng, c.xt, total, -2.f, 2.f);
    std::vector<uint8_t> res(bytes), y(bytes), want_res(bytes);
    std::vector<float> mean(rows), rstd(rows);
    cpu::residual_layernorm_forward(a.data(), b.data(), c.xt, in.gamma.data(), in.beta.data(), c.pt, res.data(),
                                    y.data(), mean.data(), rstd.data(), rows, n, kEps);
    for (size_t o = 0; o < total; ++o) {
      const double sum = double(load_elem(a.data(), c.xt, o)) + load_elem(b.data(), c.xt, o);
      store_elem(want_res.data(), c.xt, o, float(sum));
    }
    EXPECT_EQ(res, want_res) << tag << " res";

    in.x = want_res;
    expect_forward_matches_reference(tag, in, y, mean, rstd);

    std::vector<uint8_t> y2(bytes);
    std::vector<float> mean2(rows), rstd2(rows);
    cpu::layernorm_forward(want_res.data(), c.xt, in.gamma.data(), in.beta.data(), c.pt, y2.data(), mean2.data(),
                           rstd2.data(), rows, n, kEps);
    EXPECT_EQ(y, y2) << tag << " y differs from layernorm_forward(res)";
    EXPECT_EQ(mean, mean2) << tag;
    EXPECT_EQ(rstd, rstd2) << tag;

    // res aliasing a (the residual stream updated in place) gives the same bits.
    std::vector<uint8_t> inplace = a, y3(bytes);
    std::vector<float> mean3(rows), rstd3(rows);
    cpu::residual_layernorm_forward(inplace.data(), b.data(), c.xt, in.gamma.data(), in.beta.data(), c.pt,
                                    inplace.data(), y3.data(), mean3.data(), rstd3.data(), rows, n, kEps);
    EXPECT_EQ(inplace, want_res) << tag << " in-place res";
    EXPECT_EQ(y3, y) << tag << " in-place y";
    EXPECT_EQ(mean3, mean) << tag;
    EXPECT_EQ(rstd3, rstd) << tag;
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, ResidualLayerNormTest,
                         ::testing::Values(Case{DType::F32, DType::F32}, Case{DType::F16, DType::F16},
                                           Case{DType::BF16, DType::BF16}, Case{DType::F16, DType::F32},
                                           Case{DType::BF16, DType::F32}),
                         [](const auto& info) { return case_name(info.param); });

class LayerNormAccumulateTest : public ::testing::TestWithParam<Case> {};

// accumulate_dx must give round(old dx + new term), the add in FP32 and ONE rounding. The new term before
// its rounding is what the overwrite call computes with FP32 storage on the same (already rounded) inputs:
// the twin converts every input to FP32 first, so the arithmetic is identical. The reference is therefore
// exact, and it tells a fused add from "round the new term, then add and round again". dgamma and dbeta
// must not depend on the flag.
TEST_P(LayerNormAccumulateTest, AddsToOldDxWithOneRounding) {
  const Case c = GetParam();
  Rng rng = test::fresh_rng();
  const int shapes[][2] = {{37, 129}, {16, 768}};
  for (const auto& sh : shapes) {
    const int rows = sh[0], n = sh[1];
    const std::string tag = std::to_string(rows) + "x" + std::to_string(n);
    const size_t total = size_t(rows) * n;
    const Inputs in = random_inputs(rng, c, rows, n);
    std::vector<uint8_t> y(total * dtype_size(c.xt));
    std::vector<float> mean(rows), rstd(rows);
    cpu::layernorm_forward(in.x.data(), c.xt, in.gamma.data(), in.beta.data(), c.pt, y.data(), mean.data(),
                           rstd.data(), rows, n, kEps);
    const std::vector<uint8_t> dx0 = test::random_buffer(rng, c.xt, total);

    std::vector<uint8_t> dx = dx0, dg_acc = in.dgamma, db_acc = in.dbeta;
    cpu::layernorm_backward(in.dy.data(), in.x.data(), c.xt, in.gamma.data(), c.pt, mean.data(), rstd.data(),
                            dx.data(), dg_acc.data(), db_acc.data(), rows, n, /*accumulate_dx=*/true);

    std::vector<uint8_t> scratch(total * dtype_size(c.xt)), dg_ow = in.dgamma, db_ow = in.dbeta;
    cpu::layernorm_backward(in.dy.data(), in.x.data(), c.xt, in.gamma.data(), c.pt, mean.data(), rstd.data(),
                            scratch.data(), dg_ow.data(), db_ow.data(), rows, n);
    EXPECT_EQ(dg_acc, dg_ow) << tag;
    EXPECT_EQ(db_acc, db_ow) << tag;

    std::vector<float> x32(total), dy32(total), new32(total);
    to_float_n(in.x.data(), c.xt, x32.data(), total);
    to_float_n(in.dy.data(), c.xt, dy32.data(), total);
    std::vector<uint8_t> pgs = in.dgamma, pbs = in.dbeta;  // throwaway parameter gradients
    cpu::layernorm_backward(dy32.data(), x32.data(), DType::F32, in.gamma.data(), c.pt, mean.data(), rstd.data(),
                            new32.data(), pgs.data(), pbs.data(), rows, n);
    size_t bad = 0, moved = 0;
    for (size_t o = 0; o < total; ++o) {
      const float old = load_elem(dx0.data(), c.xt, o);
      const float want = round_to(c.xt, old + new32[o]);
      const float got = load_elem(dx.data(), c.xt, o);
      if (got != want && ++bad <= 5)
        ADD_FAILURE() << tag << " dx [" << o << "] got " << got << " want " << want << " (old " << old << ", new "
                      << new32[o] << ")";
      moved += got != old;
    }
    EXPECT_EQ(bad, 0u) << tag;
    EXPECT_GT(moved, total / 2) << tag << ": the new term must actually change dx";
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, LayerNormAccumulateTest,
                         ::testing::Values(Case{DType::F32, DType::F32}, Case{DType::F16, DType::F16},
                                           Case{DType::BF16, DType::BF16}, Case{DType::F16, DType::F32},
                                           Case{DType::BF16, DType::F32}),
                         [](const auto& info) { return case_name(info.param); });

TEST(LayerNorm, ResidualForwardBadArgumentsThrow) {
  std::vector<float> v(8, 0.5f), st(2);
  EXPECT_THROW(cpu::residual_layernorm_forward(v.data(), nullptr, DType::F32, v.data(), v.data(), DType::F32, v.data(),
                                               v.data(), st.data(), st.data(), 2, 2, kEps),
               std::invalid_argument);
  EXPECT_THROW(cpu::residual_layernorm_forward(v.data(), v.data(), DType::F32, v.data(), v.data(), DType::F32, nullptr,
                                               v.data(), st.data(), st.data(), 2, 2, kEps),
               std::invalid_argument);
  EXPECT_THROW(cpu::residual_layernorm_forward(v.data(), v.data(), DType::F32, v.data(), v.data(), DType::F32, v.data(),
                                               v.data(), st.data(), st.data(), 2, 0, kEps),
               std::invalid_argument);
}

}  // namespace
}  // namespace mpt
