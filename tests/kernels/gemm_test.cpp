// mpt::cpu::gemm against a float64 reference, and mpt::check_gemm_desc.
//
// The reference reads the same dtype-rounded inputs as the kernel and works in double, so the kernel's
// only errors are its FP32 arithmetic and the final rounding to C's dtype. The tolerance is therefore
//   storage_tol(dtype)   for the final rounding (atol + rtol * |ref|), plus
//   bound                a first-order bound on the FP32 error of a sequential dot product, computed
//                        alongside the reference: u * sum_p (|a_p b_p| + |partial sum_p|), then the
//                        alpha / beta / bias / activation steps add u * |their result| each.
// The bound is rigorous (not a guess at typical error) and only about 20x the error actually seen at
// k = 1001, so a wrong index, a dropped term or a missing alpha still fails by orders of magnitude.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/gemm.h"
#include "tests/test_util.h"

namespace mpt {
namespace {

constexpr double kU32 = 0x1p-24;  // FP32 unit roundoff

// Row-major matrix in storage dtype t. Padding columns (ld > cols) hold random values too, so a kernel
// that reads them gets a wrong answer.
struct Mat {
  DType t;
  int rows, cols, ld;
  std::vector<uint8_t> buf;
  double at(int r, int c) const { return load_elem(buf.data(), t, size_t(r) * size_t(ld) + size_t(c)); }
  void* data() { return buf.data(); }
};
Mat random_mat(Rng& rng, DType t, int rows, int cols, int ld, float lo = -1.f, float hi = 1.f) {
  return {t, rows, cols, ld, test::random_buffer(rng, t, size_t(rows) * size_t(ld), lo, hi)};
}

double gelu_ref(double z) {
  return 0.5 * z * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (z + 0.044715 * z * z * z)));
}

struct Ref {
  std::vector<double> y, ybound;  // final output and its FP32 error bound before the last rounding
  std::vector<double> z, zbound;  // pre-activation (epilogues with an activation)
};

// C = epilogue(alpha * op(A) op(B) + beta * C + bias) in double. c_old and bias may be null.
Ref reference(const GemmDesc& d, const Mat& A, const Mat& B, const Mat* c_old, const Mat* bias) {
  const int m = d.m, n = d.n, k = d.k;
  Ref r;
  r.y.resize(size_t(m) * n);
  r.ybound.resize(r.y.size());
  r.z = r.y;
  r.zbound = r.y;
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j < n; ++j) {
      double s = 0, bnd = 0;
      for (int p = 0; p < k; ++p) {
        const double a = d.trans_a ? A.at(p, i) : A.at(i, p);
        const double b = d.trans_b ? B.at(j, p) : B.at(p, j);
        s += a * b;
        bnd += std::fabs(a * b) + std::fabs(s);
      }
      bnd *= kU32;
      double v = double(d.alpha) * s;
      bnd = std::fabs(d.alpha) * bnd + kU32 * std::fabs(v);
      if (d.beta != 0.f) {
        const double bc = double(d.beta) * c_old->at(i, j);
        v += bc;
        bnd += kU32 * (std::fabs(bc) + std::fabs(v));
      }
      if (d.epilogue != Epilogue::None) {
        v += bias->at(0, j);
        bnd += kU32 * std::fabs(v);
      }
      const size_t o = size_t(i) * n + j;
      r.z[o] = v;
      r.zbound[o] = bnd;
      if (d.epilogue == Epilogue::BiasGelu) {
        // |gelu'| < 1.13; tanhf and the few FP32 operations around it add a few ulps of max(|z|, 1).
        r.y[o] = gelu_ref(v);
        r.ybound[o] = 1.13 * bnd + 4 * kU32 * (std::fabs(v) + 1.0);
      } else if (d.epilogue == Epilogue::BiasRelu) {
        r.y[o] = v > 0 ? v : 0.0;
        r.ybound[o] = bnd;
      } else {
        r.y[o] = v;
        r.ybound[o] = bnd;
      }
    }
  }
  return r;
}

std::vector<double> read(const Mat& c, int m, int n) {
  std::vector<double> v(size_t(m) * n);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) v[size_t(i) * n + j] = c.at(i, j);
  return v;
}

