#include "src/optim/param_store.h"

#include <algorithm>
#include <cstring>
#include <thread>

#include "src/core/cuda_check.h"
#include "src/core/rng.h"
#include "src/core/watchdog.h"

namespace mpt {

namespace {

uint64_t fnv1a(const void* p, size_t n, uint64_t h = 1469598103934665603ull) {
  const auto* b = static_cast<const uint8_t*>(p);
  for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

char* at(const Buffer& b, int64_t elem, DType t) {
  return const_cast<char*>(static_cast<const char*>(b.data())) + elem * int64_t(dtype_size(t));
}

cudaStream_t cu(Stream s) { return reinterpret_cast<cudaStream_t>(s); }

}  // namespace

Buffer comm_buffer(Communicator& comm, Device d, size_t bytes) {
  if (d == Device::CUDA && bytes > 0)
    if (void* p = comm.alloc_window(bytes))
      return Buffer::adopt(p, bytes, d, [&comm](void* q) { comm.free_window(q); });
  return Buffer(d, bytes);
}

ParamStore::ParamStore(const Exec& ex, Communicator& comm, std::vector<ParamSpec> specs, int stage,
                       size_t bucket_bytes, uint64_t seed, Stream comm_stream, ExposureProbe& probe,
                       bool master_on_host)
    : ex_(ex), comm_(comm), specs_(std::move(specs)), layout_(specs_, stage, comm.rank(), comm.size(), bucket_bytes),
      comm_stream_(comm_stream ? comm_stream : ex.stream), probe_(probe), seed_(seed) {
  groups_.resize(layout_.groups().size());
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    const GroupLayout& gl = layout_.groups()[gi];
    Group& g = groups_[gi];
    // A window where the communicator has them: the parameter all-gather then runs on the copy engines.
    g.params = comm_buffer(comm_, ex_.device, size_t(gl.size) * dtype_size(gl.dtype));
    g.master = Buffer(master_on_host ? Device::CPU : ex_.device, size_t(gl.owned_elems) * 4);
    g.gathered.assign(gl.buckets.size(), nullptr);
    g.gather_pending.assign(gl.buckets.size(), 0);
    g.params.zero(ex_.stream);
    g.master.zero(ex_.stream);  // padding stays zero; init_params writes the parameters' elements
  }
  if (ex_.cuda()) {
    cudaEvent_t e;
    MPT_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    ev_updated_ = e;
  }
}

ParamStore::~ParamStore() {
  for (Group& g : groups_)
    for (void* e : g.gathered)
      if (e) cudaEventDestroy(static_cast<cudaEvent_t>(e));
  if (ev_updated_) cudaEventDestroy(static_cast<cudaEvent_t>(ev_updated_));
}

int64_t ParamStore::num_elements() const {
  int64_t n = 0;
  for (const auto& s : specs_) n += s.numel();
  return n;
}

void ParamStore::init_params() {
  const uint64_t seed = seed_;
  // Each parameter draws from its own stream keyed by its name, so initial values do not depend on the
  // layout, the world size or the other parameters. One parameter at a time, in chunks drawn in parallel
  // (the stream is seekable: Rng::skip), so that neither the time nor the host memory (one chunk per
  // thread) grows with the whole model: a multi-billion-parameter model starts in seconds.
  constexpr int64_t kChunk = int64_t(1) << 20;
  const int threads = int(std::max(1u, std::min(16u, std::thread::hardware_concurrency())));
  for (size_t i = 0; i < specs_.size(); ++i) {
    const ParamSpec& s = specs_[i];
    const ParamPlace& pl = layout_.place(int(i));
    const GroupLayout& gl = layout_.groups()[size_t(pl.group)];
    Group& g = groups_[size_t(pl.group)];
    const uint64_t key = seed ^ fnv1a(s.name.data(), s.name.size());
    const int64_t n = s.numel(), chunks = (n + kChunk - 1) / kChunk;
    const size_t ds = dtype_size(gl.dtype);
    auto fill = [&](int64_t c, std::vector<float>& vals, std::vector<uint8_t>& half) {
      const int64_t b0 = c * kChunk, len = std::min(kChunk, n - b0);
      vals.resize(size_t(len));
      Rng r(key);
      r.skip(uint64_t(b0) * (s.init == Init::Normal ? 2u : 1u));
      for (int64_t e = 0; e < len; ++e) {
        switch (s.init) {
          case Init::Uniform: vals[size_t(e)] = r.uniform(-s.init_scale, s.init_scale); break;
          case Init::Normal: vals[size_t(e)] = r.normal() * s.init_scale; break;
          case Init::Ones: vals[size_t(e)] = 1.f; break;
          case Init::Zeros: vals[size_t(e)] = 0.f; break;
        }
      }
      half.resize(size_t(len) * ds);
      from_float_n(vals.data(), half.data(), gl.dtype, size_t(len));
    };
    // Chunks in rounds of `threads`, drawn in parallel, then stored in order by this thread.
    std::vector<std::vector<float>> vals(static_cast<size_t>(threads));
    std::vector<std::vector<uint8_t>> half(static_cast<size_t>(threads));
    for (int64_t c0 = 0; c0 < chunks; c0 += threads) {
      const int nr = int(std::min<int64_t>(threads, chunks - c0));
      std::vector<std::thread> pool;
      for (int t = 1; t < nr; ++t) pool.emplace_back([&, t] { fill(c0 + t, vals[size_t(t)], half[size_t(t)]); });
      fill(c0, vals[0], half[0]);
      for (std::thread& t : pool) t.join();
      for (int t = 0; t < nr; ++t) {
        const int64_t b0 = (c0 + t) * kChunk, len = int64_t(vals[size_t(t)].size());
        copy_from_host(half[size_t(t)].data(), at(g.params, pl.offset + b0, gl.dtype), ex_.device, half[size_t(t)].size(),
                       ex_.stream);
        // The owned parts of [offset + b0, offset + b0 + len) in the flat space go to the master shard.
        const int64_t lo = pl.offset + b0, hi = lo + len;
        for (const OwnedRange& r : gl.owned) {
          const int64_t a = std::max(lo, r.flat), e = std::min(hi, r.flat + r.len);
          if (a >= e) continue;
          copy_from_host(vals[size_t(t)].data() + (a - lo), static_cast<float*>(g.master.data()) + (r.store + a - r.flat),
                         g.master.device(), size_t(e - a) * 4, ex_.stream);
        }
      }
    }
  }
}

void* ParamStore::param(int i) const {
  const ParamPlace& pl = layout_.place(i);
  return at(groups_[size_t(pl.group)].params, pl.offset, pl.dtype);
}

void ParamStore::wait_gathered(int g, size_t k) const {
  const Group& grp = groups_[size_t(g)];
  if (!grp.gather_pending[k]) return;
  probe_.stream_begin(ExposureSite::Parameters);
  MPT_CUDA_CHECK(cudaStreamWaitEvent(cu(ex_.stream), static_cast<cudaEvent_t>(grp.gathered[k]), 0));
  probe_.stream_end();
  grp.gather_pending[k] = 0;
}

void ParamStore::param_ready(int i) const {
  const ParamPlace& pl = layout_.place(i);
  wait_gathered(pl.group, size_t(pl.bucket));
}

void ParamStore::all_params_ready() const {
  for (size_t gi = 0; gi < groups_.size(); ++gi)
    for (size_t k = 0; k < groups_[gi].gathered.size(); ++k) wait_gathered(int(gi), k);
}

void ParamStore::all_gather_updated(const BucketHook& before_gather, bool hook_on_compute) {
  const int rank = layout_.rank(), world = layout_.world();
  const bool gather = layout_.stage() > 0;
  if (!gather && !before_gather) return;
  if (overlap_gather()) {
    // On the communication stream, after the update, bucket by bucket from the last: the forward uses the
    // parameters in the reverse of the backward order the buckets are laid out in. Each bucket's event
    // lets the forward of a layer wait for its own parameters only (param_ready). With the update done
    // per bucket on the compute stream (hook_on_compute), each all-gather waits for its own bucket's
    // update only: the first buckets the forward needs are gathered while the rest are still updated.
    auto updated = [&] {
      MPT_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(ev_updated_), cu(ex_.stream)));
      MPT_CUDA_CHECK(cudaStreamWaitEvent(cu(comm_stream_), static_cast<cudaEvent_t>(ev_updated_), 0));
    };
    if (!hook_on_compute || !before_gather) updated();
    for (size_t gi = 0; gi < groups_.size(); ++gi) {
      const GroupLayout& gl = layout_.groups()[gi];
      Group& g = groups_[gi];
      for (size_t k = gl.buckets.size(); k-- > 0;) {
        const BucketExtent& b = gl.buckets[k];
        const int64_t part = b.len / world;
        if (before_gather && hook_on_compute) {
          before_gather(int(gi), k, ex_.stream);
          updated();
        } else if (before_gather) {
          before_gather(int(gi), k, comm_stream_);
        }
        if (gather && !skip_comm_)
          comm_.all_gather(at(g.params, b.begin + rank * part, gl.dtype), at(g.params, b.begin, gl.dtype),
                           size_t(part), gl.dtype, comm_stream_);
        if (!g.gathered[k]) {
          cudaEvent_t e;
          MPT_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
          g.gathered[k] = e;
        }
        MPT_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(g.gathered[k]), cu(comm_stream_)));
        g.gather_pending[k] = 1;
      }
    }
  } else {
    const WaitScope wait("the all-gather of the updated parameters");
    // A collective on the compute stream (GPU: its events; CPU ranks: the host waits).
    ex_.cuda() ? probe_.stream_begin(ExposureSite::Parameters) : probe_.host_begin(ExposureSite::Parameters);
    for (size_t gi = 0; gi < groups_.size(); ++gi) {
      const GroupLayout& gl = layout_.groups()[gi];
      Group& g = groups_[gi];
      for (size_t k = 0; k < gl.buckets.size(); ++k) {
        const BucketExtent& b = gl.buckets[k];
        const int64_t part = b.len / world;
        if (before_gather) before_gather(int(gi), k, ex_.stream);
        if (gather && !skip_comm_)
          comm_.all_gather(at(g.params, b.begin + rank * part, gl.dtype), at(g.params, b.begin, gl.dtype),
                           size_t(part), gl.dtype, ex_.stream);
      }
    }
    ex_.cuda() ? probe_.stream_end() : probe_.host_end();
  }
}

