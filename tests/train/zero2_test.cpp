// ZeRO-2 staging driven directly through ShardedOptimizer on CPU ranks (MPI communicator), with call
// patterns the MLP never makes: every bucket open at once (all gradients written before any is readied),
// two writes to one parameter in a micro-batch, a parameter readied but never written, a parameter neither
// written nor readied, and a micro-batch that leaves a bucket incomplete. Gradient contributions are small
// integers, so every sum is exact in FP32 whatever the order: ZeRO-2 with accumulation must then give the
// same bits as ZeRO-1, and the gradient norm must match an exact float64 reference. Runs as part of
// train_tests (main in train_test.cpp), under mpirun -np 2 and -np 3.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <mpi.h>

#include "comm/bootstrap.h"
#include "src/optim/zero.h"
#include "tests/test_util.h"

namespace mpt {
namespace {

uint64_t shared_seed() {
  static uint64_t s = [] {
    uint64_t v = test::test_seed();
    MPI_Bcast(&v, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
    return v;
  }();
  return s;
}

// In backward (layout) order with 1200-byte buckets: [p5 p4] [p3] [p2] [p1] [p0].
std::vector<ParamSpec> specs() {
  const int64_t sizes[] = {300, 1000, 50, 700, 20, 130};
  std::vector<ParamSpec> s;
  for (int i = 0; i < 6; ++i) {
    std::string name = "p", layer = "l";
    name += std::to_string(i);
    layer += std::to_string(i);
    s.push_back({name, layer, {sizes[i]}, DType::F32, i % 2 == 0, Init::Uniform, 0.1f});
  }
  return s;
}
constexpr size_t kBucketBytes = 1200;
constexpr int kFrozen = 4;  // readied every micro-batch, never written (shares a bucket with p5)
constexpr int kDead = 2;    // in step 1 neither written nor readied (a bucket of its own); its shard part must
                            // then hold zeros, not what step 0 left there
constexpr int kLate = 3;    // not readied in micro-batch 1: its bucket is reduced when the next one starts

// Contribution c (0 or 1) of `rank` to parameter i (n elements) in micro-batch m of step t: integers in
// [-8, 8], so that all sums are exact.
std::vector<float> contribution(int t, int m, int i, int c, int rank, int64_t n) {
  Rng r(shared_seed() ^ (uint64_t(t) << 40) ^ (uint64_t(m) << 32) ^ (uint64_t(i) << 24) ^ (uint64_t(c) << 20) ^
        (uint64_t(rank) << 16));
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = float(int64_t(r.below(17)) - 8);
  return v;
}

// Orders of the grad() calls and of the grad_ready() calls in micro-batch m of step t, the same on every
// rank: the order of grad_ready decides the order of the collectives.
std::vector<int64_t> write_order(int t, int m, int n) { return permutation(n, shared_seed() + uint64_t(100 * t + m)); }
std::vector<int64_t> ready_order(int t, int m, int n) { return permutation(n, shared_seed() - uint64_t(100 * t + m)); }

struct Outcome {
  std::vector<float> master;
  std::vector<double> norms;
  MemoryReport mem;
};

// Initial values: each parameter is its own stream, Rng(seed ^ FNV-1a(name)), drawn in element order,
// whatever the layout, stage or world size. The store draws large parameters in chunks of 2^20 elements on
// several threads (seeking with Rng::skip); here parameters of several chunks (normal and uniform) must still
// hold exactly the sequential stream, in the master (FP32) and in the parameters (rounded to their dtype).
TEST(ParamInit, LargeParametersHoldTheirSequentialStream) {
  auto fnv1a = [](const std::string& s) {
    uint64_t h = 1469598103934665603ull;
    for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
    return h;
  };
  std::vector<ParamSpec> sp = {{"big.weight", "big", {1500, 2100}, DType::BF16, true, Init::Normal, 0.02f},
                               {"wide.bias", "wide", {2200001}, DType::F32, false, Init::Uniform, 0.5f},
                               {"small.weight", "small", {37, 5}, DType::BF16, true, Init::Normal, 1.f},
                               {"ln.weight", "ln", {300}, DType::F32, false, Init::Ones, 0.f}};
  const uint64_t seed = shared_seed();
  Exec ex;
  auto comm = make_mpi_communicator(MPI_COMM_WORLD);
  for (int stage : {0, 2}) {
    ShardedOptimizer opt(ex, *comm, sp, stage, size_t(4) << 20, seed);
    const std::vector<float> master = opt.gather_master();
    size_t at = 0;
    for (int i = 0; i < int(sp.size()); ++i) {
      Rng r(seed ^ fnv1a(sp[size_t(i)].name));
      const std::vector<float> half = opt.params_as_float(i);
      int64_t bad = 0;
      for (int64_t e = 0; e < sp[size_t(i)].numel(); ++e) {
        float want = 1.f;
        if (sp[size_t(i)].init == Init::Normal) want = r.normal() * sp[size_t(i)].init_scale;
        if (sp[size_t(i)].init == Init::Uniform) want = r.uniform(-0.5f, 0.5f);
        if (master[at + size_t(e)] != want || half[size_t(e)] != round_to(sp[size_t(i)].dtype, want)) ++bad;
      }
      EXPECT_EQ(bad, 0) << "ZeRO-" << stage << " " << sp[size_t(i)].name << ": elements off their stream";
      at += size_t(sp[size_t(i)].numel());
    }
  }
}

Outcome run(int stage, int micro, int steps) {
  Exec ex;
  auto comm = make_mpi_communicator(MPI_COMM_WORLD);
  ShardedOptimizer opt(ex, *comm, specs(), stage, kBucketBytes, shared_seed());
  const int n = opt.num_params(), rank = comm->rank();
  Outcome out;
  for (int t = 0; t < steps; ++t) {
    opt.zero_grads();
    for (int m = 0; m < micro; ++m) {
      opt.begin_micro_batch(m == micro - 1);
      const std::vector<int64_t> order = write_order(t, m, n);
      for (int64_t i : order) {
        if (i == kFrozen || (i == kDead && t == 1)) continue;
        for (int c = 0; c < (i == order[0] ? 2 : 1); ++c) {  // one parameter gets two contributions
          const std::vector<float> v = contribution(t, m, int(i), c, rank, opt.spec(int(i)).numel());
          float* g = static_cast<float*>(opt.grad(int(i)));
          for (size_t e = 0; e < v.size(); ++e) g[e] += v[e];
        }
      }
      for (int64_t i : ready_order(t, m, n))
        if (!(i == kDead && t == 1) && !(i == kLate && m == 1 && micro > 2)) opt.grad_ready(int(i));
    }
    opt.finish_reduction();
    AdamWHyper h;
    h.lr = 1e-2f;
    h.weight_decay = 0.1f;
    const StepStats st = opt.step(1.f, h, 0.0);
    EXPECT_FALSE(st.overflow);
    out.norms.push_back(st.grad_norm);
  }
  out.master = opt.gather_master();
  out.mem = opt.memory();
  return out;
}

// The global gradient norm of step t, from the same contributions in float64 (sum over ranks, micro-batches
// and contributions, divided by the world size as the unscale pass does).
double reference_norm(int t, int micro, int world) {
  const std::vector<ParamSpec> s = specs();
  double sq = 0;
  for (int i = 0; i < int(s.size()); ++i) {
    if (i == kFrozen || (i == kDead && t == 1)) continue;
    std::vector<double> g(size_t(s[size_t(i)].numel()), 0.0);
    for (int m = 0; m < micro; ++m) {
      const int64_t first = write_order(t, m, int(s.size()))[0];
      for (int c = 0; c < (i == first ? 2 : 1); ++c)
        for (int r = 0; r < world; ++r) {
          const std::vector<float> v = contribution(t, m, i, c, r, int64_t(g.size()));
          for (size_t e = 0; e < g.size(); ++e) g[e] += v[e];
        }
    }
    for (double x : g) sq += (x / world) * (x / world);
  }
  return std::sqrt(sq);
}

bool all_ranks(bool ok) {
  int mine = ok, all = 0;
  MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);
  return all != 0;
}

// ZeRO-2 equals ZeRO-1 bit for bit, with and without accumulation. The gradient norm is also checked
// against float64: the unscale pass sums ~2200 FP32 squares, so it may differ by ~n * 2^-24 relative in
// the worst case; 1e-4 allows that, while a lost or doubled contribution changes the norm by far more.
TEST(Zero2Staging, AnyCallPatternMatchesZero1Exactly) {
  int world = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  for (int micro : {1, 3}) {
    const Outcome z1 = run(1, micro, 2), z2 = run(2, micro, 2);
    size_t bad = 0;
    for (size_t i = 0; i < z1.master.size(); ++i) bad += float_bits(z1.master[i]) != float_bits(z2.master[i]);
    EXPECT_TRUE(all_ranks(bad == 0)) << micro << " micro-batches: " << bad << " master weights differ";
    for (size_t t = 0; t < z1.norms.size(); ++t) {
      EXPECT_EQ(z1.norms[t], z2.norms[t]) << "step " << t;
      const double ref = reference_norm(int(t), micro, world);
      EXPECT_NEAR(z2.norms[t], ref, 1e-4 * ref) << micro << " micro-batches, step " << t;
    }
    // Every bucket was open at once, so staging holds at least all gradients; no full buffer besides.
    size_t param_bytes = 0;
    for (const ParamSpec& s : specs()) param_bytes += size_t(s.numel()) * 4;
    EXPECT_EQ(z2.mem.grads, 0u);
    EXPECT_GE(z2.mem.grad_staging, param_bytes);
    EXPECT_GE(z1.mem.grads, param_bytes);
    EXPECT_EQ(z1.mem.grad_staging, 0u);
  }
}

// Asking for a gradient after its bucket was reduced in the same micro-batch is a model bug: the slot is
// gone. It must throw rather than hand out memory that another bucket may be using.
TEST(Zero2Staging, GradAfterItsBucketWasReducedThrows) {
  Exec ex;
  auto comm = make_mpi_communicator(MPI_COMM_WORLD);
  ShardedOptimizer opt(ex, *comm, specs(), 2, kBucketBytes, shared_seed());
  opt.zero_grads();
  opt.begin_micro_batch(true);
  static_cast<float*>(opt.grad(kLate))[0] = 1.f;
  opt.grad_ready(kLate);  // p3 fills its bucket: reduced now
  EXPECT_THROW(opt.grad(kLate), std::logic_error);
  EXPECT_NE(opt.grad(0), nullptr);  // other buckets are still open
  opt.finish_reduction();
  EXPECT_EQ(opt.view(0).grad, nullptr) << "stage 2 has no full gradient buffer to point into";
}

// A staging slot does not outlive its micro-batch: a bucket left incomplete (a parameter written but not
// readied) is reduced when the next micro-batch starts, and its slot serves that micro-batch. Two
// equal buckets written one after the other then need one slot in all; a slot kept across the boundary
// would force a second.
TEST(Zero2Staging, ASlotIsGivenBackWhenTheNextMicroBatchStarts) {
  Exec ex;
  auto comm = make_mpi_communicator(MPI_COMM_WORLD);
  std::vector<ParamSpec> two = {{"q0", "a", {500}, DType::F32, false, Init::Zeros, 0.f},
                                {"q1", "b", {500}, DType::F32, false, Init::Zeros, 0.f}};
  ShardedOptimizer opt(ex, *comm, two, 2, 2000, shared_seed());
  ASSERT_EQ(opt.num_buckets(), 2);
  auto write = [&](int i, float v) {
    float* g = static_cast<float*>(opt.grad(i));
    for (int e = 0; e < 500; ++e) g[e] += v;
  };
  opt.zero_grads();
  opt.begin_micro_batch(false);
  write(0, 1.f);
  opt.grad_ready(0);
  const size_t one_slot = opt.memory().grad_staging;
  EXPECT_GT(one_slot, 0u);
  write(1, 2.f);  // q1 is never readied in this micro-batch
  EXPECT_EQ(opt.memory().grad_staging, one_slot) << "q0's slot was free for q1";
  opt.begin_micro_batch(true);
  write(0, 4.f);
  opt.grad_ready(0);
  write(1, 8.f);
  opt.grad_ready(1);
  opt.finish_reduction();
  // The second micro-batch also needs the temporary of one bucket part (a world-th of a slot here).
  EXPECT_EQ(opt.memory().grad_staging, one_slot + one_slot / size_t(comm->size())) << "q1's slot outlived its micro-batch";
  // Both micro-batches arrived: per element (1 + 4) and (2 + 8) from every rank, divided by the world
  // size in the unscale pass; all exact in FP32.
  const double want = std::sqrt(500.0 * (5.0 * 5.0 + 10.0 * 10.0));
  EXPECT_DOUBLE_EQ(opt.step(1.f, AdamWHyper{}, 0.0).grad_norm, want);
}

}  // namespace
}  // namespace mpt
