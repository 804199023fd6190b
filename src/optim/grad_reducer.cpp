#include "src/optim/grad_reducer.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#include "kernels/accumulate.h"
#include "src/core/cuda_check.h"
#include "src/core/watchdog.h"
#include "src/optim/param_store.h"

namespace mpt {

namespace {

char* at(const Buffer& b, int64_t elem, DType t) {
  return const_cast<char*>(static_cast<const char*>(b.data())) + elem * int64_t(dtype_size(t));
}

cudaStream_t cu(Stream s) { return reinterpret_cast<cudaStream_t>(s); }

}  // namespace

GradReducer::GradReducer(const Exec& ex, Communicator& comm, const FlatLayout& layout,
                         const std::vector<ParamSpec>& specs, Stream comm_stream, ExposureProbe& probe)
    : ex_(ex), comm_(comm), layout_(layout), specs_(specs), stage_(layout.stage()), rank_(layout.rank()),
      world_(layout.world()), comm_stream_(comm_stream ? comm_stream : ex.stream), probe_(probe) {
  groups_.resize(layout_.groups().size());
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    const GroupLayout& gl = layout_.groups()[gi];
    Group& g = groups_[gi];
    const size_t ds = dtype_size(gl.dtype);
    // Stage 2 has no full-size gradient buffer: backward writes into staging slots (take_slot).
    // A window where the communicator has them: the reduce-scatter (and stage 0's all-gather) take fewer SMs.
    if (stage_ < 2) g.grads = comm_buffer(comm_, ex_.device, size_t(gl.size) * ds);
    if (stage_ == 2) g.grad_shard = Buffer(ex_.device, size_t(gl.owned_elems) * ds);
    g.buckets.resize(gl.buckets.size());
    g.grads.zero(ex_.stream);
  }
  ready_.assign(size_t(layout_.num_params()), 0);
  if (ex_.cuda()) {
    cudaEvent_t a, b;
    MPT_CUDA_CHECK(cudaEventCreateWithFlags(&a, cudaEventDisableTiming));
    MPT_CUDA_CHECK(cudaEventCreateWithFlags(&b, cudaEventDisableTiming));
    ev_compute_ = a;
    ev_comm_ = b;
  }
  zero_grads();
}

GradReducer::~GradReducer() {
  for (Group& g : groups_)
    for (Slot& sl : g.slots)
      if (sl.done) cudaEventDestroy(static_cast<cudaEvent_t>(sl.done));
  if (ev_compute_) cudaEventDestroy(static_cast<cudaEvent_t>(ev_compute_));
  if (ev_comm_) cudaEventDestroy(static_cast<cudaEvent_t>(ev_comm_));
}

void GradReducer::zero_grads() {
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    Group& g = groups_[gi];
    g.grads.zero(ex_.stream);
    // Stage 2: the first reduction of each bucket in the step overwrites its shard part, so nothing is
    // zeroed here. A slot still held (a step abandoned before finish) is simply dropped.
    for (Slot& sl : g.slots) sl.busy = false;
    for (size_t k = 0; k < g.buckets.size(); ++k)
      g.buckets[k] = Bucket{layout_.groups()[gi].buckets[k].nparams, false, -1, false, false};
  }
  std::fill(ready_.begin(), ready_.end(), 0);
  micro_active_ = false;
}

void GradReducer::begin_micro_batch(bool is_last) {
  // Stage 2: a slot does not outlive its micro-batch, so what the previous one left (a bucket whose
  // parameters were not all readied) is reduced before this one writes anything.
  if (stage_ == 2 && micro_active_) reduce_leftovers(true);
  last_micro_ = is_last;
  micro_active_ = false;
  for (size_t gi = 0; gi < groups_.size(); ++gi)
    for (size_t k = 0; k < groups_[gi].buckets.size(); ++k) {
      Bucket& b = groups_[gi].buckets[k];
      b.pending = layout_.groups()[gi].buckets[k].nparams;
      b.reduced = false;
    }
  std::fill(ready_.begin(), ready_.end(), 0);
}

