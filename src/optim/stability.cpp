#include "src/optim/stability.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <stdexcept>

namespace mpt {

const char* monitor_action_name(MonitorAction a) {
  switch (a) {
    case MonitorAction::None: return "none";
    case MonitorAction::Log: return "log";
    case MonitorAction::Skip: return "skip";
    case MonitorAction::Fallback: return "fallback";
    case MonitorAction::Stop: return "stop";
  }
  return "?";
}

MonitorAction parse_monitor_action(const std::string& s) {
  if (s == "log") return MonitorAction::Log;
  if (s == "skip") return MonitorAction::Skip;
  if (s == "fallback") return MonitorAction::Fallback;
  if (s == "stop") return MonitorAction::Stop;
  throw std::invalid_argument("unknown monitor action '" + s + "' (expected log | skip | fallback | stop)");
}

namespace {

struct Moments {
  double mean = 0, std = 0;
  size_t n = 0;
};

// Population statistics of the newest `window` entries. The deque may hold one older entry that is
// kept only so that mark_skipped() can restore the window exactly; it is not part of the window.
// Two passes: the window is small and a one-pass sum of squares loses the spread of a loss that sits
// at, say, 3.0 +- 1e-4 to cancellation.
Moments moments(const std::deque<double>& d, size_t window) {
  Moments m;
  size_t first = d.size() > window ? d.size() - window : 0;
  m.n = d.size() - first;
  if (m.n == 0) return m;
  double sum = 0;
  for (size_t i = first; i < d.size(); ++i) sum += d[i];
  m.mean = sum / double(m.n);
  double ss = 0;
  for (size_t i = first; i < d.size(); ++i) ss += (d[i] - m.mean) * (d[i] - m.mean);
  m.std = std::sqrt(ss / double(m.n));
  return m;
}

// A window of identical values (a loss plateau printed to the same bits, a norm clipped to a constant)
// has std 0, which would make every later difference an infinite z and an identical value 0/0. The floor
// keeps z finite and still flags a departure larger than spike_zscore parts per million of the mean;
// the absolute floor covers a window of zeros.
double std_floor(const Moments& m) { return std::max({m.std, 1e-6 * std::fabs(m.mean), 1e-12}); }

// Drops entries older than the window, including the one kept back for mark_skipped().
void trim(std::deque<double>& d, size_t window) {
  while (d.size() > window) d.pop_front();
}

std::string fmt(const char* f, double a, double b = 0, double c = 0, double d = 0) {
  char buf[256];
  std::snprintf(buf, sizeof buf, f, a, b, c, d);
  return buf;
}

}  // namespace

StabilityMonitor::StabilityMonitor(const MonitorConfig& c) : c_(c) {
  // Validated by the config loader; checked again because a bad value here would silently disable
  // a check (window 0) or divide by zero.
  if (c_.window < 1) throw std::invalid_argument("monitor.window must be >= 1");
  if (c_.min_scale_patience < 1) throw std::invalid_argument("monitor.min_scale_patience must be >= 1");
  // Parse now so that a bad action name fails at construction, not at the first anomaly.
  parse_monitor_action(c_.on_nan_loss);
  parse_monitor_action(c_.on_min_scale);
  parse_monitor_action(c_.on_overflow_rate);
  parse_monitor_action(c_.on_loss_spike);
  parse_monitor_action(c_.on_grad_spike);
}

MonitorVerdict StabilityMonitor::observe(double loss, double grad_norm, bool overflow, bool scale_at_min) {
  const size_t window = size_t(c_.window);
  // A deque may still hold the entry kept back for mark_skipped() of the previous step; that step
  // is now final.
  trim(loss_, window);
  trim(grad_, window);

  ++steps_;
  overflow_.push_back(overflow ? 1 : 0);
  while (overflow_.size() > window) overflow_.pop_front();
  min_scale_run_ = (overflow && scale_at_min) ? min_scale_run_ + 1 : 0;

  MonitorVerdict v;
  auto trigger = [&](const std::string& action, const std::string& why) {
    v.action = std::max(v.action, parse_monitor_action(action));
    if (!v.reason.empty()) v.reason += "; ";
    v.reason += why;
  };

  // 1. A non-finite gradient norm with no overflow verdict means the gradient went bad through a path
  // the overflow check does not see (e.g. a NaN loss propagated, or a norm reduction that overflowed
  // in fp32): it is as untrustworthy as a NaN loss.
  const bool loss_finite = std::isfinite(loss);
  const bool grad_finite = std::isfinite(grad_norm);
  if (!loss_finite) {
    trigger(c_.on_nan_loss, fmt("non-finite loss (loss %g, grad norm %g)", loss, grad_norm));
  } else if (!grad_finite && !overflow) {
    trigger(c_.on_nan_loss, fmt("non-finite gradient norm without overflow (loss %.6g, grad norm %g)", loss, grad_norm));
  }

  // 2. Keeps firing every step while the run lasts: the condition persists until the caller acts.
  if (min_scale_run_ >= c_.min_scale_patience) {
    trigger(c_.on_min_scale, fmt("loss scale at minimum and overflowing for %.0f steps in a row (patience %.0f)",
                                 double(min_scale_run_), double(c_.min_scale_patience)));
  }

  // 3. A partial window would make the first overflow of a run a 100% rate.
  if (overflow_.size() == window) {
    size_t n = 0;
    for (uint8_t o : overflow_) n += o;
    double rate = double(n) / double(window);
    if (rate > c_.max_overflow_rate) {
      trigger(c_.on_overflow_rate, fmt("overflow rate %.4g over the last %.0f steps (limit %.4g)", rate,
                                       double(window), c_.max_overflow_rate));
    }
  }

  // 4, 5. The statistics are those of the window before this step: a spike must not dilute its own
  // reference. A window shorter than min_history is not trusted; min_history larger than the window
  // is capped at the window, which is all the history there is.
  const size_t need = std::min(size_t(std::max(c_.min_history, 1)), window);
  if (loss_finite && loss_.size() >= need) {
    Moments m = moments(loss_, window);
    v.loss_z = (loss - m.mean) / std_floor(m);
    if (v.loss_z > c_.spike_zscore) {
      trigger(c_.on_loss_spike,
              fmt("loss spike: z=%.3g (loss %.6g, window mean %.6g +- %.3g)", v.loss_z, loss, m.mean, m.std));
    }
  }
  if (grad_finite && !overflow && grad_.size() >= need) {
    Moments m = moments(grad_, window);
    v.grad_z = (grad_norm - m.mean) / std_floor(m);
    if (v.grad_z > c_.spike_zscore) {
      trigger(c_.on_grad_spike, fmt("grad norm spike: z=%.3g (grad norm %.6g, window mean %.6g +- %.3g)",
                                    v.grad_z, grad_norm, m.mean, m.std));
    }
  }

  if (!c_.enabled) {
    v.action = MonitorAction::None;
    v.reason.clear();
  }

  // Only steps whose update goes ahead enter the clean windows: an overflow, a non-finite value, or a
  // verdict that skips the update (or abandons the precision) would poison the statistics. The pushes
  // can leave window + 1 entries; the oldest stays until the next step so mark_skipped() can undo exactly.
  last_in_windows_ = !overflow && loss_finite && grad_finite && v.action < MonitorAction::Skip;
  if (last_in_windows_) {
    loss_.push_back(loss);
    grad_.push_back(grad_norm);
  }
  return v;
}

void StabilityMonitor::mark_skipped() {
  if (!last_in_windows_) return;
  loss_.pop_back();
  grad_.pop_back();
  last_in_windows_ = false;
}

void StabilityMonitor::reset() {
  loss_.clear();
  grad_.clear();
  overflow_.clear();
  steps_ = 0;
  min_scale_run_ = 0;
  last_in_windows_ = false;
}

MonitorStats StabilityMonitor::stats() const {
  MonitorStats s;
  const size_t window = size_t(c_.window);
  if (!overflow_.empty()) {
    size_t n = 0;
    for (uint8_t o : overflow_) n += o;
    s.overflow_rate = double(n) / double(overflow_.size());
  }
  Moments l = moments(loss_, window), g = moments(grad_, window);
  s.loss_mean = l.mean;
  s.loss_std = l.std;
  s.grad_mean = g.mean;
  s.grad_std = g.std;
  s.steps = steps_;
  s.min_scale_run = min_scale_run_;
  return s;
}

}  // namespace mpt
