#include "src/train/train.h"

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cmath>
#include <cstring>
#include <exception>
#include <iostream>
#include <limits>
#include <map>
#include <thread>

#include <mpi.h>

#include "comm/device_select.h"
#include "kernels/device_info.h"
#include "kernels/gemm.h"
#include "src/io/checkpoint.h"
#include "src/core/cuda_check.h"
#include "src/io/hf_export.h"
#include "src/model/gpt2.h"
#include "src/optim/state_format.h"
#include "src/core/watchdog.h"

namespace mpt {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// "name=dtype ..." with transformer blocks folded: h.*.attn.c_attn=bf16 when every block agrees.
std::string policy_summary(const std::vector<std::pair<std::string, DType>>& layers) {
  std::vector<std::string> order;
  std::map<std::string, std::vector<std::pair<std::string, DType>>> by_pattern;
  for (const auto& [name, dt] : layers) {
    std::string pat = name;
    if (name.rfind("h.", 0) == 0) {
      const size_t dot = name.find('.', 2);
      if (dot != std::string::npos) pat = "h.*" + name.substr(dot);
    }
    if (!by_pattern.count(pat)) order.push_back(pat);
    by_pattern[pat].emplace_back(name, dt);
  }
  std::string out;
  for (const std::string& pat : order) {
    const auto& v = by_pattern[pat];
    bool same = true;
    for (const auto& e : v) same = same && e.second == v[0].second;
    if (same) out += pat + "=" + dtype_name(v[0].second) + " ";
    else
      for (const auto& e : v) out += e.first + "=" + dtype_name(e.second) + " ";
  }
  if (!out.empty()) out.pop_back();
  return out;
}

// Set by SIGTERM / SIGUSR1; read after every step (all ranks agree on it through one all-reduce).
volatile std::sig_atomic_t g_stop_signal = 0;
extern "C" void on_stop_signal(int sig) { g_stop_signal = sig; }

// Leaf key paths where two resolved configs differ (arrays compare whole).
void config_diff(const nlohmann::json& a, const nlohmann::json& b, const std::string& prefix,
                 std::vector<std::string>* out) {
  if (a.is_object() && b.is_object()) {
    for (auto it = a.begin(); it != a.end(); ++it) {
      const std::string path = prefix.empty() ? it.key() : prefix + "." + it.key();
      if (!b.contains(it.key())) out->push_back(path);
      else config_diff(*it, b.at(it.key()), path, out);
    }
    for (auto it = b.begin(); it != b.end(); ++it)
      if (!a.contains(it.key())) out->push_back(prefix.empty() ? it.key() : prefix + "." + it.key());
  } else if (a != b) {
    out->push_back(prefix);
  }
}

// Every rank must run the same configuration: ranks started with different files (or --set values)
// would otherwise hang in mismatched collectives, corrupt memory (different bucket sizes) or train
// silently wrong (different precisions). One all-gather of a hash of the effective config; on a mismatch
// rank 0's config is broadcast, each rank that differs names the keys, and every rank throws. File paths
// may differ (node-local copies of the data, per-rank files): what they lead to is compared once loaded
// (check_same_data).
nlohmann::json comparable_config(const nlohmann::json& resolved) {
  nlohmann::json c = resolved;
  for (const char* p : {"/data/dir", "/data/train_shards", "/data/val_shards", "/model/init_from", "/checkpoint/dir",
                        "/log/metrics"}) {
    const nlohmann::json::json_pointer ptr(p);
    if (c.contains(ptr)) c[ptr] = nullptr;
  }
  return c;
}

void check_same_config(const Config& cfg, Communicator& comm) {
  const int rank = comm.rank(), size = comm.size();
  const nlohmann::json mine = comparable_config(cfg.resolved);
  const std::string text = mine.dump();
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : text) h = (h ^ c) * 1099511628211ull;
  std::vector<uint64_t> all(static_cast<size_t>(size));
  comm.host_all_gather(&h, all.data(), sizeof h);
  bool same = true;
  for (uint64_t x : all) same = same && x == all[0];
  if (same) return;
  uint64_t len = text.size();
  comm.host_broadcast(&len, sizeof len, 0);
  std::string root(len, '\0');
  if (rank == 0) root = text;
  comm.host_broadcast(root.data(), size_t(len), 0);
  std::vector<std::string> keys;
  config_diff(nlohmann::json::parse(root), mine, "", &keys);
  std::string list;
  for (const std::string& k : keys) list += (list.empty() ? "" : ", ") + k;
  if (rank == 0)
    throw InputError(cfg.source, "", "the ranks were started with different configurations (every rank must run "
                                     "the same one); the ranks that differ name the keys");
  if (keys.empty()) throw PeerInputError();
  throw InputError(cfg.source, "", "rank " + std::to_string(rank) + " runs another configuration than rank 0: " + list);
}

