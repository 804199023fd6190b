#include "src/optim/sharded_adamw.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include <cstring>

#include "kernels/unscale_stats.h"
#include "src/core/cuda_check.h"
#include "src/core/watchdog.h"

namespace mpt {

ShardedAdamW::ShardedAdamW(const Exec& ex, Communicator& comm, ParamStore& store, const GradReducer& grads,
                           ExposureProbe& probe, StateFormat state)
    : ex_(ex), comm_(comm), store_(store), grads_(grads), probe_(probe), state_(state) {
  if (state_.block < 64 || state_.block > kQBlock || (state_.block & (state_.block - 1)) != 0)
    throw std::invalid_argument("optimizer state block must be a power of two in [64, 2048]");
  const FlatLayout& layout = store_.layout();
  const int stage = layout.stage();
  groups_.resize(layout.groups().size());
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    const GroupLayout& gl = layout.groups()[gi];
    Group& g = groups_[gi];
    const Device dev = ex_.device;
    g.m = Buffer(dev, size_t(gl.owned_elems) * state_bytes_per_elem(state_.dtype) / 2);
    g.v = Buffer(dev, size_t(gl.owned_elems) * state_bytes_per_elem(state_.dtype) / 2);
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
    g.update_segs = Buffer(dev, asegs.size() * sizeof(AdamWSegment));
    g.stat_segs = Buffer(dev, ssegs.size() * sizeof(StatSegment));
    copy_from_host(asegs.data(), g.update_segs.data(), dev, g.update_segs.bytes(), ex_.stream);
    copy_from_host(ssegs.data(), g.stat_segs.data(), dev, g.stat_segs.bytes(), ex_.stream);
    if (lowp()) build_lowp(int(gi));
    g.m.zero(ex_.stream);
    g.v.zero(ex_.stream);
  }
  // stats_[0..1]: this rank's owned-part statistics; stats_[2]: the loss sum of the step's micro-batches.
  stats_ = Buffer(ex_.device, 3 * sizeof(float));
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
    ex_.cuda() ? probe_.stream_begin() : probe_.host_begin();
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
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    Group& g = groups_[gi];
    const DType t = store_.layout().groups()[gi].dtype;
    if (lowp()) {
      ops::adamw_lowp(ex_, store_.master(int(gi)).as<float>(), g.m.data(), g.v.data(),
                      state_.dtype == StateDType::I8 ? g.lowp_scales.as<float>() : nullptr, state_.dtype,
                      grads_.reduced(int(gi)), t, st.grad_unscale, store_.params(int(gi)).data(), t,
                      g.lowp_segs.as<AdamWSegment>(), g.lowp_blocks.as<AdamWQBlock>(), g.n_lowp_blocks,
                      g.lowp_max_len, g.update_elems, h);
      continue;
    }
    ops::adamw_segments(ex_, store_.master(int(gi)).as<float>(), g.m.as<float>(), g.v.as<float>(),
                        grads_.reduced(int(gi)), t, st.grad_unscale, store_.params(int(gi)).data(), t,
                        g.update_segs.as<AdamWSegment>(), g.n_update_segs, g.update_elems, h);
  }
  store_.all_gather_updated();
}

size_t ShardedAdamW::moment_bytes() const {
  size_t n = 0;
  for (const Group& g : groups_) n += g.m.bytes() + g.v.bytes() + g.lowp_scales.bytes();
  return n;
}

}  // namespace mpt
