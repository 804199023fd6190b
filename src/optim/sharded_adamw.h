// ShardedAdamW: the update of ZeRO stages 0/1/2 over the ranges this rank owns (src/optim/layout.h).
// reduce_stats is the fused unscale + statistics pass over the owned parts of the reduced gradient and the
// ONE all-reduce of {non-finite count, sum of squares} that gives every rank the same overflow verdict and
// global gradient norm (hence the clip coefficient); apply runs AdamW on the FP32 master shard (writing
// the new model-dtype values in the same kernel) and has the ParamStore all-gather the updated shards.
// The moments are FP32, or bf16 / blockwise int8 (optimizer.state_dtype, kernels/adamw_lowp.h; the blocks
// are built in src/optim/adamw_lowp_blocks.cpp). The statistics buffer also carries the step's loss sum,
// which the model adds into on the device (loss_sum()), so it rides in the same all-reduce.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "comm/communicator.h"
#include "kernels/adamw.h"
#include "kernels/adamw_lowp.h"
#include "kernels/exec.h"
#include "src/core/buffer.h"
#include "src/core/comm_exposure.h"
#include "src/core/worker_pool.h"
#include "src/optim/grad_reducer.h"
#include "src/optim/param_store.h"

namespace mpt {

// zero.offload = cpu (README, "Optimizer offload"): the FP32 master shard and the moments live in host
// memory and the update runs on `threads` host threads, bucket by bucket in the order the next forward
// uses them. Each bucket's reduced gradient reaches the host during backward (GradReducer::enable_host_copy);
// the update writes the new model-dtype values over it and uploads them, then the bucket is all-gathered,
// both on the communication stream, while the host updates the next bucket. The host kernels are the CPU
// twins of the CUDA ones, which agree bit for bit, so an offloaded run computes the same values.
struct OffloadOptions {
  bool cpu = false;
  int threads = 1;
};

struct StepStats {
  bool overflow = false;
  double nonfinite = 0;
  double grad_norm = 0;              // global L2 norm of the unscaled gradient
  double clip_coef = 1;
  float grad_unscale = 1;            // 1 / (loss scale * world): what the update multiplies the gradient by
  double loss_sum = 0;               // all ranks' loss_sum() of the step, summed (in the same collective)
};

class ShardedAdamW {
 public:
  // offload.cpu: the store's master must be on the host and the reducer's host copy enabled.
  ShardedAdamW(const Exec& ex, Communicator& comm, ParamStore& store, GradReducer& grads, ExposureProbe& probe,
               StateFormat state = {}, OffloadOptions offload = {});
  ~ShardedAdamW() = default;
  ShardedAdamW(const ShardedAdamW&) = delete;
  ShardedAdamW& operator=(const ShardedAdamW&) = delete;

  // Start of a step: zero the loss sum. loss_sum(): one FP32 on the executing device into which the model
  // adds each micro-batch's loss sum (Model::forward_backward); reduce_stats all-reduces it with the
  // gradient statistics and returns it in StepStats::loss_sum, so the loss costs no readback of its own.
  void begin_step();
  float* loss_sum() { return stats_.as<float>() + 2; }

  // Unscale + statistics + the one collective + verdict and clip coefficient. loss_scale: the S the loss
  // was multiplied by.
  StepStats reduce_stats(float loss_scale, double clip_norm);
  // AdamW + all-gather (must not be called for an overflowing step).
  void apply(const StepStats& st, const AdamWHyper& hyper);
  // Both; on overflow nothing is updated.
  StepStats step(float loss_scale, const AdamWHyper& hyper, double clip_norm);

  int64_t adam_step() const { return adam_step_; }
  void set_adam_step(int64_t t) { adam_step_ = t; }
  const StateFormat& state_format() const { return state_; }
  bool lowp() const { return state_.dtype != StateDType::F32; }
  // This rank's moment shards, one buffer per group (laid out as the master shard): FP32 states only.
  std::vector<Buffer*> m() { return pick(&Group::m); }
  std::vector<Buffer*> v() { return pick(&Group::v); }
  // Any state dtype: the FP32 values the moments stand for, per group on the executing device (checkpoints),
  // and the reverse (low-precision states: requantised; loading what moments_as_f32 gave restores the same
  // codes and scales).
  std::vector<Buffer> moments_as_f32(bool v) const;
  void set_moments_from_f32(const std::vector<Buffer>& m, const std::vector<Buffer>& v);
  size_t moment_bytes() const;        // m, v and (int8) their scales
  size_t list_bytes() const;         // the update's segment and block lists (where the moments are)
  bool offloaded() const { return offload_.cpu; }

 private:
  struct Group {
    Buffer m, v;
    // The update's and the statistics' segment lists (kernels/adamw.h, kernels/unscale_stats.h), on the
    // executing device.
    Buffer update_segs, stat_segs;
    int n_update_segs = 0, n_stat_segs = 0;
    int64_t update_elems = 0, stat_elems = 0;
    // Low-precision states: m and v hold StateFormat storage; the update runs over quantisation blocks,
    // each a run of segments of its own.
    Buffer lowp_segs, lowp_blocks, lowp_scales;
    std::vector<AdamWQBlock> host_blocks;
    int n_lowp_blocks = 0;
    int64_t lowp_max_len = 0;
    // Per bucket: the range of update segments (fp32 states) or quantisation blocks (low-precision states)
    // it holds and their elements; offload: its owned runs {flat, store, len} to upload.
    std::vector<std::pair<int, int>> bucket_work;
    std::vector<int64_t> bucket_elems;
    struct Upload { int64_t flat = 0, store = 0, len = 0; };
    std::vector<std::vector<Upload>> uploads;
  };
  void update_bucket_on_host(int gi, size_t k, Stream s, float grad_unscale, const AdamWHyper& h);
  // The update of bucket k of group gi on stream s (the device or, on CPU ranks, the host).
  void update_bucket(int gi, size_t k, Stream s, float grad_unscale, const AdamWHyper& h);
  // Offload: the bucket of flat position x in group gi.
  size_t bucket_of(int gi, int64_t flat) const;
  void build_lowp(int gi);  // src/optim/adamw_lowp_blocks.cpp
  void lowp_to_f32(const Group& g, int64_t owned, std::vector<float>* m, std::vector<float>* v) const;
  void lowp_from_f32(Group& g, const std::vector<float>& m, const std::vector<float>& v);
  std::vector<Buffer*> pick(Buffer Group::*which) {
    std::vector<Buffer*> r;
    for (Group& g : groups_) r.push_back(&(g.*which));
    return r;
  }

  Exec ex_;
  Communicator& comm_;
  ParamStore& store_;
  GradReducer& grads_;
  ExposureProbe& probe_;
  std::vector<Group> groups_;
  Buffer stats_;                     // 3 floats: non-finite count, sum of squares, loss sum
  int64_t adam_step_ = 0;
  StateFormat state_;
  OffloadOptions offload_;
  Device state_dev_;                 // where master, m, v and the update's segment lists live
  std::unique_ptr<WorkerPool> pool_;  // offload
};

}  // namespace mpt
