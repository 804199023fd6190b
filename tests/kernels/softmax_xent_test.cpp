// mpt::cpu::softmax_xent against a float64 reference; the reference gradient is itself checked against
// central differences of the float64 loss.
//
// The reference reads the same dtype-rounded logits as the kernel. The kernel's errors are FP32 (expf,
// logf, the sum of exponentials) plus one rounding of dlogits to the logits' dtype. Tolerance:
// storage_tol(dtype) for dlogits' rounding plus 2 * B, where B is a first-order bound on the FP32 error
// computed alongside the reference (expf of a rounded argument: u * (|x - max| + 2) relative; the sum:
// u * sum |partial sums|; every other operation u * |its result|); the factor 2 covers second-order terms.
// The loss is FP32 and gets 2 * B alone.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/softmax_xent.h"
#include "tests/test_util.h"

namespace mpt {
namespace {

constexpr double kU = 0x1p-24;

struct Problem {
  int rows, cols, valid;
  DType t;
  std::vector<uint8_t> logits;
  std::vector<int32_t> labels;
  double at(int i, int j) const { return load_elem(logits.data(), t, size_t(i) * cols + j); }
};

// Padding columns hold logits far above the rest: a kernel that lets them into the max, the softmax or
// the argmax gets every row wrong.
Problem random_problem(Rng& rng, DType t, int rows, int cols, int valid) {
  Problem p{rows, cols, valid, t, std::vector<uint8_t>(size_t(rows) * cols * dtype_size(t)), std::vector<int32_t>(rows)};
  for (int i = 0; i < rows; ++i) {
    for (int j = 0; j < cols; ++j)
      store_elem(p.logits.data(), t, size_t(i) * cols + j, j < valid ? 3.f * rng.normal() : rng.uniform(20.f, 30.f));
    p.labels[i] = rng.below(5) == 0 ? -1 : int32_t(rng.below(uint64_t(valid)));
  }
  p.labels[0] = -1;  // at least one ignored row
  if (rows > 1) p.labels[1] = valid - 1;
  return p;
}

struct Ref {
  std::vector<double> loss, loss_b, dl, dl_b;
  std::vector<int32_t> pred;
};

Ref reference(const Problem& p, double scale) {
  Ref r;
  r.loss.assign(p.rows, 0.0);
  r.loss_b.assign(p.rows, 0.0);
  r.dl.assign(size_t(p.rows) * p.cols, 0.0);
  r.dl_b.assign(r.dl.size(), 0.0);
  r.pred.resize(p.rows);
  for (int i = 0; i < p.rows; ++i) {
    int best = 0;
    for (int j = 1; j < p.valid; ++j)
      if (p.at(i, j) > p.at(i, best)) best = j;
    r.pred[i] = best;
    const int y = p.labels[i];
    if (y < 0) continue;
    const double mx = p.at(i, best);
    double s = 0, e_s = 0, ps = 0;
    std::vector<double> e(p.valid), rel_e(p.valid);
    for (int j = 0; j < p.valid; ++j) {
      const double a = p.at(i, j) - mx;
      e[j] = std::exp(a);
      rel_e[j] = kU * (std::fabs(a) + 2);
      s += e[j];
      ps += s;
      e_s += e[j] * rel_e[j];
    }
    e_s += kU * ps;
    const double rel_s = e_s / s;
    const double gap = mx - p.at(i, y);
    r.loss[i] = gap + std::log(s);
    r.loss_b[i] = kU * gap + rel_s + 2 * kU * std::log(s) + kU * r.loss[i];
    for (int j = 0; j < p.valid; ++j) {
      const double prob = e[j] / s, q = prob - (j == y ? 1.0 : 0.0);
      const size_t o = size_t(i) * p.cols + j;
      r.dl[o] = scale * q;
      r.dl_b[o] = std::fabs(scale) * (prob * (rel_e[j] + rel_s + 2 * kU) + kU * std::fabs(q)) + kU * std::fabs(r.dl[o]);
    }
  }
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

class SoftmaxXentTest : public ::testing::TestWithParam<DType> {};

TEST_P(SoftmaxXentTest, MatchesReference) {
  const DType t = GetParam();
  Rng rng = test::fresh_rng();
  const int shapes[][3] = {{37, 133, 129}, {1001, 10, 10}, {5, 1003, 1000}};
  for (const auto& sh : shapes) {
    const int rows = sh[0], cols = sh[1], valid = sh[2];
    const std::string tag = std::to_string(rows) + "x" + std::to_string(cols) + "/" + std::to_string(valid);
    const Problem p = random_problem(rng, t, rows, cols, valid);
    const float scale = 1024.f / float(rows);
    std::vector<float> loss(rows, -1.f);
    std::vector<uint8_t> dl(p.logits.size());
    std::vector<int32_t> pred(rows, -7);
    cpu::softmax_xent(p.logits.data(), t, p.labels.data(), rows, cols, valid, scale, loss.data(), dl.data(),
                      pred.data());
    const Ref r = reference(p, scale);

    std::vector<double> loss_got(loss.begin(), loss.end()), dl_got(r.dl.size());
    for (size_t o = 0; o < dl_got.size(); ++o) dl_got[o] = load_elem(dl.data(), t, o);
    EXPECT_EQ(count_bad(tag + " loss", loss_got, r.loss, r.loss_b, {0.0, 0.0}), 0u);
    EXPECT_EQ(count_bad(tag + " dlogits", dl_got, r.dl, r.dl_b, test::storage_tol(t)), 0u);
    EXPECT_EQ(pred, r.pred) << tag;
    // Exact zeros where the header promises them: ignored rows and padding columns.
    for (int i = 0; i < rows; ++i) {
      if (p.labels[i] < 0) {
        EXPECT_EQ(loss[i], 0.f) << tag << " ignored row " << i;
      }
      for (int j = 0; j < cols; ++j) {
        if (p.labels[i] >= 0 && j < valid) continue;
        const float v = load_elem(dl.data(), t, size_t(i) * cols + j);
        if (v != 0.f) ADD_FAILURE() << tag << " dlogits[" << i << "," << j << "] = " << v << ", want 0";
      }
    }
  }
}

TEST_P(SoftmaxXentTest, InPlaceAndOptionalOutputs) {
  const DType t = GetParam();
  Rng rng = test::fresh_rng();
  const int rows = 29, cols = 67, valid = 61;
  const Problem p = random_problem(rng, t, rows, cols, valid);
  std::vector<float> loss(rows), loss2(rows), loss3(rows);
  std::vector<uint8_t> dl(p.logits.size());
  std::vector<int32_t> pred(rows), pred2(rows);
  cpu::softmax_xent(p.logits.data(), t, p.labels.data(), rows, cols, valid, 0.5f, loss.data(), dl.data(), pred.data());
  // dlogits aliasing logits, as the training step does to save memory.
  std::vector<uint8_t> inplace = p.logits;
  cpu::softmax_xent(inplace.data(), t, p.labels.data(), rows, cols, valid, 0.5f, loss2.data(), inplace.data(),
                    pred2.data());
  EXPECT_EQ(inplace, dl);
  EXPECT_EQ(loss2, loss);
  EXPECT_EQ(pred2, pred);
  // Evaluation: no dlogits, no pred.
  cpu::softmax_xent(p.logits.data(), t, p.labels.data(), rows, cols, valid, 0.5f, loss3.data(), nullptr, nullptr);
  EXPECT_EQ(loss3, loss);
}

TEST_P(SoftmaxXentTest, ArgmaxTiesPickLowestIndex) {
  const DType t = GetParam();
  Rng rng = test::fresh_rng();
  const int rows = 16, cols = 12, valid = 11;
  std::vector<uint8_t> logits(size_t(rows) * cols * dtype_size(t));
  std::vector<int32_t> labels(rows), want(rows), pred(rows);
  for (int i = 0; i < rows; ++i) {
    for (int j = 0; j < cols; ++j) store_elem(logits.data(), t, size_t(i) * cols + j, rng.uniform(-4.f, 0.f));
    const int a = int(rng.below(valid)), b = int(rng.below(valid));
    store_elem(logits.data(), t, size_t(i) * cols + a, 1.5f);
    store_elem(logits.data(), t, size_t(i) * cols + b, 1.5f);
    store_elem(logits.data(), t, size_t(i) * cols + valid, 1.5f);  // padding ties too, and must lose
    want[i] = std::min(a, b);
    labels[i] = int32_t(rng.below(valid));
  }
  std::vector<float> loss(rows);
  cpu::softmax_xent(logits.data(), t, labels.data(), rows, cols, valid, 1.f, loss.data(), nullptr, pred.data());
  EXPECT_EQ(pred, want);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, SoftmaxXentTest, ::testing::Values(DType::F32, DType::F16, DType::BF16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

TEST(SoftmaxXent, RejectsBadLabelsAndShapes) {
  Rng rng = test::fresh_rng();
  const int rows = 4, cols = 8;
  const auto logits = test::random_buffer(rng, DType::F32, size_t(rows) * cols);
  std::vector<float> loss(rows);
  std::vector<int32_t> labels = {1, -1, 2, 3};
  auto run = [&](int valid) {
    cpu::softmax_xent(logits.data(), DType::F32, labels.data(), rows, cols, valid, 1.f, loss.data(), nullptr, nullptr);
  };
  EXPECT_NO_THROW(run(6));
  labels[2] = 6;  // a padding column: not a class
  EXPECT_THROW(run(6), std::invalid_argument);
  labels[2] = 8;
  EXPECT_THROW(run(8), std::invalid_argument);
  labels[2] = 2;
  EXPECT_THROW(run(0), std::invalid_argument);
  EXPECT_THROW(run(9), std::invalid_argument);
}

// The float64 gradient formula against central differences of the float64 loss
// L = scale * sum_i loss_i. h = 1e-5: truncation ~h^2 |L'''| < 1e-9, cancellation ~1e-16 |L| / h < 1e-10,
// so 1e-7 is tight; a missing one-hot or a wrong normaliser is off by > 1e-2.
TEST(SoftmaxXentReference, GradientMatchesFiniteDifferences) {
  Rng rng = test::fresh_rng();
  const int rows = 4, cols = 13, valid = 11;
  const double scale = 0.75;
  std::vector<double> x(size_t(rows) * cols);
  for (auto& v : x) v = 2.0 * rng.normal();
  std::vector<int32_t> labels(rows);
  for (auto& l : labels) l = int32_t(rng.below(valid));
  labels[2] = -1;
  auto loss = [&] {
    double l = 0;
    for (int i = 0; i < rows; ++i) {
      if (labels[i] < 0) continue;
      double mx = x[size_t(i) * cols];
      for (int j = 1; j < valid; ++j) mx = std::max(mx, x[size_t(i) * cols + j]);
      double s = 0;
      for (int j = 0; j < valid; ++j) s += std::exp(x[size_t(i) * cols + j] - mx);
      l += mx + std::log(s) - x[size_t(i) * cols + labels[i]];
    }
    return scale * l;
  };
  Problem p{rows, cols, valid, DType::F32, {}, labels};  // only for reference(): logits as doubles below
  // reference() reads stored values; store x in FP32 and use exactly those values for the differences.
  p.logits.resize(x.size() * 4);
  for (size_t o = 0; o < x.size(); ++o) {
    store_elem(p.logits.data(), DType::F32, o, float(x[o]));
    x[o] = load_elem(p.logits.data(), DType::F32, o);
  }
  const Ref r = reference(p, scale);
  const double h = 1e-5;
  for (size_t o = 0; o < x.size(); ++o) {
    const double x0 = x[o];
    x[o] = x0 + h;
    const double lp = loss();
    x[o] = x0 - h;
    const double lm = loss();
    x[o] = x0;
    EXPECT_NEAR((lp - lm) / (2 * h), r.dl[o], 1e-7) << "logit " << o;
  }
}

}  // namespace
}  // namespace mpt
