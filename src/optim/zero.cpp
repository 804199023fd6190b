#include "src/optim/zero.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <stdexcept>

#include "kernels/accumulate.h"
#include "kernels/cast.h"
#include "kernels/unscale_stats.h"
#include "src/core/cuda_check.h"
#include "src/core/rng.h"
#include "src/core/watchdog.h"

namespace mpt {

namespace {

int64_t align_up(int64_t x, int64_t a) { return (x + a - 1) / a * a; }

uint64_t fnv1a(const void* p, size_t n, uint64_t h = 1469598103934665603ull) {
  const auto* b = static_cast<const uint8_t*>(p);
  for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

char* at(Buffer& b, int64_t elem, DType t) { return b.as<char>() + elem * int64_t(dtype_size(t)); }

cudaStream_t cu(Stream s) { return reinterpret_cast<cudaStream_t>(s); }

}  // namespace

ShardedOptimizer::ShardedOptimizer(const Exec& ex, Communicator& comm, std::vector<ParamSpec> specs, int stage,
                                   size_t bucket_bytes, uint64_t seed, Stream comm_stream)
    : ex_(ex), comm_(comm), specs_(std::move(specs)), stage_(stage), rank_(comm.rank()), world_(comm.size()),
      comm_stream_(comm_stream ? comm_stream : ex.stream) {
  if (stage < 0 || stage > 2) throw std::invalid_argument("ZeRO stage must be 0, 1 or 2");
  views_.resize(specs_.size());

  // Place parameters in backward order, group by dtype, cut into buckets.
  std::map<DType, int> group_of;
  std::vector<bool> open(0);
  std::vector<size_t> open_bytes(0);
  auto close_bucket = [&](int gi) {
    Group& g = groups_[size_t(gi)];
    Bucket& b = g.buckets.back();
    b.len = align_up(g.size - b.begin, int64_t(world_) * kAlign);
    g.size = b.begin + b.len;
    open[size_t(gi)] = false;
  };
  for (int i = int(specs_.size()) - 1; i >= 0; --i) {
    const ParamSpec& s = specs_[size_t(i)];
    if (s.numel() <= 0) throw std::invalid_argument("parameter " + s.name + " has no elements");
    auto it = group_of.find(s.dtype);
    if (it == group_of.end()) {
      it = group_of.emplace(s.dtype, int(groups_.size())).first;
      groups_.emplace_back();
      groups_.back().dtype = s.dtype;
      open.push_back(false);
      open_bytes.push_back(0);
    }
    const int gi = it->second;
    Group& g = groups_[size_t(gi)];
    const size_t bytes = size_t(s.numel()) * dtype_size(s.dtype);
    if (open[size_t(gi)] && open_bytes[size_t(gi)] + bytes > bucket_bytes) close_bucket(gi);
    if (!open[size_t(gi)]) {
      g.buckets.push_back(Bucket{});
      g.buckets.back().begin = g.size;
      open[size_t(gi)] = true;
      open_bytes[size_t(gi)] = 0;
    }
    const int64_t off = align_up(g.size, kAlign);
    g.size = off + s.numel();
    open_bytes[size_t(gi)] += bytes;
    g.buckets.back().nparams++;
    views_[size_t(i)] = ParamView{nullptr, nullptr, s.dtype, gi, int(g.buckets.size()) - 1, off, s.numel()};
  }
  for (size_t gi = 0; gi < groups_.size(); ++gi)
    if (open[gi]) close_bucket(int(gi));

  // Owned ranges, split where weight decay changes.
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    Group& g = groups_[gi];
    std::vector<std::pair<int64_t, int64_t>> decay_spans;  // [begin, end) of parameters with decay
    for (size_t i = 0; i < specs_.size(); ++i)
      if (views_[i].group == int(gi) && specs_[i].decay)
        decay_spans.emplace_back(views_[i].offset, views_[i].offset + views_[i].numel);
    std::sort(decay_spans.begin(), decay_spans.end());
    auto decay_at = [&](int64_t x, int64_t* run_end) {
      // Whether x lies in a decayed parameter, and where that property next changes.
      for (auto [b, e] : decay_spans) {
        if (x < b) { *run_end = b; return false; }
        if (x < e) { *run_end = e; return true; }
      }
      *run_end = std::numeric_limits<int64_t>::max();
      return false;
    };
    int64_t store = 0;
    for (const Bucket& b : g.buckets) {
      const int64_t part = b.len / world_;
      for (int p = 0; p < world_; ++p) {
        if (stage_ > 0 && p != rank_) continue;
        const int64_t begin = b.begin + p * part, end = begin + part;
        const int64_t base_store = stage_ == 0 ? begin : store;
        for (int64_t x = begin; x < end;) {
          int64_t run_end;
          const bool d = decay_at(x, &run_end);
          const int64_t y = std::min(end, run_end);
          g.owned.push_back(Range{x, y - x, base_store + (x - begin), d, p == rank_});
          x = y;
        }
        if (stage_ > 0) store += part;
      }
    }
    g.owned_elems = stage_ == 0 ? g.size : store;

    const Device dev = ex_.device;
    const size_t ds = dtype_size(g.dtype);
    g.params = Buffer(dev, size_t(g.size) * ds);
    // Stage 2 has no full-size gradient buffer: backward writes into staging slots (take_slot).
    if (stage_ < 2) g.grads = Buffer(dev, size_t(g.size) * ds);
    if (stage_ == 2) g.grad_shard = Buffer(dev, size_t(g.owned_elems) * ds);
    g.master = Buffer(dev, size_t(g.owned_elems) * 4);
    g.m = Buffer(dev, size_t(g.owned_elems) * 4);
    g.v = Buffer(dev, size_t(g.owned_elems) * 4);
    // The update and the statistics run over segment lists (one launch each per group): every owned range
    // cut into pieces the kernels take whole. The statistics cover the rank's own parts only.
    std::vector<AdamWSegment> asegs;
    std::vector<StatSegment> ssegs;
    for (const Range& r : g.owned) {
      const int64_t gbase = stage_ == 2 ? r.store : r.flat;
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
    g.m.zero(ex_.stream);
    g.v.zero(ex_.stream);
    g.params.zero(ex_.stream);
    g.grads.zero(ex_.stream);
  }
  for (size_t i = 0; i < specs_.size(); ++i) {
    Group& g = groups_[size_t(views_[i].group)];
    views_[i].param = at(g.params, views_[i].offset, g.dtype);
    views_[i].grad = stage_ < 2 ? at(g.grads, views_[i].offset, g.dtype) : nullptr;
  }
  // stats_[0..1]: this rank's owned-part statistics.
  stats_ = Buffer(ex_.device, 2 * sizeof(float));
  if (ex_.cuda()) {
    cudaEvent_t a, b;
    MPT_CUDA_CHECK(cudaEventCreateWithFlags(&a, cudaEventDisableTiming));
    MPT_CUDA_CHECK(cudaEventCreateWithFlags(&b, cudaEventDisableTiming));
    ev_compute_ = a;
    ev_comm_ = b;
  }
  init_params(seed);
  zero_grads();
}

ShardedOptimizer::~ShardedOptimizer() {
  for (Group& g : groups_)
    for (Slot& sl : g.slots)
      if (sl.done) cudaEventDestroy(static_cast<cudaEvent_t>(sl.done));
  for (Group& g : groups_)
    for (Bucket& b : g.buckets)
      if (b.gathered) cudaEventDestroy(static_cast<cudaEvent_t>(b.gathered));
  if (ev_compute_) cudaEventDestroy(static_cast<cudaEvent_t>(ev_compute_));
  if (ev_comm_) cudaEventDestroy(static_cast<cudaEvent_t>(ev_comm_));
}

int ShardedOptimizer::num_buckets() const {
  int n = 0;
  for (const auto& g : groups_) n += int(g.buckets.size());
  return n;
}

int64_t ShardedOptimizer::num_elements() const {
  int64_t n = 0;
  for (const auto& s : specs_) n += s.numel();
  return n;
}

void ShardedOptimizer::init_params(uint64_t seed) {
  // Each parameter draws from its own stream keyed by its name, so initial values do not depend on the
  // layout, the world size or the other parameters.
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    Group& g = groups_[gi];
    std::vector<float> full(size_t(g.size), 0.f);
    for (size_t i = 0; i < specs_.size(); ++i) {
      if (views_[i].group != int(gi)) continue;
      const ParamSpec& s = specs_[i];
      Rng r(seed ^ fnv1a(s.name.data(), s.name.size()));
      float* p = full.data() + views_[i].offset;
      for (int64_t e = 0; e < s.numel(); ++e) {
        switch (s.init) {
          case Init::Uniform: p[e] = r.uniform(-s.init_scale, s.init_scale); break;
          case Init::Normal: p[e] = r.normal() * s.init_scale; break;
          case Init::Ones: p[e] = 1.f; break;
          case Init::Zeros: p[e] = 0.f; break;
        }
      }
    }
    std::vector<uint8_t> half(size_t(g.size) * dtype_size(g.dtype));
    from_float_n(full.data(), half.data(), g.dtype, size_t(g.size));
    copy_from_host(half.data(), g.params.data(), ex_.device, half.size(), ex_.stream);
    std::vector<float> master(size_t(g.owned_elems), 0.f);
    for (const Range& r : g.owned) std::memcpy(&master[size_t(r.store)], &full[size_t(r.flat)], size_t(r.len) * 4);
    copy_from_host(master.data(), g.master.data(), ex_.device, master.size() * 4, ex_.stream);
  }
}

void ShardedOptimizer::zero_grads() {
  for (Group& g : groups_) {
    g.grads.zero(ex_.stream);
    // Stage 2: the first reduction of each bucket in the step overwrites its shard part, so nothing is
    // zeroed here. A slot still held (a step abandoned before finish_reduction) is simply dropped.
    for (Slot& sl : g.slots) sl.busy = false;
    for (Bucket& b : g.buckets) { b.pending = b.nparams; b.reduced = false; b.slot = -1; b.filled = false; }
  }
  micro_active_ = false;
}

void ShardedOptimizer::set_last_micro(bool last) {
  // Stage 2: a slot does not outlive its micro-batch, so what the previous one left (a bucket whose
  // parameters were not all readied) is reduced before this one writes anything.
  if (stage_ == 2 && micro_active_) reduce_leftovers(true);
  last_micro_ = last;
  micro_active_ = false;
  for (Group& g : groups_)
    for (Bucket& b : g.buckets) { b.pending = b.nparams; b.reduced = false; }
}

int64_t ShardedOptimizer::shard_offset(const Group& g, size_t k) const {
  int64_t off = 0;
  for (size_t j = 0; j < k; ++j) off += g.buckets[j].len / world_;
  return off;
}

void ShardedOptimizer::grad_ready(int i) {
  if (stage_ == 2) micro_active_ = true;
  else if (!last_micro_) return;
  const ParamView& v = views_[size_t(i)];
  Group& g = groups_[size_t(v.group)];
  Bucket& b = g.buckets[size_t(v.bucket)];
  if (--b.pending == 0 && !b.reduced) reduce_bucket(g, b, shard_offset(g, size_t(v.bucket)));
}

void* ShardedOptimizer::grad(int i) {
  const ParamView& v = views_.at(size_t(i));
  if (stage_ < 2) return v.grad;
  Group& g = groups_[size_t(v.group)];
  Bucket& b = g.buckets[size_t(v.bucket)];
  if (b.reduced)
    throw std::logic_error("ShardedOptimizer::grad(" + specs_[size_t(i)].name +
                           "): its bucket was already reduced in this micro-batch (call set_last_micro before each "
                           "micro-batch, and grad_ready after the last write)");
  micro_active_ = true;
  if (b.slot < 0) take_slot(g, b);
  return at(g.slots[size_t(b.slot)].buf, v.offset - b.begin, g.dtype);
}

void ShardedOptimizer::take_slot(Group& g, Bucket& b) {
  const size_t need = size_t(b.len) * dtype_size(g.dtype);
  int best = -1;
  for (size_t k = 0; k < g.slots.size(); ++k) {
    const Slot& sl = g.slots[k];
    if (!sl.busy && sl.buf.bytes() >= need && (best < 0 || sl.buf.bytes() < g.slots[size_t(best)].buf.bytes()))
      best = int(k);
  }
  if (best < 0) {
    // Every free slot is too small: the largest of them is replaced by one of this bucket's size rather
    // than kept beside it. Slots only grow, so after the first step the set is fixed, and its capacity is
    // what the buckets open at the same time need, not every size a slot was first made at.
    for (size_t k = 0; k < g.slots.size(); ++k)
      if (!g.slots[k].busy && (best < 0 || g.slots[k].buf.bytes() > g.slots[size_t(best)].buf.bytes())) best = int(k);
  }
  if (best >= 0 && g.slots[size_t(best)].buf.bytes() < need) {
    Slot& sl = g.slots[size_t(best)];
    // Its last reduce-scatter may still read it.
    if (sl.used && ex_.cuda()) MPT_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(sl.done)));
    sl.buf = Buffer();  // freed before the new one is made: the total never exceeds the new total
    sl.buf = Buffer(ex_.device, need);
    sl.used = false;
  }
  if (best < 0) {
    // No cap on the number of slots: a model that keeps many buckets open at once gets more memory
    // rather than a wait for a slot that only its own later gradients would free.
    Slot sl;
    sl.buf = Buffer(ex_.device, need);
    if (ex_.cuda()) {
      cudaEvent_t e;
      MPT_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
      sl.done = e;
    }
    g.slots.push_back(std::move(sl));
    best = int(g.slots.size()) - 1;
  }
  Slot& sl = g.slots[size_t(best)];
  if (sl.used && ex_.cuda()) {
    probe_.stream_begin();
    MPT_CUDA_CHECK(cudaStreamWaitEvent(cu(ex_.stream), static_cast<cudaEvent_t>(sl.done), 0));
    probe_.stream_end();
  }
  // Backward accumulates (beta = 1), and padding between parameters must reduce as zeros.
  if (ex_.cuda()) MPT_CUDA_CHECK(cudaMemsetAsync(sl.buf.data(), 0, need, cu(ex_.stream)));
  else std::memset(sl.buf.data(), 0, need);
  sl.busy = true;
  b.slot = best;
}