// The data every rank loaded must have the same size, or the ranks would run different numbers of steps.
void check_same_data(const Config& cfg, const char* key, Communicator& comm, int64_t train, int64_t eval) {
  const int rank = comm.rank(), size = comm.size();
  const int64_t mine[2] = {train, eval};
  std::vector<int64_t> all(2 * static_cast<size_t>(size));
  comm.host_all_gather(mine, all.data(), sizeof mine);
  bool same = true;
  for (int r = 0; r < size; ++r) same = same && all[2 * size_t(r)] == all[0] && all[2 * size_t(r) + 1] == all[1];
  if (same) return;
  if (mine[0] == all[0] && mine[1] == all[1]) throw PeerInputError();
  throw InputError(cfg.source, key,
                   "rank " + std::to_string(rank) + " loaded " + std::to_string(train) + " training and " +
                       std::to_string(eval) + " evaluation examples, rank 0 " + std::to_string(all[0]) + " and " +
                       std::to_string(all[1]) + ": every rank must read the same data");
}

}  // namespace

Trainer::Trainer(const Config& cfg, const WorldInfo& world, MPI_Comm mpi_comm, Data data)
    : cfg_(cfg), world_(world), mpi_comm_(mpi_comm), host_(make_mpi_communicator(mpi_comm)) {
  const bool weights_only = data == Data::WeightsOnly;
  world_.rank = host_->rank();
  world_.size = host_->size();
  rank0_ = world_.rank == 0;
  check_same_config(cfg_, *host_);
  agree(*host_, [&] {
    dev_ = std::make_unique<DeviceContext>(cfg_, world_);
    ex_ = dev_->exec();
    prec_ = resolve_precision(cfg_.precision, dev_->caps());
    data_ = weights_only ? no_dataset(cfg_) : load_dataset(cfg_);
    train_count_ = data_->train_count();
    eval_count_ = data_->eval_count();
    if (weights_only) {
      // No sampler: any checkpoint's position in an epoch is accepted, and nothing trains.
      steps_per_epoch_ = std::numeric_limits<int64_t>::max();
      return;
    }
    const int64_t per_step = int64_t(cfg_.train.batch_size) * cfg_.train.grad_accum;
    sampler_ = std::make_unique<DistributedSampler>(train_count_, world_.rank, world_.size, cfg_.train.seed);
    steps_per_epoch_ = sampler_->per_rank() / per_step;
    if (steps_per_epoch_ < 1)
      throw InputError(cfg_.source, "train.batch_size",
                       "batch_size * grad_accum * ranks exceeds the " + std::to_string(train_count_) + " " +
                           data_->words().examples);
  });
  check_same_data(cfg_, data_->source_key(), *host_, train_count_, eval_count_);

  comm_ = ex_.cuda() ? make_nccl_communicator(world_, dev_->comm_stream(), mpi_comm_,
                                              NcclOptions{.symmetric = cfg_.zero.symmetric_memory,
                                                          .copy_engine_reduce = cfg_.zero.copy_engine_reduce})
                     : make_mpi_communicator(mpi_comm_);
  max_batch_ = data_->max_batch(cfg_.train.batch_size);
  model_ = make_model(cfg_.model, cfg_.precision, prec_.model, ex_, max_batch_);
  opt_ = std::make_unique<ShardedOptimizer>(ex_, *comm_, model_->param_specs(), cfg_.zero.stage,
                                            size_t(cfg_.zero.bucket_mb * 1024 * 1024), cfg_.train.seed, dev_->comm_stream(),
                                            state_format_of(cfg_.optimizer), offload_options(cfg_, world_.local_size));
  opt_->set_overlap(cfg_.zero.overlap);
  opt_->set_skip_comm(cfg_.debug.skip_bucket_comm);
  opt_->set_reorder_backward(cfg_.zero.reorder_backward);
  model_->bind(opt_->params());
  if (!cfg_.model.init_from.empty()) {
    std::vector<ParamSpec> specs;
    for (int i = 0; i < opt_->num_params(); ++i) specs.push_back(opt_->spec(i));
    OptimizerState st;
    Gpt2ImportReport rep;
    agree(*host_, [&] { st.master = gpt2_import(cfg_.model.init_from, specs, cfg_.model, &rep); });
    if (rank0_) {
      std::string ignored;
      for (const std::string& n : rep.ignored) ignored += (ignored.empty() ? "" : ", ") + n;
      std::printf("init_from: %s: loaded %d tensor(s); ignored %zu%s%s\n", cfg_.model.init_from.c_str(), rep.loaded,
                  rep.ignored.size(), rep.ignored.empty() ? "" : ": ", ignored.c_str());
    }
    st.m.assign(st.master.size(), 0.f);
    st.v.assign(st.master.size(), 0.f);
    opt_->load_state(st);
  }
  scaler_ = std::make_unique<LossScaler>(cfg_.loss_scale, loss_scaling_enabled(cfg_.loss_scale, prec_.model));
  monitor_ = std::make_unique<StabilityMonitor>(cfg_.monitor);
  total_steps_ = weights_only ? 0 : cfg_.train.steps > 0 ? cfg_.train.steps : int64_t(cfg_.train.epochs) * steps_per_epoch_;
  if (sampler_) sampler_->set_epoch(0);
  data_->reserve(model_->max_batch());
  if (cfg_.precision.layers_auto && !weights_only) auto_precision(true);  // before a resume, which restores its recorded precision
  if (!cfg_.checkpoint.dir.empty() && cfg_.checkpoint.resume) try_resume();
}

