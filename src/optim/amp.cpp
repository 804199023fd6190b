#include "src/optim/amp.h"

#include <algorithm>
#include <cmath>

namespace mpt {

bool loss_scaling_enabled(const LossScaleConfig& c, DType model) {
  if (c.enabled == "on") return true;
  if (c.enabled == "off") return false;
  return model == DType::F16;
}

LossScaler::LossScaler(const LossScaleConfig& c, bool enabled)
    : c_(c), enabled_(enabled), scale_(enabled ? c.init : 1.0), hysteresis_left_(c.hysteresis) {}

void LossScaler::update(bool overflow) {
  if (overflow) {
    ++skipped_;
    growth_tracker_ = 0;
    if (!enabled_) return;
    // Once the hysteresis budget is spent every further overflow backs off, until a growth refills it.
    if (--hysteresis_left_ <= 0) {
      hysteresis_left_ = 0;
      scale_ = std::max(scale_ * c_.backoff_factor, c_.min);
    }
    return;
  }
  if (!enabled_) return;
  if (++growth_tracker_ >= c_.growth_interval) {
    growth_tracker_ = 0;
    hysteresis_left_ = c_.hysteresis;
    scale_ = std::min(scale_ * c_.growth_factor, c_.max);
  }
}

void LossScaler::set_state(double scale, int64_t growth_tracker, int hysteresis_left, int64_t skipped) {
  scale_ = scale;
  growth_tracker_ = growth_tracker;
  hysteresis_left_ = hysteresis_left;
  skipped_ = skipped;
}

double learning_rate(const OptimizerConfig& o, int64_t step, int64_t total_steps) {
  if (o.warmup_steps > 0 && step < o.warmup_steps) return o.lr * double(step + 1) / double(o.warmup_steps);
  if (o.schedule == "constant") return o.lr;
  const double span = double(std::max<int64_t>(1, total_steps - o.warmup_steps));
  const double progress = std::clamp(double(step - o.warmup_steps) / span, 0.0, 1.0);
  return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1.0 + std::cos(M_PI * progress));
}

}  // namespace mpt
