// ZeRO stages 0/1/2 over flat, padded parameter and gradient buffers (DESIGN.md, "One training step").
//
// Layout. Parameters are grouped by dtype (a per-layer precision policy can give a model several); each
// group has one flat parameter buffer and one flat gradient buffer in the model dtype, laid out in
// BACKWARD order (the last layer's parameters first) so that buckets fill while backward runs. A bucket
// holds whole parameters (up to bucket_bytes; a larger parameter gets a bucket of its own); every
// parameter starts on a kAlign-element boundary and every bucket is padded to a multiple of world * kAlign.
// Bucket k is cut into `world` equal parts; rank r OWNS part r of every bucket. The rank's shard is the
// concatenation of its parts, so a bucket's reduce-scatter lands exactly in the owner's shard and a
// bucket's all-gather restores the full parameters.
//
// Stages (what each rank holds besides the full half parameters and gradients):
//   0: full FP32 master + AdamW m, v; gradients all-reduced; every rank updates everything.
//   1: master, m, v for the owned parts only; gradients reduce-scattered in place (after finish_reduction
//      the full gradient buffer holds the reduced gradient in this rank's parts only, its own local sums
//      elsewhere); owned parts updated, then the parameters all-gathered.
//   2: as 1, but gradients are reduce-scattered into a shard-sized buffer, and there is NO full-size
//      gradient buffer: a bucket's gradients are written into a bucket-sized staging slot that is taken
//      when backward first asks for one of its gradients (grad(i)) and given back once the bucket's
//      reduce-scatter has run, so gradient memory is 2P/N plus the slots of the buckets open at once.
//      Every micro-batch is reduce-scattered (a staging slot does not outlive its micro-batch); later
//      micro-batches are added into the shard (FP32 add, one rounding).
// In every stage the overflow/norm statistics are summed over the rank's OWNED PARTS only and then over
// ranks with ONE all-reduce of {non-finite count, sum of squares}. The reduced gradient of each element is
// computed by one rank in all stages (stages 0/1 reduce a bucket as the same reduce-scatter that stage 2
// runs; stage 0 follows it with an all-gather), so stages 0, 1 and 2 produce bitwise-identical parameters on the
// MPI path.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "kernels/adamw.h"
#include "kernels/unscale_stats.h"
#include "kernels/exec.h"
#include "src/core/comm_exposure.h"
#include "src/core/buffer.h"

namespace mpt {

enum class Init { Uniform, Normal, Zeros, Ones };

struct ParamSpec {
  std::string name;                  // e.g. "fc1.weight"
  std::string layer;                 // e.g. "fc1" (what precision rules match)
  std::vector<int64_t> shape;
  DType dtype = DType::F32;
  bool decay = false;                // AdamW weight decay applies (weight matrices)
  Init init = Init::Zeros;
  float init_scale = 0.f;            // Uniform: bound; Normal: std
  int64_t numel() const {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
  }
};

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

struct StepStats {
  bool overflow = false;
  double nonfinite = 0;
  double grad_norm = 0;              // global L2 norm of the unscaled gradient
  double clip_coef = 1;
  float grad_unscale = 1;            // 1 / (loss scale * world): what the update multiplies the gradient by
};

struct MemoryReport {
  size_t params = 0, grads = 0, grad_shard = 0, master = 0, adam = 0;
  size_t grad_staging = 0;           // stage 2: bucket staging slots allocated so far (peak), and the
                                     // one bucket-part temporary of micro-batches after the first
  size_t total() const { return params + grads + grad_shard + master + adam + grad_staging; }
};

class ShardedOptimizer {
 public:
  static constexpr int64_t kAlign = 64;  // elements; keeps GEMM operands and shard edges 128-byte aligned

  // comm_stream: where bucket collectives run (CUDA); compute work runs on ex.stream.
  ShardedOptimizer(const Exec& ex, Communicator& comm, std::vector<ParamSpec> specs, int stage,
                   size_t bucket_bytes, uint64_t seed, Stream comm_stream = nullptr);
  ~ShardedOptimizer();
  ShardedOptimizer(const ShardedOptimizer&) = delete;
  ShardedOptimizer& operator=(const ShardedOptimizer&) = delete;

  int num_params() const { return int(specs_.size()); }
  const ParamSpec& spec(int i) const { return specs_[size_t(i)]; }
  const ParamView& view(int i) const { return views_[size_t(i)]; }
  int stage() const { return stage_; }
  int num_buckets() const;
  int64_t num_elements() const;      // real parameters, all groups

  // Start of a step: zero the gradients.
  void zero_grads();
  // The model calls grad_ready(i) when parameter i's gradient for the current micro-batch is complete.
  // During the last micro-batch of a step (set_last_micro(true); stage 2: during every micro-batch) a
  // bucket whose parameters are all ready is reduced at once, on the communication stream, while
  // backward goes on. set_last_micro starts a micro-batch: call it before each one.
  void set_last_micro(bool last);
  void grad_ready(int i);
  // Where backward writes (and accumulates, beta = 1) parameter i's gradient in this micro-batch. Stages
  // 0/1: view(i).grad. Stage 2: inside the bucket's staging slot, taken (and zeroed, on the compute
  // stream, after the slot's previous reduce-scatter finished) on the first call for the bucket.
  // Valid until grad_ready() has been called for every parameter of the bucket.
  void* grad(int i);
  // Reduces what is left and orders the compute stream after the communication stream.
  void finish_reduction();
  // Unscale + statistics, one collective, the overflow verdict, clipping, AdamW, all-gather.
  // loss_scale: the S the loss was multiplied by. On overflow nothing is updated.
  StepStats step(float loss_scale, const AdamWHyper& hyper, double clip_norm);
  // step() in two halves, so that a caller (the stability monitor) can decide between them:
  // reduce_stats: unscale + statistics + the one collective + verdict and clip coefficient;
  // apply: AdamW + all-gather (must not be called for an overflowing step).
  StepStats reduce_stats(float loss_scale, double clip_norm);
  void apply(const StepStats& st, const AdamWHyper& hyper);