Trainer::~Trainer() {
  metrics_.close();
  opt_.reset();
  model_.reset();
  comm_.reset();
  dev_.reset();
}

Batch Trainer::train_batch(int64_t first, int n) {
  std::vector<int64_t> idx(static_cast<size_t>(n));
  for (int j = 0; j < n; ++j) idx[size_t(j)] = sampler_->index(first + j);
  return data_->batch(true, idx.data(), n);
}

// The CPU GEMM backend and, for BLAS, its threads: the node's hardware threads shared among the ranks on
// the node, so that oversubscribed ranks do not fight over cores.
void Trainer::print_banner() const {
  if (!rank0_ || cfg_.log.quiet) return;
  std::printf("mptrain: %d rank(s), device %s, communicator %s\n", world_.size, dev_->description().c_str(), comm_->name());
  std::printf("precision: %s; loss scaling %s (init %g)\n", prec_.mode.c_str(),
              scaler_->enabled() ? "dynamic" : "off", scaler_->scale());
  std::printf("policy: %s softmax/loss=fp32 optimizer=fp32 (fallback: %s)\n",
              policy_summary(model_->layer_dtypes()).c_str(), cfg_.precision.fallback.c_str());
  const MemoryReport m = opt_->memory();
  std::printf("model: %s, %lld parameters, %d bucket(s); ZeRO-%d state per rank: params %s, grads %s, grad shard %s, "
              "master %s, adam %s (%s)%s\n",
              model_->describe().c_str(), static_cast<long long>(opt_->num_elements()), opt_->num_buckets(),
              cfg_.zero.stage, human_bytes(double(m.params)).c_str(), human_bytes(double(m.grads)).c_str(),
              human_bytes(double(m.grad_shard)).c_str(), human_bytes(double(m.master)).c_str(),
              human_bytes(double(m.adam)).c_str(), describe_state(opt_->state_format()).c_str(),
              m.offloaded ? (", master and adam offloaded to host memory, updated by " +
                             std::to_string(offload_options(cfg_, world_.local_size).threads) + " host thread(s)")
                                .c_str()
                          : "");
  std::printf("%s\n", data_->describe(steps_per_epoch_, cfg_.train.batch_size, cfg_.train.grad_accum, world_.size)
                         .c_str());
  const int cpus = usable_cpus(), hw = int(std::max(1u, std::thread::hardware_concurrency()));
  if (m.offloaded && cpus < hw / std::max(1, world_.local_size))
    std::printf("warning: zero.offload: this rank may run on %d CPU(s) of the node's %d (mpirun binds ranks to "
                "cores by default; launch with --bind-to none to give the host update its share)\n", cpus, hw);
  std::fflush(stdout);
}