void GradReducer::grad_ready(int i) {
  char& seen = ready_.at(size_t(i));
  if (seen)
    throw std::logic_error("GradReducer::grad_ready(" + specs_[size_t(i)].name +
                           "): called twice in one micro-batch (call begin_micro_batch before each micro-batch)");
  seen = 1;
  if (stage_ == 2) micro_active_ = true;
  else if (!last_micro_) return;
  const ParamPlace& p = layout_.place(i);
  Bucket& b = groups_[size_t(p.group)].buckets[size_t(p.bucket)];
  if (--b.pending == 0 && !b.reduced) reduce_bucket(p.group, size_t(p.bucket));
}

void* GradReducer::grad(int i) {
  if (i < 0 || i >= layout_.num_params()) throw std::out_of_range("GradReducer::grad: parameter index");
  const ParamPlace& p = layout_.place(i);
  if (stage_ < 2) return full_grad(i);
  Group& g = groups_[size_t(p.group)];
  Bucket& b = g.buckets[size_t(p.bucket)];
  if (b.reduced)
    throw std::logic_error("GradReducer::grad(" + specs_[size_t(i)].name +
                           "): its bucket was already reduced in this micro-batch (call begin_micro_batch before each "
                           "micro-batch, and grad_ready after the last write)");
  micro_active_ = true;
  if (b.slot < 0) take_slot(p.group, size_t(p.bucket));
  return at(g.slots[size_t(b.slot)].buf, p.offset - layout_.groups()[size_t(p.group)].buckets[size_t(p.bucket)].begin,
            p.dtype);
}

void* GradReducer::full_grad(int i) const {
  if (stage_ == 2) return nullptr;
  const ParamPlace& p = layout_.place(i);
  return at(groups_[size_t(p.group)].grads, p.offset, p.dtype);
}

const void* GradReducer::reduced(int g) const {
  const Group& grp = groups_[size_t(g)];
  return stage_ == 2 ? grp.grad_shard.data() : grp.grads.data();
}

void GradReducer::take_slot(int gi, size_t k) {
  Group& g = groups_[size_t(gi)];
  Bucket& b = g.buckets[k];
  const size_t need = size_t(layout_.groups()[size_t(gi)].buckets[k].len) * dtype_size(layout_.groups()[size_t(gi)].dtype);
  int best = -1;
  for (size_t s = 0; s < g.slots.size(); ++s) {
    const Slot& sl = g.slots[s];
    if (!sl.busy && sl.buf.bytes() >= need && (best < 0 || sl.buf.bytes() < g.slots[size_t(best)].buf.bytes()))
      best = int(s);
  }
  if (best < 0) {
    // Every free slot is too small: the largest of them is replaced by one of this bucket's size rather
    // than kept beside it. Slots only grow, so after the first step the set is fixed, and its capacity is
    // what the buckets open at the same time need, not every size a slot was first made at.
    for (size_t s = 0; s < g.slots.size(); ++s)
      if (!g.slots[s].busy && (best < 0 || g.slots[s].buf.bytes() > g.slots[size_t(best)].buf.bytes())) best = int(s);
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
    probe_.stream_begin(ExposureSite::Staging);
    MPT_CUDA_CHECK(cudaStreamWaitEvent(cu(ex_.stream), static_cast<cudaEvent_t>(sl.done), 0));
    probe_.stream_end();
  }
  // Backward accumulates (beta = 1), and padding between parameters must reduce as zeros.
  if (ex_.cuda()) MPT_CUDA_CHECK(cudaMemsetAsync(sl.buf.data(), 0, need, cu(ex_.stream)));
  else std::memset(sl.buf.data(), 0, need);
  sl.busy = true;
  b.slot = best;
}

