// precision.layers = "auto" on CPU ranks (GPUs with MPT_TEST_DEVICE=cuda): every rank applies rank 0's
// decision even when the ranks' timings disagree (a perturbation injected on the other ranks), and a
// re-analysis that changes the decision switches every rank at the same step with the FP32 master weights
// carried over bit for bit.
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <mpi.h>

#include "src/train/precision_auto.h"
#include "src/train/train.h"
#include "tests/test_util.h"

namespace mpt {
namespace {

std::string dev() {
  const char* d = std::getenv("MPT_TEST_DEVICE");
  return d ? d : "cpu";
}
std::string fmnist() {
  const char* d = std::getenv("MPT_FASHION_MNIST_DIR");
  return d ? d : "/usr/share/datasets/fashion-mnist";
}
uint64_t seed() {
  static uint64_t s = [] {
    uint64_t v = test::test_seed() % 1000000007ull;
    MPI_Bcast(&v, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
    return v;
  }();
  return s;
}
int rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

// A small MLP with LayerNorm (its layers default to FP32) in fp16 with the automatic per-layer policy.
Config auto_config(const std::string& layers, std::vector<std::string> extra = {}) {
  nlohmann::json j = {
      {"model", {{"hidden", {64, 48}}, {"layernorm", true}}},
      {"data", {{"dir", fmnist()}, {"train_limit", 2048}, {"test_limit", 200}}},
      {"precision", {{"mode", "fp16"}}},
      {"optimizer", {{"lr", 1e-3}}},
      {"zero", {{"stage", 2}, {"bucket_mb", 0.02}}},
      {"train", {{"batch_size", 32}, {"steps", 6}, {"seed", seed()}}},
      {"log", {{"quiet", true}}},
      {"debug", {{"check_consistency", true}}},
      {"device", dev()}};
  if (layers == "auto") j["precision"]["layers"] = "auto";
  return config_from_json(j, "auto_precision_test", extra);
}

// The policy as a string ("fc1=fp32 ln1=fp32 ..."), gathered from every rank.
std::vector<std::string> policies_of_all_ranks(const Model& m) {
  std::string mine;
  for (const auto& [layer, t] : m.layer_dtypes()) mine += layer + "=" + dtype_name(t) + " ";
  int n = int(mine.size()), size = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  std::vector<int> lens(size_t(size), 0);
  MPI_Allgather(&n, 1, MPI_INT, lens.data(), 1, MPI_INT, MPI_COMM_WORLD);
  std::vector<int> displs(size_t(size), 0);
  int total = 0;
  for (int r = 0; r < size; ++r) displs[size_t(r)] = total, total += lens[size_t(r)];
  std::string all(size_t(total), '\0');
  MPI_Allgatherv(mine.data(), n, MPI_CHAR, all.data(), lens.data(), displs.data(), MPI_CHAR, MPI_COMM_WORLD);
  std::vector<std::string> out;
  for (int r = 0; r < size; ++r) out.push_back(all.substr(size_t(displs[size_t(r)]), size_t(lens[size_t(r)])));
  return out;
}

struct ResetPerturbation {
  ~ResetPerturbation() { set_auto_timing_perturbation(1, 1); }
};

// Rank 0 measures FP32 a million times faster than the half dtypes, every other rank the opposite: left
// to themselves they would decide differently (checked), yet every rank returns and applies rank 0's policy.
TEST(AutoPrecision, EveryRankAppliesRankZerosPolicyWhateverItsTimings) {
  ResetPerturbation reset;
  if (rank() == 0) set_auto_timing_perturbation(1e-3, 1e3);
  else set_auto_timing_perturbation(1e3, 1e-3);
  {
    Trainer t(auto_config("rules"), mpi_init(nullptr, nullptr));
    Config want = t.config();
    want.precision.layers_auto = true;
    AutoPrecisionContext ctx;
    ctx.cfg = &want;
    ctx.ex = &t.exec();
    ctx.comm = &t.comm();
    ctx.hw = t.hardware();
    ctx.batch = [&t](int64_t first, int n) { return t.train_batch(first, n); };
    ctx.master = t.optimizer().gather_master();
    const AutoPrecision a = decide_auto_precision(ctx);
    ASSERT_TRUE(a.sel.ok) << a.sel.why;
    EXPECT_EQ(a.sel.base, DType::F16);
    // Rank 0's view: FP32 is faster, so every Linear layer is overridden to FP32 (LayerNorm is by default).
    for (const LayerDecision& d : a.sel.layers) EXPECT_EQ(d.dtype, DType::F32) << d.layer << ": " << d.reason;
    const Selection local = select_precision(a.in);
    if (rank() != 0) {
      bool differs = false;
      for (size_t i = 0; i < local.layers.size(); ++i) differs = differs || local.layers[i].dtype != a.sel.layers[i].dtype;
      EXPECT_TRUE(differs) << "the perturbation must make this rank's own decision differ from rank 0's";
    }
  }
  Trainer t(auto_config("auto"), mpi_init(nullptr, nullptr));
  const std::vector<std::string> all = policies_of_all_ranks(t.model());
  for (const std::string& p : all) EXPECT_EQ(p, all[0]);
  for (const auto& [layer, dt] : t.model().layer_dtypes()) EXPECT_EQ(dt, DType::F32) << layer;
  EXPECT_EQ(t.model_dtype(), DType::F16);
  // The rules name every Linear layer (fc1, fc2, the head); LayerNorm needs none.
  EXPECT_EQ(t.config().precision.layers.size(), 3u);
  for (int s = 0; s < 3; ++s) t.train_step();  // check_consistency: same parameters and scale on every rank
}

// precision.reanalyze_every = 2: the timings change after the start (FP32 fast -> half fast on every
// rank), so the decision after step 2 moves the Linear layers to a half dtype, on every rank at that step; the
// master weights after step 2 equal, bit for bit, those of a run without re-analysis.
TEST(AutoPrecision, ReanalysisSwitchesEveryRankAtTheSameStepWithExactMasters) {
  ResetPerturbation reset;
  set_auto_timing_perturbation(1e-3, 1e3);
  Trainer a(auto_config("auto", {"precision.reanalyze_every=2"}), mpi_init(nullptr, nullptr));
  Trainer b(auto_config("auto"), mpi_init(nullptr, nullptr));
  a.train_step();
  b.train_step();
  set_auto_timing_perturbation(1e3, 1e-3);
  for (const auto& [layer, dt] : a.model().layer_dtypes()) EXPECT_EQ(dt, DType::F32) << layer << " before step 2";
  a.train_step();
  b.train_step();
  a.maybe_reanalyze();  // what the next train_step does first (once per step count)
  // Each Linear layer takes its faster half dtype (fp16, or bf16 where this CPU converts it faster).
  int linear_half = 0;
  for (const auto& [layer, dt] : a.model().layer_dtypes()) linear_half += dt != DType::F32;
  EXPECT_EQ(linear_half, 3) << "the three Linear layers leave FP32 after the re-analysis";
  const std::vector<std::string> all = policies_of_all_ranks(a.model());
  for (const std::string& p : all) EXPECT_EQ(p, all[0]);
  const std::vector<float> ma = a.optimizer().gather_master(), mb = b.optimizer().gather_master();
  ASSERT_EQ(ma.size(), mb.size());
  EXPECT_EQ(std::memcmp(ma.data(), mb.data(), ma.size() * sizeof(float)), 0) << "master weights changed in the switch";
  // The new policy trains (check_consistency: same parameters and scale on every rank); the re-analysis
  // after step 4 may pick the other half dtype for a layer (measured CPU speeds), never FP32 again.
  for (int s = 0; s < 3; ++s) a.train_step();
  const std::vector<std::string> later = policies_of_all_ranks(a.model());
  for (const std::string& p : later) EXPECT_EQ(p, later[0]);
  for (const auto& [layer, dt] : a.model().layer_dtypes()) {
    if (layer.rfind("fc", 0) != 0) continue;
    EXPECT_NE(dt, DType::F32) << layer;
  }
}

}  // namespace
}  // namespace mpt
