// Stability monitor: z-scores against the window before the step, warm-up, overflow rate, min-scale
// patience, NaN handling, action precedence, skipped steps, reset and the disabled monitor.
#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "src/optim/stability.h"
#include "tests/test_util.h"

namespace mpt {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// Distinct actions per check so that a verdict shows which check fired. Spike detection is off
// (threshold 1e9) unless a test is about spikes, so random losses cannot interfere.
MonitorConfig base_cfg() {
  MonitorConfig c;
  c.enabled = true;
  c.window = 50;
  c.min_history = 20;
  c.spike_zscore = 1e9;
  c.on_loss_spike = "log";
  c.on_grad_spike = "log";
  c.on_nan_loss = "skip";
  c.max_overflow_rate = 1.0;  // a rate cannot exceed 1: off unless a test sets it
  c.on_overflow_rate = "fallback";
  c.min_scale_patience = 1000000;
  c.on_min_scale = "stop";
  return c;
}

bool has(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }

// Population mean and std of the last n values, in long double so the reference is more precise than
// the double two-pass under test.
struct Ref { double mean, std; };
Ref ref_stats(const std::vector<double>& v, size_t n) {
  size_t first = v.size() - n;
  long double s = 0;
  for (size_t i = first; i < v.size(); ++i) s += v[i];
  long double m = s / n, ss = 0;
  for (size_t i = first; i < v.size(); ++i) ss += (v[i] - m) * (v[i] - m);
  return {double(m), double(std::sqrt(ss / n))};
}

// Values near 3 with std 0.1: the relative error of a double two-pass mean/std is ~1e-15, so 1e-11
// relative catches any wrong window content or formula (one extra or missing value changes them ~1e-3).
void expect_rel(double got, double want, double rel = 1e-11) {
  EXPECT_NEAR(got, want, rel * std::max(1.0, std::fabs(want))) << "got " << got << " want " << want;
}

TEST(StabilityMonitor, ParseActionNamesAndErrors) {
  for (MonitorAction a : {MonitorAction::Log, MonitorAction::Skip, MonitorAction::Fallback, MonitorAction::Stop})
    EXPECT_EQ(parse_monitor_action(monitor_action_name(a)), a);
  EXPECT_STREQ(monitor_action_name(MonitorAction::None), "none");
  for (const char* bad : {"", "none", "Log", "SKIP", "skip ", "abort", "fall back"})
    EXPECT_THROW(parse_monitor_action(bad), std::invalid_argument) << "'" << bad << "'";
  // A bad name is caught at construction, not at the first anomaly.
  MonitorConfig c = base_cfg();
  c.on_grad_spike = "panic";
  EXPECT_THROW(StabilityMonitor m(c), std::invalid_argument);
}

TEST(StabilityMonitor, NoFalseAlarmsOnStationaryNoise) {
  MonitorConfig c = base_cfg();
  c.window = 100;
  c.spike_zscore = 6;
  c.on_loss_spike = "stop";
  c.on_grad_spike = "stop";
  StabilityMonitor m(c);
  Rng r = test::fresh_rng();
  // For Gaussian data, z of a new draw against a window of n is a scaled Student t with n-1 degrees of
  // freedom; summing P(z > 6) over windows of 20..100 and 2000 steps gives about 1e-4 per series, so
  // this fails spuriously about once in 5000 runs. A real false alarm (e.g. std taken as 0 or the
  // window's own newest value in the mean) fires many times.
  std::vector<double> losses, norms, zs;
  int actions = 0;
  for (int i = 0; i < 2000; ++i) {
    double loss = 3.0 + 0.1 * r.normal(), g = 1.5 + 0.05 * r.normal();
    MonitorVerdict v = m.observe(loss, g, false, false);
    if (v.action != MonitorAction::None) {
      ++actions;
      ADD_FAILURE() << "step " << i << ": " << v.reason;
    }
    if (i >= c.min_history) zs.push_back(v.loss_z);
    losses.push_back(loss);
    norms.push_back(g);
  }
  EXPECT_EQ(actions, 0);
  // The z-scores must actually be computed and be ~N(0, 1 + 1/n): a monitor that always reports 0
  // would pass the test above. Over 1980 draws the sample mean is within +-0.1 and the std within
  // [0.85, 1.2] with overwhelming probability (standard errors ~0.025 and ~0.02).
  double zm = 0, zv = 0, zmax = 0;
  for (double z : zs) zm += z, zmax = std::max(zmax, z);
  zm /= zs.size();
  for (double z : zs) zv += (z - zm) * (z - zm);
  zv = std::sqrt(zv / zs.size());
  EXPECT_LT(std::fabs(zm), 0.1);
  EXPECT_GT(zv, 0.85);
  EXPECT_LT(zv, 1.2);
  EXPECT_GT(zmax, 2.0);
  // The windows hold the last 100 clean steps.
  MonitorStats s = m.stats();
  Ref l = ref_stats(losses, 100), g = ref_stats(norms, 100);
  expect_rel(s.loss_mean, l.mean);
  expect_rel(s.loss_std, l.std, 1e-9);
  expect_rel(s.grad_mean, g.mean);
  expect_rel(s.grad_std, g.std, 1e-9);
  EXPECT_EQ(s.steps, 2000);
  EXPECT_EQ(s.overflow_rate, 0.0);
}

TEST(StabilityMonitor, LossSpikeDetectedWithZAgainstPriorWindow) {
  MonitorConfig c = base_cfg();
  c.spike_zscore = 6;
  c.on_loss_spike = "skip";
  c.on_grad_spike = "stop";
  // The first 50 steps are warm-up; a chance spike (dropped from the window) among the 30 after them
  // has probability ~1e-5 (z > 6 against 50 Gaussian values).
  c.min_history = 50;
  StabilityMonitor m(c);
  Rng r = test::fresh_rng();
  std::vector<double> losses;
  // More steps than the window, so the z-score must come from the last 50 only.
  for (int i = 0; i < 80; ++i) {
    double loss = 3.0 + 0.1 * r.normal();
    losses.push_back(loss);
    m.observe(loss, 1.0 + 0.05 * r.normal(), false, false);
  }
  Ref ref = ref_stats(losses, 50);
  double spike = ref.mean + 9.0 * ref.std;
  MonitorVerdict v = m.observe(spike, 1.0, false, false);
  expect_rel(v.loss_z, (spike - ref.mean) / ref.std, 1e-9);  // 9, not the diluted z of a window with it
  EXPECT_EQ(v.action, MonitorAction::Skip) << v.reason;
  EXPECT_TRUE(has(v.reason, "loss spike: z=")) << v.reason;
  EXPECT_FALSE(has(v.reason, "grad")) << v.reason;
  EXPECT_LT(std::fabs(v.grad_z), 6.0);
  // The skipped spike did not enter the window, so the same spike again gives the same z.
  MonitorVerdict again = m.observe(spike, 1.0, false, false);
  EXPECT_EQ(again.action, MonitorAction::Skip);
  EXPECT_DOUBLE_EQ(again.loss_z, v.loss_z);
  // Just under the threshold: no action.
  MonitorVerdict below = m.observe(ref.mean + 5.9 * ref.std, 1.0, false, false);
  EXPECT_EQ(below.action, MonitorAction::None) << below.reason;
  EXPECT_NEAR(below.loss_z, 5.9, 1e-9);
}

TEST(StabilityMonitor, GradSpikeAndDropsAreOneSided) {
  MonitorConfig c = base_cfg();
  c.spike_zscore = 6;
  c.on_loss_spike = "stop";
  c.on_grad_spike = "fallback";
  c.min_history = 30;  // the 30 random steps below are warm-up: none can be dropped as a chance spike
  StabilityMonitor m(c);
  Rng r = test::fresh_rng();
  std::vector<double> norms;
  for (int i = 0; i < 30; ++i) {
    double g = 2.0 + 0.2 * r.normal();
    norms.push_back(g);
    m.observe(3.0 + 0.1 * r.normal(), g, false, false);
  }
  Ref ref = ref_stats(norms, 30);
  // A collapse of the norm or the loss is not a spike.
  MonitorVerdict drop = m.observe(1.0, ref.mean - 20 * ref.std, false, false);
  EXPECT_EQ(drop.action, MonitorAction::None) << drop.reason;
  expect_rel(drop.grad_z, -20.0, 1e-9);
  norms.push_back(ref.mean - 20 * ref.std);  // a logged-only step does enter the window
  ref = ref_stats(norms, 31);
  double g = ref.mean + 7.5 * ref.std;
  MonitorVerdict v = m.observe(3.0, g, false, false);
  EXPECT_EQ(v.action, MonitorAction::Fallback) << v.reason;
  expect_rel(v.grad_z, 7.5, 1e-9);
  EXPECT_TRUE(has(v.reason, "grad norm spike: z=")) << v.reason;
  EXPECT_FALSE(has(v.reason, "loss spike")) << v.reason;
}

TEST(StabilityMonitor, SpikesDuringWarmupIgnored) {
  MonitorConfig c = base_cfg();
  c.spike_zscore = 6;
  c.on_loss_spike = "stop";
  c.on_grad_spike = "stop";
  Rng r = test::fresh_rng();
  std::vector<double> loss(c.min_history), norm(c.min_history);
  for (int i = 0; i < c.min_history; ++i) loss[i] = 3.0 + 0.1 * r.normal(), norm[i] = 1.0 + 0.1 * r.normal();
  // The very first step and a step with min_history - 1 clean steps behind it are warm-up.
  {
    StabilityMonitor m(c);
    MonitorVerdict v = m.observe(1e6, 1e6, false, false);
    EXPECT_EQ(v.action, MonitorAction::None) << v.reason;
  }
  {
    StabilityMonitor m(c);
    for (int i = 0; i + 1 < c.min_history; ++i) m.observe(loss[i], norm[i], false, false);
    MonitorVerdict v = m.observe(100.0, 100.0, false, false);
    EXPECT_EQ(v.action, MonitorAction::None) << v.reason;
    EXPECT_EQ(v.loss_z, 0.0);
    EXPECT_EQ(v.grad_z, 0.0);
  }
  // With exactly min_history clean steps the same values are spikes.
  {
    StabilityMonitor m(c);
    for (int i = 0; i < c.min_history; ++i) m.observe(loss[i], norm[i], false, false);
    MonitorVerdict v = m.observe(100.0, 100.0, false, false);
    EXPECT_EQ(v.action, MonitorAction::Stop);
    EXPECT_TRUE(has(v.reason, "loss spike")) << v.reason;
    EXPECT_TRUE(has(v.reason, "grad norm spike")) << v.reason;
  }
  // Overflowing steps are not history: min_history - 1 clean steps plus overflows is still warm-up.
  {
    StabilityMonitor m(c);
    for (int i = 0; i + 1 < c.min_history; ++i) {
      m.observe(loss[i], norm[i], false, false);
      m.observe(loss[i], kInf, true, false);
    }
    MonitorVerdict v = m.observe(100.0, 100.0, false, false);
    EXPECT_EQ(v.action, MonitorAction::None) << v.reason;
  }
}

TEST(StabilityMonitor, ConstantWindowUsesStdFloor) {
  MonitorConfig c = base_cfg();
  c.spike_zscore = 6;
  c.on_loss_spike = "skip";
  StabilityMonitor m(c);
  for (int i = 0; i < 30; ++i) m.observe(3.0, 1.25, false, false);
  MonitorVerdict same = m.observe(3.0, 1.25, false, false);
  EXPECT_EQ(same.action, MonitorAction::None) << same.reason;
  EXPECT_EQ(same.loss_z, 0.0);  // not 0/0
  // Floor 1e-6 * mean = 3e-6: a rise of 3e-4 is z = 100, a rise of 3e-6 * 5 is z = 5.
  MonitorVerdict up = m.observe(3.0 + 3e-4, 1.25, false, false);
  EXPECT_TRUE(std::isfinite(up.loss_z));
  EXPECT_NEAR(up.loss_z, 100.0, 1e-6);
  EXPECT_EQ(up.action, MonitorAction::Skip);
  MonitorVerdict small = m.observe(3.0 + 1.5e-5, 1.25, false, false);
  EXPECT_NEAR(small.loss_z, 5.0, 1e-6);
  EXPECT_EQ(small.action, MonitorAction::None);
}

TEST(StabilityMonitor, OverflowRateTriggersOnlyAboveThresholdWithFullWindow) {
  MonitorConfig c = base_cfg();
  c.window = 10;
  c.max_overflow_rate = 0.3;
  {
    // A partial window is not judged, even at a 100% rate.
    StabilityMonitor m(c);
    for (int i = 0; i < 9; ++i) {
      MonitorVerdict v = m.observe(3.0, kInf, true, false);
      EXPECT_EQ(v.action, MonitorAction::None) << "step " << i << ": " << v.reason;
    }
    MonitorVerdict v = m.observe(3.0, kInf, true, false);
    EXPECT_EQ(v.action, MonitorAction::Fallback);
    EXPECT_TRUE(has(v.reason, "overflow rate 1")) << v.reason;
  }
  {
    // Exactly at the threshold (3 of 10) is not above it; 4 of 10 is.
    StabilityMonitor m(c);
    for (int i = 0; i < 7; ++i) EXPECT_EQ(m.observe(3.0, 1.0, false, false).action, MonitorAction::None);
    for (int i = 0; i < 3; ++i) EXPECT_EQ(m.observe(3.0, kInf, true, false).action, MonitorAction::None);
    EXPECT_DOUBLE_EQ(m.stats().overflow_rate, 0.3);
    MonitorVerdict v = m.observe(3.0, kInf, true, false);
    EXPECT_EQ(v.action, MonitorAction::Fallback) << v.reason;
    EXPECT_TRUE(has(v.reason, "overflow rate 0.4")) << v.reason;
  }
  {
    // Random flags against an integer reference over the rolling window: count * 10 > 3 * window.
    StabilityMonitor m(c);
    Rng r = test::fresh_rng();
    std::vector<int> flags;
    int fired = 0, quiet_full = 0;
    for (int i = 0; i < 600; ++i) {
      bool of = r.uniform() < 0.3f;
      flags.push_back(of);
      MonitorVerdict v = m.observe(3.0 + 0.1 * r.normal(), of ? kInf : 1.0, of, false);
      bool want = false;
      if (flags.size() >= 10) {
        int n = 0;
        for (size_t k = flags.size() - 10; k < flags.size(); ++k) n += flags[k];
        want = n * 10 > 3 * 10;
        if (!want) ++quiet_full;
      }
      fired += want;
      ASSERT_EQ(v.action, want ? MonitorAction::Fallback : MonitorAction::None) << "step " << i << ": " << v.reason;
    }
    // Both outcomes must have been exercised for the comparison to mean anything (at p = 0.3 each is
    // expected in roughly a third or more of 600 steps).
    EXPECT_GT(fired, 20);
    EXPECT_GT(quiet_full, 20);
  }
}

TEST(StabilityMonitor, MinScalePatienceExactAndResets) {
  MonitorConfig c = base_cfg();
  Rng r = test::fresh_rng();
  const int k = 2 + int(r.below(9));  // 2..10
  c.min_scale_patience = k;
  StabilityMonitor m(c);
  auto step_at_min = [&] { return m.observe(3.0, kInf, true, true); };
  for (int i = 1; i < k; ++i) {
    EXPECT_EQ(step_at_min().action, MonitorAction::None) << "run " << i << " of " << k;
    EXPECT_EQ(m.stats().min_scale_run, i);
  }
  MonitorVerdict v = step_at_min();
  EXPECT_EQ(v.action, MonitorAction::Stop);
  EXPECT_TRUE(has(v.reason, std::to_string(k) + " steps in a row")) << v.reason;
  // The condition persists while the run goes on.
  EXPECT_EQ(step_at_min().action, MonitorAction::Stop);
  EXPECT_EQ(m.stats().min_scale_run, k + 1);
  // Each way of interrupting the run restarts the count.
  const bool interrupt_flags[3][2] = {{true, false}, {false, true}, {false, false}};  // overflow, at_min
  for (const auto& f : interrupt_flags) {
    EXPECT_EQ(m.observe(3.0, f[0] ? kInf : 1.0, f[0], f[1]).action, MonitorAction::None);
    EXPECT_EQ(m.stats().min_scale_run, 0);
    for (int i = 1; i < k; ++i) EXPECT_EQ(step_at_min().action, MonitorAction::None) << "run " << i << " of " << k;
    EXPECT_EQ(step_at_min().action, MonitorAction::Stop);
  }
}

TEST(StabilityMonitor, NonFiniteLossAndGradNorm) {
  MonitorConfig c = base_cfg();
  c.on_nan_loss = "stop";
  StabilityMonitor m(c);
  Rng r = test::fresh_rng();
  std::vector<double> losses;
  for (int i = 0; i < 25; ++i) {
    losses.push_back(3.0 + 0.1 * r.normal());
    m.observe(losses.back(), 1.0 + 0.1 * r.normal(), false, false);
  }
  const MonitorStats before = m.stats();
  for (double bad : {kNaN, kInf, -kInf}) {
    MonitorVerdict v = m.observe(bad, 1.0, false, false);
    EXPECT_EQ(v.action, MonitorAction::Stop) << bad;
    EXPECT_TRUE(has(v.reason, "non-finite loss")) << v.reason;
    // Also while the gradients overflowed: a NaN loss is its own finding.
    EXPECT_EQ(m.observe(bad, kInf, true, false).action, MonitorAction::Stop);
  }
  // A non-finite norm that the overflow verdict missed is treated like a NaN loss...
  for (double bad : {kNaN, kInf}) {
    MonitorVerdict v = m.observe(3.0, bad, false, false);
    EXPECT_EQ(v.action, MonitorAction::Stop);
    EXPECT_TRUE(has(v.reason, "non-finite gradient norm")) << v.reason;
  }
  // ... but with the overflow verdict it is an ordinary overflow.
  MonitorVerdict of = m.observe(3.0, kNaN, true, false);
  EXPECT_EQ(of.action, MonitorAction::None) << of.reason;
  // None of these steps entered the windows.
  const MonitorStats after = m.stats();
  EXPECT_EQ(after.loss_mean, before.loss_mean);
  EXPECT_EQ(after.loss_std, before.loss_std);
  EXPECT_EQ(after.grad_mean, before.grad_mean);
  EXPECT_EQ(after.grad_std, before.grad_std);
  EXPECT_EQ(after.steps, before.steps + 9);
}

TEST(StabilityMonitor, StrongestActionWinsAndAllAreNamed) {
  const std::vector<std::string> names = {"log", "skip", "fallback", "stop"};
  // Every assignment of actions to the three checks that one step trips.
  for (const auto& a_nan : names)
    for (const auto& a_min : names)
      for (const auto& a_rate : names) {
        MonitorConfig c = base_cfg();
        c.window = 4;
        c.max_overflow_rate = 0.5;
        c.min_scale_patience = 4;
        c.on_nan_loss = a_nan;
        c.on_min_scale = a_min;
        c.on_overflow_rate = a_rate;
        StabilityMonitor m(c);
        for (int i = 0; i < 3; ++i) m.observe(3.0, kInf, true, true);
        // Step 4: NaN loss, 4th overflow in a row at the minimum scale, overflow rate 4/4.
        MonitorVerdict v = m.observe(kNaN, kInf, true, true);
        MonitorAction want = std::max({parse_monitor_action(a_nan), parse_monitor_action(a_min),
                                       parse_monitor_action(a_rate)});
        EXPECT_EQ(v.action, want) << a_nan << " " << a_min << " " << a_rate << ": " << v.reason;
        size_t p1 = v.reason.find("non-finite loss"), p2 = v.reason.find("loss scale at minimum"),
               p3 = v.reason.find("overflow rate");
        ASSERT_NE(p1, std::string::npos) << v.reason;
        ASSERT_NE(p2, std::string::npos) << v.reason;
        ASSERT_NE(p3, std::string::npos) << v.reason;
        EXPECT_LT(p1, p2);  // in the order of the checks
        EXPECT_LT(p2, p3);
      }
  // Loss and gradient spikes on the same step.
  MonitorConfig c = base_cfg();
  c.spike_zscore = 6;
  c.on_loss_spike = "stop";
  c.on_grad_spike = "log";
  StabilityMonitor m(c);
  Rng r = test::fresh_rng();
  for (int i = 0; i < 30; ++i) m.observe(3.0 + 0.1 * r.normal(), 1.0 + 0.1 * r.normal(), false, false);
  MonitorVerdict v = m.observe(30.0, 10.0, false, false);
  EXPECT_EQ(v.action, MonitorAction::Stop);
  EXPECT_LT(v.reason.find("loss spike"), v.reason.find("grad norm spike")) << v.reason;
  EXPECT_NE(v.reason.find("grad norm spike"), std::string::npos) << v.reason;
}

TEST(StabilityMonitor, SkippedStepsDoNotEnterWindows) {
  MonitorConfig c = base_cfg();
  c.window = 20;
  c.min_history = 5;
  c.spike_zscore = 6;
  c.on_loss_spike = "log";
  c.on_grad_spike = "log";
  // `a` sees extra steps that are then skipped (by the caller or by overflow); `b` never sees them.
  // Their clean windows, hence statistics and z-scores, must stay identical, also once the window
  // is full and the skipped step's push had displaced the oldest entry.
  StabilityMonitor a(c), b(c);
  Rng r = test::fresh_rng();
  int extra = 0;
  for (int i = 0; i < 120; ++i) {
    double loss = 3.0 + 0.1 * r.normal(), g = 1.0 + 0.1 * r.normal();
    MonitorVerdict va = a.observe(loss, g, false, false), vb = b.observe(loss, g, false, false);
    ASSERT_EQ(va.loss_z, vb.loss_z) << "step " << i;
    ASSERT_EQ(va.grad_z, vb.grad_z) << "step " << i;
    switch (i % 4) {
      case 0:  // a step the caller skips (e.g. after a spike it only logged)
        a.observe(loss + 1.0, g * 3, false, false);
        a.mark_skipped();
        ++extra;
        break;
      case 1:  // an overflow; mark_skipped after it must not remove the previous clean step
        a.observe(loss, kInf, true, false);
        a.mark_skipped();
        a.mark_skipped();
        ++extra;
        break;
      case 2:  // a NaN loss
        a.observe(kNaN, g, false, false);
        a.mark_skipped();
        ++extra;
        break;
      default: break;
    }
    MonitorStats sa = a.stats(), sb = b.stats();
    ASSERT_EQ(sa.loss_mean, sb.loss_mean) << "step " << i;
    ASSERT_EQ(sa.loss_std, sb.loss_std) << "step " << i;
    ASSERT_EQ(sa.grad_mean, sb.grad_mean) << "step " << i;
    ASSERT_EQ(sa.grad_std, sb.grad_std) << "step " << i;
  }
  // Every step enters the overflow window and the step count.
  EXPECT_EQ(a.stats().steps, b.stats().steps + extra);
  EXPECT_GT(a.stats().overflow_rate, 0.0);
  EXPECT_EQ(b.stats().overflow_rate, 0.0);

  // A step whose own verdict skips the update stays out. The window is filled during warm-up so that
  // no chance spike among the 10 random values can be skipped and leave the reference.
  c.on_loss_spike = "skip";
  c.min_history = 10;
  StabilityMonitor s(c);
  std::vector<double> losses;
  for (int i = 0; i < 10; ++i) {
    losses.push_back(3.0 + 0.1 * r.normal());
    s.observe(losses.back(), 1.0, false, false);
  }
  Ref ref = ref_stats(losses, 10);
  EXPECT_EQ(s.observe(ref.mean + 50 * ref.std, 1.0, false, false).action, MonitorAction::Skip);
  expect_rel(s.stats().loss_mean, ref.mean);
  s.mark_skipped();  // no-op: nothing of that step is in the window
  expect_rel(s.stats().loss_mean, ref.mean);
  expect_rel(s.stats().loss_std, ref.std, 1e-9);
}

TEST(StabilityMonitor, ResetForgetsEverything) {
  MonitorConfig c = base_cfg();
  c.window = 10;
  c.min_history = 5;
  c.spike_zscore = 6;
  c.on_loss_spike = "skip";
  c.max_overflow_rate = 0.5;
  c.min_scale_patience = 3;
  StabilityMonitor m(c);
  Rng r = test::fresh_rng();
  for (int i = 0; i < 20; ++i) m.observe(3.0 + 0.1 * r.normal(), 1.0 + 0.1 * r.normal(), false, false);
  for (int i = 0; i < 2; ++i) m.observe(3.0, kInf, true, true);
  MonitorStats s = m.stats();
  ASSERT_GT(s.steps, 0);
  ASSERT_EQ(s.min_scale_run, 2);
  ASSERT_GT(s.loss_mean, 0.0);
  m.reset();
  s = m.stats();
  EXPECT_EQ(s.steps, 0);
  EXPECT_EQ(s.min_scale_run, 0);
  EXPECT_EQ(s.overflow_rate, 0.0);
  EXPECT_EQ(s.loss_mean, 0.0);
  EXPECT_EQ(s.loss_std, 0.0);
  EXPECT_EQ(s.grad_mean, 0.0);
  EXPECT_EQ(s.grad_std, 0.0);
  // The min-scale run restarts: without reset the next step would be the 3rd in a row.
  EXPECT_EQ(m.observe(3.0, kInf, true, true).action, MonitorAction::None);
  // The overflow window restarts: 9 more overflows (10 of 10 only at the 10th).
  m.reset();
  for (int i = 0; i < 9; ++i) m.observe(3.0, kInf, true, false);
  EXPECT_EQ(m.observe(3.0, kInf, true, false).action, MonitorAction::Fallback);
  // The clean windows restart: a huge loss after 4 new clean steps is warm-up again.
  m.reset();
  for (int i = 0; i < 4; ++i) m.observe(50.0 + r.normal(), 1.0, false, false);
  EXPECT_EQ(m.observe(500.0, 1.0, false, false).action, MonitorAction::None);
}

TEST(StabilityMonitor, DisabledAlwaysNoneButRecords) {
  MonitorConfig c = base_cfg();
  c.window = 10;
  c.min_history = 5;
  c.spike_zscore = 6;
  c.max_overflow_rate = 0.2;
  c.min_scale_patience = 2;
  MonitorConfig off = c;
  off.enabled = false;
  // With every action "log" an enabled monitor puts the same steps in its windows as a disabled one.
  MonitorConfig logging = c;
  logging.on_loss_spike = logging.on_grad_spike = logging.on_nan_loss = logging.on_overflow_rate =
      logging.on_min_scale = "log";
  StabilityMonitor d(off), e(logging);
  Rng r = test::fresh_rng();
  int enabled_actions = 0;
  for (int i = 0; i < 200; ++i) {
    double loss = 3.0 + 0.1 * r.normal(), g = 1.0 + 0.1 * r.normal();
    bool of = false, at_min = false;
    switch (i % 7) {
      case 1: loss = 1e3; break;                    // spike
      case 2: g = 1e3; break;                       // grad spike
      case 3: loss = kNaN; break;                   // NaN loss
      case 4: case 5: g = kInf, of = at_min = true; break;  // overflow at min scale, twice in a row
      default: break;
    }
    MonitorVerdict vd = d.observe(loss, g, of, at_min), ve = e.observe(loss, g, of, at_min);
    EXPECT_EQ(vd.action, MonitorAction::None) << "step " << i << ": " << vd.reason;
    EXPECT_TRUE(vd.reason.empty()) << vd.reason;
    enabled_actions += ve.action != MonitorAction::None;
    MonitorStats sd = d.stats(), se = e.stats();
    ASSERT_EQ(sd.loss_mean, se.loss_mean);
    ASSERT_EQ(sd.grad_std, se.grad_std);
    ASSERT_EQ(sd.overflow_rate, se.overflow_rate);
    ASSERT_EQ(sd.min_scale_run, se.min_scale_run);
  }
  EXPECT_GT(enabled_actions, 100);  // the same stream does trip the checks when enabled
  EXPECT_EQ(d.stats().steps, 200);
  EXPECT_GT(d.stats().overflow_rate, 0.0);
}

}  // namespace
}  // namespace mpt