void ShardedOptimizer::reduce_bucket(Group& g, Bucket& b, int64_t shard_off) {
  const DType t = g.dtype;
  // Stage 2: a bucket nobody wrote in this micro-batch still takes part in the collective (from a
  // zeroed slot), so every rank runs the same sequence of collectives and a first micro-batch always
  // sets the whole shard part.
  if (stage_ == 2 && b.slot < 0) take_slot(g, b);
  void* src = stage_ == 2 ? g.slots[size_t(b.slot)].buf.data() : static_cast<void*>(at(g.grads, b.begin, t));
  if (inject_inf_ && &g == &groups_[0] && &b == &g.buckets[0]) {
    // The first element of the bucket is the first element of a real parameter (buckets start aligned).
    std::vector<uint8_t> v(dtype_size(t));
    store_elem(v.data(), t, 0, std::numeric_limits<float>::infinity());
    copy_from_host(v.data(), src, ex_.device, v.size(), ex_.stream);
    inject_inf_ = false;
  }
  Stream s = nullptr;
  if (ex_.cuda()) {
    // The bucket's gradients were written on the compute stream; the collective waits for them there.
    MPT_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(ev_compute_), cu(ex_.stream)));
    MPT_CUDA_CHECK(cudaStreamWaitEvent(cu(comm_stream_), static_cast<cudaEvent_t>(ev_compute_), 0));
    s = comm_stream_;
  }
  const size_t part = size_t(b.len / world_);
  // On CPU ranks the collectives below block until every rank has arrived (on GPUs they are queued).
  const WaitScope wait("the reduction of gradient bucket " + std::to_string(&b - g.buckets.data()));
  struct HostWait {  // CPU ranks: the collectives below are all exposed
    ExposureProbe& p;
    bool on;
    HostWait(ExposureProbe& probe, bool host) : p(probe), on(host) { if (on) p.host_begin(); }
    ~HostWait() { if (on) p.host_end(); }
  } host_wait(probe_, !ex_.cuda());
  if (stage_ < 2) {
    // Reduce-scatter into this rank's part in place: the very collective stage 2 runs, with the same
    // count, so that every stage sums each element in the same order whatever algorithm the MPI library
    // picks for a call (MPI_Reduce_scatter and MPI_Reduce_scatter_block may differ). Stage 0 updates
    // every part and all-gathers the reduced parts; stage 1 reads its own part only and does not.
    void* mine = static_cast<char*>(src) + size_t(rank_) * part * dtype_size(t);
    comm_.reduce_scatter(src, mine, part, t, s);
    if (stage_ == 0) comm_.all_gather(mine, src, part, t, s);
    b.reduced = true;
    return;
  }
  void* shard = at(g.grad_shard, shard_off, t);
  Slot& sl = g.slots[size_t(b.slot)];
  if (!b.filled) {
    comm_.reduce_scatter(src, shard, part, t, s);
  } else {
    // The communication stream runs one collective and one add at a time, so one temporary serves
    // every bucket and group.
    if (accum_tmp_.bytes() < part * dtype_size(t)) {
      size_t most = 0;
      for (const Group& gg : groups_)
        for (const Bucket& bb : gg.buckets) most = std::max(most, size_t(bb.len / world_) * dtype_size(gg.dtype));
      accum_tmp_ = Buffer(ex_.device, most);
    }
    comm_.reduce_scatter(src, accum_tmp_.data(), part, t, s);
  }
  if (ex_.cuda()) MPT_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(sl.done), cu(comm_stream_)));
  if (b.filled) {
    Exec on_comm = ex_;
    on_comm.stream = s;
    ops::accumulate(on_comm, accum_tmp_.data(), shard, t, part);
  }
  sl.used = true;
  sl.busy = false;
  b.slot = -1;
  b.filled = true;
  b.reduced = true;
}