// |got - ref| <= atol + rtol * |ref| + bound, element by element; reports the first few mismatches.
void expect_close(const std::string& what, const std::vector<double>& got, const std::vector<double>& ref,
                  const std::vector<double>& bound, DType t) {
  ASSERT_EQ(got.size(), ref.size());
  const test::Tol tol = test::storage_tol(t);
  size_t bad = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double lim = tol.atol + tol.rtol * std::fabs(ref[i]) + bound[i];
    if (!(std::fabs(got[i] - ref[i]) <= lim) && ++bad <= 5)
      ADD_FAILURE() << what << " [" << i << "]: got " << got[i] << ", ref " << ref[i] << ", limit " << lim;
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << ref.size() << " elements out of tolerance";
}

GemmDesc make_desc(bool ta, bool tb, int m, int n, int k, DType t, Mat& A, Mat& B, Mat& C) {
  GemmDesc d;
  d.trans_a = ta;
  d.trans_b = tb;
  d.m = m;
  d.n = n;
  d.k = k;
  d.dtype = t;
  d.a = A.data();
  d.lda = A.ld;
  d.b = B.data();
  d.ldb = B.ld;
  d.c = C.data();
  d.ldc = C.ld;
  return d;
}

// Random A, B and C for op(A)[m,k] op(B)[k,n], with `pad` extra columns of stride in every matrix.
struct Problem {
  Mat A, B, C;
};
Problem random_problem(Rng& rng, DType t, bool ta, bool tb, int m, int n, int k, int pad) {
  Problem p{ta ? random_mat(rng, t, k, m, m + pad) : random_mat(rng, t, m, k, k + pad),
            tb ? random_mat(rng, t, n, k, k + pad) : random_mat(rng, t, k, n, n + pad),
            random_mat(rng, t, m, n, n + pad)};
  return p;
}

std::string name(const char* what, bool ta, bool tb) {
  return std::string(what) + (ta ? " A^T" : " A") + (tb ? " B^T" : " B");
}

class GemmTest : public ::testing::TestWithParam<DType> {};

TEST_P(GemmTest, AllTransposesOddSizes) {
  const DType t = GetParam();
  Rng rng = test::fresh_rng();
  // 37 and 129 leave partial register tiles; k = 1001 spans several K blocks.
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      Problem p = random_problem(rng, t, ta, tb, 37, 129, 1001, 0);
      GemmDesc d = make_desc(ta, tb, 37, 129, 1001, t, p.A, p.B, p.C);
      d.alpha = rng.uniform(0.25f, 2.f);
      const Ref r = reference(d, p.A, p.B, nullptr, nullptr);
      cpu::gemm(d);
      expect_close(name("gemm", ta, tb), read(p.C, d.m, d.n), r.y, r.ybound, t);
    }
  }
}

TEST_P(GemmTest, TinyAndDegenerateShapes) {
  const DType t = GetParam();
  Rng rng = test::fresh_rng();
  const int shapes[][3] = {{1, 1, 1}, {1, 7, 3}, {5, 1, 9}, {3, 9, 1}, {4, 8, 256}, {9, 17, 257}};
  for (const auto& s : shapes) {
    for (bool ta : {false, true}) {
      for (bool tb : {false, true}) {
        Problem p = random_problem(rng, t, ta, tb, s[0], s[1], s[2], 0);
        GemmDesc d = make_desc(ta, tb, s[0], s[1], s[2], t, p.A, p.B, p.C);
        const Ref r = reference(d, p.A, p.B, nullptr, nullptr);
        cpu::gemm(d);
        expect_close(name("gemm", ta, tb) + " " + std::to_string(s[0]) + "x" + std::to_string(s[1]) + "x" +
                         std::to_string(s[2]),
                     read(p.C, d.m, d.n), r.y, r.ybound, t);
      }
    }
  }
}

TEST_P(GemmTest, BetaAccumulatesIntoC) {
  const DType t = GetParam();
  Rng rng = test::fresh_rng();
  for (float beta : {1.f, -0.5f}) {
    for (bool ta : {false, true}) {
      Problem p = random_problem(rng, t, ta, !ta, 37, 129, 300, 0);
      GemmDesc d = make_desc(ta, !ta, 37, 129, 300, t, p.A, p.B, p.C);
      d.alpha = 0.5f;
      d.beta = beta;
      const Mat c_old = p.C;
      const Ref r = reference(d, p.A, p.B, &c_old, nullptr);
      cpu::gemm(d);
      expect_close(name("beta", ta, !ta), read(p.C, d.m, d.n), r.y, r.ybound, t);
    }
  }
}

