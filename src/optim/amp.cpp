#include "src/optim/amp.h"

#include <algorithm>
#include <cmath>

namespace mpt {

ResolvedPrecision resolve_precision(const PrecisionConfig& p, const HardwareCaps& hw) {
  ResolvedPrecision r;
  if (p.mode == "auto") {
    if (hw.cuda && hw.cc_major >= 8) r.model = DType::BF16;
    else if (hw.cuda && hw.cc_major >= 7) r.model = DType::F16;
    else r.model = DType::F32;
    r.mode = std::string(dtype_name(r.model)) + " (auto: " +
             (hw.cuda ? "sm" + std::to_string(hw.cc_major) + std::to_string(hw.cc_minor) : std::string("cpu")) + ")";
    return r;
  }
  r.mode = p.mode;
  if (p.mode == "tf32") { r.model = DType::F32; r.allow_tf32 = true; return r; }
  parse_dtype(p.mode, &r.model);  // validated by the config loader
  return r;
}

bool glob_match(const std::string& pattern, const std::string& name) {
  // Iterative matcher with single-star backtracking: linear for the patterns people write.
  size_t p = 0, n = 0, star = std::string::npos, mark = 0;
  while (n < name.size()) {
    if (p < pattern.size() && (pattern[p] == '?' || pattern[p] == name[n])) { ++p; ++n; }
    else if (p < pattern.size() && pattern[p] == '*') { star = p++; mark = n; }
    else if (star != std::string::npos) { p = star + 1; n = ++mark; }
    else return false;
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

DType layer_dtype(const PrecisionConfig& p, const std::string& layer, DType fallback) {
  DType t = fallback;
  for (const auto& rule : p.layers)
    if (glob_match(rule.pattern, layer)) parse_dtype(rule.dtype, &t);
  return t;
}

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