void ShardedOptimizer::reduce_leftovers(bool all_unreduced) {
  // Bucket order, the same on every rank, so the collectives pair up.
  for (Group& g : groups_)
    for (size_t k = 0; k < g.buckets.size(); ++k) {
      Bucket& b = g.buckets[k];
      if (!b.reduced && (all_unreduced || !b.filled)) reduce_bucket(g, b, shard_offset(g, k));
    }
}

void ShardedOptimizer::finish_reduction() {
  if (stage_ == 2) {
    // After an active micro-batch every bucket not yet reduced in it is; a bucket that no micro-batch
    // of the step reduced contributes zeros, so that the whole shard is set.
    reduce_leftovers(micro_active_);
    micro_active_ = false;
  } else {
    for (Group& g : groups_)
      for (size_t k = 0; k < g.buckets.size(); ++k)
        if (!g.buckets[k].reduced) reduce_bucket(g, g.buckets[k], shard_offset(g, k));
  }
  if (ex_.cuda() && comm_stream_ != ex_.stream) {
    MPT_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(ev_comm_), cu(comm_stream_)));
    probe_.stream_begin();
    MPT_CUDA_CHECK(cudaStreamWaitEvent(cu(ex_.stream), static_cast<cudaEvent_t>(ev_comm_), 0));
    probe_.stream_end();
  }
}