void GradReducer::enable_host_copy(bool pin) {
  host_copy_ = true;
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    const GroupLayout& gl = layout_.groups()[gi];
    Group& g = groups_[gi];
    g.host = Buffer::host(size_t(gl.owned_elems) * dtype_size(gl.dtype), pin);
    g.runs.assign(gl.buckets.size(), {});
    for (const OwnedRange& r : gl.owned) {
      size_t k = 0;
      while (k + 1 < gl.buckets.size() && r.flat >= gl.buckets[k].begin + gl.buckets[k].len) ++k;
      const int64_t src = stage_ == 2 ? r.store : r.flat;
      std::vector<Run>& runs = g.runs[k];
      if (!runs.empty() && runs.back().src + runs.back().len == src && runs.back().dst + runs.back().len == r.store)
        runs.back().len += r.len;
      else
        runs.push_back(Run{src, r.store, r.len});
    }
  }
}

size_t GradReducer::host_bytes() const {
  size_t n = 0;
  for (const Group& g : groups_) n += g.host.bytes();
  return n;
}

void GradReducer::copy_out(int gi, size_t k) {
  Group& g = groups_[size_t(gi)];
  const DType t = layout_.groups()[size_t(gi)].dtype;
  const size_t ds = dtype_size(t);
  const Buffer& from = stage_ == 2 ? g.grad_shard : g.grads;
  for (const Run& r : g.runs[k]) {
    char* dst = static_cast<char*>(g.host.data()) + size_t(r.dst) * ds;
    const char* src = static_cast<const char*>(from.data()) + size_t(r.src) * ds;
    if (ex_.cuda())  // after the bucket's collectives, in the order of the communication stream
      MPT_CUDA_CHECK(cudaMemcpyAsync(dst, src, size_t(r.len) * ds, cudaMemcpyDeviceToHost, cu(comm_stream_)));
    else
      std::memcpy(dst, src, size_t(r.len) * ds);
  }
  g.buckets[k].copied = true;
}

void GradReducer::reduce_bucket(int gi, size_t k) {
  reduce_bucket_collectives(gi, k);
  if (host_copy_) {
    // Stages 0/1 reduce a bucket once, in the last micro-batch; stage 2 in every micro-batch, and the
    // last reduction is the one that counts. finish() copies what the last micro-batch did not reduce.
    groups_[size_t(gi)].buckets[k].copied = false;
    if (stage_ < 2 || last_micro_) copy_out(gi, k);
  }
  if (overlap_ || !ex_.cuda()) return;
  // No overlap (zero.overlap = false): the compute stream waits here for everything queued on the
  // communication stream.
  MPT_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(ev_comm_), cu(comm_stream_)));
  probe_.stream_begin(ExposureSite::Gradients);
  MPT_CUDA_CHECK(cudaStreamWaitEvent(cu(ex_.stream), static_cast<cudaEvent_t>(ev_comm_), 0));
  probe_.stream_end();
}

