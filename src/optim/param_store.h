// ParamStore: the model-dtype parameters and the FP32 master weights of ZeRO stages 0/1/2, in the flat
// per-dtype groups of src/optim/layout.h. It initializes them, hands the model its parameters (the
// ParamSource of src/core/param.h), all-gathers the updated shards after an update (on GPUs on the
// communication stream with one event per bucket, which the forward of a layer waits on), and gathers or
// loads full FP32 state for checkpoints.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "comm/communicator.h"
#include "kernels/exec.h"
#include "src/core/buffer.h"
#include "src/core/comm_exposure.h"
#include "src/core/param.h"
#include "src/optim/layout.h"

namespace mpt {

// A device buffer the communicator's collectives can move without SMs (Communicator::alloc_window), or
// an ordinary one where it offers none. Collective when it is a window: every rank asks for the same
// sizes in the same order. The communicator must outlive the buffer.
Buffer comm_buffer(Communicator& comm, Device d, size_t bytes);

class ParamStore : public ParamSource {
 public:
  // comm_stream: where the overlapped all-gather runs (CUDA; ex.stream when there is none).
  // master_on_host (zero.offload = cpu): the FP32 master shard lives in host memory, where the offloaded
  // update reads and writes it.
  ParamStore(const Exec& ex, Communicator& comm, std::vector<ParamSpec> specs, int stage, size_t bucket_bytes,
             uint64_t seed, Stream comm_stream, ExposureProbe& probe, bool master_on_host = false);
  // Draws the initial values (seed of the constructor). Separate, so that the owner allocates all of its
  // memory first: a model that does not fit fails before seconds of drawing.
  void init_params();
  ~ParamStore() override;
  ParamStore(const ParamStore&) = delete;
  ParamStore& operator=(const ParamStore&) = delete;

  const FlatLayout& layout() const { return layout_; }
  const std::vector<ParamSpec>& specs() const { return specs_; }
  const ParamSpec& spec(int i) const { return specs_[size_t(i)]; }
  int num_params() const { return int(specs_.size()); }
  int64_t num_elements() const;      // real parameters, all groups

  // ParamSource. Stages 1/2 on GPUs: all_gather_updated() leaves the all-gather running on the
  // communication stream, one event per bucket, so that it overlaps the next forward. Before the compute
  // stream reads parameter i, param_ready(i) orders it after that parameter's bucket (a no-op once done, on
  // CPU ranks, whose all-gather blocks, and in stage 0). all_params_ready() does it for every bucket: for
  // readers outside the forward (evaluation, checkpoints, hashes, the next update).
  void* param(int i) const override;
  void param_ready(int i) const override;
  void all_params_ready() const override;

  // Group g's flat model-dtype parameters and this rank's FP32 master shard (what the update writes).
  Buffer& params(int g) { return groups_[size_t(g)].params; }
  Buffer& master(int g) { return groups_[size_t(g)].master; }
  // Stages 1/2, after the update wrote this rank's parts: restores the full parameters on every rank.
  // before_gather (the offloaded update): called for every bucket of every group, in the order the
  // forward uses them, with the stream that bucket's all-gather then runs on; what it queues there (the
  // upload of the bucket's updated parts) comes before the all-gather and before the bucket's event. With
  // it, stage 0 takes the same path (events, no all-gather). hook_on_compute (the update on GPUs): the
  // hook is called with the compute stream instead, and the bucket's all-gather waits for what it queued
  // there, so that a bucket's all-gather runs while later buckets are still being updated.
  using BucketHook = std::function<void(int group, size_t bucket, Stream s)>;
  void all_gather_updated(const BucketHook& before_gather = {}, bool hook_on_compute = false);
  // false (zero.overlap): the all-gather runs on the compute stream, which waits for it at once.
  void set_overlap(bool on) { overlap_ = on; }
  void set_skip_comm(bool on) { skip_comm_ = on; }  // debug.skip_bucket_comm (ShardedOptimizer::set_skip_comm)

  // FNV-1a hash of the full model-dtype parameters (all groups), for cross-rank consistency checks.
  uint64_t param_hash() const;
  // Parameter i as float (tests, export).
  std::vector<float> params_as_float(int i) const;
  // Owned FP32 shards (one buffer per group, laid out as master) -> every parameter's values in spec
  // order, on every rank (a collective in stages 1/2).
  std::vector<float> gather_owned(const std::vector<const Buffer*>& shards);
  // The reverse: every rank passes the full values; each keeps what it owns.
  void scatter_owned(const std::vector<float>& full, const std::vector<Buffer*>& shards);
  // The model-dtype parameters become the rounded `full` values (spec order), everywhere.
  void set_params(const std::vector<float>& full);
  size_t param_bytes() const;
  size_t master_bytes() const;

 private:
  struct Group {
    Buffer params, master;
    std::vector<void*> gathered;     // per bucket, cudaEvent_t: the bucket's all-gather (overlapped path)
    mutable std::vector<char> gather_pending;
  };
  bool overlap_gather() const {
    return overlap_ && ex_.cuda() && comm_stream_ != nullptr && comm_stream_ != ex_.stream;
  }
  void wait_gathered(int g, size_t k) const;

  Exec ex_;
  Communicator& comm_;
  std::vector<ParamSpec> specs_;
  FlatLayout layout_;
  std::vector<Group> groups_;
  Stream comm_stream_;
  ExposureProbe& probe_;
  uint64_t seed_;
  void* ev_updated_ = nullptr;       // cudaEvent_t: the update, recorded on the compute stream
  bool overlap_ = true;
  bool skip_comm_ = false;
};

}  // namespace mpt