StepStats ShardedOptimizer::step(float loss_scale, const AdamWHyper& hyper, double clip_norm) {
  const StepStats st = reduce_stats(loss_scale, clip_norm);
  if (!st.overflow) apply(st, hyper);
  return st;
}

StepStats ShardedOptimizer::reduce_stats(float loss_scale, double clip_norm) {
  stats_.zero(ex_.stream);
  float* stats = stats_.as<float>();
  const float inv_scale = float(1.0 / (double(loss_scale) * double(world_)));
  for (Group& g : groups_) {
    const void* src = stage_ == 2 ? g.grad_shard.data() : g.grads.data();
    ops::unscale_stats_segments(ex_, src, g.dtype, g.stat_segs.as<StatSegment>(), g.n_stat_segs, g.stat_elems,
                                inv_scale, stats);
  }
  float host[2];
  {
    // The readback waits for the whole step's device work and collectives, hence for every other rank.
    const WaitScope wait("the all-reduce of the gradient statistics");
    begin_exposed();
    comm_.all_reduce(stats, stats, 2, DType::F32, ReduceOp::Sum, ex_.stream);
    end_exposed();
    copy_to_host(stats, ex_.device, host, sizeof host, ex_.stream);
  }

  StepStats st;
  st.grad_unscale = inv_scale;
  st.nonfinite = host[0];
  st.overflow = host[0] > 0.f || !std::isfinite(host[1]);
  if (st.overflow) return st;
  st.grad_norm = std::sqrt(double(host[1]));
  st.clip_coef = (clip_norm > 0 && st.grad_norm > clip_norm) ? clip_norm / (st.grad_norm + 1e-6) : 1.0;
  return st;
}

