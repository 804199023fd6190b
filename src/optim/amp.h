// Mixed precision: the precision policy (mode and per-layer dtypes), the dynamic loss scaler, the LR schedule.
#pragma once

#include <cstdint>
#include <string>

#include "src/config/config.h"
#include "src/core/dtype.h"

namespace mpt {

// What the hardware offers, for precision `auto`.
struct HardwareCaps {
  bool cuda = false;
  int cc_major = 0, cc_minor = 0;
};

struct ResolvedPrecision {
  DType model = DType::F32;  // activations, weights and gradients of layers without an override
  bool allow_tf32 = false;   // mode tf32
  std::string mode;          // what was picked, e.g. "bf16 (auto: sm90)"
};

// auto: bf16 on sm80+, fp16 on sm70+, fp32 otherwise (and on CPU ranks, which have no half arithmetic).
ResolvedPrecision resolve_precision(const PrecisionConfig& p, const HardwareCaps& hw);

// Shell-style glob with '*' (any run) and '?' (one character).
bool glob_match(const std::string& pattern, const std::string& name);

// Dtype of a layer: the last matching precision.layers rule, else `fallback`.
DType layer_dtype(const PrecisionConfig& p, const std::string& layer, DType fallback);

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
