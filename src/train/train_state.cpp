// The Trainer's precision switches (fallback, recovery: monitor.*) and its checkpoints (save, resume with
// the recorded precision), apart from the training loop in train.cpp.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "src/io/checkpoint.h"
#include "src/optim/state_format.h"
#include "src/train/train.h"

namespace mpt {

DType Trainer::fallback_target() const {
  const std::string& f = cfg_.precision.fallback;
  if (f == "none" || prec_.model == DType::F32) return prec_.model;
  // CPU ranks emulate bf16 in software, so it is always there; GPUs have it from sm80.
  const bool bf16_hw = !dev_->caps().cuda || dev_->caps().cc_major >= 8;
  if (prec_.model == DType::F16 && (f == "bf16" || f == "auto") && bf16_hw) return DType::BF16;
  if (f == "bf16" && !bf16_hw) return prec_.model;  // asked for bf16 only, and there is none
  return DType::F32;
}

void Trainer::fallback(const std::string& reason) {
  const DType from = prec_.model, to = fallback_target();
  if (to == from)
    throw StabilityStop("step " + std::to_string(step_) + ": " + reason + "; no fallback from " + dtype_name(from) +
                        " is allowed (precision.fallback = " + cfg_.precision.fallback + ")");
  const MonitorConfig& mc = cfg_.monitor;
  if (mc.recover_after > 0) {
    if (!recovery_.armed) {
      recovery_.armed = true;
      recovery_.faster = from;
      recovery_.layers = cfg_.precision.layers;
      recovery_.wait = mc.recover_after;
    } else if (recovery_.attempted_at >= 0 && from == recovery_.faster) {
      recovery_.wait *= 2;  // the attempt was sent back during its probation: wait twice as long
    }
    if (from == recovery_.faster) recovery_.scale = scaler_->enabled() ? scaler_->raw_scale() : 0.0;
    recovery_.clean = 0;
    recovery_.attempted_at = -1;
  }
  std::vector<LayerPrecision> layers = cfg_.precision.layers;
  for (LayerPrecision& r : layers)
    if (r.dtype == dtype_name(from)) r.dtype = dtype_name(to);
  switch_precision(to, layers, std::string(dtype_name(to)) + " (fallback from " + dtype_name(from) + " at step " +
                                   std::to_string(step_ + 1) + ")");
  fallbacks_.push_back({step_ + 1, from, to, reason});
  const bool again = recovery_.armed && from == recovery_.faster && recovery_.attempts < mc.max_recoveries;
  if (rank0_)
    std::printf("precision fallback at step %lld: %s -> %s (%s); loss scaling %s%s\n",
                static_cast<long long>(step_ + 1), dtype_name(from), dtype_name(to), reason.c_str(),
                scaler_->enabled() ? "dynamic" : "off",
                again ? ("; " + std::string(dtype_name(from)) + " is tried again after " + std::to_string(recovery_.wait) +
                         " clean steps").c_str()
                      : "");
  log_event("precision_fallback", {{"step", step_ + 1}, {"from", dtype_name(from)}, {"to", dtype_name(to)},
                                   {"reason", reason}, {"loss_scaling", scaler_->enabled()},
                                   {"retry_after", again ? nlohmann::json(recovery_.wait) : nlohmann::json(nullptr)}});
}

void Trainer::maybe_recover(bool clean_step) {
  if (!recovery_.armed) return;
  if (prec_.model == recovery_.faster) {
    // An attempt that lasts its probation (as long as its wait) without being sent back has held.
    if (recovery_.attempted_at >= 0 && step_ - recovery_.attempted_at >= recovery_.wait) recovery_.attempted_at = -1;
    return;
  }
  recovery_.clean = clean_step ? recovery_.clean + 1 : 0;
  if (recovery_.clean < recovery_.wait || recovery_.attempts >= cfg_.monitor.max_recoveries) return;
  const DType from = prec_.model, to = recovery_.faster;
  ++recovery_.attempts;
  recovery_.attempted_at = step_;
  recovery_.clean = 0;
  const std::string reason = std::to_string(recovery_.wait) + " clean steps in " + dtype_name(from) + " (attempt " +
                             std::to_string(recovery_.attempts) + " of " + std::to_string(cfg_.monitor.max_recoveries) + ")";
  // After step_ steps: the next step (step_ + 1, 1-based) runs in the faster precision.
  switch_precision(to, recovery_.layers, std::string(dtype_name(to)) + " (recovered after step " + std::to_string(step_) + ")");
  // Where the faster precision left off: a scale that still overflows shows at once, rather than after the
  // scaler has backed off from loss_scale.init again.
  if (scaler_->enabled() && recovery_.scale > 0) scaler_->set_state(recovery_.scale, 0, scaler_->hysteresis_left(), 0);
  fallbacks_.push_back({step_ + 1, from, to, reason, true});
  if (rank0_)
    std::printf("precision recovery after step %lld: %s -> %s (%s)\n", static_cast<long long>(step_), dtype_name(from),
                dtype_name(to), reason.c_str());
  log_event("precision_recovery", {{"step", step_ + 1}, {"from", dtype_name(from)}, {"to", dtype_name(to)},
                                   {"reason", reason}, {"attempt", recovery_.attempts},
                                   {"loss_scaling", scaler_->enabled()}});
}

void Trainer::switch_precision(DType to, const std::vector<LayerPrecision>& layers, const std::string& mode) {
  // The FP32 master weights and AdamW moments carry over exactly; only the model-dtype copies change.
  const OptimizerState state = opt_->gather_state();
  const int64_t adam_step = opt_->adam_step();
  const int64_t skipped = scaler_->skipped() + prior_skipped_;
  cfg_.precision.layers = layers;
  prec_.model = to;
  prec_.mode = mode;
  cfg_.resolved["precision"]["mode"] = dtype_name(to);
  opt_.reset();
  model_.reset();
  model_ = make_model(cfg_.model, cfg_.precision, prec_.model, ex_, max_batch_);
  opt_ = std::make_unique<ShardedOptimizer>(ex_, *comm_, model_->param_specs(), cfg_.zero.stage,
                                            size_t(cfg_.zero.bucket_mb * 1024 * 1024), cfg_.train.seed, dev_->comm_stream(),
                                            state_format_of(cfg_.optimizer), offload_options(cfg_, world_.local_size));
  opt_->set_overlap(cfg_.zero.overlap);
  opt_->set_skip_comm(cfg_.debug.skip_bucket_comm);
  opt_->set_reorder_backward(cfg_.zero.reorder_backward);
  model_->bind(opt_->params());
  opt_->load_state(state);
  opt_->set_adam_step(adam_step);
  scaler_ = std::make_unique<LossScaler>(cfg_.loss_scale, loss_scaling_enabled(cfg_.loss_scale, prec_.model));
  prior_skipped_ = skipped;
  monitor_->reset();
}

void Trainer::save_checkpoint() {
  const auto state = opt_->gather_state();  // collective
  // Rank 0 writes; every rank learns whether it could, so a failure (a directory that cannot be made, a
  // full disk) ends every rank with rank 0's message instead of leaving the others in the next collective.
  std::string path;
  agree(*host_, [&] {
    if (!rank0_) return;
    path = write_checkpoint_files(state);
    prune_checkpoints(cfg_.checkpoint.dir, cfg_.checkpoint.keep_last);
  });
  if (rank0_ && !cfg_.log.quiet) std::printf("checkpoint: %s\n", path.c_str());
  log_event("checkpoint", {{"path", path}, {"epoch", epoch_ + 1}});
}

std::string Trainer::write_checkpoint_files(const OptimizerState& state) {
  CheckpointMeta meta;
  meta.step = step_;
  meta.epoch = epoch_;
  meta.step_in_epoch = step_in_epoch_;
  meta.adam_step = opt_->adam_step();
  meta.scale = scaler_->raw_scale();
  meta.growth_tracker = scaler_->growth_tracker();
  meta.hysteresis_left = scaler_->hysteresis_left();
  meta.skipped = scaler_->skipped();
  for (int i = 0; i < opt_->num_params(); ++i) meta.params.emplace_back(opt_->spec(i).name, opt_->spec(i).shape);
  meta.config = cfg_.resolved;
  auto layers_json = [](const std::vector<LayerPrecision>& v) {
    nlohmann::json a = nlohmann::json::array();
    for (const LayerPrecision& r : v) a.push_back({{"pattern", r.pattern}, {"dtype", r.dtype}});
    return a;
  };
  meta.precision = {{"model", dtype_name(prec_.model)}, {"mode", prec_.mode}, {"layers", layers_json(cfg_.precision.layers)}};
  if (recovery_.armed)
    meta.precision["recovery"] = {{"faster", dtype_name(recovery_.faster)}, {"layers", layers_json(recovery_.layers)},
                                  {"clean", recovery_.clean}, {"wait", recovery_.wait},
                                  {"attempted_at", recovery_.attempted_at}, {"attempts", recovery_.attempts},
                                  {"scale", recovery_.scale}};
  return mpt::save_checkpoint(cfg_.checkpoint.dir, meta, state);
}

void Trainer::try_resume() {
  CheckpointMeta meta;
  OptimizerState state;
  bool found = false;
  std::vector<ParamSpec> specs;
  for (int i = 0; i < opt_->num_params(); ++i) specs.push_back(opt_->spec(i));
  std::string from;
  agree(*host_, [&] {
    const std::string dir = cfg_.checkpoint.dir;
    if (rank0_) {
      const int stale = remove_stale_temporaries(dir);
      if (stale > 0 && !cfg_.log.quiet)
        std::printf("checkpoint: removed %d unfinished temporary file(s) in %s\n", stale, dir.c_str());
    }
    const std::string latest = latest_checkpoint(dir);
    if (latest.empty()) return;
    auto load = [&](const std::string& path, CheckpointMeta* m, OptimizerState* s) {
      load_checkpoint(path, specs, m, s);
      check_checkpoint_state(path, m->config, cfg_.optimizer);
      if (m->step_in_epoch > steps_per_epoch_)
        throw InputError(path, "step_in_epoch",
                         std::to_string(m->step_in_epoch) + " is past the " + std::to_string(steps_per_epoch_) +
                             " steps of an epoch of this run");
    };
    try {
      load(latest, &meta, &state);
      from = latest;
    } catch (const InputError& bad) {
      // The newest other checkpoint that loads, if any.
      std::string prev;
      std::error_code ec;
      for (const std::string& p : list_checkpoints(dir)) {
        if (std::filesystem::equivalent(p, latest, ec)) continue;
        try {
          load(p, &meta, &state);
          prev = p;
          break;
        } catch (const InputError&) {
        }
      }
      if (prev.empty()) throw;
      if (!cfg_.checkpoint.fallback_to_previous)
        throw InputError(bad.file(), bad.field(),
                         std::string(bad.what()).substr(bad.file().size() + (bad.field().empty() ? 0 : bad.field().size() + 2) + 2) +
                             "; the newest intact checkpoint is " + prev +
                             " (checkpoint.fallback_to_previous=true resumes from it)");
      if (rank0_) std::fprintf(stderr, "mptrain: %s; resuming from the newest intact checkpoint, %s\n", bad.what(), prev.c_str());
      from = prev;
    }
    found = true;
  });
  auto all_ranks = [&](bool yes) {
    double no = yes ? 0 : 1, any_no = 0;
    host_->host_all_reduce(&no, &any_no, 1, ReduceOp::Max);
    return any_no == 0;
  };
  const bool everywhere = all_ranks(found), nowhere = all_ranks(!found);
  if (!everywhere && !nowhere)
    throw InputError(cfg_.checkpoint.dir, "checkpoint.dir", "a checkpoint is visible to some ranks only");
  if (!found) return;
  restore_precision(from, meta.precision);
  opt_->load_state(state);
  opt_->set_adam_step(meta.adam_step);
  scaler_->set_state(meta.scale, meta.growth_tracker, meta.hysteresis_left, meta.skipped);
  step_ = meta.step;
  epoch_ = meta.epoch;
  step_in_epoch_ = meta.step_in_epoch;
  if (sampler_) sampler_->set_epoch(epoch_);
  resumed_from_ = from;
  if (rank0_ && !cfg_.log.quiet)
    std::printf("resumed from %s at step %lld (epoch %d)\n", from.c_str(), static_cast<long long>(step_), epoch_ + 1);
}

void Trainer::restore_precision(const std::string& path, const nlohmann::json& p) {
  if (p.is_null()) return;  // a checkpoint from before precision was recorded: the config's precision
  auto dtype_at = [&](const nlohmann::json& j, const std::string& field) {
    DType t;
    if (!j.is_string() || !parse_dtype(j.get<std::string>(), &t))
      throw InputError(path, field, "is not fp32, fp16 or bf16");
    return t;
  };
  auto layers_at = [&](const nlohmann::json& j, const std::string& field) {
    std::vector<LayerPrecision> v;
    DType t;
    if (!j.is_array()) throw InputError(path, field, "is not a list");
    for (const auto& r : j) {
      if (!r.is_object() || !r.contains("pattern") || !r["pattern"].is_string() || !r.contains("dtype") ||
          !r["dtype"].is_string() || !parse_dtype(r["dtype"].get<std::string>(), &t))
        throw InputError(path, field, "holds an entry that is not {pattern, dtype}");
      v.push_back({r["pattern"].get<std::string>(), r["dtype"].get<std::string>()});
    }
    return v;
  };
  if (!p.is_object()) throw InputError(path, "precision", "is not an object");
  const DType model = dtype_at(p.value("model", nlohmann::json()), "precision.model");
  const std::vector<LayerPrecision> layers = layers_at(p.value("layers", nlohmann::json::array()), "precision.layers");
  if (p.contains("recovery")) {
    const nlohmann::json& r = p["recovery"];
    Recovery rc;
    rc.armed = true;
    rc.faster = dtype_at(r.value("faster", nlohmann::json()), "precision.recovery.faster");
    rc.layers = layers_at(r.value("layers", nlohmann::json::array()), "precision.recovery.layers");
    try {
      rc.clean = r.at("clean");
      rc.wait = r.at("wait");
      rc.attempted_at = r.at("attempted_at");
      rc.attempts = r.at("attempts");
      rc.scale = r.at("scale");
    } catch (const nlohmann::json::exception& e) {
      throw InputError(path, "precision.recovery", e.what());
    }
    if (rc.clean < 0 || rc.wait < 1 || rc.attempted_at < -1 || rc.attempts < 0 || !(rc.scale >= 0))
      throw InputError(path, "precision.recovery", "holds a value out of range");
    recovery_ = rc;
  }
  if (model == prec_.model && layers.size() == cfg_.precision.layers.size() &&
      std::equal(layers.begin(), layers.end(), cfg_.precision.layers.begin(),
                 [](const LayerPrecision& a, const LayerPrecision& b) { return a.pattern == b.pattern && a.dtype == b.dtype; }))
    return;
  switch_precision(model, layers, std::string(dtype_name(model)) + " (as in " + path + ")");
  if (rank0_ && !cfg_.log.quiet)
    std::printf("precision: %s, as the checkpoint records (the run had switched precision)\n", dtype_name(model));
}

nlohmann::json Trainer::fallbacks_json() const {
  nlohmann::json a = nlohmann::json::array();
  for (const FallbackEvent& f : fallbacks_)
    a.push_back({{"step", f.step}, {"from", dtype_name(f.from)}, {"to", dtype_name(f.to)}, {"reason", f.reason},
                 {"recovery", f.recovery}});
  return a;
}

}  // namespace mpt