void ShardedOptimizer::param_ready(int i) const {
  const ParamView& v = views_[size_t(i)];
  const Bucket& b = groups_[size_t(v.group)].buckets[size_t(v.bucket)];
  if (!b.gather_pending) return;
  probe_.stream_begin();
  MPT_CUDA_CHECK(cudaStreamWaitEvent(cu(ex_.stream), static_cast<cudaEvent_t>(b.gathered), 0));
  probe_.stream_end();
  b.gather_pending = false;
}

void ShardedOptimizer::all_params_ready() const {
  for (const Group& g : groups_)
    for (const Bucket& b : g.buckets)
      if (b.gather_pending) {
        probe_.stream_begin();
        MPT_CUDA_CHECK(cudaStreamWaitEvent(cu(ex_.stream), static_cast<cudaEvent_t>(b.gathered), 0));
        probe_.stream_end();
        b.gather_pending = false;
      }
}

void ShardedOptimizer::apply(const StepStats& st, const AdamWHyper& hyper) {
  if (st.overflow) throw std::logic_error("ShardedOptimizer::apply called for an overflowing step");
  // The update writes this rank's parts of the parameters, which last step's all-gather reads.
  all_params_ready();
  ++adam_step_;
  AdamWHyper h = hyper;
  h.bc1 = float(1.0 - std::pow(double(hyper.beta1), double(adam_step_)));
  h.bc2 = float(1.0 - std::pow(double(hyper.beta2), double(adam_step_)));
  h.grad_coef = float(st.clip_coef);
  for (Group& g : groups_) {
    const void* grad = stage_ == 2 ? g.grad_shard.data() : g.grads.data();
    ops::adamw_segments(ex_, g.master.as<float>(), g.m.as<float>(), g.v.as<float>(), grad, g.dtype, st.grad_unscale,
                        g.params.data(), g.dtype, g.update_segs.as<AdamWSegment>(), g.n_update_segs, g.update_elems,
                        h);
  }
  if (stage_ > 0 && overlap_gather()) {
    // On the communication stream, after the update, bucket by bucket from the last: the forward uses the
    // parameters in the reverse of the backward order the buckets are laid out in. Each bucket's event
    // lets the forward of a layer wait for its own parameters only (param_ready).
    MPT_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(ev_compute_), cu(ex_.stream)));
    MPT_CUDA_CHECK(cudaStreamWaitEvent(cu(comm_stream_), static_cast<cudaEvent_t>(ev_compute_), 0));
    for (Group& g : groups_) {
      for (size_t k = g.buckets.size(); k-- > 0;) {
        Bucket& b = g.buckets[k];
        const int64_t part = b.len / world_;
        comm_.all_gather(at(g.params, b.begin + rank_ * part, g.dtype), at(g.params, b.begin, g.dtype),
                         size_t(part), g.dtype, comm_stream_);
        if (!b.gathered) {
          cudaEvent_t e;
          MPT_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
          b.gathered = e;
        }
        MPT_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(b.gathered), cu(comm_stream_)));
        b.gather_pending = true;
      }
    }
  } else if (stage_ > 0) {
    const WaitScope wait("the all-gather of the updated parameters");
    begin_exposed();
    for (Group& g : groups_) {
      for (const Bucket& b : g.buckets) {
        const int64_t part = b.len / world_;
        comm_.all_gather(at(g.params, b.begin + rank_ * part, g.dtype), at(g.params, b.begin, g.dtype),
                         size_t(part), g.dtype, ex_.stream);
      }
    }
    end_exposed();
  }
}

