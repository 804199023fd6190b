// The Trainer's automatic precision policy (precision.layers = "auto"): decided at start and, with
// precision.reanalyze_every, again every N steps; a changed decision switches every rank at the same step
// (the FP32 master weights and AdamW moments carry over exactly, as in a fallback).
#include <cstdio>

#include "src/train/precision_auto.h"
#include "src/train/train.h"

namespace mpt {

namespace {
bool same_rules(const std::vector<LayerPrecision>& a, const std::vector<LayerPrecision>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i].pattern != b[i].pattern || a[i].dtype != b[i].dtype) return false;
  return true;
}
}  // namespace

void Trainer::auto_precision(bool at_start) {
  AutoPrecisionContext ctx;
  ctx.cfg = &cfg_;
  ctx.ex = &ex_;
  ctx.comm = comm_.get();
  ctx.hw = dev_->caps();
  ctx.batch = [this](int64_t first, int n) { return train_batch(first, n); };
  ctx.master = opt_->gather_master();
  if (!at_start) {
    ctx.current = {int32_t(prec_.model)};
    for (const auto& [layer, t] : model_->layer_dtypes()) ctx.current.push_back(int32_t(t));
  }
  const AutoPrecision a = decide_auto_precision(ctx);
  // Every rank has rank 0's verdict: all throw alike, rank 0 names the field.
  agree(*host_, [&] {
    if (!a.sel.ok) throw InputError(cfg_.source, "precision.memory_budget_gib", a.sel.why);
  });
  const std::vector<LayerPrecision> rules = a.sel.rules();
  const bool changed = a.sel.base != prec_.model || !same_rules(rules, cfg_.precision.layers);
  if (changed) {
    const std::string mode = std::string(dtype_name(a.sel.base)) + " (auto policy" +
                             (at_start ? "" : ", after step " + std::to_string(step_)) + ")";
    switch_precision(a.sel.base, rules, mode);
  } else if (at_start) {
    prec_.mode = std::string(dtype_name(a.sel.base)) + " (auto policy)";
  }
  auto_report_ = selection_json(a.sel);
  auto_report_["reanalysis"] = !at_start;
  auto_report_["changed"] = changed;
  auto_lines_ = selection_lines(a.sel);
  if (!at_start) report_auto_precision();
}

void Trainer::report_auto_precision() {
  if (auto_lines_.empty()) return;
  const bool again = auto_report_.value("reanalysis", false);
  if (rank0_ && !cfg_.log.quiet && (!again || auto_report_.value("changed", false))) {
    if (again) std::printf("precision re-analysis after step %lld: policy changed\n", static_cast<long long>(step_));
    for (const std::string& l : auto_lines_) std::printf("%s\n", l.c_str());
  }
  MetricsRecord f = MetricsRecord::object();
  for (auto it = auto_report_.begin(); it != auto_report_.end(); ++it) f[it.key()] = it.value();
  log_event("precision_auto", std::move(f));
  auto_lines_.clear();
}

void Trainer::maybe_reanalyze() {
  const int64_t n = cfg_.precision.reanalyze_every;
  if (!cfg_.precision.layers_auto || n <= 0 || step_ == 0 || step_ % n != 0 || step_ >= total_steps_ ||
      reanalyzed_at_ == step_)
    return;
  reanalyzed_at_ = step_;
  // After a fallback the monitor owns the precision until it recovers.
  if (recovery_.armed && prec_.model != recovery_.faster) return;
  auto_precision(false);
}

}  // namespace mpt
