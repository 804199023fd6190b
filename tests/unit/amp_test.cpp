// Loss scaler, precision resolution, per-layer policy globs and the LR schedule.
#include <cmath>

#include <gtest/gtest.h>

#include "src/optim/amp.h"
#include "tests/test_util.h"

namespace mpt {
namespace {

LossScaleConfig scfg(int interval, int hysteresis) {
  LossScaleConfig c;
  c.init = 1024;
  c.growth_interval = interval;
  c.hysteresis = hysteresis;
  c.min = 2;
  c.max = 4096;
  return c;
}

TEST(LossScaler, GrowsAfterIntervalCleanStepsUpToMax) {
  LossScaler s(scfg(3, 1), true);
  EXPECT_EQ(s.scale(), 1024.f);
  s.update(false); s.update(false);
  EXPECT_EQ(s.scale(), 1024.f);
  s.update(false);
  EXPECT_EQ(s.scale(), 2048.f);
  for (int i = 0; i < 30; ++i) s.update(false);
  EXPECT_EQ(s.scale(), 4096.f);  // bounded by max
  EXPECT_EQ(s.skipped(), 0);
}

TEST(LossScaler, BacksOffOnOverflowDownToMinAndCountsSkips) {
  LossScaler s(scfg(1000, 1), true);
  s.update(true);
  EXPECT_EQ(s.scale(), 512.f);
  for (int i = 0; i < 20; ++i) s.update(true);
  EXPECT_EQ(s.scale(), 2.f);  // bounded by min
  EXPECT_EQ(s.skipped(), 21);
}

TEST(LossScaler, OverflowRestartsTheGrowthCount) {
  LossScaler s(scfg(3, 1), true);
  s.update(false); s.update(false);
  s.update(true);  // 512, growth count back to 0
  s.update(false); s.update(false);
  EXPECT_EQ(s.scale(), 512.f);
  s.update(false);
  EXPECT_EQ(s.scale(), 1024.f);
}

TEST(LossScaler, HysteresisToleratesOverflowsBeforeBackingOff) {
  LossScaler s(scfg(2, 3), true);
  s.update(true); s.update(true);
  EXPECT_EQ(s.scale(), 1024.f);  // two overflows tolerated (steps still skipped)
  EXPECT_EQ(s.skipped(), 2);
  s.update(true);
  EXPECT_EQ(s.scale(), 512.f);
  s.update(true);  // budget spent: every further overflow backs off
  EXPECT_EQ(s.scale(), 256.f);
  s.update(false); s.update(false);  // growth refills the budget
  EXPECT_EQ(s.scale(), 512.f);
  EXPECT_EQ(s.hysteresis_left(), 3);
  s.update(true);
  EXPECT_EQ(s.scale(), 512.f);
}

TEST(LossScaler, DisabledKeepsScaleOneButStillCountsSkips) {
  LossScaler s(scfg(1, 1), false);
  s.update(false); s.update(true); s.update(false);
  EXPECT_EQ(s.scale(), 1.f);
  EXPECT_EQ(s.skipped(), 1);
}

TEST(Precision, AutoPicksByComputeCapability) {
  PrecisionConfig p;
  p.mode = "auto";
  EXPECT_EQ(resolve_precision(p, {true, 9, 0}).model, DType::BF16);
  EXPECT_EQ(resolve_precision(p, {true, 8, 0}).model, DType::BF16);
  EXPECT_EQ(resolve_precision(p, {true, 7, 5}).model, DType::F16);
  EXPECT_EQ(resolve_precision(p, {true, 6, 1}).model, DType::F32);
  EXPECT_EQ(resolve_precision(p, {false, 0, 0}).model, DType::F32);
  p.mode = "tf32";
  EXPECT_TRUE(resolve_precision(p, {true, 9, 0}).allow_tf32);
  EXPECT_EQ(resolve_precision(p, {true, 9, 0}).model, DType::F32);
  p.mode = "fp16";
  EXPECT_EQ(resolve_precision(p, {false, 0, 0}).model, DType::F16);
}

TEST(Precision, LastMatchingLayerRuleWins) {
  PrecisionConfig p;
  p.layers = {{"fc*", "bf16"}, {"fc3", "fp32"}, {"ln?", "fp16"}};
  EXPECT_EQ(layer_dtype(p, "fc1", DType::F16), DType::BF16);
  EXPECT_EQ(layer_dtype(p, "fc3", DType::F16), DType::F32);
  EXPECT_EQ(layer_dtype(p, "ln1", DType::F32), DType::F16);
  EXPECT_EQ(layer_dtype(p, "ln12", DType::F32), DType::F32);
  EXPECT_EQ(layer_dtype(p, "head", DType::F16), DType::F16);
}

TEST(Precision, Glob) {
  EXPECT_TRUE(glob_match("*", ""));
  EXPECT_TRUE(glob_match("h.*.attn", "h.11.attn"));
  EXPECT_FALSE(glob_match("h.*.attn", "h.11.mlp"));
  EXPECT_TRUE(glob_match("a*b*c", "aXXbYYc"));
  EXPECT_FALSE(glob_match("a*b*c", "aXXbYY"));
  EXPECT_TRUE(glob_match("?x", "ax"));
  EXPECT_FALSE(glob_match("?x", "x"));
}

TEST(Precision, LossScalingAutoOnlyForFp16) {
  LossScaleConfig c;
  EXPECT_TRUE(loss_scaling_enabled(c, DType::F16));
  EXPECT_FALSE(loss_scaling_enabled(c, DType::BF16));
  c.enabled = "on";
  EXPECT_TRUE(loss_scaling_enabled(c, DType::BF16));
  c.enabled = "off";
  EXPECT_FALSE(loss_scaling_enabled(c, DType::F16));
}

TEST(Schedule, WarmupThenCosineToMin) {
  OptimizerConfig o;
  o.lr = 1e-3;
  o.min_lr = 1e-5;
  o.warmup_steps = 10;
  EXPECT_NEAR(learning_rate(o, 0, 110), 1e-4, 1e-12);
  EXPECT_NEAR(learning_rate(o, 9, 110), 1e-3, 1e-12);
  EXPECT_NEAR(learning_rate(o, 10, 110), 1e-3, 1e-12);
  EXPECT_NEAR(learning_rate(o, 60, 110), 1e-5 + 0.5 * (1e-3 - 1e-5), 1e-12);
  EXPECT_NEAR(learning_rate(o, 110, 110), 1e-5, 1e-12);
  double prev = 1;
  for (int s = 10; s <= 110; ++s) {
    const double lr = learning_rate(o, s, 110);
    EXPECT_LE(lr, prev);
    prev = lr;
  }
  o.schedule = "constant";
  EXPECT_EQ(learning_rate(o, 50, 110), 1e-3);
}

}  // namespace
}  // namespace mpt
