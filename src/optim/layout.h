// The flat layout of ZeRO stages 0/1/2: per-dtype groups, buckets, shards and owned ranges (README, "One
// training step"). Pure arithmetic over the ParamSpecs; the buffers live in ParamStore (parameters, FP32
// master), GradReducer (gradients, staging slots) and ShardedAdamW (moments).
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
#include <vector>

#include "src/core/param.h"

namespace mpt {

// Where parameter i lives.
struct ParamPlace {
  DType dtype = DType::F32;
  int group = 0;
  int bucket = 0;
  int64_t offset = 0;                // element offset in the group's flat buffers
  int64_t numel = 0;
};

struct BucketExtent {
  int64_t begin = 0, len = 0;        // elements in the group's flat buffers; len is a multiple of world * kAlign
  int nparams = 0;
};

// An owned run of elements: flat position, length, position in the rank's FP32 shard (`store`), whether
// weight decay applies, and whether it is this rank's own part (stage 0 owns every part but sums its
// statistics over its own part only).
struct OwnedRange { int64_t flat = 0, len = 0, store = 0; bool decay = false; bool own_part = true; };

struct GroupLayout {
  DType dtype = DType::F32;
  int64_t size = 0;                  // padded elements
  std::vector<BucketExtent> buckets;
  std::vector<OwnedRange> owned;     // owned parts (stage 0: every part), split at parameter edges
  int64_t owned_elems = 0;
};

class FlatLayout {
 public:
  static constexpr int64_t kAlign = 64;  // elements; keeps GEMM operands and shard edges 128-byte aligned

  FlatLayout(const std::vector<ParamSpec>& specs, int stage, int rank, int world, size_t bucket_bytes);

  int stage() const { return stage_; }
  int rank() const { return rank_; }
  int world() const { return world_; }
  const std::vector<GroupLayout>& groups() const { return groups_; }
  const ParamPlace& place(int i) const { return places_[size_t(i)]; }
  int num_params() const { return int(places_.size()); }
  int num_buckets() const;
  // Start of bucket k's part in the rank's shard of group g.
  int64_t shard_offset(int g, size_t k) const;

 private:
  int stage_, rank_, world_;
  std::vector<GroupLayout> groups_;
  std::vector<ParamPlace> places_;
};

}  // namespace mpt