  // Stages 1/2 on GPUs: apply() leaves the all-gather of the updated parameters running on the
  // communication stream, one event per bucket, so that it overlaps the next forward. Before the compute
  // stream reads parameter i, param_ready(i) orders it after that parameter's bucket (a no-op once done,
  // on CPU ranks, whose all-gather blocks, and in stage 0). all_params_ready() does it for every bucket:
  // for readers outside the forward (evaluation, checkpoints, hashes, the next update).
  void param_ready(int i) const;
  void all_params_ready() const;

  // Puts +inf into this rank's first gradient element just before its bucket is reduced (tests).
  void inject_inf_next_reduction() { inject_inf_ = true; }
  // FNV-1a hash of the full model-dtype parameters (all groups), for cross-rank consistency checks.
  uint64_t param_hash() const;
  // Full FP32 master weights in flat order, gathered to every rank (checkpoints, tests).
  std::vector<float> gather_master() const;
  // Full model-dtype parameters as float in spec order (tests, export).
  std::vector<float> params_as_float(int i) const;
  MemoryReport memory() const;

  // Checkpoint I/O of the FP32 state (master, m, v) in flat per-parameter order, world-size independent.
  struct FullState { std::vector<float> master, m, v; };
  FullState gather_state() const;
  void load_state(const FullState& s);  // every rank passes the full state; each keeps what it owns
  int64_t adam_step() const { return adam_step_; }
  // Exposed communication of the steps since the last take (src/core/comm_exposure.h); off unless enabled.
  ExposureProbe& exposure() { return probe_; }
  void set_adam_step(int64_t t) { adam_step_ = t; }

 private:
  struct Bucket {
    int64_t begin = 0, len = 0;
    int pending = 0, nparams = 0;
    bool reduced = false;            // in this micro-batch (stages 0/1: in the last one)
    int slot = -1;                   // stage 2: staging slot held in this micro-batch, -1 if none
    bool filled = false;             // stage 2: the shard part holds this step's first contribution
    void* gathered = nullptr;        // cudaEvent_t: the bucket's parameter all-gather (overlapped path)
    mutable bool gather_pending = false;
  };
  // Stage 2 staging slot: bytes of the group dtype; `done` (cudaEvent_t) is recorded on the
  // communication stream after the slot's last reduce-scatter, and the compute stream waits on it
  // before writing the slot again.
  struct Slot { Buffer buf; void* done = nullptr; bool busy = false, used = false; };
  struct Range { int64_t flat = 0, len = 0, store = 0; bool decay = false; bool own_part = true; };
  struct Group {
    DType dtype = DType::F32;
    int64_t size = 0;                // padded elements
    std::vector<Bucket> buckets;
    std::vector<Range> owned;        // owned parts (stage 0: every part), split at parameter edges
    int64_t owned_elems = 0;
    Buffer params, grads, grad_shard, master, m, v;
    // The update's and the statistics' segment lists (kernels/adamw.h, kernels/unscale_stats.h), on the
    // executing device.
    Buffer update_segs, stat_segs;
    int n_update_segs = 0, n_stat_segs = 0;
    int64_t update_elems = 0, stat_elems = 0;
    std::vector<Slot> slots;         // stage 2
  };

  void reduce_bucket(Group& g, Bucket& b, int64_t shard_off);
  void take_slot(Group& g, Bucket& b);
  void reduce_leftovers(bool all_unreduced);
  int64_t shard_offset(const Group& g, size_t k) const;
  void init_params(uint64_t seed);
  bool overlap_gather() const { return ex_.cuda() && comm_stream_ != nullptr && comm_stream_ != ex_.stream; }
  // A collective on the compute stream (GPU: its events; CPU ranks: the host waits).
  void begin_exposed() { ex_.cuda() ? probe_.stream_begin() : probe_.host_begin(); }
  void end_exposed() { ex_.cuda() ? probe_.stream_end() : probe_.host_end(); }

  Exec ex_;
  Communicator& comm_;
  std::vector<ParamSpec> specs_;
  std::vector<ParamView> views_;
  std::vector<Group> groups_;
  int stage_;
  int rank_, world_;
  Stream comm_stream_;
  bool last_micro_ = true;
  bool inject_inf_ = false;
  bool micro_active_ = false;        // stage 2: this micro-batch has asked for or readied a gradient
  Buffer accum_tmp_;                 // stage 2: reduce-scatter target of the micro-batches after the first
  int64_t adam_step_ = 0;
  Buffer stats_;                     // 2 floats: non-finite count, sum of squares
  void* ev_compute_ = nullptr;       // cudaEvent_t
  void* ev_comm_ = nullptr;
  mutable ExposureProbe probe_;
};

}  // namespace mpt