void GradReducer::reduce_bucket_collectives(int gi, size_t k) {
  Group& g = groups_[size_t(gi)];
  Bucket& b = g.buckets[k];
  const GroupLayout& gl = layout_.groups()[size_t(gi)];
  const BucketExtent& ext = gl.buckets[k];
  const DType t = gl.dtype;
  // Stage 2: a bucket nobody wrote in this micro-batch still takes part in the collective (from a
  // zeroed slot), so every rank runs the same sequence of collectives and a first micro-batch always
  // sets the whole shard part.
  if (stage_ == 2 && b.slot < 0) take_slot(gi, k);
  void* src = stage_ == 2 ? g.slots[size_t(b.slot)].buf.data() : static_cast<void*>(at(g.grads, ext.begin, t));
  if (inject_inf_ && gi == 0 && k == 0) {
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
  const size_t part = size_t(ext.len / world_);
  // On CPU ranks the collectives below block until every rank has arrived (on GPUs they are queued).
  const WaitScope wait("the reduction of gradient bucket " + std::to_string(k));
  struct HostWait {  // CPU ranks: the collectives below are all exposed
    ExposureProbe& p;
    bool on;
    HostWait(ExposureProbe& probe, bool host) : p(probe), on(host) { if (on) p.host_begin(ExposureSite::Gradients); }
    ~HostWait() { if (on) p.host_end(); }
  } host_wait(probe_, !ex_.cuda());
  if (stage_ < 2) {
    // Reduce-scatter into this rank's part in place: the very collective stage 2 runs, with the same
    // count, so that every stage sums each element in the same order whatever algorithm the MPI library
    // picks for a call (MPI_Reduce_scatter and MPI_Reduce_scatter_block may differ). Stage 0 updates
    // every part and all-gathers the reduced parts; stage 1 reads its own part only and does not.
    void* mine = static_cast<char*>(src) + size_t(rank_) * part * dtype_size(t);
    if (!skip_comm_) comm_.reduce_scatter(src, mine, part, t, s);
    if (stage_ == 0 && !skip_comm_) comm_.all_gather(mine, src, part, t, s);
    b.reduced = true;
    return;
  }
  void* shard = at(g.grad_shard, layout_.shard_offset(gi, k), t);
  Slot& sl = g.slots[size_t(b.slot)];
  if (!b.filled) {
    if (!skip_comm_) comm_.reduce_scatter(src, shard, part, t, s);
  } else if (!skip_comm_) {
    // The communication stream runs one collective and one add at a time, so one temporary serves
    // every bucket and group.
    if (accum_tmp_.bytes() < part * dtype_size(t)) {
      size_t most = 0;
      for (const GroupLayout& gg : layout_.groups())
        for (const BucketExtent& bb : gg.buckets) most = std::max(most, size_t(bb.len / world_) * dtype_size(gg.dtype));
      accum_tmp_ = Buffer(ex_.device, most);
    }
    comm_.reduce_scatter(src, accum_tmp_.data(), part, t, s);
  }
  if (ex_.cuda()) MPT_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(sl.done), cu(comm_stream_)));
  if (b.filled && !skip_comm_) {
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

void GradReducer::reduce_leftovers(bool all_unreduced) {
  // Bucket order, the same on every rank, so the collectives pair up.
  for (size_t gi = 0; gi < groups_.size(); ++gi)
    for (size_t k = 0; k < groups_[gi].buckets.size(); ++k) {
      const Bucket& b = groups_[gi].buckets[k];
      if (!b.reduced && (all_unreduced || !b.filled)) reduce_bucket(int(gi), k);
    }
}

void GradReducer::finish() {
  if (stage_ == 2) {
    // After an active micro-batch every bucket not yet reduced in it is; a bucket that no micro-batch
    // of the step reduced contributes zeros, so that the whole shard is set.
    reduce_leftovers(micro_active_);
    micro_active_ = false;
  } else {
    for (size_t gi = 0; gi < groups_.size(); ++gi)
      for (size_t k = 0; k < groups_[gi].buckets.size(); ++k)
        if (!groups_[gi].buckets[k].reduced) reduce_bucket(int(gi), k);
  }
  if (host_copy_)
    for (size_t gi = 0; gi < groups_.size(); ++gi)
      for (size_t k = 0; k < groups_[gi].buckets.size(); ++k)
        if (!groups_[gi].buckets[k].copied) copy_out(int(gi), k);
  if (ex_.cuda() && comm_stream_ != ex_.stream) {
    MPT_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(ev_comm_), cu(comm_stream_)));
    probe_.stream_begin(ExposureSite::Gradients);
    MPT_CUDA_CHECK(cudaStreamWaitEvent(cu(ex_.stream), static_cast<cudaEvent_t>(ev_comm_), 0));
    probe_.stream_end();
  }
}

size_t GradReducer::grad_bytes() const {
  size_t n = 0;
  for (const Group& g : groups_) n += g.grads.bytes();
  return n;
}

size_t GradReducer::shard_bytes() const {
  size_t n = 0;
  for (const Group& g : groups_) n += g.grad_shard.bytes();
  return n;
}

size_t GradReducer::staging_bytes() const {
  size_t n = accum_tmp_.bytes();
  for (const Group& g : groups_)
    for (const Slot& sl : g.slots) n += sl.buf.bytes();
  return n;
}

}  // namespace mpt
