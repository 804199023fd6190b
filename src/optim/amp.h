// Mixed precision: the dynamic loss scaler and the LR schedule (the precision policy itself, mode and
// per-layer dtypes, is src/config/precision.h).
#pragma once

#include <cstdint>
#include <string>

#include "src/config/config.h"
#include "src/config/precision.h"
#include "src/core/dtype.h"

namespace mpt {

// Whether dynamic loss scaling is on: enabled=on/off, or auto = on exactly when the model dtype is fp16.
bool loss_scaling_enabled(const LossScaleConfig& c, DType model);

// Dynamic loss scaling. Every rank applies the same verdicts in the same order, so the scale is the same
// on every rank without a message of its own.
// - overflow: the step is skipped; the hysteresis counter drops by one and, when it reaches zero, the scale
//   backs off to max(scale * backoff, min). The growth counter restarts.
// - clean step: after growth_interval clean steps in a row the scale grows to min(scale * growth, max)
//   and the hysteresis counter is refilled.
// Disabled: the scale stays 1; overflowing steps are still skipped.
class LossScaler {
 public:
  LossScaler(const LossScaleConfig& c, bool enabled);
  float scale() const { return float(scale_); }
  bool enabled() const { return enabled_; }
  void update(bool overflow);
  int64_t skipped() const { return skipped_; }
  int64_t growth_tracker() const { return growth_tracker_; }
  int hysteresis_left() const { return hysteresis_left_; }
  // Checkpoint state.
  void set_state(double scale, int64_t growth_tracker, int hysteresis_left, int64_t skipped);
  double raw_scale() const { return scale_; }

 private:
  LossScaleConfig c_;
  bool enabled_;
  double scale_;
  int64_t growth_tracker_ = 0;
  int hysteresis_left_;
  int64_t skipped_ = 0;
};

// Linear warmup over warmup_steps, then cosine decay to min_lr at total_steps (or constant).
double learning_rate(const OptimizerConfig& o, int64_t step, int64_t total_steps);

}  // namespace mpt
