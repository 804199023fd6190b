// ShardedOptimizer: ZeRO stages 0/1/2 (README, "One training step") as the trainer drives them. It only
// composes the three parts and sequences a step; each part is its own file:
//   src/optim/layout.h        the flat layout: per-dtype groups, buckets, shards, owned ranges
//   src/optim/param_store.h   parameters, FP32 master, init, the all-gather of updated shards, full state
//   src/optim/grad_reducer.h  gradients, ZeRO-2 staging slots, the GradSink, bucket reduction
//   src/optim/sharded_adamw.h unscale + statistics + the overflow collective, clipping, AdamW
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "kernels/adamw.h"
#include "kernels/exec.h"
#include "src/core/buffer.h"
#include "src/core/comm_exposure.h"
#include "src/core/param.h"
#include "src/optim/grad_reducer.h"
#include "src/optim/layout.h"
#include "src/optim/param_store.h"
#include "src/optim/sharded_adamw.h"

namespace mpt {

// Parameter i as tests and tools see it.
struct ParamView {
  void* param = nullptr;             // model dtype, in the group's flat parameter buffer
  void* grad = nullptr;              // stages 0/1: model dtype, in the group's flat gradient buffer;
                                     // stage 2: null (ask grad(i) during backward)
  DType dtype = DType::F32;
  int group = 0;
  int bucket = 0;
  int64_t offset = 0;                // element offset in the group's flat buffers
  int64_t numel = 0;
};

struct MemoryReport {
  size_t params = 0, grads = 0, grad_shard = 0, master = 0, adam = 0;
  size_t grad_staging = 0;           // stage 2: bucket staging slots allocated so far (peak), and the
                                     // one bucket-part temporary of micro-batches after the first
  size_t adam_lists = 0;             // the update's segment and quantisation-block lists (with adam)
  bool offloaded = false;            // zero.offload = cpu: master, adam and its lists are in host memory
  size_t host_copy = 0;              // zero.offload = cpu: the (pinned) host copy of the owned gradient
  // On the executing device.
  size_t total() const {
    return params + grads + grad_shard + grad_staging + (offloaded ? 0 : master + adam + adam_lists);
  }
};

class ShardedOptimizer : public GradSink {
 public:
  static constexpr int64_t kAlign = FlatLayout::kAlign;
  using FullState = OptimizerState;

  // comm_stream: where bucket collectives run (CUDA); compute work runs on ex.stream.
  // state: the AdamW moments' storage (optimizer.state_dtype; FP32 by default). offload: zero.offload
  // (src/optim/sharded_adamw.h).
  ShardedOptimizer(const Exec& ex, Communicator& comm, std::vector<ParamSpec> specs, int stage,
                   size_t bucket_bytes, uint64_t seed, Stream comm_stream = nullptr, StateFormat state = {},
                   OffloadOptions offload = {});
  // zero.overlap = false (GPUs): the compute stream waits for each bucket's collective as soon as it is
  // queued, and for the whole parameter all-gather right after the update: nothing overlaps, every
  // collective is exposed. The same collectives in the same order, so results are bitwise unchanged.
  void set_overlap(bool on) {
    reducer_.set_overlap(on);
    store_.set_overlap(on);
  }
  // debug.skip_bucket_comm (timing only): the bucket collectives are not issued; everything else, the
  // events and waits included, runs as usual. The results are wrong.
  void set_skip_comm(bool on) {
    reducer_.set_skip_comm(on);
    store_.set_skip_comm(on);
  }
  // zero.reorder_backward: whether reduces_during_backward() may be true (the same values either way).
  void set_reorder_backward(bool on) { reducer_.set_reorder_backward(on); }
  const StateFormat& state_format() const { return adam_.state_format(); }
  bool offloaded() const { return adam_.offloaded(); }
  ShardedOptimizer(const ShardedOptimizer&) = delete;
  ShardedOptimizer& operator=(const ShardedOptimizer&) = delete;

  ParamStore& params() { return store_; }
  GradReducer& grads() { return reducer_; }
  ShardedAdamW& adamw() { return adam_; }

  int num_params() const { return store_.num_params(); }
  const ParamSpec& spec(int i) const { return store_.spec(i); }
  const ParamView& view(int i) const { return views_[size_t(i)]; }
  int stage() const { return store_.layout().stage(); }
  int num_buckets() const { return store_.layout().num_buckets(); }
  int64_t num_elements() const { return store_.num_elements(); }

  // A step: zero_grads, then per micro-batch begin_micro_batch(is_last) and the model's backward into this
  // GradSink (grad / grad_ready), then finish_reduction and step (or reduce_stats and apply).
  void zero_grads() {
    reducer_.zero_grads();
    adam_.begin_step();
  }
  // Where the model adds the step's loss sum on the device (ShardedAdamW::loss_sum): it comes back, summed
  // over ranks, in StepStats::loss_sum.
  float* loss_sum() { return adam_.loss_sum(); }
  void begin_micro_batch(bool is_last) { reducer_.begin_micro_batch(is_last); }
  void* grad(int i) override { return reducer_.grad(i); }
  void grad_ready(int i) override { reducer_.grad_ready(i); }
  bool reduces_during_backward() const override { return reducer_.reduces_during_backward(); }
  void finish_reduction() { reducer_.finish(); }
  StepStats step(float loss_scale, const AdamWHyper& hyper, double clip_norm) {
    return adam_.step(loss_scale, hyper, clip_norm);
  }
  // step() in two halves, so that a caller (the stability monitor) can decide between them.
  StepStats reduce_stats(float loss_scale, double clip_norm) { return adam_.reduce_stats(loss_scale, clip_norm); }
  void apply(const StepStats& st, const AdamWHyper& hyper) { adam_.apply(st, hyper); }

  void param_ready(int i) const { store_.param_ready(i); }
  void all_params_ready() const { store_.all_params_ready(); }
  void inject_inf_next_reduction() { reducer_.inject_inf_next_reduction(); }
  uint64_t param_hash() const { return store_.param_hash(); }
  // Full FP32 master weights in spec order, gathered to every rank (a collective: checkpoints, tests).
  std::vector<float> gather_master();
  std::vector<float> params_as_float(int i) const { return store_.params_as_float(i); }
  MemoryReport memory() const;

  // Checkpoint I/O of the FP32 state (master, m, v) in flat per-parameter order, world-size independent.
  // Low-precision moments travel as the FP32 values they stand for (exactly what the update reads); loading
  // them into the same layout gives back the same codes and scales (src/optim/adamw_lowp_blocks.cpp).
  FullState gather_state();             // a collective in stages 1/2
  void load_state(const FullState& s);  // every rank passes the full state; each keeps what it owns
  int64_t adam_step() const { return adam_.adam_step(); }
  void set_adam_step(int64_t t) { adam_.set_adam_step(t); }
  // Exposed communication of the steps since the last take (src/core/comm_exposure.h); off unless enabled.
  ExposureProbe& exposure() { return probe_; }

 private:
  ExposureProbe probe_;
  ParamStore store_;
  GradReducer reducer_;
  ShardedAdamW adam_;
  std::vector<ParamView> views_;
};

}  // namespace mpt
