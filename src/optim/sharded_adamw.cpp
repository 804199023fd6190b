#include "src/optim/sharded_adamw.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include <cstring>

#include "kernels/unscale_stats.h"
#include "src/core/cuda_check.h"
#include "src/core/watchdog.h"

namespace mpt {

ShardedAdamW::ShardedAdamW(const Exec& ex, Communicator& comm, ParamStore& store, GradReducer& grads,
                           ExposureProbe& probe, StateFormat state, OffloadOptions offload)
    : ex_(ex), comm_(comm), store_(store), grads_(grads), probe_(probe), state_(state), offload_(offload),
      state_dev_(offload.cpu ? Device::CPU : ex.device) {
  if (offload_.cpu) {
    if (!grads_.host_copy() || store_.master(0).device() != Device::CPU)
      throw std::logic_error("ShardedAdamW: offload needs the master on the host and the gradients' host copy");
    pool_ = std::make_unique<WorkerPool>(std::max(1, offload_.threads));
  }
  if (state_.block < 64 || state_.block > kQBlock || (state_.block & (state_.block - 1)) != 0)
    throw std::invalid_argument("optimizer state block must be a power of two in [64, 2048]");
  const FlatLayout& layout = store_.layout();
  const int stage = layout.stage();
  groups_.resize(layout.groups().size());
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    const GroupLayout& gl = layout.groups()[gi];
    Group& g = groups_[gi];
    const Device dev = ex_.device;
    g.m = Buffer(state_dev_, size_t(gl.owned_elems) * state_bytes_per_elem(state_.dtype) / 2);
    g.v = Buffer(state_dev_, size_t(gl.owned_elems) * state_bytes_per_elem(state_.dtype) / 2);
    // The update and the statistics run over segment lists (one launch each per group): every owned range
    // cut into pieces the kernels take whole. The statistics cover the rank's own parts only.
    std::vector<AdamWSegment> asegs;
    std::vector<StatSegment> ssegs;
    for (const OwnedRange& r : gl.owned) {
      const int64_t gbase = stage == 2 ? r.store : r.flat;
      for (int64_t c = 0; c < r.len; c += kAdamWSegmentMax) {
        AdamWSegment a;
        a.store = r.store + c;
        a.len = std::min(kAdamWSegmentMax, r.len - c);
        a.grad_off = gbase + c;
        a.param_off = r.flat + c;
        a.decay = r.decay ? 1 : 0;
        asegs.push_back(a);
        g.update_elems += a.len;
      }
      if (!r.own_part) continue;
      for (int64_t c = 0; c < r.len; c += kStatSegmentMax) {
        ssegs.push_back(StatSegment{gbase + c, std::min(kStatSegmentMax, r.len - c)});
        g.stat_elems += ssegs.back().len;
      }
    }
    g.n_update_segs = int(asegs.size());
    g.n_stat_segs = int(ssegs.size());
    // Per bucket, the range of update segments it holds (owned ranges, hence segments, are in flat order,
    // and none crosses a bucket): the update runs bucket by bucket (apply, offload).
    g.bucket_work.assign(gl.buckets.size(), {0, 0});
    g.bucket_elems.assign(gl.buckets.size(), 0);
    for (size_t j = 0; j < asegs.size(); ++j) {
      const size_t k = bucket_of(int(gi), asegs[j].param_off);
      auto& w = g.bucket_work[k];
      if (w.first == w.second) w = {int(j), int(j)};
      w.second = int(j) + 1;
      g.bucket_elems[k] += asegs[j].len;
    }
    if (offload_.cpu) {
      // The host update reads the gradient and writes the parameter in the host copy, laid out as the shard.
      g.uploads.assign(gl.buckets.size(), {});
      for (AdamWSegment& a : asegs) a.grad_off = a.param_off = a.store;
      for (const OwnedRange& r : gl.owned) {
        auto& up = g.uploads[bucket_of(int(gi), r.flat)];
        if (!up.empty() && up.back().flat + up.back().len == r.flat && up.back().store + up.back().len == r.store)
          up.back().len += r.len;
        else
          up.push_back(Group::Upload{r.flat, r.store, r.len});
      }
    }
    g.update_segs = Buffer(state_dev_, asegs.size() * sizeof(AdamWSegment));
    g.stat_segs = Buffer(dev, ssegs.size() * sizeof(StatSegment));
    copy_from_host(asegs.data(), g.update_segs.data(), state_dev_, g.update_segs.bytes(), ex_.stream);
    copy_from_host(ssegs.data(), g.stat_segs.data(), dev, g.stat_segs.bytes(), ex_.stream);
    if (lowp()) build_lowp(int(gi));
    g.m.zero(ex_.stream);
    g.v.zero(ex_.stream);
  }
  // stats_[0..1]: this rank's owned-part statistics; stats_[2]: the loss sum of the step's micro-batches.
  stats_ = Buffer(ex_.device, 3 * sizeof(float));
}