uint64_t ParamStore::param_hash() const {
  all_params_ready();
  uint64_t h = 1469598103934665603ull;
  for (const Group& g : groups_) {
    std::vector<uint8_t> host(g.params.bytes());
    copy_to_host(g.params.data(), ex_.device, host.data(), host.size(), ex_.stream);
    h = fnv1a(host.data(), host.size(), h);
  }
  return h;
}

std::vector<float> ParamStore::params_as_float(int i) const {
  all_params_ready();
  const ParamPlace& pl = layout_.place(i);
  std::vector<uint8_t> raw(size_t(pl.numel) * dtype_size(pl.dtype));
  copy_to_host(param(i), ex_.device, raw.data(), raw.size(), ex_.stream);
  std::vector<float> out(size_t(pl.numel));
  to_float_n(raw.data(), pl.dtype, out.data(), out.size());
  return out;
}

std::vector<float> ParamStore::gather_owned(const std::vector<const Buffer*>& shards) {
  // Gathers each group's shard to flat order, then lays parameters out in spec order.
  const int world = layout_.world();
  std::vector<std::vector<float>> flat(groups_.size());
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    const GroupLayout& gl = layout_.groups()[gi];
    const Buffer& src = *shards[gi];
    std::vector<float> local(size_t(gl.owned_elems));
    copy_to_host(src.data(), src.device(), local.data(), local.size() * 4, ex_.stream);
    flat[gi].assign(size_t(gl.size), 0.f);
    if (layout_.stage() == 0) {
      flat[gi] = local;
      continue;
    }
    // Every rank owns the same number of elements; gather them rank-major through the communicator.
    const size_t n = size_t(gl.owned_elems);
    Buffer send(ex_.device, n * 4), recv(ex_.device, n * 4 * size_t(world));
    copy_from_host(local.data(), send.data(), ex_.device, n * 4, ex_.stream);
    {
      const WaitScope wait("the all-gather of the optimizer state (checkpoint)");
      comm_.all_gather(send.data(), recv.data(), n, DType::F32, ex_.stream);
    }
    std::vector<float> all(n * size_t(world));
    copy_to_host(recv.data(), ex_.device, all.data(), all.size() * 4, ex_.stream);
    for (int r = 0; r < world; ++r) {
      int64_t store = 0;
      for (const BucketExtent& b : gl.buckets) {
        const int64_t part = b.len / world;
        std::memcpy(&flat[gi][size_t(b.begin + r * part)], &all[size_t(r) * n + size_t(store)], size_t(part) * 4);
        store += part;
      }
    }
  }
  std::vector<float> out;
  out.reserve(size_t(num_elements()));
  for (int i = 0; i < num_params(); ++i) {
    const ParamPlace& pl = layout_.place(i);
    out.insert(out.end(), flat[size_t(pl.group)].begin() + pl.offset, flat[size_t(pl.group)].begin() + pl.offset + pl.numel);
  }
  return out;
}