TEST_P(GemmTest, LeadingDimensionsLargerThanRows) {
  const DType t = GetParam();
  Rng rng = test::fresh_rng();
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      Problem p = random_problem(rng, t, ta, tb, 29, 45, 131, 7);
      GemmDesc d = make_desc(ta, tb, 29, 45, 131, t, p.A, p.B, p.C);
      const std::vector<uint8_t> before = p.C.buf;
      const Ref r = reference(d, p.A, p.B, nullptr, nullptr);
      cpu::gemm(d);
      expect_close(name("ld", ta, tb), read(p.C, d.m, d.n), r.y, r.ybound, t);
      // The columns between n and ldc belong to someone else: they must keep their bytes.
      const size_t es = dtype_size(t);
      for (int i = 0; i < d.m; ++i) {
        const size_t off = (size_t(i) * p.C.ld + d.n) * es;
        EXPECT_EQ(0, std::memcmp(before.data() + off, p.C.buf.data() + off, (p.C.ld - d.n) * es))
            << "row " << i << " padding overwritten";
      }
    }
  }
}

TEST_P(GemmTest, Epilogues) {
  const DType t = GetParam();
  Rng rng = test::fresh_rng();
  const int m = 37, n = 129, k = 211, pad = 3;
  for (Epilogue ep : {Epilogue::Bias, Epilogue::BiasGelu, Epilogue::BiasRelu}) {
    for (bool with_pre : {true, false}) {
      if (ep == Epilogue::Bias && with_pre) continue;
      const bool ta = rng.below(2), tb = rng.below(2);
      Problem p = random_problem(rng, t, ta, tb, m, n, k, pad);
      Mat bias = random_mat(rng, t, 1, n, n);
      Mat pre = random_mat(rng, t, m, n, n + pad);
      GemmDesc d = make_desc(ta, tb, m, n, k, t, p.A, p.B, p.C);
      d.alpha = rng.uniform(0.05f, 0.2f);  // keeps z in the range where GELU is not just identity or zero
      d.epilogue = ep;
      d.bias = bias.data();
      if (with_pre) d.pre_act = pre.data();
      const Ref r = reference(d, p.A, p.B, nullptr, &bias);
      cpu::gemm(d);
      const std::string what = std::string(ep == Epilogue::Bias ? "Bias" : ep == Epilogue::BiasGelu ? "BiasGelu"
                                                                                                   : "BiasRelu") +
                               (with_pre ? " +pre_act" : "");
      expect_close(what + " output", read(p.C, m, n), r.y, r.ybound, t);
      if (with_pre) expect_close(what + " pre_act", read(pre, m, n), r.z, r.zbound, t);
      // Both signs must occur, or ReLU and GELU were not really exercised.
      size_t neg = 0;
      for (double z : r.z) neg += z < 0;
      EXPECT_GT(neg, r.z.size() / 10);
      EXPECT_LT(neg, r.z.size() * 9 / 10);
    }
  }
}

double gelu_grad_ref(double z) {
  const double c = std::sqrt(2.0 / M_PI), th = std::tanh(c * (z + 0.044715 * z * z * z));
  return 0.5 * (1.0 + th) + 0.5 * z * (1.0 - th * th) * c * (1.0 + 3 * 0.044715 * z * z);
}

// DGelu: C = gelu'(z) (alpha op(A) op(B)) with z read from pre_act, which stays as it was; one rounding.
// Also past the column block (n = 1100): z is read at the right offsets there too.
TEST_P(GemmTest, DGeluEpilogue) {
  const DType t = GetParam();
  Rng rng = test::fresh_rng();
  for (const int n : {129, 1100}) {
    const int m = 37, k = 211, pad = 3;
    const bool ta = rng.below(2), tb = rng.below(2);
    Problem p = random_problem(rng, t, ta, tb, m, n, k, pad);
    Mat pre = random_mat(rng, t, m, n, n + pad, -4.f, 4.f);
    const std::vector<uint8_t> pre0 = pre.buf;
    GemmDesc d = make_desc(ta, tb, m, n, k, t, p.A, p.B, p.C);
    d.alpha = rng.uniform(0.5f, 2.f);
    d.epilogue = Epilogue::DGelu;
    d.pre_act = pre.data();
    GemmDesc plain = d;
    plain.epilogue = Epilogue::None;
    plain.pre_act = nullptr;
    const Ref r = reference(plain, p.A, p.B, nullptr, nullptr);
    std::vector<double> y(r.y.size()), bound(r.y.size());
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) {
        const size_t o = size_t(i) * n + j;
        const double z = pre.at(i, j), g = gelu_grad_ref(z);
        const double sp = std::sqrt(2.0 / M_PI) * (1 + 3 * 0.044715 * z * z);
        y[o] = g * r.y[o];
        // gelu' in FP32 with tanhf: a few ulps of its terms (0.5 + |z| s'), then the product's rounding.
        bound[o] = std::fabs(g) * r.ybound[o] + 8 * kU32 * (0.5 + std::fabs(z) * sp) * std::fabs(r.y[o]) +
                   kU32 * std::fabs(y[o]);
      }
    cpu::gemm(d);
    expect_close("dgelu n=" + std::to_string(n), read(p.C, m, n), y, bound, t);
    EXPECT_EQ(pre.buf, pre0) << "pre_act is DGelu's input and must not be written";
  }
}

