// The BLAS backend of cpu::gemm against the own kernel (the reference: tests/kernels/gemm_test.cpp checks
// it against float64) on fresh random inputs, every dtype, transpose, epilogue, beta and padded stride.
//
// Both sum the k products in FP32, in different orders; for any order the error of a k-term FP32 sum is
// at most k u |terms| (u = 2^-24), so two results differ by at most 2 k u sum|alpha a b| plus u times
// the beta, bias and activation steps (|gelu'| < 1.13). Each is then rounded once to C's dtype, which
// adds test::storage_tol(dtype) (two units of the dtype's rounding). A kernel that drops a term,
// mis-strides or truncates fp16/bf16 inputs breaks this by orders of magnitude.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <string>
#include <vector>

#include "kernels/gemm.h"
#include "tests/test_util.h"

namespace mpt {
namespace {

constexpr double kU32 = 0x1p-24;

struct Backend {
  cpu::GemmBackend saved = cpu::gemm_backend();
  ~Backend() { cpu::set_gemm_backend(saved); }
};

std::vector<double> read(const std::vector<uint8_t>& buf, DType t, int m, int n, int ld) {
  std::vector<double> v(size_t(m) * size_t(n));
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) v[size_t(i) * n + j] = load_elem(buf.data(), t, size_t(i) * size_t(ld) + size_t(j));
  return v;
}

class GemmBlasTest : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override {
    if (!cpu::gemm_has_blas()) GTEST_SKIP() << "this build has no BLAS (libopenblas-dev)";
  }
};

void check_against_own(DType t, bool ta, bool tb, int m, int n, int k, int pad, Epilogue ep, float beta, Rng& rng) {
  const int lda = (ta ? m : k) + pad, ldb = (tb ? k : n) + pad, ldc = n + pad;
  const auto A = test::random_buffer(rng, t, size_t(ta ? k : m) * size_t(lda));
  const auto B = test::random_buffer(rng, t, size_t(tb ? n : k) * size_t(ldb));
  const auto C0 = test::random_buffer(rng, t, size_t(m) * size_t(ldc));
  const auto bias = test::random_buffer(rng, t, size_t(n));
  const bool act = ep == Epilogue::BiasGelu || ep == Epilogue::BiasRelu;
  GemmDesc d;
  d.trans_a = ta;
  d.trans_b = tb;
  d.m = m;
  d.n = n;
  d.k = k;
  d.dtype = t;
  d.a = A.data();
  d.lda = lda;
  d.b = B.data();
  d.ldb = ldb;
  d.ldc = ldc;
  d.alpha = act ? rng.uniform(0.05f, 0.2f) : rng.uniform(0.25f, 2.f);
  d.beta = beta;
  d.epilogue = ep;
  if (ep != Epilogue::None) d.bias = bias.data();
  std::vector<uint8_t> c_own = C0, c_blas = C0, pre_own = C0, pre_blas = C0;
  auto run = [&](cpu::GemmBackend b, std::vector<uint8_t>& c, std::vector<uint8_t>& pre) {
    cpu::set_gemm_backend(b, 1);
    d.c = c.data();
    d.pre_act = act ? pre.data() : nullptr;
    cpu::gemm(d);
  };
  run(cpu::GemmBackend::Own, c_own, pre_own);
  run(cpu::GemmBackend::Blas, c_blas, pre_blas);

  const std::string what = std::string(dtype_name(t)) + (ta ? " A^T" : " A") + (tb ? " B^T" : " B") + " " +
                           std::to_string(m) + "x" + std::to_string(n) + "x" + std::to_string(k) + " epilogue " +
                           std::to_string(int(ep)) + " beta " + std::to_string(beta);
  const test::Tol tol = test::storage_tol(t);
  const std::vector<double> own = read(c_own, t, m, n, ldc), blas = read(c_blas, t, m, n, ldc);
  const std::vector<double> pown = read(pre_own, t, m, n, ldc), pblas = read(pre_blas, t, m, n, ldc);
  size_t bad = 0;
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      double terms = 0;
      for (int p = 0; p < k; ++p) {
        const double a = load_elem(A.data(), t, ta ? size_t(p) * lda + i : size_t(i) * lda + p);
        const double b = load_elem(B.data(), t, tb ? size_t(j) * ldb + p : size_t(p) * ldb + j);
        terms += std::fabs(a * b);
      }
      double z_bound = 2 * k * kU32 * std::fabs(d.alpha) * terms;
      const double extra = std::fabs(beta * load_elem(C0.data(), t, size_t(i) * ldc + j)) +
                           (ep != Epilogue::None ? std::fabs(load_elem(bias.data(), t, size_t(j))) : 0.0);
      z_bound += 4 * kU32 * (std::fabs(d.alpha) * terms + extra);
      const double y_bound = ep == Epilogue::BiasGelu ? 1.13 * z_bound + 8 * kU32 : z_bound;
      const size_t o = size_t(i) * n + j;
      const double lim = tol.atol + tol.rtol * std::fabs(own[o]) + y_bound;
      if (!(std::fabs(blas[o] - own[o]) <= lim) && ++bad <= 5)
        ADD_FAILURE() << what << " C[" << i << "," << j << "]: blas " << blas[o] << ", own " << own[o] << ", limit " << lim;
      if (act) {
        const double plim = tol.atol + tol.rtol * std::fabs(pown[o]) + z_bound;
        if (!(std::fabs(pblas[o] - pown[o]) <= plim) && ++bad <= 5)
          ADD_FAILURE() << what << " pre_act[" << i << "," << j << "]: blas " << pblas[o] << ", own " << pown[o];
      }
    }
  EXPECT_EQ(bad, 0u) << what;
  // The padding columns of C belong to someone else.
  for (int i = 0; i < m; ++i)
    for (int j = n; j < ldc; ++j)
      EXPECT_EQ(load_elem(c_blas.data(), t, size_t(i) * ldc + j), load_elem(C0.data(), t, size_t(i) * ldc + j));
}

