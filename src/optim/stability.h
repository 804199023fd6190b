// Stability monitor (part of amp): watches the per-step values every rank agrees on — the global mean
// loss, the global gradient norm and the overflow verdict — over rolling windows, and decides an action.
// Because its inputs are identical on every rank and its rules are deterministic, every rank reaches the
// same decision at the same step without a message of its own.
//
// Checks, in this order, for one step:
//   1. non-finite loss                                       -> on_nan_loss
//      (also a non-finite gradient norm on a step whose overflow verdict is false)
//   2. fp16 loss scale at loss_scale.min and still overflowing for min_scale_patience steps in a row
//                                                            -> on_min_scale
//   3. overflow rate over the last `window` steps > max_overflow_rate (only once `window` steps are seen)
//                                                            -> on_overflow_rate
//   4. loss z-score vs the window of clean steps > spike_zscore (after min_history clean steps)
//                                                            -> on_loss_spike
//   5. gradient-norm z-score likewise                        -> on_grad_spike
// The strongest action wins (stop > fallback > skip > log > none); every triggered check is named in
// the reason. Overflowing steps and steps whose update was skipped do not enter the loss / norm windows
// (they would poison the statistics); every step enters the overflow window.
#pragma once

#include <cstdint>
#include <deque>
#include <string>

#include "src/config/config.h"

namespace mpt {

enum class MonitorAction { None = 0, Log = 1, Skip = 2, Fallback = 3, Stop = 4 };
const char* monitor_action_name(MonitorAction a);
// "log" | "skip" | "fallback" | "stop"; throws std::invalid_argument otherwise (config validation
// reports the key before this can happen).
MonitorAction parse_monitor_action(const std::string& s);

struct MonitorVerdict {
  MonitorAction action = MonitorAction::None;
  std::string reason;                // e.g. "loss spike: z=7.3 (loss 5.91, window mean 3.02 +- 0.41)"
  double loss_z = 0, grad_z = 0;
};

struct MonitorStats {
  double overflow_rate = 0;          // over the overflow window
  double loss_mean = 0, loss_std = 0, grad_mean = 0, grad_std = 0;
  int64_t steps = 0, min_scale_run = 0;
};

class StabilityMonitor {
 public:
  explicit StabilityMonitor(const MonitorConfig& c);
  // One step's agreed values. overflow: the step's gradients had inf/nan. scale_at_min: loss scaling is
  // on and the scale used for this step equals loss_scale.min. Records the step and returns the verdict.
  // With enabled = false it always returns None (but still records).
  MonitorVerdict observe(double loss, double grad_norm, bool overflow, bool scale_at_min);
  // The step's update was skipped after all (by the caller's decision): remove its loss / grad norm
  // from the clean windows if observe() put them there.
  void mark_skipped();
  // After a precision fallback: forget the history (the new precision has its own statistics).
  void reset();
  MonitorStats stats() const;

 private:
  MonitorConfig c_;
  std::deque<double> loss_, grad_;   // clean steps only, the last `window` (+1 kept for mark_skipped)
  std::deque<uint8_t> overflow_;     // every step, at most `window`
  int64_t steps_ = 0, min_scale_run_ = 0;
  bool last_in_windows_ = false;
};

}  // namespace mpt
