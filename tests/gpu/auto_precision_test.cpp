// precision.layers = "auto" on GPUs: the GEMM timing path (CUDA events) gives a finite positive time for
// every Linear layer in every dtype the device has, the policy reaches every rank through the NCCL
// broadcast, and the sensitivity measured with the CUDA kernels matches the CPU twin's: each layer's
// output and gradient errors in fp16/bf16 are of the size of the dtype's rounding on both, within a factor
// of each other (the GEMMs sum in other orders, so not bit for bit).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <mpi.h>

#include "src/train/precision_auto.h"
#include "src/train/train.h"
#include "tests/gpu/gpu_test_util.h"

namespace mpt {
namespace {

std::string fmnist() {
  const char* d = std::getenv("MPT_FASHION_MNIST_DIR");
  return d ? d : "/usr/share/datasets/fashion-mnist";
}

Config cfg_on(const std::string& device, const std::string& timing) {
  nlohmann::json j = {{"model", {{"hidden", {256, 128}}, {"layernorm", true}}},
                      {"data", {{"dir", fmnist()}, {"train_limit", 2048}, {"test_limit", 200}}},
                      {"precision", {{"mode", "fp16"}, {"auto_timing", timing}, {"auto_batches", 2}}},
                      {"zero", {{"stage", 2}}},
                      {"train", {{"batch_size", 128}, {"steps", 2}, {"seed", 4321}}},
                      {"log", {{"quiet", true}}},
                      {"device", device}};
  return config_from_json(j, "gpu auto_precision_test");
}

AutoPrecision decide(Trainer& t) {
  Config c = t.config();
  AutoPrecisionContext ctx;
  ctx.cfg = &c;
  ctx.ex = &t.exec();
  ctx.comm = &t.comm();
  ctx.hw = t.hardware();
  ctx.batch = [&t](int64_t first, int n) { return t.train_batch(first, n); };
  ctx.master = t.optimizer().gather_master();
  return decide_auto_precision(ctx);
}

TEST(GpuAutoPrecision, TimingBroadcastAndSensitivityAgreeWithCpuTwin) {
  MPT_REQUIRE_GPU();
  if (!std::filesystem::exists(fmnist())) GTEST_SKIP() << "no Fashion-MNIST at " << fmnist();
  const WorldInfo& w = test::gpu_env().world;
  AutoPrecision gpu, cpu;
  {
    Trainer t(cfg_on("cuda", "measure"), w);
    gpu = decide(t);
  }
  {
    Trainer t(cfg_on("cpu", "flops"), w);
    cpu = decide(t);
  }
  ASSERT_TRUE(gpu.sel.ok) << gpu.sel.why;
  for (const std::string& l : selection_lines(gpu.sel)) std::printf("[ info     ] %s\n", l.c_str());
  // Every rank applies the same policy (the broadcast went through NCCL on device buffers).
  std::vector<int32_t> mine = encode_selection(gpu.sel);
  std::vector<int32_t> all(mine.size() * size_t(w.size));
  MPI_Allgather(mine.data(), int(mine.size()), MPI_INT32_T, all.data(), int(mine.size()), MPI_INT32_T, MPI_COMM_WORLD);
  for (int r = 0; r < w.size; ++r)
    for (size_t i = 0; i < mine.size(); ++i) EXPECT_EQ(all[size_t(r) * mine.size() + i], all[i]) << "rank " << r;
  ASSERT_EQ(gpu.in.layers.size(), cpu.in.layers.size());
  const bool bf16 = gpu.in.bf16_hw;
  for (size_t i = 0; i < gpu.in.layers.size(); ++i) {
    const LayerInput& g = gpu.in.layers[i];
    const LayerInput& c = cpu.in.layers[i];
    SCOPED_TRACE(g.name);
    if (g.name.rfind("fc", 0) != 0) continue;  // LayerNorm: no GEMM, no weight matrix
    {
      for (double t : {g.t_f32, g.t_f16, bf16 ? g.t_bf16 : 1.0}) {
        EXPECT_GT(t, 0.0);
        EXPECT_LT(t, 1.0);  // a 128-row GEMM set takes microseconds, not seconds
      }
    }
    struct Pair { const HalfError& g; const HalfError& c; double u; const char* name; };
    std::vector<Pair> pairs = {{g.f16, c.f16, std::ldexp(1.0, -11), "fp16"}};
    if (bf16) pairs.push_back({g.bf16, c.bf16, std::ldexp(1.0, -8), "bf16"});
    for (const Pair& p : pairs) {
      ASSERT_TRUE(p.g.measured && p.c.measured) << p.name;
      // Rounding the layer's inputs, weights and output to the half dtype: a relative error of a fraction
      // of u to a few u. Zero would mean a rounding was skipped; far above, a wrong kernel.
      for (double e : {p.g.out_err, p.c.out_err}) {
        EXPECT_GT(e, p.u / 64) << p.name << " output error";
        EXPECT_LT(e, 8 * p.u) << p.name << " output error";
      }
      EXPECT_LT(std::fabs(p.g.out_err - p.c.out_err), 0.5 * std::max(p.g.out_err, p.c.out_err)) << p.name;
      {
        EXPECT_GT(p.g.grad_err, p.u / 64) << p.name << " gradient error";
        EXPECT_LT(std::fabs(p.g.grad_err - p.c.grad_err), 0.5 * std::max(p.g.grad_err, p.c.grad_err)) << p.name;
      }
    }
  }
}

}  // namespace
}  // namespace mpt
