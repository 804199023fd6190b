// The Trainer's metrics records (schema v1, README "Metrics file") and its progress line.
#include <chrono>
#include <cmath>
#include <cstdio>

#include "kernels/device_info.h"
#include "src/train/train.h"

namespace mpt {

namespace {
double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}
}  // namespace

int64_t Trainer::units_per_step() const {
  return int64_t(cfg_.train.batch_size) * cfg_.train.grad_accum * world_.size * model_->targets_per_example();
}

void Trainer::open_metrics() {
  run_id_ = new_run_id();
  const bool resuming = !resumed_from_.empty();
  // Rank 0 writes the file; a path it cannot use ends every rank alike (exit 2) before the first step.
  agree(*host_, [&] {
    if (rank0_ && !cfg_.log.metrics.empty()) metrics_.open(cfg_.log.metrics, resuming);
  });
  if (ex_.cuda()) {
    flops_per_unit_ = train_flops_per_unit(cfg_.model, opt_->num_elements());
    peak_flops_ = peak_tflops(dev_->name(), prec_.model, prec_.allow_tf32) * 1e12 * world_.size;
  }
  if (!metrics_.enabled()) return;
  if (!metrics_.rotated_to().empty())
    std::printf("metrics: %s held an earlier run's records; moved them to %s\n", cfg_.log.metrics.c_str(),
                metrics_.rotated_to().c_str());
  metrics_.write(header_record());
  if (resuming)
    log_event("resume", {{"checkpoint", resumed_from_}, {"epoch", epoch_ + 1}, {"skipped_total", skipped_total()}});
}

MetricsRecord Trainer::header_record() const {
  const double now = unix_time_now();
  MetricsRecord j = {{"type", "header"},
                      {"schema", kMetricsSchema},
                      {"time", std::round(now * 1000) / 1000},
                      {"start_time", iso8601_utc(now)},
                      {"run_id", run_id_},
                      {"git_commit", git_commit()},
                      {"world_size", world_.size},
                      {"device", dev_->description()},
                      {"device_type", ex_.cuda() ? "cuda" : "cpu"},
                      {"device_name", ex_.cuda() ? dev_->name() : "cpu"},
                      {"communicator", comm_->name()},
                      {"precision", prec_.mode},
                      {"model_dtype", dtype_name(prec_.model)},
                      {"loss_scaling", scaler_->enabled()},
                      {"model", model_->describe()},
                      {"parameters", opt_->num_elements()},
                      {"unit", data_->words().unit},
                      {"units_per_step", units_per_step()},
                      {"total_steps", total_steps_},
                      {"steps_per_epoch", steps_per_epoch_},
                      {"start_step", step_},
                      {"resumed_from", resumed_from_.empty() ? MetricsRecord(nullptr) : MetricsRecord(resumed_from_)},
                      {"config_file", cfg_.source},
                      {"config", MetricsRecord::parse(cfg_.resolved.dump())}};
  if (!metrics_.rotated_to().empty()) j["earlier_records_moved_to"] = metrics_.rotated_to();
  if (flops_per_unit_ > 0) j["flops_per_unit"] = flops_per_unit_;
  if (peak_flops_ > 0) j["peak_flops"] = peak_flops_;
  return j;
}

void Trainer::log_event(const std::string& event, MetricsRecord fields) {
  if (!metrics_.enabled()) return;
  MetricsRecord j = {{"type", "event"}, {"event", event}, {"step", step_}};
  for (auto it = fields.begin(); it != fields.end(); ++it) j[it.key()] = it.value();
  metrics_.write(std::move(j));
}

void Trainer::log_step(const StepRecord& r) {
  const int64_t units = units_per_step();
  const std::string unit = data_->words().unit;
  const int64_t done = r.step + 1;  // 1-based, as printed
  progress_.window_units += units;
  ++progress_.window_steps;
  ++progress_.steps;
  // The first step of a process is always shown, so that a slow run says it is alive at once.
  const bool print = rank0_ && !cfg_.log.quiet &&
                     (progress_.steps == 1 || done % cfg_.log.every == 0 || done == total_steps_);
  const double mem = rank0_ && ex_.cuda() && (print || metrics_.enabled()) ? double(device_memory_used()) : -1;
  auto mfu = [&](double rate) { return peak_flops_ > 0 ? rate * flops_per_unit_ / peak_flops_ : -1.0; };
  if (metrics_.enabled()) {
    const double rate = r.seconds > 0 ? double(units) / r.seconds : 0.0;
    MetricsRecord j = {{"type", "step"},
                        {"step", done},
                        {"epoch", r.epoch + 1},
                        {"loss", r.loss},
                        {"lr", r.lr},
                        {"scale", r.scale},
                        {"next_scale", r.next_scale},
                        {"grad_norm", r.overflow ? MetricsRecord(nullptr) : MetricsRecord(r.grad_norm)},
                        {"skipped", r.skipped},
                        {"overflow", r.overflow},
                        {"skipped_total", skipped_total()},
                        {"unit", unit},
                        {unit + "_per_s", rate},
                        {"step_s", r.seconds},
                        {"precision", dtype_name(prec_.model)}};
    if (peak_flops_ > 0) j["mfu"] = mfu(rate);
    if (mem >= 0) j["device_mem_bytes"] = mem;
    if (r.action != MonitorAction::None) j["monitor"] = monitor_action_name(r.action);
    metrics_.write(std::move(j));
  }
  if (!print) return;
  const double window_s = seconds_since(progress_.window);
  ProgressLine p;
  p.step = done;
  p.total = total_steps_;
  p.epoch = r.epoch + 1;
  p.loss = r.loss;
  p.lr = r.lr;
  p.scale = r.next_scale;
  p.grad_norm = r.grad_norm;
  p.overflow = r.overflow;
  p.skipped = skipped_total();
  p.rate = window_s > 0 ? double(progress_.window_units) / window_s : 0.0;
  p.unit = unit;
  p.elapsed = seconds_since(progress_.start);
  p.eta = double(total_steps_ - done) * window_s / double(progress_.window_steps);
  p.mfu = mfu(p.rate);
  p.mem_bytes = mem;
  std::printf("%s\n", format_progress(p).c_str());
  std::fflush(stdout);
  progress_.window = std::chrono::steady_clock::now();
  progress_.window_units = 0;
  progress_.window_steps = 0;
}

}  // namespace mpt