size_t ShardedAdamW::bucket_of(int gi, int64_t flat) const {
  const std::vector<BucketExtent>& b = store_.layout().groups()[size_t(gi)].buckets;
  size_t k = 0;
  while (k + 1 < b.size() && flat >= b[k].begin + b[k].len) ++k;
  return k;
}

namespace {
void zero_floats(const Exec& ex, float* p, size_t n) {
  if (ex.cuda()) MPT_CUDA_CHECK(cudaMemsetAsync(p, 0, n * sizeof(float), reinterpret_cast<cudaStream_t>(ex.stream)));
  else std::memset(p, 0, n * sizeof(float));
}
}  // namespace

void ShardedAdamW::begin_step() { zero_floats(ex_, loss_sum(), 1); }

StepStats ShardedAdamW::step(float loss_scale, const AdamWHyper& hyper, double clip_norm) {
  const StepStats st = reduce_stats(loss_scale, clip_norm);
  if (!st.overflow) apply(st, hyper);
  return st;
}

StepStats ShardedAdamW::reduce_stats(float loss_scale, double clip_norm) {
  float* stats = stats_.as<float>();
  zero_floats(ex_, stats, 2);  // the loss sum (stats[2]) was zeroed by begin_step and filled by the micro-batches
  const float inv_scale = float(1.0 / (double(loss_scale) * double(store_.layout().world())));
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    const Group& g = groups_[gi];
    ops::unscale_stats_segments(ex_, grads_.reduced(int(gi)), store_.layout().groups()[gi].dtype,
                                g.stat_segs.as<StatSegment>(), g.n_stat_segs, g.stat_elems, inv_scale, stats);
  }
  float host[3];
  {
    // The readback waits for the whole step's device work and collectives, hence for every other rank.
    // It is the one point of a training step where the host waits for the device.
    const WaitScope wait("the all-reduce of the gradient statistics");
    // A collective on the compute stream (GPU: its events; CPU ranks: the host waits).
    ex_.cuda() ? probe_.stream_begin(ExposureSite::Statistics) : probe_.host_begin(ExposureSite::Statistics);
    comm_.all_reduce(stats, stats, 3, DType::F32, ReduceOp::Sum, ex_.stream);
    ex_.cuda() ? probe_.stream_end() : probe_.host_end();
    copy_to_host(stats, ex_.device, host, sizeof host, ex_.stream);
  }

  StepStats st;
  st.grad_unscale = inv_scale;
  st.loss_sum = host[2];
  st.nonfinite = host[0];
  st.overflow = host[0] > 0.f || !std::isfinite(host[1]);
  if (st.overflow) return st;
  st.grad_norm = std::sqrt(double(host[1]));
  st.clip_coef = (clip_norm > 0 && st.grad_norm > clip_norm) ? clip_norm / (st.grad_norm + 1e-6) : 1.0;
  return st;
}

void ShardedAdamW::apply(const StepStats& st, const AdamWHyper& hyper) {
  if (st.overflow) throw std::logic_error("ShardedAdamW::apply called for an overflowing step");
  // The update writes this rank's parts of the parameters, which last step's all-gather reads.
  store_.all_params_ready();
  ++adam_step_;
  AdamWHyper h = hyper;
  h.bc1 = float(1.0 - std::pow(double(hyper.beta1), double(adam_step_)));
  h.bc2 = float(1.0 - std::pow(double(hyper.beta2), double(adam_step_)));
  h.grad_coef = float(st.clip_coef);
  if (offload_.cpu) {
    // Bucket by bucket in the forward's order: the host updates a bucket, queues its upload and all-gather,
    // and goes on to the next while those run.
    store_.all_gather_updated(
        [&](int gi, size_t k, Stream s) { update_bucket_on_host(gi, k, s, st.grad_unscale, h); });
    return;
  }
  // Bucket by bucket, in the order the forward uses them, on the compute stream; each bucket's
  // all-gather waits for its own update only (ParamStore::all_gather_updated, hook_on_compute), so the
  // first buckets the next forward needs travel while the later ones are updated. The update is
  // elementwise: the same values as one launch over the whole shard.
  store_.all_gather_updated([&](int gi, size_t k, Stream s) { update_bucket(gi, k, s, st.grad_unscale, h); },
                            /*hook_on_compute=*/true);
}