namespace {
// Spec-order values -> group gi's flat order (padding zero).
std::vector<float> to_flat(const FlatLayout& layout, const std::vector<float>& full, size_t gi) {
  std::vector<float> flat(size_t(layout.groups()[gi].size), 0.f);
  size_t pos = 0;
  for (int i = 0; i < layout.num_params(); ++i) {
    const ParamPlace& pl = layout.place(i);
    if (pl.group == int(gi)) std::memcpy(&flat[size_t(pl.offset)], &full[pos], size_t(pl.numel) * 4);
    pos += size_t(pl.numel);
  }
  return flat;
}
}  // namespace

void ParamStore::scatter_owned(const std::vector<float>& full, const std::vector<Buffer*>& shards) {
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    const GroupLayout& gl = layout_.groups()[gi];
    const std::vector<float> flat = to_flat(layout_, full, gi);
    std::vector<float> local(size_t(gl.owned_elems));
    for (const OwnedRange& r : gl.owned) std::memcpy(&local[size_t(r.store)], &flat[size_t(r.flat)], size_t(r.len) * 4);
    copy_from_host(local.data(), shards[gi]->data(), shards[gi]->device(), local.size() * 4, ex_.stream);
  }
}

void ParamStore::set_params(const std::vector<float>& full) {
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    const GroupLayout& gl = layout_.groups()[gi];
    const std::vector<float> flat = to_flat(layout_, full, gi);
    std::vector<uint8_t> half(size_t(gl.size) * dtype_size(gl.dtype));
    from_float_n(flat.data(), half.data(), gl.dtype, size_t(gl.size));
    copy_from_host(half.data(), groups_[gi].params.data(), ex_.device, half.size(), ex_.stream);
  }
}

size_t ParamStore::param_bytes() const {
  size_t n = 0;
  for (const Group& g : groups_) n += g.params.bytes();
  return n;
}

size_t ParamStore::master_bytes() const {
  size_t n = 0;
  for (const Group& g : groups_) n += g.master.bytes();
  return n;
}

}  // namespace mpt
