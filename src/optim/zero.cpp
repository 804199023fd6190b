#include "src/optim/zero.h"

#include <stdexcept>

namespace mpt {

ShardedOptimizer::ShardedOptimizer(const Exec& ex, Communicator& comm, std::vector<ParamSpec> specs, int stage,
                                   size_t bucket_bytes, uint64_t seed, Stream comm_stream, StateFormat state,
                                   OffloadOptions offload)
    : store_(ex, comm, std::move(specs), stage, bucket_bytes, seed, comm_stream, probe_, offload.cpu),
      reducer_(ex, comm, store_.layout(), store_.specs(), comm_stream, probe_),
      adam_(ex, comm, store_,
            [&]() -> GradReducer& {
              if (offload.cpu) reducer_.enable_host_copy(ex.cuda());
              return reducer_;
            }(),
            probe_, state, offload) {
  store_.init_params();
  for (int i = 0; i < store_.num_params(); ++i) {
    const ParamPlace& p = store_.layout().place(i);
    views_.push_back(ParamView{store_.param(i), reducer_.full_grad(i), p.dtype, p.group, p.bucket, p.offset, p.numel});
  }
}

std::vector<float> ShardedOptimizer::gather_master() {
  // The three gathers of gather_state, so that every rank runs the same collectives whichever it calls.
  return gather_state().master;
}

ShardedOptimizer::FullState ShardedOptimizer::gather_state() {
  std::vector<const Buffer*> master;
  for (int g = 0; g < int(store_.layout().groups().size()); ++g) master.push_back(&store_.master(g));
  const std::vector<Buffer> m = adam_.moments_as_f32(false), v = adam_.moments_as_f32(true);
  std::vector<const Buffer*> mp, vp;
  for (const Buffer& b : m) mp.push_back(&b);
  for (const Buffer& b : v) vp.push_back(&b);
  FullState out;
  out.master = store_.gather_owned(master);
  out.m = store_.gather_owned(mp);
  out.v = store_.gather_owned(vp);
  return out;
}

void ShardedOptimizer::load_state(const FullState& s) {
  store_.all_params_ready();
  const size_t total = size_t(num_elements());
  if (s.master.size() != total || s.m.size() != total || s.v.size() != total)
    throw std::invalid_argument("optimizer state has the wrong number of elements");
  std::vector<Buffer*> master;
  for (int g = 0; g < int(store_.layout().groups().size()); ++g) master.push_back(&store_.master(g));
  store_.scatter_owned(s.master, master);
  std::vector<Buffer> m, v;
  std::vector<Buffer*> mp, vp;
  for (const GroupLayout& gl : store_.layout().groups()) {  // where the master is: host when offloaded
    m.emplace_back(store_.master(0).device(), size_t(gl.owned_elems) * 4);
    v.emplace_back(store_.master(0).device(), size_t(gl.owned_elems) * 4);
  }
  for (size_t g = 0; g < m.size(); ++g) {
    mp.push_back(&m[g]);
    vp.push_back(&v[g]);
  }
  store_.scatter_owned(s.m, mp);
  store_.scatter_owned(s.v, vp);
  adam_.set_moments_from_f32(m, v);
  // The model-dtype parameters are the rounded master weights, everywhere (not only the owned parts).
  store_.set_params(s.master);
}

MemoryReport ShardedOptimizer::memory() const {
  MemoryReport m;
  m.params = store_.param_bytes();
  m.grads = reducer_.grad_bytes();
  m.grad_staging = reducer_.staging_bytes();
  m.grad_shard = reducer_.shard_bytes();
  m.master = store_.master_bytes();
  m.adam = adam_.moment_bytes();
  m.adam_lists = adam_.list_bytes();
  m.offloaded = adam_.offloaded();
  m.host_copy = reducer_.host_bytes();
  return m;
}

}  // namespace mpt