void ShardedAdamW::update_bucket(int gi, size_t k, Stream s, float grad_unscale, const AdamWHyper& h) {
  Group& g = groups_[size_t(gi)];
  const DType t = store_.layout().groups()[size_t(gi)].dtype;
  const auto [first, last] = g.bucket_work[k];
  if (first == last) return;  // this rank owns nothing of the bucket
  Exec ex = ex_;
  ex.stream = s;
  if (lowp()) {
    float* scales = state_.dtype == StateDType::I8 ? g.lowp_scales.as<float>() + 2 * first : nullptr;
    ops::adamw_lowp(ex, store_.master(gi).as<float>(), g.m.data(), g.v.data(), scales, state_.dtype,
                    grads_.reduced(gi), t, grad_unscale, store_.params(gi).data(), t, g.lowp_segs.as<AdamWSegment>(),
                    g.lowp_blocks.as<AdamWQBlock>() + first, last - first, g.lowp_max_len, g.bucket_elems[k], h);
    return;
  }
  ops::adamw_segments(ex, store_.master(gi).as<float>(), g.m.as<float>(), g.v.as<float>(), grads_.reduced(gi), t,
                      grad_unscale, store_.params(gi).data(), t, g.update_segs.as<AdamWSegment>() + first,
                      last - first, g.bucket_elems[k], h);
}

void ShardedAdamW::update_bucket_on_host(int gi, size_t k, Stream s, float grad_unscale, const AdamWHyper& h) {
  Group& g = groups_[size_t(gi)];
  const DType t = store_.layout().groups()[size_t(gi)].dtype;
  void* shard = grads_.host_shard(gi).data();  // the reduced gradient in, the new parameter values out
  float* master = store_.master(gi).as<float>();
  const auto [first, last] = g.bucket_work[k];
  // Tasks of about 64K elements: 8 segments of fp32 states, 32 quantisation blocks (of at most 2048).
  const int per_task = lowp() ? 32 : 8;
  const int64_t tasks = (last - first + per_task - 1) / per_task;
  pool_->run(tasks, [&](int64_t task) {
    const int b = first + int(task) * per_task, n = std::min(per_task, last - b);
    if (lowp()) {
      float* scales = state_.dtype == StateDType::I8 ? g.lowp_scales.as<float>() + 2 * b : nullptr;
      cpu::adamw_lowp(master, g.m.data(), g.v.data(), scales, state_.dtype, shard, t, grad_unscale, shard, t,
                      g.lowp_segs.as<AdamWSegment>(), g.lowp_blocks.as<AdamWQBlock>() + b, n, h);
    } else {
      cpu::adamw_segments(master, g.m.as<float>(), g.v.as<float>(), shard, t, grad_unscale, shard, t,
                          g.update_segs.as<AdamWSegment>() + b, n, h);
    }
  });
  const size_t ds = dtype_size(t);
  char* params = static_cast<char*>(store_.params(gi).data());
  for (const Group::Upload& u : g.uploads[k]) {
    const char* src = static_cast<const char*>(shard) + size_t(u.store) * ds;
    char* dst = params + size_t(u.flat) * ds;
    if (ex_.cuda())
      MPT_CUDA_CHECK(cudaMemcpyAsync(dst, src, size_t(u.len) * ds, cudaMemcpyHostToDevice,
                                     reinterpret_cast<cudaStream_t>(s)));
    else
      std::memcpy(dst, src, size_t(u.len) * ds);
  }
}

size_t ShardedAdamW::list_bytes() const {
  size_t n = 0;
  for (const Group& g : groups_) n += g.update_segs.bytes() + g.lowp_segs.bytes() + g.lowp_blocks.bytes();
  return n;
}

size_t ShardedAdamW::moment_bytes() const {
  size_t n = 0;
  for (const Group& g : groups_) n += g.m.bytes() + g.v.bytes() + g.lowp_scales.bytes();
  return n;
}

}  // namespace mpt
