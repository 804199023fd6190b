#include "src/optim/layout.h"

#include <algorithm>
#include <limits>
#include <map>
#include <stdexcept>
#include <utility>

namespace mpt {

namespace {
int64_t align_up(int64_t x, int64_t a) { return (x + a - 1) / a * a; }
}  // namespace

FlatLayout::FlatLayout(const std::vector<ParamSpec>& specs, int stage, int rank, int world, size_t bucket_bytes)
    : stage_(stage), rank_(rank), world_(world) {
  if (stage < 0 || stage > 2) throw std::invalid_argument("ZeRO stage must be 0, 1 or 2");
  places_.resize(specs.size());

  // Place parameters in backward order, group by dtype, cut into buckets.
  std::map<DType, int> group_of;
  std::vector<bool> open(0);
  std::vector<size_t> open_bytes(0);
  auto close_bucket = [&](int gi) {
    GroupLayout& g = groups_[size_t(gi)];
    BucketExtent& b = g.buckets.back();
    b.len = align_up(g.size - b.begin, int64_t(world_) * kAlign);
    g.size = b.begin + b.len;
    open[size_t(gi)] = false;
  };
  for (int i = int(specs.size()) - 1; i >= 0; --i) {
    const ParamSpec& s = specs[size_t(i)];
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
    GroupLayout& g = groups_[size_t(gi)];
    const size_t bytes = size_t(s.numel()) * dtype_size(s.dtype);
    if (open[size_t(gi)] && open_bytes[size_t(gi)] + bytes > bucket_bytes) close_bucket(gi);
    if (!open[size_t(gi)]) {
      g.buckets.push_back(BucketExtent{});
      g.buckets.back().begin = g.size;
      open[size_t(gi)] = true;
      open_bytes[size_t(gi)] = 0;
    }
    const int64_t off = align_up(g.size, kAlign);
    g.size = off + s.numel();
    open_bytes[size_t(gi)] += bytes;
    g.buckets.back().nparams++;
    places_[size_t(i)] = ParamPlace{s.dtype, gi, int(g.buckets.size()) - 1, off, s.numel()};
  }
  for (size_t gi = 0; gi < groups_.size(); ++gi)
    if (open[gi]) close_bucket(int(gi));

  // Owned ranges, split where weight decay changes.
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    GroupLayout& g = groups_[gi];
    std::vector<std::pair<int64_t, int64_t>> decay_spans;  // [begin, end) of parameters with decay
    for (size_t i = 0; i < specs.size(); ++i)
      if (places_[i].group == int(gi) && specs[i].decay)
        decay_spans.emplace_back(places_[i].offset, places_[i].offset + places_[i].numel);
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
    for (const BucketExtent& b : g.buckets) {
      const int64_t part = b.len / world_;
      for (int p = 0; p < world_; ++p) {
        if (stage_ > 0 && p != rank_) continue;
        const int64_t begin = b.begin + p * part, end = begin + part;
        const int64_t base_store = stage_ == 0 ? begin : store;
        for (int64_t x = begin; x < end;) {
          int64_t run_end;
          const bool d = decay_at(x, &run_end);
          const int64_t y = std::min(end, run_end);
          g.owned.push_back(OwnedRange{x, y - x, base_store + (x - begin), d, p == rank_});
          x = y;
        }
        if (stage_ > 0) store += part;
      }
    }
    g.owned_elems = stage_ == 0 ? g.size : store;
  }
}

int FlatLayout::num_buckets() const {
  int n = 0;
  for (const auto& g : groups_) n += int(g.buckets.size());
  return n;
}

int64_t FlatLayout::shard_offset(int g, size_t k) const {
  int64_t off = 0;
  for (size_t j = 0; j < k; ++j) off += groups_[size_t(g)].buckets[j].len / world_;
  return off;
}

}  // namespace mpt
