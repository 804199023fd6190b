// The training loop: device and communicator set-up, data, model, ZeRO optimizer, loss scaling, logging,
// evaluation and checkpoints. Trainer exposes single steps so the multi-rank tests can drive it.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <stdexcept>
#include <memory>
#include <string>
#include <vector>

#include <mpi.h>

#include "comm/bootstrap.h"
#include "src/optim/amp.h"
#include "src/core/check.h"
#include "src/config/config.h"
#include "src/data/data.h"
#include "src/data/dataset.h"
#include "src/train/device_context.h"
#include "src/train/metrics.h"
#include "src/model/model.h"
#include "src/optim/stability.h"
#include "src/data/tokens.h"
#include "src/optim/zero.h"

namespace mpt {

// Runs `body` on every rank; if it throws InputError on any rank, every rank throws: one rank per distinct
// message rethrows its error (the lowest-numbered rank that has it: rank 0 when every rank failed alike,
// the failing rank when one failed), the others a PeerInputError, so the CLI prints each problem once and
// every rank exits 2. No rank goes on into a collective alone.
struct PeerInputError : std::runtime_error {
  PeerInputError() : std::runtime_error("another rank reported bad input") {}
};
// The collective half of agree: returns when no rank failed, else throws as described above. Over an MPI
// communicator (commands, before any Trainer exists) or a Communicator's host collectives (the Trainer).
void settle_input_errors(MPI_Comm comm, const std::exception_ptr& err, const std::string& message);
void settle_input_errors(Communicator& comm, const std::exception_ptr& err, const std::string& message);
template <class Comm, class F>
void agree(Comm&& comm, F&& body) {
  std::exception_ptr err;
  std::string message;
  try {
    body();
  } catch (const InputError& e) {
    err = std::current_exception();
    message = e.what();
  }
  settle_input_errors(comm, err, message);
}

struct StepRecord {
  int64_t step = 0;                  // index of this step (0-based)
  int epoch = 0;
  double loss = 0;                   // mean over the global batch (all ranks, all micro-batches)
  float scale = 1;                   // loss scale used by this step
  float next_scale = 1;              // after the verdict
  bool skipped = false;
  bool overflow = false;             // non-finite gradients: skipped, and grad_norm means nothing
  double grad_norm = 0;
  double lr = 0;
  double seconds = 0;
  // Host time in the statistics readback, the step's one wait for the device: near zero means the host
  // (not the device) sets the pace.
  double stats_seconds = 0;
  MonitorAction action = MonitorAction::None;  // the stability monitor's decision for this step
  std::string reason;
};

struct FallbackEvent {
  int64_t step = 0;                  // 1-based, the step whose verdict asked for it
  DType from = DType::F16, to = DType::BF16;
  std::string reason;
  bool recovery = false;             // a return to the faster precision (monitor.recover_after)
};

// The stability monitor decided to stop (action stop, or a fallback with none allowed). Every rank
// throws it at the same step; the CLI exits with kExitStability.
struct StabilityStop : std::runtime_error {
  explicit StabilityStop(const std::string& m) : std::runtime_error(m) {}
};
inline constexpr int kExitStability = 3;

// The run reached its end but did not train: the final loss is not finite, most steps were skipped, or an
// fp16 run kept overflowing at the minimum loss scale (checked with or without the monitor). Every rank
// throws it at the same point (the values are all-reduced ones); the CLI exits with kExitRunFailed.
struct RunFailed : std::runtime_error {
  explicit RunFailed(const std::string& m) : std::runtime_error(m) {}
};
inline constexpr int kExitRunFailed = 4;

// SIGTERM or SIGUSR1 (a scheduler's preemption notice) reached a rank: every rank stops after the same
// step, a checkpoint is saved when checkpoint.dir is set, and the CLI exits with kExitInterrupted.
struct Interrupted : std::runtime_error {
  explicit Interrupted(const std::string& m) : std::runtime_error(m) {}
};
inline constexpr int kExitInterrupted = 5;
// Overflowing steps in a row at loss_scale.min after which a run stops even with the monitor off.
inline constexpr int kMinScaleOverflowLimit = 200;

// Classifier: test loss and accuracy over examples. Language model: validation loss per token and
// next-token accuracy (count = tokens).
struct EvalResult { double loss = 0, accuracy = 0; int64_t count = 0; };

struct TrainSummary {
  int64_t steps = 0, skipped = 0;
  double seconds = 0, final_scale = 1;
  EvalResult test;
  std::vector<double> epoch_seconds;
  std::vector<double> epoch_accuracy;
  size_t peak_device_bytes = 0;       // allocated by mptrain's own buffers (peak)
  size_t device_used_bytes = 0;       // CUDA: device memory in use at the end (context, NCCL, cuBLAS included)
};

class Trainer {
 public:
  // mpi_comm: the ranks that train together (MPI_COMM_WORLD; tests use sub-communicators).
  // data = WeightsOnly (mptrain sample, export): the data section is not read (its files need not exist),
  // no automatic precision analysis runs (it needs batches), and train_step() throws; the weights come
  // from the checkpoint as usual.
  enum class Data { Load, WeightsOnly };
  Trainer(const Config& cfg, const WorldInfo& world, MPI_Comm mpi_comm = MPI_COMM_WORLD, Data data = Data::Load);
  ~Trainer();

  // One optimizer step (grad_accum micro-batches) from the sampler; advances the epoch when it runs out.
  StepRecord train_step();
  EvalResult evaluate();
  // The whole run: epochs/steps, progress lines, metrics JSONL, evaluation, checkpoints, summary.
  TrainSummary run();

  // Collective: writes checkpoint.dir/ckpt-<step>.bin from rank 0.
  void save_checkpoint();

