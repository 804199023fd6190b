// Low-precision AdamW states of ShardedAdamW (optimizer.state_dtype bf16 | int8; kernels/adamw_lowp.h).
//
// Quantisation blocks. A block must hold the same elements in every ZeRO stage, or stages would round
// differently. Blocks are cut from the group's flat index space: each parameter, from its first element,
// is cut into runs of state_.block elements (the alignment padding after the parameter belongs to its
// last run, or to runs of its own past a multiple of the block size); a run is cut again where a ZeRO part
// begins. Parts are the same cut of the same buckets in stages 0, 1 and 2 (stage 0 holds every part, stages
// 1 and 2 one per bucket), so a rank of any stage sees the same blocks over the same elements. Parameters
// and parts start on multiples of kAlign = 64, so with a block of 64 no part edge ever falls inside a run:
// the blocks are then also independent of the world size (and a checkpoint requantises exactly on any
// number of ranks). With larger blocks a part edge may shorten a run, so the blocks depend on the world size.
// bf16 states are per element; they use the same blocks as units of work only.
#include <algorithm>
#include <climits>
#include <cstring>
#include <stdexcept>

#include "src/optim/sharded_adamw.h"

namespace mpt {

void ShardedAdamW::build_lowp(int gi) {
  const FlatLayout& layout = store_.layout();
  const GroupLayout& gl = layout.groups()[size_t(gi)];
  const int stage = layout.stage(), world = layout.world();
  Group& g = groups_[size_t(gi)];
  std::vector<int64_t> starts;  // parameter starts in this group's flat space
  for (int i = 0; i < layout.num_params(); ++i)
    if (layout.place(i).group == gi) starts.push_back(layout.place(i).offset);
  std::sort(starts.begin(), starts.end());
  std::vector<int64_t> edges;  // part edges
  for (const BucketExtent& b : gl.buckets)
    for (int p = 0; p <= world; ++p) edges.push_back(b.begin + p * (b.len / world));
  std::sort(edges.begin(), edges.end());
  auto next_above = [](const std::vector<int64_t>& v, int64_t x) {
    auto it = std::upper_bound(v.begin(), v.end(), x);
    return it == v.end() ? INT64_MAX : *it;
  };
  auto contains = [](const std::vector<int64_t>& v, int64_t x) { return std::binary_search(v.begin(), v.end(), x); };
  const int64_t B = state_.block;
  std::vector<AdamWSegment> segs;
  std::vector<AdamWQBlock> blocks;
  int64_t prev_store_end = -1;
  for (const OwnedRange& r : gl.owned) {
    const int64_t gbase = stage == 2 ? r.store : r.flat;
    for (int64_t x = r.flat; x < r.flat + r.len;) {
      auto it = std::upper_bound(starts.begin(), starts.end(), x);
      const int64_t pstart = it == starts.begin() ? 0 : *(it - 1);
      const bool run_start = (x - pstart) % B == 0;
      const int64_t run_end = pstart + ((x - pstart) / B + 1) * B;
      const int64_t end = std::min({r.flat + r.len, run_end, next_above(starts, x), next_above(edges, x)});
      AdamWSegment s;
      s.store = r.store + (x - r.flat);
      s.len = end - x;
      s.grad_off = gbase + (x - r.flat);
      s.param_off = x;
      s.decay = r.decay ? 1 : 0;
      const bool fresh = blocks.empty() || run_start || contains(starts, x) || contains(edges, x) ||
                         s.store != prev_store_end;
      if (fresh) {
        AdamWQBlock b;
        b.store = s.store;
        b.seg_begin = int32_t(segs.size());
        blocks.push_back(b);
      }
      blocks.back().len += s.len;
      blocks.back().nsegs++;
      segs.push_back(s);
      prev_store_end = s.store + s.len;
      x = end;
    }
  }
  int64_t most = 1;
  for (const AdamWQBlock& b : blocks) {
    if (b.len > B) throw std::logic_error("quantisation block longer than optimizer.state_block");
    most = std::max(most, b.len);
  }
  // Per bucket, the range of quantisation blocks it holds (the update runs bucket by bucket).
  g.bucket_work.assign(gl.buckets.size(), {0, 0});
  g.bucket_elems.assign(gl.buckets.size(), 0);
  for (size_t j = 0; j < blocks.size(); ++j) {
    const size_t k = bucket_of(gi, segs[size_t(blocks[j].seg_begin)].param_off);
    auto& w = g.bucket_work[k];
    if (w.first == w.second) w = {int(j), int(j)};
    w.second = int(j) + 1;
    g.bucket_elems[k] += blocks[j].len;
  }
  // The host update reads the gradient and writes the parameter in the host copy, laid out as the shard.
  if (offload_.cpu)
    for (AdamWSegment& s : segs) s.grad_off = s.param_off = s.store;
  const Device dev = state_dev_;
  g.host_blocks = blocks;
  g.n_lowp_blocks = int(blocks.size());
  g.lowp_max_len = most;
  g.lowp_segs = Buffer(dev, segs.size() * sizeof(AdamWSegment));
  g.lowp_blocks = Buffer(dev, blocks.size() * sizeof(AdamWQBlock));
  copy_from_host(segs.data(), g.lowp_segs.data(), dev, g.lowp_segs.bytes(), ex_.stream);
  copy_from_host(blocks.data(), g.lowp_blocks.data(), dev, g.lowp_blocks.bytes(), ex_.stream);
  if (state_.dtype == StateDType::I8) {
    g.lowp_scales = Buffer(dev, blocks.size() * 2 * sizeof(float));
    g.lowp_scales.zero(ex_.stream);
  }
}

void ShardedAdamW::lowp_to_f32(const Group& g, int64_t owned, std::vector<float>* m, std::vector<float>* v) const {
  std::vector<uint8_t> mq(g.m.bytes()), vq(g.v.bytes());
  std::vector<float> scales(g.lowp_scales.bytes() / sizeof(float));
  copy_to_host(g.m.data(), state_dev_, mq.data(), mq.size(), ex_.stream);
  copy_to_host(g.v.data(), state_dev_, vq.data(), vq.size(), ex_.stream);
  if (!scales.empty()) copy_to_host(g.lowp_scales.data(), state_dev_, scales.data(), scales.size() * 4, ex_.stream);
  m->assign(size_t(owned), 0.f);
  v->assign(size_t(owned), 0.f);
  cpu::lowp_state_to_f32(mq.data(), vq.data(), scales.data(), state_.dtype, g.host_blocks.data(), g.n_lowp_blocks,
                         m->data(), v->data());
}

void ShardedAdamW::lowp_from_f32(Group& g, const std::vector<float>& m, const std::vector<float>& v) {
  std::vector<uint8_t> mq(g.m.bytes()), vq(g.v.bytes());
  std::vector<float> scales(g.lowp_scales.bytes() / sizeof(float));
  cpu::lowp_state_from_f32(m.data(), v.data(), state_.dtype, g.host_blocks.data(), g.n_lowp_blocks, mq.data(),
                           vq.data(), scales.data());
  copy_from_host(mq.data(), g.m.data(), state_dev_, mq.size(), ex_.stream);
  copy_from_host(vq.data(), g.v.data(), state_dev_, vq.size(), ex_.stream);
  if (!scales.empty()) copy_from_host(scales.data(), g.lowp_scales.data(), state_dev_, scales.size() * 4, ex_.stream);
}

std::vector<Buffer> ShardedAdamW::moments_as_f32(bool want_v) const {
  std::vector<Buffer> out;
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    const Group& g = groups_[gi];
    const int64_t owned = store_.layout().groups()[gi].owned_elems;
    Buffer b(ex_.device, size_t(owned) * 4);
    if (!lowp()) {
      copy_buffer(want_v ? g.v : g.m, b, b.bytes(), ex_.stream);
    } else {
      std::vector<float> m, v;
      lowp_to_f32(g, owned, &m, &v);
      const std::vector<float>& f = want_v ? v : m;
      copy_from_host(f.data(), b.data(), ex_.device, f.size() * 4, ex_.stream);
    }
    out.push_back(std::move(b));
  }
  return out;
}

void ShardedAdamW::set_moments_from_f32(const std::vector<Buffer>& m, const std::vector<Buffer>& v) {
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    Group& g = groups_[gi];
    if (!lowp()) {
      copy_buffer(m[gi], g.m, g.m.bytes(), ex_.stream);
      copy_buffer(v[gi], g.v, g.v.bytes(), ex_.stream);
      continue;
    }
    const size_t n = m[gi].bytes() / 4;
    std::vector<float> mh(n), vh(n);
    copy_to_host(m[gi].data(), m[gi].device(), mh.data(), n * 4, ex_.stream);
    copy_to_host(v[gi].data(), v[gi].device(), vh.data(), n * 4, ex_.stream);
    lowp_from_f32(g, mh, vh);
  }
}

}  // namespace mpt