StepRecord Trainer::train_step() {
  if (!sampler_) throw std::logic_error("Trainer::train_step: this trainer was made without data (Data::WeightsOnly)");
  if (step_in_epoch_ >= steps_per_epoch_) {
    ++epoch_;
    step_in_epoch_ = 0;
    sampler_->set_epoch(epoch_);
  }
  maybe_reanalyze();  // precision.reanalyze_every: outside the step's watchdog scope and its timing
  const auto t0 = Clock::now();
  watchdog_set_step(step_ + 1);  // 1-based, as the progress line prints it
  // On GPUs the host blocks in device readbacks inside the step (the loss) that wait, through the compute
  // stream, on collectives: the whole step is a wait for the other ranks.
  const WaitScope step_wait("the training step");
  StepRecord rec;
  rec.step = step_;
  rec.epoch = epoch_;
  rec.scale = scaler_->scale();
  const int B = cfg_.train.batch_size, A = cfg_.train.grad_accum;
  // Loss is the mean over the global batch's targets: each micro-batch's gradient carries 1 / (B * A * T)
  // here (T = targets per example) and the 1 / world in the unscale pass (DESIGN.md step 3).
  const int64_t tpe = model_->targets_per_example();
  const float grad_scale = float(double(rec.scale) / double(int64_t(B) * A * tpe));
  opt_->zero_grads();
  for (int a = 0; a < A; ++a) {
    const bool last = a == A - 1;
    opt_->begin_micro_batch(last);
    if (last && step_ == cfg_.debug.inject_inf_step && world_.rank == cfg_.debug.inject_inf_rank)
      opt_->inject_inf_next_reduction();
    const Batch batch = train_batch((step_in_epoch_ * A + a) * B, B);
    model_->forward_backward(batch, grad_scale, opt_->grads(), opt_->loss_sum());  // the loss stays on the device
  }
  opt_->finish_reduction();
  rec.lr = learning_rate(cfg_.optimizer, step_, total_steps_);
  AdamWHyper h;
  h.lr = float(rec.lr);
  h.beta1 = float(cfg_.optimizer.beta1);
  h.beta2 = float(cfg_.optimizer.beta2);
  h.eps = float(cfg_.optimizer.eps);
  h.weight_decay = float(cfg_.optimizer.weight_decay);
  // The one wait of the step: the statistics collective (which carries the loss sum) read back.
  const auto t_stats = Clock::now();
  const StepStats st = opt_->reduce_stats(rec.scale, cfg_.optimizer.clip_norm);
  rec.stats_seconds = since(t_stats);
  rec.loss = st.loss_sum / double(int64_t(B) * A * world_.size * tpe);
  rec.grad_norm = st.grad_norm;
  // The monitor sees only values every rank agrees on (the all-reduced loss, the norm and verdict from
  // the one statistics collective), so every rank takes the same decision at the same step.
  const bool at_min = scaler_->enabled() && double(rec.scale) <= cfg_.loss_scale.min;
  const MonitorVerdict verdict = monitor_->observe(rec.loss, st.overflow ? 0.0 : st.grad_norm, st.overflow, at_min);
  rec.action = verdict.action;
  rec.reason = verdict.reason;
  const bool monitor_skip = !st.overflow && verdict.action >= MonitorAction::Skip;
  if (!st.overflow && !monitor_skip) opt_->apply(st, h);
  if (monitor_skip) {
    monitor_->mark_skipped();
    ++monitor_skips_;
  } else {
    scaler_->update(st.overflow);  // a monitor skip is not an overflow: the scale stays where it is
  }
  rec.skipped = st.overflow || monitor_skip;
  rec.overflow = st.overflow;
  rec.next_scale = scaler_->scale();
  overflow_at_min_run_ = (st.overflow && at_min) ? overflow_at_min_run_ + 1 : 0;
  if (overflow_at_min_run_ >= kMinScaleOverflowLimit && verdict.action < MonitorAction::Fallback)
    throw RunFailed("step " + std::to_string(step_) + ": " + std::to_string(overflow_at_min_run_) +
                    " steps in a row overflowed at the minimum loss scale (" + std::to_string(cfg_.loss_scale.min) +
                    "); nothing can train (enable the monitor's fallback, or use bf16)");
  if (verdict.action >= MonitorAction::Log) {
    if (rank0_)
      std::fprintf(stderr, "mptrain: stability monitor at step %lld: %s -> %s\n", static_cast<long long>(step_ + 1),
                   verdict.reason.c_str(), monitor_action_name(verdict.action));
    log_event("monitor", {{"step", step_ + 1}, {"action", monitor_action_name(verdict.action)},
                          {"reason", verdict.reason}});
  }
  const bool probation = recovery_.attempted_at >= 0 && prec_.model == recovery_.faster;
  if (verdict.action == MonitorAction::Fallback) {
    fallback(verdict.reason);
  } else if (probation && st.overflow && (at_min || !scaler_->enabled()) && verdict.action < MonitorAction::Stop) {
    // Overflowing with no room left to back the scale off (at loss_scale.min, or scaling off): the faster
    // precision still cannot hold this run. Overflows above the minimum are the scaler's ordinary work.
    rec.action = MonitorAction::Fallback;
    rec.reason = "overflow at the minimum loss scale " + std::to_string(step_ + 1 - recovery_.attempted_at) +
                 " step(s) after the recovery to " + dtype_name(prec_.model);
    fallback(rec.reason);
  }
  const bool clean_step = !rec.skipped && rec.action < MonitorAction::Skip;
  if (verdict.action == MonitorAction::Stop)
    throw StabilityStop("step " + std::to_string(step_) + ": " + verdict.reason + " (monitor action: stop)");
  if (cfg_.debug.check_consistency) {
    uint64_t mine[2] = {opt_->param_hash(), 0};
    float s = scaler_->scale();
    std::memcpy(&mine[1], &s, sizeof s);
    std::vector<uint64_t> all(size_t(2 * world_.size));
    host_->host_all_gather(mine, all.data(), sizeof mine);
    for (int r = 0; r < world_.size; ++r)
      if (all[size_t(2 * r)] != mine[0] || all[size_t(2 * r + 1)] != mine[1])
        MPT_FATAL("debug.check_consistency", "rank " + std::to_string(r) + " differs in parameters or loss scale at step " +
                                                 std::to_string(step_));
  }
  // No wait at the end of the step: the update and the parameter all-gather run while the host prepares
  // and queues the next step; its statistics readback waits for them. rec.seconds is host time from one
  // step's start to the next, which in steady state is the device's step time.
  rec.seconds = since(t0);
  ++step_;
  ++step_in_epoch_;
  maybe_recover(clean_step);  // between steps: the next one may run in the faster precision again
  return rec;
}