  ShardedOptimizer& optimizer() { return *opt_; }
  const LossScaler& scaler() const { return *scaler_; }
  Communicator& comm() { return *comm_; }
  const Exec& exec() const { return ex_; }
  DType model_dtype() const { return prec_.model; }
  const HardwareCaps& hardware() const { return dev_->caps(); }
  Model& model() { return *model_; }
  // Precision switches of this run in order: fallbacks, and recoveries (recovery = true).
  const std::vector<FallbackEvent>& fallbacks() const { return fallbacks_; }
  // The model dtype and the per-layer rules of every rank become `to` / `layers` (a collective: every rank
  // calls it at the same step): the model and the optimizer are rebuilt around the FP32 master weights and
  // AdamW moments, which carry over bit for bit; the loss scaler starts afresh for the new dtype.
  void switch_precision(DType to, const std::vector<LayerPrecision>& layers, const std::string& mode);
  // A fallback to the safer precision (precision.fallback), as the monitor's verdict takes it (tests may
  // force one; every rank must call it at the same step); arms the recovery when monitor.recover_after > 0.
  void fallback(const std::string& reason);
  // precision.layers = "auto" with precision.reanalyze_every = N: after a multiple of N steps, decide again
  // (collective) and switch every rank when the decision changed. train_step calls it before each step;
  // once per step count.
  void maybe_reanalyze();
  int64_t monitor_skips() const { return monitor_skips_; }
  int64_t skipped_total() const { return prior_skipped_ + scaler_->skipped() + monitor_skips_; }
  const Config& config() const { return cfg_; }
  bool language_model() const { return cfg_.data.dataset == "tokens"; }
  // Fills the micro-batch of training examples first .. first+n-1 of this rank's epoch order.
  Batch train_batch(int64_t first, int n);
  int64_t steps_per_epoch() const { return steps_per_epoch_; }
  int64_t total_steps() const { return total_steps_; }

 private:
  void print_banner() const;
  void try_resume();
  // Rank 0: the checkpoint file and `latest`; returns the file's path.
  std::string write_checkpoint_files(const OptimizerState& state);
  DType fallback_target() const;
  nlohmann::json fallbacks_json() const;
  // Metrics file and progress line (src/train/train_log.cpp). open_metrics is collective: a metrics file that
  // cannot be opened ends every rank with exit 2.
  void open_metrics();
  MetricsRecord header_record() const;
  void log_step(const StepRecord& r);
  void log_event(const std::string& event, MetricsRecord fields);
  int64_t units_per_step() const;  // tokens (language model) or samples of one optimizer step, all ranks

  Config cfg_;
  WorldInfo world_;
  MPI_Comm mpi_comm_;                // what the communicators are made from
  std::unique_ptr<Communicator> host_;  // MPI: every host value the ranks exchange (checks, losses, flags)
  bool rank0_;
  std::unique_ptr<DeviceContext> dev_;  // destroyed after everything that uses the device
  Exec ex_;                          // dev_->exec()
  ResolvedPrecision prec_;
  std::unique_ptr<Communicator> comm_;
  std::unique_ptr<Dataset> data_;
  int64_t train_count_ = 0, eval_count_ = 0;  // data_'s, agreed across ranks
  std::unique_ptr<DistributedSampler> sampler_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<ShardedOptimizer> opt_;
  std::unique_ptr<LossScaler> scaler_;
  std::unique_ptr<StabilityMonitor> monitor_;
  std::vector<FallbackEvent> fallbacks_;
  // Recovery after a fallback (monitor.recover_after): the faster precision and its rules, the clean steps
  // in a row seen since, the wait before trying it, the attempts so far, and the step of the last attempt
  // (-1: none in probation). An attempt starts at the loss scale the faster precision fell back at; an
  // overflow at the minimum scale (or with scaling off) during its probation (the `wait` steps after it)
  // falls back at once, and any fallback in the probation doubles the wait.
  struct Recovery {
    bool armed = false;
    DType faster = DType::F16;
    std::vector<LayerPrecision> layers;
    int64_t clean = 0, wait = 0, attempted_at = -1;
    int attempts = 0;
    double scale = 0;                // the loss scale of the faster precision when it fell back (0: none)
  } recovery_;
  void maybe_recover(bool clean_step);
  // precision.layers = "auto" (src/train/train_auto.cpp): decide (collective) and switch when the decision
  // changes; the report (console lines, `precision_auto` metrics event) waits for run() at start.
  void auto_precision(bool at_start);
  void report_auto_precision();
  nlohmann::json auto_report_;
  int64_t reanalyzed_at_ = -1;
  std::vector<std::string> auto_lines_;
  // Resume: the precision (and recovery state) a checkpoint records, switched to before its state loads.
  void restore_precision(const std::string& path, const nlohmann::json& precision);
  int64_t prior_skipped_ = 0, monitor_skips_ = 0;
  int max_batch_ = 0;
  int64_t steps_per_epoch_ = 0, total_steps_ = 0;
  int64_t step_ = 0, step_in_epoch_ = 0;
  int64_t overflow_at_min_run_ = 0;  // overflowing steps in a row at loss_scale.min
  int epoch_ = 0;
  MetricsLog metrics_;
  std::string resumed_from_;         // checkpoint this run resumed from ("" : a fresh run)
  std::string run_id_;
  double flops_per_unit_ = 0, peak_flops_ = 0;  // MFU: model FLOPs per token/sample; peak of all ranks
  struct Progress {
    std::chrono::steady_clock::time_point start, window;
    int64_t window_units = 0, window_steps = 0, steps = 0;
  } progress_;
};


}  // namespace mpt
