// ShardedAdamW: the update of ZeRO stages 0/1/2 over the ranges this rank owns (src/optim/layout.h).
// reduce_stats is the fused unscale + statistics pass over the owned parts of the reduced gradient and the
// ONE all-reduce of {non-finite count, sum of squares} that gives every rank the same overflow verdict and
// global gradient norm (hence the clip coefficient); apply runs AdamW on the FP32 master shard (writing
// the new model-dtype values in the same kernel) and has the ParamStore all-gather the updated shards.
#pragma once

#include <cstdint>
#include <vector>

#include "comm/communicator.h"
#include "kernels/adamw.h"
#include "kernels/exec.h"
#include "src/core/buffer.h"
#include "src/core/comm_exposure.h"
#include "src/optim/grad_reducer.h"
#include "src/optim/param_store.h"

namespace mpt {

struct StepStats {
  bool overflow = false;
  double nonfinite = 0;
  double grad_norm = 0;              // global L2 norm of the unscaled gradient
  double clip_coef = 1;
  float grad_unscale = 1;            // 1 / (loss scale * world): what the update multiplies the gradient by
};

class ShardedAdamW {
 public:
  ShardedAdamW(const Exec& ex, Communicator& comm, ParamStore& store, const GradReducer& grads,
               ExposureProbe& probe);

  // Unscale + statistics + the one collective + verdict and clip coefficient. loss_scale: the S the loss
  // was multiplied by.
  StepStats reduce_stats(float loss_scale, double clip_norm);
  // AdamW + all-gather (must not be called for an overflowing step).
  void apply(const StepStats& st, const AdamWHyper& hyper);
  // Both; on overflow nothing is updated.
  StepStats step(float loss_scale, const AdamWHyper& hyper, double clip_norm);

  int64_t adam_step() const { return adam_step_; }
  void set_adam_step(int64_t t) { adam_step_ = t; }
  // This rank's FP32 moment shards, one buffer per group (laid out as the master shard).
  std::vector<Buffer*> m() { return pick(&Group::m); }
  std::vector<Buffer*> v() { return pick(&Group::v); }
  size_t moment_bytes() const;

 private:
  struct Group {
    Buffer m, v;
    // The update's and the statistics' segment lists (kernels/adamw.h, kernels/unscale_stats.h), on the
    // executing device.
    Buffer update_segs, stat_segs;
    int n_update_segs = 0, n_stat_segs = 0;
    int64_t update_elems = 0, stat_elems = 0;
  };
  std::vector<Buffer*> pick(Buffer Group::*which) {
    std::vector<Buffer*> r;
    for (Group& g : groups_) r.push_back(&(g.*which));
    return r;
  }

  Exec ex_;
  Communicator& comm_;
  ParamStore& store_;
  const GradReducer& grads_;
  ExposureProbe& probe_;
  std::vector<Group> groups_;
  Buffer stats_;                     // 2 floats: non-finite count, sum of squares
  int64_t adam_step_ = 0;
};

}  // namespace mpt