// n beyond the kernel's column block (1024): bias, pre_act and C offsets of later blocks.
TEST_P(GemmTest, WideOutputWithEpilogue) {
  const DType t = GetParam();
  Rng rng = test::fresh_rng();
  const int m = 7, n = 2100, k = 45, pad = 5;
  for (bool tb : {false, true}) {
    Problem p = random_problem(rng, t, false, tb, m, n, k, pad);
    Mat bias = random_mat(rng, t, 1, n, n);
    Mat pre = random_mat(rng, t, m, n, n + pad);
    GemmDesc d = make_desc(false, tb, m, n, k, t, p.A, p.B, p.C);
    d.alpha = 0.3f;
    d.epilogue = Epilogue::BiasGelu;
    d.bias = bias.data();
    d.pre_act = pre.data();
    const Ref r = reference(d, p.A, p.B, nullptr, &bias);
    cpu::gemm(d);
    expect_close(name("wide gelu", false, tb), read(p.C, m, n), r.y, r.ybound, t);
    expect_close(name("wide pre_act", false, tb), read(pre, m, n), r.z, r.zbound, t);
  }
}

// For L = sum(G o (A B)): dL/dA = G B^T and dL/dB = A^T G. Checked three ways: the float64 reference
// gradients against central differences of the float64 forward, then the kernel computing them through
// its transposed modes against the float64 reference, including weight-gradient accumulation over two
// micro-batches with beta = 1.
TEST_P(GemmTest, GradientIdentities) {
  const DType t = GetParam();
  Rng rng = test::fresh_rng();
  const int m = 13, n = 17, k = 11;
  Mat A = random_mat(rng, t, m, k, k), B = random_mat(rng, t, k, n, n), G = random_mat(rng, t, m, n, n);
  Mat dA = random_mat(rng, t, m, k, k), dB = random_mat(rng, t, k, n, n);

  GemmDesc da = make_desc(false, true, m, k, n, t, G, B, dA);   // G[m,n] * (B[k,n])^T
  GemmDesc db = make_desc(true, false, k, n, m, t, A, G, dB);   // (A[m,k])^T * G[m,n]
  const Ref ra = reference(da, G, B, nullptr, nullptr);
  const Ref rb = reference(db, A, G, nullptr, nullptr);

  // Central differences of the float64 forward. L is bilinear, so any step gives the derivative up to
  // double rounding (~1e-15 relative); 1e-9 leaves ample room yet fails on any wrong or transposed entry.
  std::vector<double> a(size_t(m) * k), b(size_t(k) * n);
  for (int i = 0; i < m; ++i)
    for (int p = 0; p < k; ++p) a[size_t(i) * k + p] = A.at(i, p);
  for (int p = 0; p < k; ++p)
    for (int j = 0; j < n; ++j) b[size_t(p) * n + j] = B.at(p, j);
  auto loss = [&] {
    double l = 0;
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) {
        double s = 0;
        for (int p = 0; p < k; ++p) s += a[size_t(i) * k + p] * b[size_t(p) * n + j];
        l += G.at(i, j) * s;
      }
    return l;
  };
  const double h = 0.25;
  auto fd = [&](double& x) {
    const double x0 = x;
    x = x0 + h;
    const double lp = loss();
    x = x0 - h;
    const double lm = loss();
    x = x0;
    return (lp - lm) / (2 * h);
  };
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(fd(a[i]), ra.y[i], 1e-9 * (1 + std::fabs(ra.y[i]))) << "dA " << i;
  for (size_t i = 0; i < b.size(); ++i) EXPECT_NEAR(fd(b[i]), rb.y[i], 1e-9 * (1 + std::fabs(rb.y[i]))) << "dB " << i;

  cpu::gemm(da);
  cpu::gemm(db);
  expect_close("dA = G B^T", read(dA, m, k), ra.y, ra.ybound, t);
  expect_close("dB = A^T G", read(dB, k, n), rb.y, rb.ybound, t);

  // Two micro-batches (rows [0, m1) and [m1, m) of A and G): the second call adds with beta = 1. Its
  // reference takes the first call's rounded result as C, which is exactly what the kernel sees.
  const int m1 = 6;
  const size_t es = dtype_size(t);
  auto rows_from = [&](const Mat& x, int r0) {
    return Mat{x.t, x.rows - r0, x.cols, x.ld, std::vector<uint8_t>(x.buf.begin() + ptrdiff_t(size_t(r0) * x.ld * es), x.buf.end())};
  };
  Mat A2 = rows_from(A, m1), G2 = rows_from(G, m1);
  GemmDesc first = db, second = db;
  first.k = m1;
  second.k = m - m1;
  second.a = A2.data();
  second.b = G2.data();
  second.beta = 1.f;
  const Ref r1 = reference(first, A, G, nullptr, nullptr);
  cpu::gemm(first);
  expect_close("dB first micro-batch", read(dB, k, n), r1.y, r1.ybound, t);
  const Mat part = dB;
  const Ref r2 = reference(second, A2, G2, &part, nullptr);
  cpu::gemm(second);
  expect_close("dB accumulated over two micro-batches", read(dB, k, n), r2.y, r2.ybound, t);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, GemmTest, ::testing::Values(DType::F32, DType::F16, DType::BF16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

TEST(GemmArgs, RejectsInconsistentDescriptors) {
  Rng rng = test::fresh_rng();
  Mat A = random_mat(rng, DType::F32, 8, 8, 8), B = A, C = A, bias = A, pre = A;
  const GemmDesc ok = make_desc(false, false, 4, 5, 6, DType::F32, A, B, C);
  EXPECT_NO_THROW(check_gemm_desc(ok));
  auto bad = [&](const char* what, auto mutate) {
    GemmDesc d = ok;
    mutate(d);
    EXPECT_THROW(check_gemm_desc(d), std::invalid_argument) << what;
    EXPECT_THROW(cpu::gemm(d), std::invalid_argument) << what;
  };
  bad("m = 0", [](GemmDesc& d) { d.m = 0; });
  bad("n < 0", [](GemmDesc& d) { d.n = -3; });
  bad("k = 0", [](GemmDesc& d) { d.k = 0; });
  bad("lda < k", [](GemmDesc& d) { d.lda = 5; });
  bad("lda < m with trans_a", [](GemmDesc& d) { d.trans_a = true; d.lda = 3; });
  bad("ldb < n", [](GemmDesc& d) { d.ldb = 4; });
  bad("ldb < k with trans_b", [](GemmDesc& d) { d.trans_b = true; d.ldb = 5; });
  bad("ldc < n", [](GemmDesc& d) { d.ldc = 4; });
  bad("null a", [](GemmDesc& d) { d.a = nullptr; });
  bad("null b", [](GemmDesc& d) { d.b = nullptr; });
  bad("null c", [](GemmDesc& d) { d.c = nullptr; });
  for (Epilogue e : {Epilogue::Bias, Epilogue::BiasGelu, Epilogue::BiasRelu})
    bad("epilogue without bias", [e](GemmDesc& d) { d.epilogue = e; });
  bad("pre_act without epilogue", [&](GemmDesc& d) { d.pre_act = pre.data(); });
  bad("pre_act with plain Bias", [&](GemmDesc& d) {
    d.epilogue = Epilogue::Bias;
    d.bias = bias.data();
    d.pre_act = pre.data();
  });
  bad("DGelu without pre_act", [](GemmDesc& d) { d.epilogue = Epilogue::DGelu; });
  bad("DGelu with a bias", [&](GemmDesc& d) {
    d.epilogue = Epilogue::DGelu;
    d.pre_act = pre.data();
    d.bias = bias.data();
  });
  bad("DGelu with beta", [&](GemmDesc& d) {
    d.epilogue = Epilogue::DGelu;
    d.pre_act = pre.data();
    d.beta = 1.f;
  });
  bad("beta with epilogue", [&](GemmDesc& d) {
    d.epilogue = Epilogue::BiasRelu;
    d.bias = bias.data();
    d.beta = 1.f;
  });

  // The transposed strides that are just large enough are accepted.
  GemmDesc t = ok;
  t.trans_a = t.trans_b = true;
  t.lda = 4;
  t.ldb = 6;
  EXPECT_NO_THROW(check_gemm_desc(t));
  GemmDesc e = ok;
  e.epilogue = Epilogue::BiasGelu;
  e.bias = bias.data();
  e.pre_act = pre.data();
  EXPECT_NO_THROW(check_gemm_desc(e));
}

}  // namespace
}  // namespace mpt
