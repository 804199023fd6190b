// GradReducer: the gradients of ZeRO stages 0/1/2 and their reduction across ranks. It owns the flat
// gradient buffers (stages 0/1) or the gradient shard and the ZeRO-2 staging slots (stage 2), is the
// GradSink a model's backward writes into, and reduces each bucket (src/optim/layout.h) as soon as all of
// its parameters are ready: on GPUs on the communication stream, after an event handoff from the compute
// stream, while backward goes on.
#pragma once

#include <cstdint>
#include <vector>

#include "comm/communicator.h"
#include "kernels/exec.h"
#include "src/core/buffer.h"
#include "src/core/comm_exposure.h"
#include "src/core/param.h"
#include "src/optim/layout.h"

namespace mpt {

class GradReducer : public GradSink {
 public:
  // specs: for the names in error messages. comm_stream: where bucket collectives run (ex.stream when none).
  GradReducer(const Exec& ex, Communicator& comm, const FlatLayout& layout, const std::vector<ParamSpec>& specs,
              Stream comm_stream, ExposureProbe& probe);
  ~GradReducer() override;
  GradReducer(const GradReducer&) = delete;
  GradReducer& operator=(const GradReducer&) = delete;

  // Start of a step: zero the gradients.
  void zero_grads();
  // Starts a micro-batch: call it before each one. During the last micro-batch of a step (is_last; stage 2:
  // during every micro-batch) a bucket whose parameters are all ready is reduced at once.
  void begin_micro_batch(bool is_last);
  // GradSink. Stages 0/1: grad(i) points into the flat gradient buffer. Stage 2: inside the bucket's staging
  // slot, taken (and zeroed, on the compute stream, after the slot's previous reduce-scatter finished) on
  // the first call for the bucket.
  void* grad(int i) override;
  void grad_ready(int i) override;
  // Reduces what is left and orders the compute stream after the communication stream.
  void finish();
  // false (zero.overlap): the compute stream waits for each bucket's collective as soon as it is queued.
  void set_overlap(bool on) { overlap_ = on; }
  void set_skip_comm(bool on) { skip_comm_ = on; }  // debug.skip_bucket_comm (ShardedOptimizer::set_skip_comm)
  // zero.reorder_backward (ShardedOptimizer::set_reorder_backward); reduces_during_backward() is false when off.
  void set_reorder_backward(bool on) { reorder_ = on; }
  bool reduces_during_backward() const override {
    return reorder_ && overlap_ && world_ > 1 && (stage_ == 2 || last_micro_);
  }

  // The reduced gradient of group g (model dtype): the flat buffer (stages 0/1, this rank's parts) or the
  // shard (stage 2), where the statistics and the update read it.
  const void* reduced(int g) const;
  // Parameter i in the flat gradient buffer (stages 0/1); null in stage 2.
  void* full_grad(int i) const;
  // zero.offload = cpu: after its last reduction in a step, each bucket's owned parts are copied into a
  // host buffer in shard order (on GPUs on the communication stream, while backward goes on; into pinned
  // memory when `pin`). host_shard(g) holds the reduced gradient of group g once the step's statistics
  // were read back (that readback waits for the communication stream); the offloaded update then
  // overwrites it, element by element, with the new parameter values it uploads.
  void enable_host_copy(bool pin);
  bool host_copy() const { return host_copy_; }
  Buffer& host_shard(int g) { return groups_[size_t(g)].host; }
  size_t host_bytes() const;
  // Puts +inf into this rank's first gradient element just before its bucket is reduced (tests).
  void inject_inf_next_reduction() { inject_inf_ = true; }

  size_t grad_bytes() const;         // flat gradient buffers (stages 0/1)
  size_t shard_bytes() const;        // stage 2: the gradient shard
  size_t staging_bytes() const;      // stage 2: staging slots (peak) and the accumulation temporary

 private:
  struct Bucket {
    int pending = 0;
    bool reduced = false;            // in this micro-batch (stages 0/1: in the last one)
    int slot = -1;                   // stage 2: staging slot held in this micro-batch, -1 if none
    bool filled = false;             // stage 2: the shard part holds this step's first contribution
    bool copied = false;             // host copy: queued after the bucket's latest reduction
  };
  // A run of owned elements: at `src` in the reduced gradient (flat buffer or shard), at `dst` in the shard.
  struct Run { int64_t src = 0, dst = 0, len = 0; };
  // Stage 2 staging slot: bytes of the group dtype; `done` (cudaEvent_t) is recorded on the
  // communication stream after the slot's last reduce-scatter, and the compute stream waits on it
  // before writing the slot again.
  struct Slot { Buffer buf; void* done = nullptr; bool busy = false, used = false; };
  struct Group {
    Buffer grads, grad_shard;
    std::vector<Bucket> buckets;
    std::vector<Slot> slots;         // stage 2
    Buffer host;                     // host copy: owned reduced gradient in shard order
    std::vector<std::vector<Run>> runs;  // host copy: per bucket
  };

  void reduce_bucket(int gi, size_t k);
  void reduce_bucket_collectives(int gi, size_t k);
  void take_slot(int gi, size_t k);
  void reduce_leftovers(bool all_unreduced);
  void copy_out(int gi, size_t k);

  Exec ex_;
  Communicator& comm_;
  const FlatLayout& layout_;
  const std::vector<ParamSpec>& specs_;
  std::vector<Group> groups_;
  std::vector<char> ready_;          // grad_ready(i) seen in this micro-batch
  int stage_, rank_, world_;
  Stream comm_stream_;
  ExposureProbe& probe_;
  bool last_micro_ = true;
  bool overlap_ = true;
  bool skip_comm_ = false;
  bool reorder_ = true;
  bool inject_inf_ = false;
  bool host_copy_ = false;
  bool micro_active_ = false;        // stage 2: this micro-batch has asked for or readied a gradient
  Buffer accum_tmp_;                 // stage 2: reduce-scatter target of the micro-batches after the first
  void* ev_compute_ = nullptr;       // cudaEvent_t
  void* ev_comm_ = nullptr;
};

}  // namespace mpt