uint64_t ShardedOptimizer::param_hash() const {
  all_params_ready();
  uint64_t h = 1469598103934665603ull;
  for (const Group& g : groups_) {
    std::vector<uint8_t> host(g.params.bytes());
    copy_to_host(g.params.data(), ex_.device, host.data(), host.size(), ex_.stream);
    h = fnv1a(host.data(), host.size(), h);
  }
  return h;
}

std::vector<float> ShardedOptimizer::params_as_float(int i) const {
  all_params_ready();
  const ParamView& v = views_[size_t(i)];
  std::vector<uint8_t> raw(size_t(v.numel) * dtype_size(v.dtype));
  copy_to_host(v.param, ex_.device, raw.data(), raw.size(), ex_.stream);
  std::vector<float> out(size_t(v.numel));
  to_float_n(raw.data(), v.dtype, out.data(), out.size());
  return out;
}

ShardedOptimizer::FullState ShardedOptimizer::gather_state() const {
  // Gathers each FP32 buffer to flat order per group, then lays parameters out in spec order.
  FullState out;
  std::vector<float>* dst[3] = {&out.master, &out.m, &out.v};
  for (int which = 0; which < 3; ++which) {
    std::vector<std::vector<float>> flat(groups_.size());
    for (size_t gi = 0; gi < groups_.size(); ++gi) {
      const Group& g = groups_[gi];
      const Buffer& src = which == 0 ? g.master : (which == 1 ? g.m : g.v);
      std::vector<float> local(size_t(g.owned_elems));
      copy_to_host(src.data(), ex_.device, local.data(), local.size() * 4, ex_.stream);
      flat[gi].assign(size_t(g.size), 0.f);
      if (stage_ == 0) {
        flat[gi] = local;
        continue;
      }
      // Every rank owns the same number of elements; gather them rank-major through the communicator.
      const size_t n = size_t(g.owned_elems);
      Buffer send(ex_.device, n * 4), recv(ex_.device, n * 4 * size_t(world_));
      copy_device(src.data(), send.data(), ex_.device, n * 4, ex_.stream);
      {
        const WaitScope wait("the all-gather of the optimizer state (checkpoint)");
        const_cast<Communicator&>(comm_).all_gather(send.data(), recv.data(), n, DType::F32, ex_.stream);
      }
      std::vector<float> all(n * size_t(world_));
      copy_to_host(recv.data(), ex_.device, all.data(), all.size() * 4, ex_.stream);
      for (int r = 0; r < world_; ++r) {
        int64_t store = 0;
        for (const Bucket& b : g.buckets) {
          const int64_t part = b.len / world_;
          std::memcpy(&flat[gi][size_t(b.begin + r * part)], &all[size_t(r) * n + size_t(store)], size_t(part) * 4);
          store += part;
        }
      }
    }
    for (size_t i = 0; i < specs_.size(); ++i) {
      const ParamView& v = views_[i];
      dst[which]->insert(dst[which]->end(), flat[size_t(v.group)].begin() + v.offset,
                         flat[size_t(v.group)].begin() + v.offset + v.numel);
    }
  }
  return out;
}

