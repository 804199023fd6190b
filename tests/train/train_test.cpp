// The training step on CPU ranks, end to end (Fashion-MNIST, MLP, ZeRO, loss scaling), under
// mpirun -np 2 and -np 3. Every check is agreed across ranks: a failure on one rank fails all of them.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <mpi.h>

#include "src/io/checkpoint.h"
#include "src/train/train.h"
#include "tests/test_util.h"

namespace mpt {
namespace {

WorldInfo g_world;

// One seed for the whole job, drawn fresh on rank 0.
uint64_t job_seed() {
  static uint64_t s = [] {
    uint64_t v = test::test_seed();
    MPI_Bcast(&v, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
    return v;
  }();
  return s;
}

// MPT_TEST_DEVICE=cuda runs the same tests on GPUs (launch/gpu-check.sh does); CI runs them on CPU ranks.
std::string test_device() {
  const char* d = std::getenv("MPT_TEST_DEVICE");
  return d ? d : "cpu";
}

Config small_config(const std::string& mode, int stage, int batch, std::vector<std::string> extra = {}) {
  nlohmann::json j = {
      {"model", {{"hidden", {64, 32}}, {"activation", "gelu"}}},
      {"data", {{"train_limit", 3072}, {"test_limit", 600},
                {"dir", std::getenv("MPT_FASHION_MNIST_DIR") ? std::getenv("MPT_FASHION_MNIST_DIR")
                                                               : "/usr/share/datasets/fashion-mnist"}}},
      {"precision", {{"mode", mode}}},
      // growth every 4 clean steps: the scale changes during these short runs
      {"loss_scale", {{"init", 1024}, {"growth_interval", 4}}},
      {"optimizer", {{"lr", 2e-3}, {"weight_decay", 0.01}, {"clip_norm", 0.5}, {"warmup_steps", 2}}},
      {"zero", {{"stage", stage}, {"bucket_mb", 0.02}}},  // several buckets even for this small model
      {"train", {{"batch_size", batch}, {"steps", 40}, {"seed", job_seed() % 1000000007ull}}},
      {"log", {{"quiet", true}}},
      {"device", test_device()}};
  return config_from_json(j, "train_test", extra);
}

// A fresh directory made by rank 0, its name sent to every rank.
std::string shared_temp_dir(const std::string& prefix) {
  std::string dir;
  if (g_world.rank == 0) {
    std::string tmpl = prefix + "-XXXXXX";
    const char* made = mkdtemp(tmpl.data());
    if (!made) throw std::runtime_error("mkdtemp " + tmpl + " failed");
    dir = made;
  }
  int len = int(dir.size());
  MPI_Bcast(&len, 1, MPI_INT, 0, MPI_COMM_WORLD);
  dir.resize(size_t(len));
  MPI_Bcast(dir.data(), len, MPI_CHAR, 0, MPI_COMM_WORLD);
  return dir;
}

bool all_true(bool ok, MPI_Comm c = MPI_COMM_WORLD) {
  int mine = ok, all = 0;
  MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_LAND, c);
  return all != 0;
}

size_t count_different(const std::vector<float>& a, const std::vector<float>& b, double atol, double rtol,
                       double* max_diff) {
  size_t bad = 0;
  *max_diff = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::fabs(double(a[i]) - double(b[i]));
    *max_diff = std::max(*max_diff, d);
    if (!(d <= atol + rtol * std::fabs(double(b[i])))) ++bad;
  }
  return bad;
}

// ZeRO-1 and ZeRO-2 against ZeRO-0 after 20 steps. Every reduced gradient element is summed by one rank
// in all stages and the norm statistics are summed over the same owned parts in the same order, so on the
// MPI path the stages are bitwise equal: the tolerance is zero. fp32 is the sharpest case: its FP32 sums
// are not rounded again to a half type, so with 3 or more ranks any change in summation order shows.
TEST(Train, ZeroStagesReachTheSameParameters) {
  for (const char* mode : {"fp32", "fp16", "bf16"}) {
    std::vector<float> ref;
    std::vector<float> init;
    for (int stage : {0, 1, 2}) {
      Trainer t(small_config(mode, stage, 16), g_world);
      if (stage == 0) init = t.optimizer().gather_master();
      for (int s = 0; s < 20; ++s) t.train_step();
      const std::vector<float> m = t.optimizer().gather_master();
      if (stage == 0) { ref = m; continue; }
      double maxd = 0;
      const size_t bad = count_different(m, ref, 0, 0, &maxd);
      EXPECT_TRUE(all_true(bad == 0)) << mode << " ZeRO-" << stage << ": " << bad << " elements differ, max " << maxd;
    }
    double moved = 0;
    count_different(ref, init, 0, 0, &moved);
    EXPECT_GT(moved, 1e-3) << "training did not move the parameters";
  }
}

// zero.overlap = false queues the same collectives in the same order and only makes the compute stream
// wait for each at once, so parameters and losses are bitwise those of the overlapped run. On CPU ranks the
// collectives block anyway and the switch changes nothing; on GPUs (MPT_TEST_DEVICE=cuda) this checks that
// the waits and the all-gather on the compute stream keep the results.
TEST(Train, OverlapOffReachesTheSameParametersAndLosses) {
  for (int stage : {0, 1, 2}) {
    std::vector<float> ref;
    std::vector<double> ref_loss;
    for (bool overlap : {true, false}) {
      Trainer t(small_config("bf16", stage, 16, {std::string("zero.overlap=") + (overlap ? "true" : "false")}), g_world);
      std::vector<double> loss;
      for (int s = 0; s < 8; ++s) loss.push_back(t.train_step().loss);
      const std::vector<float> m = t.optimizer().gather_master();
      if (overlap) { ref = m; ref_loss = loss; continue; }
      double maxd = 0;
      const size_t bad = count_different(m, ref, 0, 0, &maxd);
      EXPECT_TRUE(all_true(bad == 0)) << "ZeRO-" << stage << ": " << bad << " elements differ, max " << maxd;
      EXPECT_EQ(loss, ref_loss) << "ZeRO-" << stage;
    }
  }
}

// zero.symmetric_memory puts the parameter and gradient buffers in NCCL symmetric windows: on two or more
// GPUs the parameter all-gather then runs on the copy engines, and the reduce-scatter as a copy-engine
// all-to-all plus sum_parts (zero.copy_engine_reduce) or on NCCL's symmetric kernels (copy_engine_reduce
// off). A copy and a sum of two ranks (one addition) are the same bits on any path, so with 2 ranks the
// parameters, the gathered model-dtype copies and the losses of all three must be bitwise those of NCCL's
// ordinary kernels. On CPU ranks and on one GPU there are no windows and the switch must change nothing. (The
// bucket-by-bucket update ahead of each bucket's all-gather is the same in both runs; a gather that
// overtook its bucket's update would leave ranks with different parameters, which
// RanksHoldIdenticalParametersAndScaleEveryStep and DataParallelMatchesOneRankWithTheGlobalBatch catch.)
TEST(Train, SymmetricMemoryOffReachesTheSameParametersAndLosses) {
  for (int stage : {0, 1, 2}) {
    std::vector<float> ref;
    std::vector<double> ref_loss;
    uint64_t ref_hash = 0;
    for (int run = 0; run < 3; ++run) {
      const bool sym = run < 2;
      Trainer t(small_config("bf16", stage, 16, {std::string("zero.symmetric_memory=") + (sym ? "true" : "false"),
                                                 std::string("zero.copy_engine_reduce=") + (run == 0 ? "true" : "false")}),
                g_world);
      std::vector<double> loss;
      for (int s = 0; s < 8; ++s) loss.push_back(t.train_step().loss);
      const std::vector<float> m = t.optimizer().gather_master();
      // The gathered model-dtype parameters (what the all-gather wrote), as one hash per rank.
      const uint64_t hash = t.optimizer().param_hash();
      if (run == 0) { ref = m; ref_loss = loss; ref_hash = hash; continue; }
      const std::string what = "ZeRO-" + std::to_string(stage) + (sym ? ", NCCL's reduce-scatter on windows" : ", no windows");
      double maxd = 0;
      const size_t bad = count_different(m, ref, 0, 0, &maxd);
      EXPECT_TRUE(all_true(bad == 0)) << what << ": " << bad << " elements differ, max " << maxd;
      EXPECT_EQ(loss, ref_loss) << what;
      EXPECT_TRUE(all_true(hash == ref_hash)) << what << ": gathered parameters differ";
    }
  }
}

// The same with bf16 and int8 AdamW states (kernels/adamw_lowp.h): quantisation blocks are cut at the same
// part edges in every stage, so the stages stay bitwise equal, master weights and moments (compared as the
// FP32 values the codes stand for) alike. Blocks of 64 and of 2048 (parts start on multiples of 64, so
// part edges fall inside runs of 2048 and cut them: where stages would disagree if blocks ignored parts).
TEST(Train, ZeroStagesReachTheSameStateWithLowPrecisionMoments) {
  for (const char* mode : {"fp32", "bf16"})
    for (const char* sd : {"bf16", "int8"})
      for (int block : {64, 2048}) {
        if (std::string(sd) == "bf16" && block == 64) continue;  // bf16 states are per element
        const std::vector<std::string> extra = {std::string("optimizer.state_dtype=\"") + sd + "\"",
                                                "optimizer.state_block=" + std::to_string(block)};
        ShardedOptimizer::FullState ref;
        for (int stage : {0, 1, 2}) {
          Trainer t(small_config(mode, stage, 16, extra), g_world);
          for (int s = 0; s < 20; ++s) t.train_step();
          ShardedOptimizer::FullState st = t.optimizer().gather_state();
          if (stage == 0) {
            ref = std::move(st);
            continue;
          }
          double dm = 0, d1 = 0, d2 = 0;
          const size_t bad = count_different(st.master, ref.master, 0, 0, &dm) + count_different(st.m, ref.m, 0, 0, &d1) +
                             count_different(st.v, ref.v, 0, 0, &d2);
          EXPECT_TRUE(all_true(bad == 0)) << mode << " " << sd << "/" << block << " ZeRO-" << stage << ": " << bad
                                          << " values differ, max " << dm << " " << d1 << " " << d2;
        }
        double mmax = 0;
        for (float x : ref.m) mmax = std::max(mmax, double(std::fabs(x)));
        EXPECT_GT(mmax, 0.0) << "the moments never moved";
      }
}

// zero.offload = cpu: the FP32 master and the moments in host memory, the update on host threads (3 here,
// so that buckets are split over threads even on a small machine). The host update is the CPU twin of the
// device kernel, which agrees with it bit for bit, so the offloaded run's master, moments (int8 states: the
// values the codes stand for) and losses equal the device-updated run's exactly, in every stage, with
// gradient accumulation, and across a step the loss scaler skips (fp16 with an inf injected at step 3):
// the skipped step must leave the host state untouched and move nothing back. On GPUs the optimizer state
// must also have left device memory: the allocation falls by exactly the master and moment bytes.
TEST(Train, CpuOffloadReachesTheSameStateAsTheDeviceUpdate) {
  struct Case { int stage, accum; const char* sd; };
  for (const Case c : {Case{0, 1, "fp32"}, Case{1, 1, "fp32"}, Case{2, 1, "fp32"}, Case{2, 2, "fp32"},
                       Case{1, 1, "int8"}, Case{2, 2, "int8"}}) {
    const std::vector<std::string> common = {
        "train.grad_accum=" + std::to_string(c.accum), std::string("optimizer.state_dtype=\"") + c.sd + "\"",
        "debug.inject_inf_step=3", "debug.inject_inf_rank=" + std::to_string(g_world.size - 1), "cpu.threads=3"};
    ShardedOptimizer::FullState ref;
    std::vector<double> ref_loss;
    std::vector<bool> ref_skip;
    size_t ref_device = 0;
    for (const char* off : {"none", "cpu"}) {
      std::vector<std::string> extra = common;
      extra.push_back(std::string("zero.offload=\"") + off + "\"");
      const std::string what = "ZeRO-" + std::to_string(c.stage) + " x" + std::to_string(c.accum) + " " + c.sd +
                               " offload " + off;
      const size_t before = allocated_bytes(Device::CUDA);
      Trainer t(small_config("fp16", c.stage, 16, extra), g_world);
      const size_t device = allocated_bytes(Device::CUDA) - before;
      const MemoryReport mem = t.optimizer().memory();
      std::vector<double> loss;
      std::vector<bool> skip;
      for (int s = 0; s < 8; ++s) {
        const StepRecord r = t.train_step();
        loss.push_back(r.loss);
        skip.push_back(r.skipped);
      }
      ShardedOptimizer::FullState st = t.optimizer().gather_state();
      if (std::string(off) == "none") {
        EXPECT_FALSE(mem.offloaded);
        EXPECT_TRUE(all_true(skip[3])) << what << ": the injected inf did not skip step 3";
        ref = std::move(st);
        ref_loss = loss;
        ref_skip = skip;
        ref_device = device;
        continue;
      }
      EXPECT_TRUE(mem.offloaded);
      EXPECT_GT(mem.host_copy, 0u);
      EXPECT_EQ(mem.total(), mem.params + mem.grads + mem.grad_shard + mem.grad_staging) << what;
      if (t.exec().cuda()) {
        EXPECT_EQ(ref_device - device, mem.master + mem.adam + mem.adam_lists)
            << what << ": device memory did not fall by the optimizer state";
      }
      double dm = 0, d1 = 0, d2 = 0;
      const size_t bad = count_different(st.master, ref.master, 0, 0, &dm) + count_different(st.m, ref.m, 0, 0, &d1) +
                         count_different(st.v, ref.v, 0, 0, &d2);
      EXPECT_TRUE(all_true(bad == 0)) << what << ": " << bad << " values differ, max " << dm << " " << d1 << " " << d2;
      EXPECT_EQ(loss, ref_loss) << what;
      EXPECT_EQ(skip, ref_skip) << what;
    }
    double mmax = 0;
    for (float x : ref.m) mmax = std::max(mmax, double(std::fabs(x)));
    EXPECT_GT(mmax, 0.0) << "the moments never moved";
  }
}

// A checkpoint does not depend on where the optimizer state lived: saved by an offloaded run and resumed
// without offload (and the reverse), the run continues bit for bit.
TEST(Train, CheckpointResumeAcrossCpuOffload) {
  const std::string dir = shared_temp_dir("/tmp/mpt-ckpt-off");
  Trainer straight(small_config("bf16", 2, 16), g_world);
  for (int s = 0; s < 10; ++s) straight.train_step();
  const ShardedOptimizer::FullState want = straight.optimizer().gather_state();
  for (const auto& [first_off, then_off] : {std::pair<const char*, const char*>{"cpu", "none"}, {"none", "cpu"}}) {
    const std::string at = "checkpoint.dir=\"" + dir + "/" + first_off + "\"";  // a fresh directory each time
    {
      Trainer first(small_config("bf16", 2, 16, {at, std::string("zero.offload=\"") + first_off + "\""}), g_world);
      for (int s = 0; s < 5; ++s) first.train_step();
      first.save_checkpoint();
    }
    Trainer resumed(small_config("bf16", 1, 16, {at, std::string("zero.offload=\"") + then_off + "\""}), g_world);
    EXPECT_EQ(resumed.optimizer().offloaded(), std::string(then_off) == "cpu");
    for (int s = 5; s < 10; ++s) resumed.train_step();
    const ShardedOptimizer::FullState got = resumed.optimizer().gather_state();
    double d0 = 0, d1 = 0, d2 = 0;
    const size_t bad = count_different(got.master, want.master, 0, 0, &d0) + count_different(got.m, want.m, 0, 0, &d1) +
                       count_different(got.v, want.v, 0, 0, &d2);
    EXPECT_TRUE(all_true(bad == 0)) << "saved with offload " << first_off << ", resumed with " << then_off << ": " << bad
                                    << " values differ, max " << d0 << " " << d1 << " " << d2;
    MPI_Barrier(MPI_COMM_WORLD);
  }
  if (g_world.rank == 0) std::filesystem::remove_all(dir);
}

// After every step all ranks hold bitwise-identical half parameters and the same loss scale.
TEST(Train, RanksHoldIdenticalParametersAndScaleEveryStep) {
  for (int stage : {0, 1, 2}) {
    Trainer t(small_config("fp16", stage, 16), g_world);
    int mismatches = 0;
    bool scale_changed = false;
    const float first_scale = t.scaler().scale();
    for (int s = 0; s < 20; ++s) {
      t.train_step();
      uint64_t mine[2] = {t.optimizer().param_hash(), 0};
      const float sc = t.scaler().scale();
      std::memcpy(&mine[1], &sc, sizeof sc);
      scale_changed |= sc != first_scale;
      std::vector<uint64_t> all(size_t(2 * g_world.size));
      MPI_Allgather(mine, 2, MPI_UINT64_T, all.data(), 2, MPI_UINT64_T, MPI_COMM_WORLD);
      for (int r = 0; r < g_world.size; ++r) mismatches += all[size_t(2 * r)] != all[0] || all[size_t(2 * r + 1)] != all[1];
    }
    EXPECT_EQ(mismatches, 0) << "ZeRO-" << stage;
    EXPECT_TRUE(scale_changed) << "the scale never grew: the test would not see a scale disagreement";
  }
}

// An inf in one rank's gradient at step k: every rank skips step k, backs the scale off, leaves the master
// weights and the half parameters untouched, and training goes on.
TEST(Train, InjectedInfSkipsTheStepOnEveryRank) {
  const int k = 6;
  const int victim = g_world.size - 1;
  // ZeRO-2 with accumulation: the inf enters through the add into the shard of the last micro-batch.
  for (const auto& [stage, accum] : std::vector<std::pair<int, int>>{{0, 1}, {1, 1}, {2, 1}, {2, 3}}) {
    Trainer t(small_config("fp16", stage, 16,
                           {"debug.inject_inf_step=" + std::to_string(k), "debug.inject_inf_rank=" + std::to_string(victim),
                            "loss_scale.growth_interval=1000", "train.grad_accum=" + std::to_string(accum)}),
              g_world);
    for (int s = 0; s < k; ++s) ASSERT_FALSE(t.train_step().skipped) << "unexpected natural overflow at step " << s;
    const std::vector<float> before = t.optimizer().gather_master();
    const uint64_t hash_before = t.optimizer().param_hash();
    const StepRecord r = t.train_step();
    EXPECT_TRUE(all_true(r.skipped)) << "ZeRO-" << stage << " x" << accum << ": step " << k << " not skipped on every rank";
    EXPECT_EQ(r.next_scale, r.scale * 0.5f);
    EXPECT_EQ(t.scaler().skipped(), 1);
    double maxd = 0;
    EXPECT_EQ(count_different(t.optimizer().gather_master(), before, 0, 0, &maxd), 0u) << "master changed on a skipped step";
    EXPECT_EQ(t.optimizer().param_hash(), hash_before);
    for (int s = 0; s < 4; ++s) {
      const StepRecord n = t.train_step();
      EXPECT_FALSE(n.skipped);
      EXPECT_TRUE(std::isfinite(n.loss));
    }
    count_different(t.optimizer().gather_master(), before, 0, 0, &maxd);
    EXPECT_GT(maxd, 0.0) << "training did not go on after the skipped step";
  }
}

// Gradient accumulation in ZeRO-2 against ZeRO-1, 3 micro-batches a step, fp32. The global gradient is
// the same sum in another order: ZeRO-1 adds each rank's 3 micro-batch gradients in its full gradient
// buffer (GEMM and bias_grad accumulate, beta = 1) and reduces once, (a1 + a2 + a3) + (b1 + b2 + b3);
// ZeRO-2 reduces every micro-batch and adds the reduced parts into the shard, (a1 + b1) + (a2 + b2) +
// (a3 + b3). Each element differs by a few FP32 roundings of its partial sums.
// - The gradient norm, a direct function of the reduced gradient, must agree to 1e-6 relative at step 0
//   (same parameters; measured ~1e-8) and to 1e-5 at every step (parameters already differ slightly).
//   Losing, doubling or misplacing one micro-batch changes it by ~10% or more.
// - Parameters after 10 steps: Adam divides by sqrt(v), so an element whose gradient cancels down to the
//   rounding noise of its terms moves by a different fraction of lr (2e-3) in the two runs. Such elements
//   are rare: the L2 distance relative to the distance trained is ~3e-7 typically and up to ~8e-6 over
//   ~50 seeds, the largest element difference up to ~1e-5. Bounds: 5e-5 relative, 1e-4 per element
//   (5% of one step). A wrong accumulation gives relative differences of ~1e-1.
TEST(Train, Zero2AccumulationMatchesZero1) {
  const int A = 3;
  std::vector<std::string> common = {"optimizer.clip_norm=0", "train.steps=10", "train.grad_accum=" + std::to_string(A),
                                     "model.layernorm=true"};
  Trainer z1(small_config("fp32", 1, 8, common), g_world);
  const std::vector<float> init = z1.optimizer().gather_master();
  Trainer z2(small_config("fp32", 2, 8, common), g_world);
  ASSERT_GT(z2.optimizer().num_buckets(), 1) << "the test needs several buckets";
  double norm0 = 0, norm_max = 0;
  for (int s = 0; s < 10; ++s) {
    const StepRecord r1 = z1.train_step(), r2 = z2.train_step();
    ASSERT_FALSE(r1.skipped || r2.skipped);
    const double d = std::fabs(r1.grad_norm - r2.grad_norm) / r1.grad_norm;
    if (s == 0) {
      // The loss comes from the forward pass with the same initial parameters.
      EXPECT_EQ(r1.loss, r2.loss);
      norm0 = d;
    }
    norm_max = std::max(norm_max, d);
  }
  EXPECT_LT(norm0, 1e-6) << "gradient norm at step 0, relative difference";
  EXPECT_LT(norm_max, 1e-5) << "gradient norm, largest relative difference over the steps";
  const std::vector<float> m1 = z1.optimizer().gather_master(), m2 = z2.optimizer().gather_master();
  double d = 0, moved = 0;
  for (size_t i = 0; i < m1.size(); ++i) {
    d += (double(m2[i]) - m1[i]) * (double(m2[i]) - m1[i]);
    moved += (double(m1[i]) - init[i]) * (double(m1[i]) - init[i]);
  }
  const double rel = std::sqrt(d / moved);
  double maxd = 0;
  const size_t bad = count_different(m2, m1, 1e-4, 0, &maxd);
  EXPECT_GT(moved, 0.0);
  EXPECT_TRUE(all_true(bad == 0 && rel < 5e-5)) << "ZeRO-2 vs ZeRO-1 with " << A << " micro-batches: relative difference "
                                                << rel << ", " << bad << " elements beyond 1e-4, max " << maxd;
  if (g_world.rank == 0)
    std::printf("[ info     ] fp32 accumulation ZeRO-2 vs ZeRO-1: grad norm %.3g at step 0, %.3g at most; parameters "
                "relative %.3g, max %.3g\n", norm0, norm_max, rel, maxd);
}

// ZeRO-2 holds no full-size gradient buffer: its gradient memory is the shard plus staging slots. Buckets
// complete in the order backward opens them, so one bucket per group is open at a time, and a slot too
// small for the next bucket is replaced rather than kept: the slots are exactly the largest bucket of each
// group (the fp16 Linear weights, the fp32 LayerNorm parameters). Here that is about 0.3 of the full
// gradients. With accumulation one temporary of the largest bucket part comes on top. Nothing grows from
// step to step.
TEST(Train, Zero2KeepsOnlyAShardAndStagingSlots) {
  // Two groups and several buckets of similar size.
  const std::vector<std::string> extra = {"model.hidden=[32,256,256,256,256]", "model.layernorm=true",
                                          "zero.bucket_mb=0.13"};
  const MemoryReport full = Trainer(small_config("fp16", 1, 8, extra), g_world).optimizer().memory();
  MemoryReport after[2][2];  // [grad_accum 1 or 2][after 2 or 5 steps]
  size_t largest_sum = 0, largest_part = 0;
  int buckets = 0;
  for (int accum : {1, 2}) {
    std::vector<std::string> e = extra;
    e.push_back("train.grad_accum=" + std::to_string(accum));
    Trainer t(small_config("fp16", 2, 8, e), g_world);
    for (int s = 0; s < 2; ++s) t.train_step();
    after[accum - 1][0] = t.optimizer().memory();
    for (int s = 0; s < 3; ++s) t.train_step();
    after[accum - 1][1] = t.optimizer().memory();
    if (accum > 1) continue;
    // Bucket extents from the views: a bucket starts at its first parameter (in layout order) and is
    // padded to a multiple of world * kAlign elements.
    const ShardedOptimizer& o = t.optimizer();
    buckets = o.num_buckets();
    std::map<std::pair<int, int>, std::pair<int64_t, int64_t>> extent;
    std::map<int, size_t> largest, elem;
    for (int i = 0; i < o.num_params(); ++i) {
      const ParamView& v = o.view(i);
      auto [it, fresh] = extent.try_emplace({v.group, v.bucket}, v.offset, v.offset + v.numel);
      if (!fresh) {
        it->second.first = std::min(it->second.first, v.offset);
        it->second.second = std::max(it->second.second, v.offset + v.numel);
      }
      elem[v.group] = dtype_size(v.dtype);
    }
    const int64_t pad = int64_t(g_world.size) * ShardedOptimizer::kAlign;
    for (const auto& [key, be] : extent) {
      const size_t bytes = size_t((be.second - be.first + pad - 1) / pad * pad) * elem[key.first];
      largest[key.first] = std::max(largest[key.first], bytes);
      largest_part = std::max(largest_part, bytes / size_t(g_world.size));
    }
    for (const auto& [grp, bytes] : largest) largest_sum += bytes;
  }
  const MemoryReport& a = after[0][0];
  const MemoryReport& acc = after[1][0];
  EXPECT_GE(buckets, 5);
  EXPECT_GT(full.grads, 0u);
  EXPECT_EQ(full.grad_staging, 0u);
  for (const MemoryReport& m : {a, acc}) {
    EXPECT_EQ(m.grads, 0u);
    EXPECT_GT(m.grad_shard, 0u);
    EXPECT_LE(m.grad_shard * size_t(g_world.size), full.grads) << "the shards of all ranks exceed the full gradients";
  }
  EXPECT_EQ(a.grad_staging, largest_sum) << "one slot per group, of its largest bucket";
  EXPECT_LT(a.grad_staging, full.grads / 2);
  EXPECT_EQ(acc.grad_staging - a.grad_staging, largest_part) << "accumulation: one temporary of the largest part";
  for (int k = 0; k < 2; ++k) {
    EXPECT_EQ(after[k][1].grad_staging, after[k][0].grad_staging) << "staging grew between steps, accum " << k + 1;
    EXPECT_EQ(after[k][1].total(), after[k][0].total());
  }
  if (g_world.rank == 0)
    std::printf("[ info     ] %d buckets; full gradients %zu B (ZeRO-1); ZeRO-2: grads %zu B, shard %zu B, staging %zu B, "
                "with accumulation %zu B\n",
                buckets, full.grads, a.grads, a.grad_shard, a.grad_staging, acc.grad_staging);
}

// W ranks with micro-batch b see, step by step, the same global batch as 1 rank with micro-batch W*b and as
// 1 rank accumulating W micro-batches of b (DistributedSampler interleaves ranks). They differ only in the
// order of floating-point sums: per-rank partial sums rounded to the gradient dtype and then added, versus
// one GEMM over all rows. Measured as the L2 norm of the parameter difference relative to the L2 norm of
// the distance training moved the parameters:
// - fp32: gradients differ in the last bits (~1e-7 relative); Adam passes that through almost unchanged,
//   so the relative difference must stay below 1e-4 (measured ~1e-6). Adam divides by sqrt(v), so an
//   element whose gradient cancels down to the rounding noise of its terms moves by a different fraction
//   of lr (2e-3) in the two runs (seen up to 3e-5 with 3 ranks): no element may differ by 1e-4 (5% of
//   one step).
// - fp16: each rank's gradient is rounded to fp16 (relative 2^-11) before the sum, and Adam divides by
//   sqrt(v), which magnifies rounding noise on elements whose gradient is near zero: a few elements
//   drift by up to ~lr per step. The relative difference must stay below 2e-2 (measured ~3e-3), which a
//   wrong batch composition, a missing rank or a wrong 1/world factor exceeds by far (relative ~1).
TEST(Train, DataParallelMatchesOneRankWithTheGlobalBatch) {
  const int W = g_world.size, b = 8;
  MPI_Comm self;
  MPI_Comm_split(MPI_COMM_WORLD, g_world.rank, 0, &self);
  struct Case { const char* mode; double rel, atol; };
  for (Case c : {Case{"fp32", 1e-4, 1e-4}, Case{"fp16", 2e-2, 1e-2}}) {
    std::vector<std::string> common = {"optimizer.clip_norm=0", "train.steps=10"};
    Trainer dp(small_config(c.mode, 2, b, common), g_world);
    const std::vector<float> init = dp.optimizer().gather_master();
    for (int s = 0; s < 10; ++s) dp.train_step();
    const std::vector<float> m_dp = dp.optimizer().gather_master();

    Trainer big(small_config(c.mode, 0, W * b, common), g_world, self);
    for (int s = 0; s < 10; ++s) big.train_step();
    std::vector<std::string> acc = common;
    acc.push_back("train.grad_accum=" + std::to_string(W));
    Trainer accum(small_config(c.mode, 0, b, acc), g_world, self);
    for (int s = 0; s < 10; ++s) accum.train_step();
    const std::vector<float> m_big = big.optimizer().gather_master(), m_acc = accum.optimizer().gather_master();

    auto rel = [&](const std::vector<float>& x) {
      double d = 0, moved = 0;
      for (size_t i = 0; i < x.size(); ++i) {
        d += (double(x[i]) - m_big[i]) * (double(x[i]) - m_big[i]);
        moved += (double(m_big[i]) - init[i]) * (double(m_big[i]) - init[i]);
      }
      return std::sqrt(d / moved);
    };
    double d1 = 0, d2 = 0;
    const size_t bad1 = count_different(m_dp, m_big, c.atol, 0, &d1);
    const size_t bad2 = count_different(m_acc, m_big, c.atol, 0, &d2);
    const double r1 = rel(m_dp), r2 = rel(m_acc);
    EXPECT_TRUE(all_true(bad1 == 0 && r1 < c.rel)) << c.mode << ": " << W << " ranks x " << b << " vs 1 rank x " << W * b
                                                   << ": relative difference " << r1 << ", " << bad1 << " elements beyond "
                                                   << c.atol << ", max " << d1;
    EXPECT_TRUE(all_true(bad2 == 0 && r2 < c.rel)) << c.mode << ": accumulation " << W << " x " << b << " vs " << W * b
                                                   << ": relative difference " << r2 << ", " << bad2 << " elements beyond "
                                                   << c.atol << ", max " << d2;
    if (g_world.rank == 0)
      std::printf("[ info     ] %s: relative difference dp %.3g (max %.3g), accumulation %.3g (max %.3g)\n", c.mode, r1, d1,
                  r2, d2);
  }
  MPI_Comm_free(&self);
}

// A run interrupted after a checkpoint and resumed (with another ZeRO stage: the file is stage- and
// world-size independent) continues exactly as the uninterrupted run.
TEST(Train, CheckpointResumeContinuesExactly) {
  const std::string dir = shared_temp_dir("/tmp/mpt-ckpt");

  Trainer straight(small_config("fp16", 2, 16), g_world);
  for (int s = 0; s < 12; ++s) straight.train_step();
  const std::vector<float> want = straight.optimizer().gather_master();
  {
    Trainer first(small_config("fp16", 2, 16, {"checkpoint.dir=\"" + dir + "\""}), g_world);
    for (int s = 0; s < 6; ++s) first.train_step();
    first.save_checkpoint();
  }
  Trainer resumed(small_config("fp16", 1, 16, {"checkpoint.dir=\"" + dir + "\""}), g_world);
  for (int s = 6; s < 12; ++s) resumed.train_step();
  double maxd = 0;
  EXPECT_TRUE(all_true(count_different(resumed.optimizer().gather_master(), want, 0, 0, &maxd) == 0))
      << "resumed run differs, max " << maxd;
  EXPECT_EQ(resumed.scaler().scale(), straight.scaler().scale());
  MPI_Barrier(MPI_COMM_WORLD);
  if (g_world.rank == 0) std::filesystem::remove_all(dir);
}

// With int8 states the checkpoint carries the values the codes stand for; requantising them in the same
// layout restores codes and scales exactly, so a resume (into another ZeRO stage) continues bit for bit.
// Resuming them under another state dtype is refused with the file and the field.
TEST(Train, CheckpointResumeWithInt8StatesIsExactAndTheStateDtypeIsChecked) {
  const std::string dir = shared_temp_dir("/tmp/mpt-ckpt-q8");
  const std::string q8 = "optimizer.state_dtype=\"int8\"", at = "checkpoint.dir=\"" + dir + "\"";

  Trainer straight(small_config("bf16", 2, 16, {q8}), g_world);
  for (int s = 0; s < 12; ++s) straight.train_step();
  const ShardedOptimizer::FullState want = straight.optimizer().gather_state();
  {
    Trainer first(small_config("bf16", 2, 16, {q8, at}), g_world);
    for (int s = 0; s < 6; ++s) first.train_step();
    first.save_checkpoint();
  }
  {
    Trainer resumed(small_config("bf16", 1, 16, {q8, at}), g_world);
    for (int s = 6; s < 12; ++s) resumed.train_step();
    const ShardedOptimizer::FullState got = resumed.optimizer().gather_state();
    double d0 = 0, d1 = 0, d2 = 0;
    const size_t bad = count_different(got.master, want.master, 0, 0, &d0) + count_different(got.m, want.m, 0, 0, &d1) +
                       count_different(got.v, want.v, 0, 0, &d2);
    EXPECT_TRUE(all_true(bad == 0)) << "resumed run differs: " << bad << " values, max " << d0 << " " << d1 << " " << d2;
  }
  for (const char* other : {"fp32", "bf16"}) {
    bool refused = false;
    std::string msg;
    try {
      Trainer wrong(small_config("bf16", 1, 16, {std::string("optimizer.state_dtype=\"") + other + "\"", at}), g_world);
    } catch (const std::runtime_error& e) {
      refused = true;
      msg = e.what();
    }
    EXPECT_TRUE(refused) << "an int8 checkpoint was resumed with " << other << " states";
    if (g_world.rank == 0 && refused) {
      EXPECT_NE(msg.find("optimizer.state_dtype"), std::string::npos) << msg;
    }
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (g_world.rank == 0) std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace mpt

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  mpt::g_world = mpt::mpi_init(&argc, &argv);
  if (mpt::g_world.rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  const int rc = RUN_ALL_TESTS();
  int all = 0;
  MPI_Allreduce(&rc, &all, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  mpt::mpi_finalize();
  return all;
}