TEST_P(GemmBlasTest, AllTransposesAndStrides) {
  Backend keep;
  Rng rng = test::fresh_rng();
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (int pad : {0, 5}) check_against_own(GetParam(), ta, tb, 37, 129, 301, pad, Epilogue::None, 0.f, rng);
}

TEST_P(GemmBlasTest, BetaAndEpilogues) {
  Backend keep;
  Rng rng = test::fresh_rng();
  check_against_own(GetParam(), false, true, 29, 70, 211, 3, Epilogue::None, 1.f, rng);
  check_against_own(GetParam(), true, false, 29, 70, 211, 0, Epilogue::None, -0.5f, rng);
  for (Epilogue ep : {Epilogue::Bias, Epilogue::BiasGelu, Epilogue::BiasRelu})
    check_against_own(GetParam(), rng.below(2), rng.below(2), 33, 1100, 64, 2, ep, 0.f, rng);
}

TEST_P(GemmBlasTest, TinyShapes) {
  Backend keep;
  Rng rng = test::fresh_rng();
  for (const auto& s : {std::array<int, 3>{1, 1, 1}, {1, 7, 3}, {5, 1, 9}, {3, 9, 1}})
    check_against_own(GetParam(), rng.below(2), rng.below(2), s[0], s[1], s[2], 1, Epilogue::None, 0.f, rng);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, GemmBlasTest, ::testing::Values(DType::F32, DType::F16, DType::BF16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

TEST(GemmBackend, BlasIsRefusedWithoutBlas) {
  if (cpu::gemm_has_blas()) GTEST_SKIP() << "this build has BLAS";
  EXPECT_THROW(cpu::set_gemm_backend(cpu::GemmBackend::Blas), std::invalid_argument);
}

}  // namespace
}  // namespace mpt