std::vector<float> ShardedOptimizer::gather_master() const { return gather_state().master; }

void ShardedOptimizer::load_state(const FullState& s) {
  all_params_ready();
  const size_t total = size_t(num_elements());
  if (s.master.size() != total || s.m.size() != total || s.v.size() != total)
    throw std::invalid_argument("optimizer state has the wrong number of elements");
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    Group& g = groups_[gi];
    std::vector<float> flat[3];
    for (auto& f : flat) f.assign(size_t(g.size), 0.f);
    size_t pos = 0;
    for (size_t i = 0; i < specs_.size(); ++i) {
      const ParamView& v = views_[i];
      if (v.group == int(gi)) {
        std::memcpy(&flat[0][size_t(v.offset)], &s.master[pos], size_t(v.numel) * 4);
        std::memcpy(&flat[1][size_t(v.offset)], &s.m[pos], size_t(v.numel) * 4);
        std::memcpy(&flat[2][size_t(v.offset)], &s.v[pos], size_t(v.numel) * 4);
      }
      pos += size_t(v.numel);
    }
    Buffer* dst[3] = {&g.master, &g.m, &g.v};
    for (int w = 0; w < 3; ++w) {
      std::vector<float> local(size_t(g.owned_elems));
      for (const Range& r : g.owned) std::memcpy(&local[size_t(r.store)], &flat[w][size_t(r.flat)], size_t(r.len) * 4);
      copy_from_host(local.data(), dst[w]->data(), ex_.device, local.size() * 4, ex_.stream);
    }
    // The model-dtype parameters are the rounded master weights, everywhere (not only the owned parts).
    std::vector<uint8_t> half(size_t(g.size) * dtype_size(g.dtype));
    from_float_n(flat[0].data(), half.data(), g.dtype, size_t(g.size));
    copy_from_host(half.data(), g.params.data(), ex_.device, half.size(), ex_.stream);
  }
}

MemoryReport ShardedOptimizer::memory() const {
  MemoryReport m;
  for (const Group& g : groups_) {
    m.params += g.params.bytes();
    m.grads += g.grads.bytes();
    for (const Slot& sl : g.slots) m.grad_staging += sl.buf.bytes();
    m.grad_shard += g.grad_shard.bytes();
    m.master += g.master.bytes();
    m.adam += g.m.bytes() + g.v.bytes();
  }
  m.grad_staging += accum_tmp_.bytes();
  return m;
}

}  // namespace mpt