EvalResult Trainer::evaluate() {
  double loss = 0;
  int64_t correct = 0, count = 0;
  const int B = model_->max_batch();
  const int64_t tpe = model_->targets_per_example();
  std::vector<int64_t> idx;
  for (int64_t i = world_.rank; i < eval_count_; i += world_.size) idx.push_back(i);
  // Every rank runs the same number of batches (a capped evaluation stays balanced).
  int64_t batches = 0;
  for (size_t s = 0; s < idx.size(); s += size_t(B)) {
    if (cfg_.train.eval_batches > 0 && batches == cfg_.train.eval_batches) break;
    const int n = int(std::min<size_t>(size_t(B), idx.size() - s));
    const Batch b = data_->batch(false, idx.data() + s, n);
    model_->evaluate(b, &loss, &correct);
    count += int64_t(n) * tpe;
    ++batches;
  }
  double v[3] = {loss, double(correct), double(count)}, g[3];
  {
    const WaitScope wait("the all-reduce of the evaluation");
    host_->host_all_reduce(v, g, 3, ReduceOp::Sum);
  }
  EvalResult r;
  r.count = int64_t(g[2]);
  r.loss = g[0] / std::max(1.0, g[2]);
  r.accuracy = g[1] / std::max(1.0, g[2]);
  return r;
}

