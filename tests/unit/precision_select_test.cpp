// The automatic precision policy's decision (src/optim/precision_select.h) on constructed inputs: each rule can
// exclude a dtype (output error, gradient error, fp16 range, not analyzed, memory budget), the fastest
// admissible dtype wins, ties are deterministic, and the broadcast encoding round-trips.
#include <cstdio>

#include <gtest/gtest.h>

#include "src/optim/precision_select.h"
#include "tests/test_util.h"

namespace mpt {
namespace {

HalfError clean(Rng& r) {
  HalfError e;
  e.measured = true;
  e.out_err = r.uniform(1e-4f, 5e-3f);
  e.grad_err = r.uniform(1e-4f, 2e-2f);
  e.underflow = r.uniform(0.f, 5e-3f);
  e.overflow = 0;
  return e;
}

// One layer whose half dtypes are faster than FP32 and clean: under an fp16 base it stays fp16.
LayerInput fast_half_layer(Rng& r, const std::string& name) {
  LayerInput l;
  l.name = name;
  l.f16 = clean(r);
  l.bf16 = clean(r);
  l.t_f32 = r.uniform(2e-3f, 4e-3f);
  l.t_f16 = r.uniform(5e-4f, 1e-3f);
  l.t_bf16 = r.uniform(1.1e-3f, 1.9e-3f);
  l.elems = 1000 + int64_t(r.next() % 100000);
  return l;
}

SelectInputs one_base(DType b) {
  SelectInputs in;
  in.bases = {b};
  in.bf16_hw = true;
  return in;
}

TEST(PrecisionSelect, CleanFastHalfLayerKeepsItsDefault) {
  Rng r = test::fresh_rng();
  SelectInputs in = one_base(DType::F16);
  in.layers.push_back(fast_half_layer(r, "fc1"));
  const Selection s = select_precision(in);
  ASSERT_TRUE(s.ok);
  EXPECT_EQ(s.base, DType::F16);
  EXPECT_EQ(s.layers[0].dtype, DType::F16);
  EXPECT_TRUE(s.rules().empty());
}

// Each threshold, just above it (excluded) and just below it (admitted); the relative margin is small so
// that a comparison against the wrong threshold or an inverted one fails.
TEST(PrecisionSelect, EachThresholdExcludesTheHalfDtype) {
  Rng r = test::fresh_rng();
  for (int which = 0; which < 4; ++which) {
    for (bool above : {true, false}) {
      SelectInputs in = one_base(DType::F16);
      in.bf16_hw = false;
      in.max_output_err = r.uniform(1e-3f, 1e-1f);
      in.max_grad_err = r.uniform(1e-3f, 1e-1f);
      in.max_range_frac = r.uniform(1e-3f, 1e-1f);
      LayerInput l = fast_half_layer(r, "h.0.mlp.c_fc");
      l.f16.out_err = in.max_output_err * 0.5;
      l.f16.grad_err = in.max_grad_err * 0.5;
      l.f16.underflow = in.max_range_frac * 0.5;
      const double f = above ? 1.001 : 0.999;
      if (which == 0) l.f16.out_err = in.max_output_err * f;
      if (which == 1) l.f16.grad_err = in.max_grad_err * f;
      if (which == 2) l.f16.underflow = in.max_range_frac * f;
      if (which == 3) l.f16.overflow = in.max_range_frac * f;
      in.layers.push_back(l);
      const Selection s = select_precision(in);
      ASSERT_TRUE(s.ok);
      SCOPED_TRACE("rule " + std::to_string(which) + (above ? " above" : " below"));
      EXPECT_EQ(s.layers[0].dtype, above ? DType::F32 : DType::F16) << s.layers[0].reason;
      if (above) {
        const char* words[] = {"output error", "gradient error", "underflow", "overflow"};
        EXPECT_NE(s.layers[0].reason.find(words[which]), std::string::npos) << s.layers[0].reason;
        ASSERT_EQ(s.rules().size(), 1u);
        EXPECT_EQ(s.rules()[0].pattern, "h.0.mlp.c_fc");
        EXPECT_EQ(s.rules()[0].dtype, "fp32");
      }
    }
  }
}

// A range problem alone is what bf16 solves: fp16 out of range, bf16 accurate -> bf16 under an fp16 base
// (when it is faster than FP32), and never when the hardware has no bf16. bf16 ignores the range fractions.
TEST(PrecisionSelect, RangeProblemGoesToBf16WhereAvailable) {
  Rng r = test::fresh_rng();
  LayerInput l = fast_half_layer(r, "fc2");
  l.f16.underflow = 0.5;
  l.bf16.underflow = 0.9;  // measured on the same reference gradient: must not matter for bf16
  SelectInputs in = one_base(DType::F16);
  in.layers.push_back(l);
  EXPECT_EQ(select_precision(in).layers[0].dtype, DType::BF16);
  in.bf16_hw = false;
  EXPECT_EQ(select_precision(in).layers[0].dtype, DType::F32);
}

TEST(PrecisionSelect, UnmeasuredHalfIsNeverAdmissible) {
  Rng r = test::fresh_rng();
  LayerInput l = fast_half_layer(r, "fc1");
  l.f16.measured = false;
  SelectInputs in = one_base(DType::F16);
  in.bf16_hw = false;
  std::string why;
  EXPECT_FALSE(admissible(l, DType::F16, in, &why));
  EXPECT_EQ(why, "not analyzed");
  EXPECT_TRUE(admissible(l, DType::F32, in));
  in.layers.push_back(l);
  EXPECT_EQ(select_precision(in).layers[0].dtype, DType::F32);
}

// The fastest admissible dtype per layer, against a brute force over random inputs (times, errors around
// the thresholds, LayerNorm-like layers that default to FP32).
TEST(PrecisionSelect, FastestAdmissibleWinsAgainstBruteForce) {
  Rng r = test::fresh_rng();
  for (int trial = 0; trial < 200; ++trial) {
    SelectInputs in;
    in.bases = {DType::F16};
    in.bf16_hw = r.next() % 2;
    for (int i = 0; i < 6; ++i) {
      LayerInput l;
      l.name = "l" + std::to_string(i);
      l.default_f32 = r.next() % 4 == 0;
      for (HalfError* e : {&l.f16, &l.bf16}) {
        e->measured = true;
        e->out_err = r.uniform(0.f, 2e-2f);
        e->grad_err = r.uniform(0.f, 1e-1f);
        e->underflow = r.uniform(0.f, 2e-2f);
      }
      l.t_f32 = r.uniform(0.f, 1.f);
      l.t_f16 = r.uniform(0.f, 1.f);
      l.t_bf16 = r.uniform(0.f, 1.f);
      in.layers.push_back(l);
    }
    const Selection s = select_precision(in);
    ASSERT_TRUE(s.ok);
    double total = 0;
    for (size_t i = 0; i < in.layers.size(); ++i) {
      const LayerInput& l = in.layers[i];
      DType best = DType::F32;
      double tbest = l.t_f32;
      const bool f16_ok = l.f16.out_err <= in.max_output_err && l.f16.grad_err <= in.max_grad_err &&
                          l.f16.underflow <= in.max_range_frac;
      const bool bf16_ok = in.bf16_hw && l.bf16.out_err <= in.max_output_err && l.bf16.grad_err <= in.max_grad_err;
      if (f16_ok && l.t_f16 < tbest) best = DType::F16, tbest = l.t_f16;
      if (bf16_ok && l.t_bf16 < tbest) best = DType::BF16, tbest = l.t_bf16;
      EXPECT_EQ(s.layers[i].dtype, best) << "trial " << trial << " layer " << i << ": " << s.layers[i].reason;
      EXPECT_EQ(s.layers[i].default_dtype, l.default_f32 ? DType::F32 : DType::F16);
      total += tbest;
    }
    EXPECT_NEAR(s.seconds, total, 1e-12 * in.layers.size());
  }
}

// Equal times: the layer's default, then fp32, bf16, fp16; equal bases: the order given. Same answer on
// every call.
TEST(PrecisionSelect, TiesAreDeterministic) {
  Rng r = test::fresh_rng();
  const double t = r.uniform(1e-4f, 1e-2f);
  LayerInput l = fast_half_layer(r, "fc1");
  l.t_f32 = l.t_f16 = l.t_bf16 = t;
  SelectInputs in = one_base(DType::F16);
  in.layers.push_back(l);
  EXPECT_EQ(select_precision(in).layers[0].dtype, DType::F16);  // the default
  in.layers[0].f16.out_err = 1;                                 // default excluded: fp32 before bf16
  EXPECT_EQ(select_precision(in).layers[0].dtype, DType::F32);
  in.layers[0].default_f32 = true;
  in.layers[0].f16.out_err = 0;
  EXPECT_EQ(select_precision(in).layers[0].dtype, DType::F32);
  in.layers[0].default_f32 = false;
  in.bases = {DType::BF16, DType::F16, DType::F32};
  const Selection a = select_precision(in);
  EXPECT_EQ(a.base, DType::BF16);
  in.bases = {DType::F32, DType::BF16, DType::F16};
  EXPECT_EQ(select_precision(in).base, DType::F32);
  for (int k = 0; k < 5; ++k) EXPECT_EQ(encode_selection(select_precision(in)), encode_selection(select_precision(in)));
}

// With several bases the fastest one wins; a budget between the half and the FP32 footprint excludes FP32
// even when it is faster (CPU ranks), and a budget under everything is an error naming the budget.
TEST(PrecisionSelect, MemoryBudgetExcludesAndFasterBaseWins) {
  Rng r = test::fresh_rng();
  SelectInputs in;
  in.bases = {DType::F32, DType::BF16, DType::F16};
  in.bf16_hw = true;
  in.fixed_bytes = double(1000 + r.next() % 1000);
  double elems = 0;
  for (int i = 0; i < 3; ++i) {
    LayerInput l = fast_half_layer(r, "fc" + std::to_string(i));
    elems += double(l.elems);
    in.layers.push_back(l);
  }
  Selection s = select_precision(in);
  ASSERT_TRUE(s.ok);
  EXPECT_EQ(s.base, DType::F16);  // t_f16 < t_bf16 < t_f32 in every layer
  EXPECT_DOUBLE_EQ(s.bytes, in.fixed_bytes + 2 * elems);
  // FP32 faster everywhere, as on CPU ranks.
  for (LayerInput& l : in.layers) std::swap(l.t_f32, l.t_f16);
  s = select_precision(in);
  EXPECT_EQ(s.base, DType::F32);
  EXPECT_DOUBLE_EQ(s.bytes, in.fixed_bytes + 4 * elems);
  // A budget that fits the half footprint but not FP32: the fastest base that fits is bf16 (now faster
  // than fp16), and under an fp16 base the layers cannot move to FP32.
  in.budget_bytes = in.fixed_bytes + 3 * elems;
  s = select_precision(in);
  ASSERT_TRUE(s.ok) << s.why;
  EXPECT_EQ(s.base, DType::BF16) << s.why;
  EXPECT_LE(s.bytes, in.budget_bytes);
  EXPECT_NE(s.why.find("over budget"), std::string::npos) << s.why;
  in.budget_bytes = in.fixed_bytes + 2 * elems - 1;
  s = select_precision(in);
  EXPECT_FALSE(s.ok);
  EXPECT_NE(s.why.find("memory budget"), std::string::npos) << s.why;
}

// Over budget within one base: the layer with the largest saving per second lost moves to a smaller dtype.
TEST(PrecisionSelect, BudgetMovesTheCheapestLayerToHalf) {
  Rng r = test::fresh_rng();
  SelectInputs in = one_base(DType::F16);
  in.bf16_hw = false;
  LayerInput a = fast_half_layer(r, "a"), b = fast_half_layer(r, "b");
  // FP32 faster in both; moving `a` to fp16 costs little time, `b` a lot; same bytes.
  a.elems = b.elems = 1 << 20;
  a.t_f32 = 1.0, a.t_f16 = 1.0 + r.uniform(0.001f, 0.01f);
  b.t_f32 = 1.0, b.t_f16 = 2.0 + r.uniform(0.f, 1.f);
  in.layers = {a, b};
  in.budget_bytes = double(a.elems) * 4 + double(b.elems) * 2 + 1;  // room for exactly one layer in FP32
  const Selection s = select_precision(in);
  ASSERT_TRUE(s.ok) << s.why;
  EXPECT_EQ(s.layers[0].dtype, DType::F16);
  EXPECT_EQ(s.layers[1].dtype, DType::F32);
  EXPECT_NE(s.layers[0].reason.find("memory budget"), std::string::npos) << s.layers[0].reason;
  EXPECT_NEAR(s.seconds, a.t_f16 + b.t_f32, 1e-12);
}

TEST(PrecisionSelect, EncodingRoundTripsRankZerosDecision) {
  Rng r = test::fresh_rng();
  SelectInputs in;
  in.bases = {DType::F16, DType::F32};
  in.bf16_hw = true;
  for (int i = 0; i < 5; ++i) in.layers.push_back(fast_half_layer(r, "l" + std::to_string(i)));
  in.layers[1].f16.out_err = 1;
  in.layers[3].f16.underflow = 1;
  const Selection root = select_precision(in);
  // Another rank measured the opposite speeds.
  SelectInputs other = in;
  for (LayerInput& l : other.layers) std::swap(l.t_f32, l.t_f16);
  Selection mine = select_precision(other);
  ASSERT_NE(encode_selection(mine), encode_selection(root));
  apply_encoded(encode_selection(root), &mine);
  EXPECT_EQ(encode_selection(mine), encode_selection(root));
  ASSERT_EQ(mine.rules().size(), root.rules().size());
  for (size_t i = 0; i < root.rules().size(); ++i) {
    EXPECT_EQ(mine.rules()[i].pattern, root.rules()[i].pattern);
    EXPECT_EQ(mine.rules()[i].dtype, root.rules()[i].dtype);
  }
}

// Re-analysis: a new decision replaces the current policy only when it gains kMinReanalysisGain, or when
// the current one is no longer admissible.
TEST(PrecisionSelect, ReanalysisKeepsTheCurrentPolicyUnlessClearlyBetter) {
  Rng r = test::fresh_rng();
  SelectInputs in = one_base(DType::F16);
  in.bf16_hw = false;
  LayerInput l = fast_half_layer(r, "fc1");
  in.layers.push_back(l);
  const std::vector<int32_t> current = {int32_t(DType::F16), int32_t(DType::F32)};  // fc1 in FP32 now
  for (double gain : {kMinReanalysisGain * 0.9, kMinReanalysisGain * 1.1}) {
    in.layers[0].t_f16 = in.layers[0].t_f32 * (1 - gain);
    const Selection fresh = select_precision(in);
    ASSERT_EQ(fresh.layers[0].dtype, DType::F16);
    const Selection s = keep_unless_better(in, fresh, current);
    const bool switched = gain > kMinReanalysisGain;
    EXPECT_EQ(s.layers[0].dtype, switched ? DType::F16 : DType::F32) << "gain " << gain;
    EXPECT_DOUBLE_EQ(s.seconds, switched ? in.layers[0].t_f16 : in.layers[0].t_f32);
    if (!switched) {
      EXPECT_NE(s.why.find("kept"), std::string::npos) << s.why;
    }
  }
  // The current dtype excluded by the analysis now: the new decision wins whatever the gain.
  const std::vector<int32_t> cur16 = {int32_t(DType::F16), int32_t(DType::F16)};
  in.layers[0].f16.out_err = 1;
  in.layers[0].t_f16 = in.layers[0].t_f32 * 0.5;
  EXPECT_EQ(keep_unless_better(in, select_precision(in), cur16).layers[0].dtype, DType::F32);
}

// precision.layers = "auto" from a file and from --set; the rules list starts empty.
TEST(PrecisionSelect, ConfigAcceptsLayersAuto) {
  const Config a = config_from_json({{"precision", {{"layers", "auto"}, {"reanalyze_every", 7}}}}, "cfg");
  EXPECT_TRUE(a.precision.layers_auto);
  EXPECT_TRUE(a.precision.layers.empty());
  EXPECT_EQ(a.precision.reanalyze_every, 7);
  const Config b = config_from_json(nlohmann::json::object(), "cfg", {"precision.layers=auto"});
  EXPECT_TRUE(b.precision.layers_auto);
  const Config c = config_from_json(nlohmann::json::object(), "cfg");
  EXPECT_FALSE(c.precision.layers_auto);
}

}  // namespace
}  // namespace mpt
