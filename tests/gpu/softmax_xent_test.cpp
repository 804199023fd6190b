// cuda::softmax_xent against cpu::softmax_xent.
//
// Tolerances. Both sides run the same FP32 formulas; they differ in the order of the row sum
// s = sum exp(x - max) and in expf / logf against glibc's (each within ~2 ulp). s is a sum of positive
// terms whose rounding errors behave like a random walk, relative size ~2^-24 sqrt(valid); 2^-20 sqrt(valid)
// allows 16x. The loss takes log(s), so that relative error becomes an absolute one, plus a few ulp of
// the terms. dlogits = scale (p - onehot) with p = exp(x - max) / s carries p's relative error, and a half
// dlogits adds one ulp of its dtype (one final rounding on each side). Padding columns and ignored rows must
// be exactly zero, and the argmax (lowest index among ties) must match exactly.
#include <cmath>

#include "kernels/softmax_xent.h"
#include "tests/gpu/gpu_test_util.h"

namespace mpt::test {
namespace {

struct Shape { int rows, cols, valid; };
// Fewer columns than a warp, padded classes, a GPT-2-sized vocabulary (padded to 50304), many rows.
const Shape kShapes[] = {{1, 1, 1},     {37, 10, 10},   {64, 16, 10},     {5, 1000, 1000},
                         {3, 50304, 50257}, {4097, 37, 33}, {1000, 129, 129}};

struct Inputs {
  std::vector<uint8_t> logits;
  std::vector<int32_t> labels;
};

Inputs make_inputs(Rng& r, DType t, Shape s) {
  Inputs in;
  in.logits.resize(size_t(s.rows) * size_t(s.cols) * dtype_size(t));
  in.labels.resize(size_t(s.rows));
  for (int i = 0; i < s.rows; ++i) {
    // Some rows sit far from zero (max subtraction matters), some are constant (every column ties).
    const float off = r.below(4) == 0 ? r.uniform(20.f, 40.f) : 0.f;
    const bool constant = r.below(16) == 0;
    const float c = r.uniform(-3.f, 3.f);
    for (int j = 0; j < s.cols; ++j)
      store_elem(in.logits.data(), t, size_t(i) * size_t(s.cols) + size_t(j), constant ? c : off + r.uniform(-5.f, 5.f));
    in.labels[size_t(i)] = r.below(10) == 0 ? -1 : int32_t(r.below(uint64_t(s.valid)));
  }
  return in;
}

class SoftmaxXentGpu : public GpuTest, public ::testing::WithParamInterface<DType> {
 protected:
  struct Out {
    std::vector<float> loss;
    std::vector<uint8_t> dlogits;
    std::vector<int32_t> pred;
  };
  Out run(const Inputs& in, DType t, Shape s, float scale, bool with_grad, bool with_pred, bool in_place) {
    const size_t nr = size_t(s.rows);
    DeviceBuffer dl = to_device(in.logits), dlab = to_device(in.labels), dloss(nr * sizeof(float));
    DeviceBuffer dgrad(in.logits.size()), dpred(nr * sizeof(int32_t));
    dgrad.fill(0xFF, stream());
    dpred.fill(0xFF, stream());
    void* grad = !with_grad ? nullptr : (in_place ? dl.get() : dgrad.get());
    cuda::softmax_xent(dl.get(), t, dlab.as<int32_t>(), s.rows, s.cols, s.valid, scale, dloss.as<float>(), grad,
                       with_pred ? dpred.as<int32_t>() : nullptr, stream());
    Out o;
    o.loss = to_host<float>(dloss, nr);
    if (with_grad) o.dlogits = to_host<uint8_t>(in_place ? dl : dgrad, in.logits.size());
    if (with_pred) o.pred = to_host<int32_t>(dpred, nr);
    return o;
  }
};

TEST_P(SoftmaxXentGpu, MatchesCpu) {
  const DType t = GetParam();
  Rng r = fresh_rng();
  for (Shape s : kShapes) {
    SCOPED_TRACE("rows=" + std::to_string(s.rows) + " cols=" + std::to_string(s.cols) +
                 " valid=" + std::to_string(s.valid));
    const size_t nr = size_t(s.rows), nc = size_t(s.cols);
    const Inputs in = make_inputs(r, t, s);
    const float scale = 1024.f / float(s.rows);  // a loss scale folded in, as the trainer does
    std::vector<float> ref_loss(nr);
    std::vector<uint8_t> ref_grad(in.logits.size());
    std::vector<int32_t> ref_pred(nr);
    cpu::softmax_xent(in.logits.data(), t, in.labels.data(), s.rows, s.cols, s.valid, scale, ref_loss.data(),
                      ref_grad.data(), ref_pred.data());
    const Out got = run(in, t, s, scale, true, true, false);

    // Exact softmax in double, for the size of each term.
    const std::vector<float> xf = to_floats(in.logits, t), rg = to_floats(ref_grad, t);
    std::vector<double> p(nr * nc, 0.0), logs(nr, 0.0);
    for (size_t i = 0; i < nr; ++i) {
      double mx = -INFINITY, sum = 0;
      for (size_t j = 0; j < size_t(s.valid); ++j) mx = std::max(mx, double(xf[i * nc + j]));
      for (size_t j = 0; j < size_t(s.valid); ++j) sum += std::exp(double(xf[i * nc + j]) - mx);
      for (size_t j = 0; j < size_t(s.valid); ++j) p[i * nc + j] = std::exp(double(xf[i * nc + j]) - mx) / sum;
      logs[i] = std::log(sum);
    }
    const double walk = std::ldexp(std::sqrt(double(s.valid)), -20);
    EXPECT_TRUE(all_close("loss", got.loss, ref_loss, [&](size_t i) {
      if (in.labels[i] < 0) return 0.0;  // ignored rows: exactly 0
      return walk + std::ldexp(std::fabs(double(ref_loss[i])) + logs[i] + 1.0, -20);
    }));
    EXPECT_TRUE(all_close("dlogits", to_floats(got.dlogits, t), rg, [&](size_t o) {
      const size_t i = o / nc, j = o % nc;
      if (in.labels[i] < 0 || j >= size_t(s.valid)) return 0.0;  // ignored rows and padding: exactly 0
      const double onehot = int32_t(j) == in.labels[i] ? 1.0 : 0.0;
      return (is_half(t) ? ulp(t, rg[o]) : 0.0) +
             scale * (p[o] * (walk + std::ldexp(1.0, -20)) + std::ldexp(onehot, -23) + std::ldexp(1.0, -120));
    }));
    EXPECT_EQ(got.pred, ref_pred);
  }
}

// dlogits may overwrite logits; dlogits and pred may be absent. None of that may change a result.
TEST_P(SoftmaxXentGpu, InPlaceAndOptionalOutputs) {
  const DType t = GetParam();
  Rng r = fresh_rng();
  for (Shape s : {Shape{37, 10, 10}, Shape{3, 50304, 50257}, Shape{4097, 37, 33}}) {
    const Inputs in = make_inputs(r, t, s);
    const Out full = run(in, t, s, 2.f, true, true, false);
    const Out in_place = run(in, t, s, 2.f, true, true, true);
    const Out loss_only = run(in, t, s, 2.f, false, false, false);
    EXPECT_TRUE(same_bits("in-place dlogits", in_place.dlogits, full.dlogits, t));
    EXPECT_EQ(in_place.loss, full.loss);
    EXPECT_EQ(in_place.pred, full.pred);
    EXPECT_EQ(loss_only.loss, full.loss);
  }
}

// The CPU twin throws on a label >= valid_cols; a kernel cannot, so it poisons that row's loss with NaN
// (the step is then skipped as non-finite) and leaves its gradient zero.
TEST_P(SoftmaxXentGpu, LabelOutOfRangeGivesNaNLoss) {
  const DType t = GetParam();
  Rng r = fresh_rng();
  const Shape s{4, 16, 10};
  Inputs in = make_inputs(r, t, s);
  in.labels = {0, 10, 15, 3};
  const Out o = run(in, t, s, 1.f, true, true, false);
  EXPECT_FALSE(std::isnan(o.loss[0]));
  EXPECT_TRUE(std::isnan(o.loss[1]));
  EXPECT_TRUE(std::isnan(o.loss[2]));
  EXPECT_FALSE(std::isnan(o.loss[3]));
  const std::vector<float> g = to_floats(o.dlogits, t);
  for (size_t j = 0; j < 16; ++j) {
    EXPECT_EQ(g[16 + j], 0.f);
    EXPECT_EQ(g[32 + j], 0.f);
  }
}

TEST_P(SoftmaxXentGpu, BadArgumentsThrow) {
  const DType t = GetParam();
  DeviceBuffer b(4096);
  EXPECT_THROW(cuda::softmax_xent(b.get(), t, b.as<int32_t>(), 2, 8, 9, 1.f, b.as<float>(), nullptr, nullptr,
                                  stream()),
               std::invalid_argument);
  EXPECT_THROW(cuda::softmax_xent(b.get(), t, b.as<int32_t>(), 2, 8, 0, 1.f, b.as<float>(), nullptr, nullptr,
                                  stream()),
               std::invalid_argument);
  EXPECT_THROW(cuda::softmax_xent(b.get(), t, nullptr, 2, 8, 8, 1.f, b.as<float>(), nullptr, nullptr, stream()),
               std::invalid_argument);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, SoftmaxXentGpu, ::testing::Values(DType::F32, DType::F16, DType::BF16),
                         dtype_param_name);

}  // namespace
}  // namespace mpt::test
