// The training loop: device and communicator set-up, data, model, ZeRO optimizer, loss scaling, logging,
// evaluation and checkpoints. Trainer exposes single steps so the multi-rank tests can drive it.
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <mpi.h>

#include "comm/bootstrap.h"
#include "src/amp.h"
#include "src/config.h"
#include "src/data.h"
#include "src/mlp.h"
#include "src/zero.h"

namespace mpt {

struct StepRecord {
  int64_t step = 0;                  // index of this step (0-based)
  int epoch = 0;
  double loss = 0;                   // mean over the global batch (all ranks, all micro-batches)
  float scale = 1;                   // loss scale used by this step
  float next_scale = 1;              // after the verdict
  bool skipped = false;
  double grad_norm = 0;
  double lr = 0;
  double seconds = 0;
};

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
  Trainer(const Config& cfg, const WorldInfo& world, MPI_Comm mpi_comm = MPI_COMM_WORLD);
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
  int64_t steps_per_epoch() const { return steps_per_epoch_; }
  int64_t total_steps() const { return total_steps_; }

 private:
  void setup_device();
  void print_banner() const;
  void try_resume();

  Config cfg_;
  WorldInfo world_;
  MPI_Comm mpi_comm_;
  bool rank0_;
  Exec ex_;
  Stream comm_stream_ = nullptr;
  HardwareCaps hw_;
  std::string device_desc_;
  ResolvedPrecision prec_;
  std::unique_ptr<Communicator> comm_;
  ImageDataset train_, test_;
  std::unique_ptr<DistributedSampler> sampler_;
  std::unique_ptr<Mlp> model_;
  std::unique_ptr<ShardedOptimizer> opt_;
  std::unique_ptr<LossScaler> scaler_;
  int64_t steps_per_epoch_ = 0, total_steps_ = 0;
  int64_t step_ = 0, step_in_epoch_ = 0;
  int epoch_ = 0;
  std::vector<float> xbuf_;
  std::vector<int32_t> ybuf_;
  std::FILE* metrics_ = nullptr;
};

// `mptrain train CONFIG [--set k=v]...`: returns the process exit code (0, or 2 for bad input).
int train_command(int argc, char** argv);

}  // namespace mpt