TrainSummary Trainer::run() {
  print_banner();
  open_metrics();
  report_auto_precision();
  watchdog_start(cfg_.watchdog_timeout_s);
  struct StopWatchdog {
    ~StopWatchdog() { watchdog_stop(); }
  } stop_watchdog;
  TrainSummary sum;
  const auto t_run = Clock::now();
  auto t_epoch = Clock::now();
  progress_ = Progress{t_run, t_run, 0, 0, 0};
  // A language model counts tokens, a classifier samples.
  const DatasetWords& words = data_->words();
  const char* unit = words.unit;
  const int64_t global_batch = units_per_step();
  auto log_eval = [&](const EvalResult& ev, MetricsRecord extra) {
    const std::string p = words.eval_key;
    MetricsRecord j = {{"type", "eval"}, {"step", step_}};
    j.update(extra);
    j[p + "loss"] = ev.loss;
    j[p + "accuracy"] = ev.accuracy;
    j[p + words.unit] = ev.count;
    if (words.perplexity) j[p + "ppl"] = std::exp(ev.loss);
    metrics_.write(std::move(j));
  };
  double step_time_sum = 0, last_loss = 0;
  int64_t timed_steps = 0, steps_run = 0, skipped_run = 0;
  // A preemption notice (SIGTERM, SIGUSR1) stops the run after the current step on every rank.
  g_stop_signal = 0;
  struct sigaction sa = {}, old_term = {}, old_usr1 = {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, &old_term);
  sigaction(SIGUSR1, &sa, &old_usr1);
  struct RestoreSignals {
    struct sigaction term, usr1;
    ~RestoreSignals() {
      sigaction(SIGTERM, &term, nullptr);
      sigaction(SIGUSR1, &usr1, nullptr);
    }
  } restore{old_term, old_usr1};
  while (step_ < total_steps_) {
    const StepRecord r = train_step();
    last_loss = r.loss;
    ++steps_run;
    skipped_run += r.skipped ? 1 : 0;
    if (steps_run > 1) {  // the first step of a process pays for cuBLASLt plans and NCCL warm-up
      step_time_sum += r.seconds;
      ++timed_steps;
    }
    log_step(r);
    const bool epoch_end = step_in_epoch_ == steps_per_epoch_;
    const bool periodic = cfg_.train.eval_every > 0 && step_ % cfg_.train.eval_every == 0 && eval_count_ > 0;
    if (periodic && !epoch_end && step_ != total_steps_) {
      const EvalResult ev = evaluate();
      if (rank0_ && !cfg_.log.quiet)
        std::printf("eval at step %lld | %s loss %.4f%s | accuracy %.2f%%\n", static_cast<long long>(step_),
                    words.eval_split, ev.loss,
                    words.perplexity ? (" (ppl " + std::to_string(std::exp(ev.loss)) + ")").c_str() : "",
                    100 * ev.accuracy);
      log_eval(ev, MetricsRecord::object());
    }
    if (epoch_end || step_ == total_steps_) {
      const double secs = since(t_epoch);
      EvalResult ev;
      if ((cfg_.train.eval_each_epoch || step_ == total_steps_) && eval_count_ > 0) ev = evaluate();
      sum.epoch_seconds.push_back(secs);
      sum.epoch_accuracy.push_back(ev.accuracy);
      if (rank0_ && !cfg_.log.quiet)
        std::printf("epoch %d done in %.1f s | %s loss %.4f | %s accuracy %.2f%%\n", r.epoch + 1, secs,
                    words.eval_split, ev.loss, words.accuracy, 100 * ev.accuracy);
      if (ev.count > 0) log_eval(ev, {{"epoch", r.epoch + 1}, {"epoch_s", secs}});
      else log_event("epoch_end", {{"epoch", r.epoch + 1}, {"epoch_s", secs}});
      sum.test = ev;
      if (!cfg_.checkpoint.dir.empty()) save_checkpoint();
      t_epoch = Clock::now();
    } else if (!cfg_.checkpoint.dir.empty() && cfg_.checkpoint.every_steps > 0 &&
               step_ % cfg_.checkpoint.every_steps == 0) {
      save_checkpoint();
    }
    const double stop = double(g_stop_signal);
    double any_signal = 0;
    {
      const WaitScope wait("the end-of-step agreement");
      host_->host_all_reduce(&stop, &any_signal, 1, ReduceOp::Max);
    }
    const int any = int(any_signal);
    if (any != 0) {
      std::string where = "no checkpoint (checkpoint.dir is not set)";
      if (!cfg_.checkpoint.dir.empty()) {
        save_checkpoint();
        where = "checkpoint saved in " + cfg_.checkpoint.dir;
      }
      log_event("interrupted", {{"signal", any}});
      throw Interrupted("signal " + std::to_string(any) + " after step " + std::to_string(step_) + "; " + where);
    }
  }
  sum.steps = step_;
  sum.skipped = skipped_total();
  sum.seconds = since(t_run);
  sum.final_scale = scaler_->scale();
  sum.peak_device_bytes = peak_allocated_bytes(ex_.device) + ex_.workspace_bytes;
  if (ex_.cuda()) sum.device_used_bytes = peak_device_memory();
  if (rank0_) {  // log.quiet keeps the summary
    std::printf("summary: %lld steps (%lld skipped) in %.1f s | %s %.4f | accuracy %.2f%% | final scale %g | "
                "peak %s memory per rank: %s allocated by mptrain",
                static_cast<long long>(sum.steps), static_cast<long long>(sum.skipped), sum.seconds,
                (std::string(words.eval_split) + " loss").c_str(), sum.test.loss, 100 * sum.test.accuracy, sum.final_scale,
                ex_.cuda() ? "GPU" : "host", human_bytes(double(sum.peak_device_bytes)).c_str());
    if (ex_.cuda()) std::printf(", %s in use on the device", human_bytes(double(sum.device_used_bytes)).c_str());
    std::printf("\n");
    if (timed_steps > 0)
      std::printf("throughput: %.1f ms per step (steps 2..%lld), %.0f %s/s over %d rank(s)\n",
                  1e3 * step_time_sum / double(timed_steps), static_cast<long long>(sum.steps),
                  double(global_batch) * double(timed_steps) / step_time_sum, unit, world_.size);
  }
  // The outcome, from values every rank agrees on (all-reduced losses, the shared overflow verdicts), so
  // every rank fails or succeeds alike.
  std::string failure;
  if (steps_run > 0 && !std::isfinite(last_loss))
    failure = "the loss of the last step is " + std::to_string(last_loss);
  else if (steps_run >= 10 && 2 * skipped_run > steps_run)
    failure = std::to_string(skipped_run) + " of the " + std::to_string(steps_run) +
              " steps of this run were skipped (overflow or monitor); the model barely trained";
  else if (eval_count_ > 0 && sum.test.count > 0 && !std::isfinite(sum.test.loss))
    failure = std::string(words.eval_split) + " loss is " + std::to_string(sum.test.loss);
  if (metrics_.enabled()) {
    MetricsRecord j = {{"type", "summary"}, {"run_id", run_id_}, {"steps", sum.steps}, {"steps_run", steps_run}, {"skipped", sum.skipped},
                        {"seconds", sum.seconds}, {"test_accuracy", sum.test.accuracy}, {"test_loss", sum.test.loss},
                        {"final_scale", sum.final_scale}, {"precision", prec_.mode}, {"ranks", world_.size},
                        {"zero_stage", cfg_.zero.stage}, {"device", dev_->description()},
                        {"peak_allocated_bytes", sum.peak_device_bytes},
                        {"device_used_bytes", sum.device_used_bytes},
                        {"epoch_seconds", sum.epoch_seconds}, {"monitor_skips", monitor_skips_},
                        {"fallbacks", MetricsRecord::parse(fallbacks_json().dump())},
                        {"mean_step_s", timed_steps > 0 ? step_time_sum / double(timed_steps) : 0.0},
                        {std::string(unit) + "_per_s",
                         timed_steps > 0 ? double(global_batch) * double(timed_steps) / step_time_sum : 0.0}};
    // Besides test_loss / test_accuracy, a split of another name reports under its own keys too (val_loss).
    if (std::string(words.eval_key) != "test_") {
      j[std::string(words.eval_key) + "loss"] = sum.test.loss;
      j[std::string(words.eval_key) + "accuracy"] = sum.test.accuracy;
    }
    if (!failure.empty()) j["failure"] = failure;
    metrics_.write(std::move(j));
    metrics_.close();
  }
  if (!failure.empty()) throw RunFailed(failure);
  return sum;
}

}  // namespace mpt
