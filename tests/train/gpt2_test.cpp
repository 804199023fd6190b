// GPT-2 end to end on CPU ranks (and on GPUs with MPT_TEST_DEVICE=cuda): the whole model's gradient
// against central finite differences of its loss, ZeRO stages 0/1/2 bitwise equal across ranks, the
// loss going down, and safetensors export/import round trips. Token shards are written by the test from
// fresh random "text" with structure (a repeating pattern with noise), so the model has something to learn.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <mpi.h>

#include "src/io/hf_export.h"
#include "src/model/gpt2.h"
#include "src/io/safetensors.h"
#include "src/data/tokens.h"
#include "src/train/train.h"
#include "tests/test_util.h"

namespace mpt {
namespace {

bool all_ranks(bool ok, MPI_Comm c = MPI_COMM_WORLD) {
  int mine = ok, all = 0;
  MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_LAND, c);
  return all != 0;
}

std::string device() {
  const char* d = std::getenv("MPT_TEST_DEVICE");
  return d ? d : "cpu";
}

// A shard directory shared by the job: rank 0 writes, everyone waits. The tokens follow a noisy
// periodic pattern (period 7 over a 50-token vocabulary), drawn from a fresh seed.
const std::string& shard_dir() {
  static std::string dir = [] {
    uint64_t seed = test::test_seed();
    MPI_Bcast(&seed, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
    char name[96];
    std::snprintf(name, sizeof name, "mpt-gpt2-test-%llu", static_cast<unsigned long long>(seed % 1000000007ull));
    const std::string d = (std::filesystem::temp_directory_path() / name).string();
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (rank == 0) {
      std::filesystem::create_directories(d);
      Rng r(seed);
      for (const char* part : {"train", "val"}) {
        std::vector<int32_t> t(part[0] == 't' ? 40000 : 4000);
        for (size_t i = 0; i < t.size(); ++i)
          t[i] = r.uniform(0.f, 1.f) < 0.8f ? int32_t((i * 3) % 7 + 10) : int32_t(r.uniform(0.f, 50.f));
        write_token_shard(d + "/" + part + "-00000.bin", t, 50);
      }
    }
    MPI_Barrier(MPI_COMM_WORLD);
    return d;
  }();
  return dir;
}

Config gpt2_config(const std::string& mode, int stage, std::vector<std::string> extra = {}) {
  nlohmann::json j = {
      {"model", {{"type", "gpt2"}, {"n_layer", 2}, {"n_head", 2}, {"n_embd", 32}, {"seq_len", 16}, {"vocab", 50}}},
      {"data", {{"dataset", "tokens"}, {"train_shards", {shard_dir() + "/train-*.bin"}},
                {"val_shards", {shard_dir() + "/val-*.bin"}}}},
      {"precision", {{"mode", mode}}},
      {"optimizer", {{"lr", 3e-3}, {"weight_decay", 0.1}, {"clip_norm", 1.0}, {"warmup_steps", 2}}},
      {"zero", {{"stage", stage}, {"bucket_mb", 0.01}}},  // several buckets
      {"train", {{"batch_size", 4}, {"steps", 30}, {"seed", 77}, {"eval_batches", 4}}},
      {"log", {{"quiet", true}}},
      {"device", device()}};
  return config_from_json(j, "gpt2_test", extra);
}

std::vector<float> grads_fp32(Trainer& t) {
  std::vector<float> out;
  ShardedOptimizer& opt = t.optimizer();
  for (int i = 0; i < opt.num_params(); ++i) {
    const ParamView& v = opt.view(i);
    std::vector<uint8_t> raw(size_t(v.numel) * dtype_size(v.dtype));
    copy_to_host(v.grad, t.exec().device, raw.data(), raw.size(), t.exec().stream);
    std::vector<float> g(size_t(v.numel));
    to_float_n(raw.data(), v.dtype, g.data(), g.size());
    out.insert(out.end(), g.begin(), g.end());
  }
  return out;
}

double batch_loss(Trainer& t, const Batch& b) {
  double sum = 0;
  int64_t correct = 0;
  t.model().evaluate(b, &sum, &correct);
  return sum / double(int64_t(b.n) * t.model().targets_per_example());
}

// Every parameter tensor's three largest-gradient elements against central differences of the FP32 loss.
// h = 1e-2 on weights of size ~0.02..1: the truncation error (h^2 f''') is ~1e-5 relative; the loss is
// summed in double from FP32 rows, so its noise (~1e-7) contributes ~1e-5 to the difference quotient.
// Tolerance 3e-4 + 2e-2 |g| (measured worst ~4e-3 relative): a wrong backward term (a missing residual
// path, a transposed GEMM, a wrong tied-embedding sum) is off by O(|g|).
TEST(Gpt2, GradientMatchesFiniteDifferences) {
  if (device() != "cpu") GTEST_SKIP() << "FP32 CPU check";
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm self;
  MPI_Comm_split(MPI_COMM_WORLD, rank, 0, &self);
  Trainer t(gpt2_config("fp32", 0), mpi_init(nullptr, nullptr), self);
  ShardedOptimizer& opt = t.optimizer();
  const Batch b0 = t.train_batch(0, 4);
  const std::vector<int32_t> inputs(b0.inputs, b0.inputs + 64), targets(b0.targets, b0.targets + 64);
  Batch b = b0;
  b.inputs = inputs.data();
  b.targets = targets.data();
  opt.zero_grads();
  opt.begin_micro_batch(true);
  t.model().forward_backward(b, 1.f / 64.f, opt);
  opt.finish_reduction();
  const std::vector<float> g = grads_fp32(t);
  ShardedOptimizer::FullState st = opt.gather_state();
  size_t base = 0, checked = 0, bad = 0;
  std::string worst;
  double worst_rel = 0;
  const float h = 1e-2f;
  for (int i = 0; i < opt.num_params(); ++i) {
    const size_t n = size_t(opt.spec(i).numel());
    std::vector<size_t> idx(n);
    for (size_t k = 0; k < n; ++k) idx[k] = k;
    std::partial_sort(idx.begin(), idx.begin() + std::min<size_t>(3, n), idx.end(),
                      [&](size_t x, size_t y) { return std::fabs(g[base + x]) > std::fabs(g[base + y]); });
    for (size_t k = 0; k < std::min<size_t>(3, n); ++k) {
      const size_t e = base + idx[k];
      const float keep = st.master[e];
      st.master[e] = keep + h;
      opt.load_state(st);
      const double lp = batch_loss(t, b);
      st.master[e] = keep - h;
      opt.load_state(st);
      const double lm = batch_loss(t, b);
      st.master[e] = keep;
      const double fd = (lp - lm) / (2.0 * double(h));
      const double err = std::fabs(fd - double(g[e]));
      ++checked;
      if (err > 3e-4 + 2e-2 * std::fabs(double(g[e]))) {
        ++bad;
        ADD_FAILURE() << opt.spec(i).name << "[" << idx[k] << "]: backward " << g[e] << ", finite difference " << fd;
      }
      if (std::fabs(g[e]) > 1e-3 && err / std::fabs(g[e]) > worst_rel) {
        worst_rel = err / std::fabs(g[e]);
        worst = opt.spec(i).name;
      }
    }
    base += n;
  }
  opt.load_state(st);
  std::printf("[ info     ] %zu gradient elements checked, worst relative error %.2e (%s)\n", checked, worst_rel,
              worst.c_str());
  EXPECT_EQ(bad, 0u);
  EXPECT_GT(checked, size_t(3 * 20));
  MPI_Comm_free(&self);
}

// The stages reduce every gradient element along one path, so they must agree to the bit.
TEST(Gpt2, ZeroStagesBitwiseEqualAndLossGoesDown) {
  for (const char* mode : {"fp32", "bf16"}) {
    std::vector<float> ref;
    for (int stage : {0, 1, 2}) {
      Trainer t(gpt2_config(mode, stage), mpi_init(nullptr, nullptr));
      double first = 0, last = 0;
      for (int s = 0; s < 30; ++s) {
        const StepRecord r = t.train_step();
        if (s == 0) first = r.loss;
        last = r.loss;
      }
      const std::vector<float> m = t.optimizer().gather_master();
      if (stage == 0) {
        ref = m;
        // From ~log(50) = 3.9 at init towards the pattern's entropy; 30 steps cut it clearly.
        EXPECT_LT(last, first - 0.5) << mode << ": loss " << first << " -> " << last;
        const EvalResult ev = t.evaluate();
        EXPECT_GT(ev.count, 0);
        EXPECT_LT(ev.loss, first - 0.5) << mode << ": validation loss " << ev.loss;
        continue;
      }
      size_t diff = 0;
      for (size_t i = 0; i < m.size(); ++i) diff += m[i] != ref[i];
      EXPECT_TRUE(all_ranks(diff == 0)) << mode << " ZeRO-" << stage << ": " << diff << " elements differ from ZeRO-0";
    }
  }
}

// Forwards to the optimizer's sink but says what reduces_during_backward() is, and records the order in
// which backward completes the parameters.
class OrderSink : public GradSink {
 public:
  OrderSink(GradSink& inner, bool reorder) : inner_(inner), reorder_(reorder) {}
  void* grad(int i) override { return inner_.grad(i); }
  void grad_ready(int i) override {
    order.push_back(i);
    inner_.grad_ready(i);
  }
  bool reduces_during_backward() const override { return reorder_; }
  std::vector<int> order;

 private:
  GradSink& inner_;
  bool reorder_;
};

// zero.reorder_backward: when buckets reduce during backward, the weight gradients of blocks 1 and 0 run
// after the embedding backward (block 1's first), from copies of the dy buffers that later ops overwrite.
// The gradients must be those of the plain order to the bit, every parameter completed once, wte completed
// before the linears of blocks 0 and 1 and after block 2's (a 3-layer model). Run with a vocabulary whose
// logits buffer holds the deferred scratch (700) and one whose does not (50: the scratch gets its own
// buffer), in fp32 and in bf16 with block 0's MLP input layer in fp32 (its dy goes through the layer's own
// cast copy).
TEST(Gpt2, ReorderedBackwardGivesTheSameGradientsAndCompletesTheEmbeddingFirst) {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm self;
  MPI_Comm_split(MPI_COMM_WORLD, rank, 0, &self);
  for (int vocab : {700, 50})
    for (const char* mode : {"fp32", "bf16"}) {
      std::vector<std::string> extra = {"model.vocab=" + std::to_string(vocab), "model.n_layer=3"};
      if (std::string(mode) == "bf16") extra.push_back(R"(precision.layers=[{"pattern":"h.0.mlp.c_fc","dtype":"fp32"}])");
      Trainer t(gpt2_config(mode, 0, extra), mpi_init(nullptr, nullptr), self);
      ShardedOptimizer& opt = t.optimizer();
      const Batch b = t.train_batch(0, 4);
      std::vector<float> g[2];
      std::vector<int> order[2];
      for (int reorder : {0, 1}) {
        OrderSink sink(opt, reorder != 0);
        opt.zero_grads();
        opt.begin_micro_batch(true);
        t.model().forward_backward(b, 1.f / 64.f, sink);
        opt.finish_reduction();
        g[reorder] = grads_fp32(t);
        order[reorder] = sink.order;
      }
      const std::string what = std::string(mode) + ", vocab " + std::to_string(vocab);
      size_t diff = 0, nonzero = 0;
      for (size_t i = 0; i < g[0].size(); ++i) {
        diff += std::memcmp(&g[0][i], &g[1][i], sizeof(float)) != 0;
        nonzero += g[0][i] != 0.f;
      }
      EXPECT_EQ(diff, 0u) << what << ": gradient elements that differ between the two orders";
      EXPECT_GT(nonzero, g[0].size() / 2) << what;
      auto pos = [&](const std::vector<int>& o, const std::string& name) {
        for (size_t k = 0; k < o.size(); ++k)
          if (opt.spec(o[k]).name == name) return int(k);
        return -1;
      };
      for (int r : {0, 1}) {
        std::vector<int> sorted = order[r];
        std::sort(sorted.begin(), sorted.end());
        std::vector<int> all(size_t(opt.num_params()));
        for (int i = 0; i < opt.num_params(); ++i) all[size_t(i)] = i;
        EXPECT_EQ(sorted, all) << what << ", reorder " << r << ": every parameter completed exactly once";
      }
      const int wte0 = pos(order[0], "transformer.wte.weight"), wte1 = pos(order[1], "transformer.wte.weight");
      for (const char* block : {"0", "1"})
        for (const char* lin : {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"})
          for (const char* suf : {".weight", ".bias"}) {
            const std::string name = std::string("transformer.h.") + block + "." + lin + suf;
            EXPECT_LT(pos(order[0], name), wte0) << what << ": plain order, " << name;
            EXPECT_GT(pos(order[1], name), wte1) << what << ": reordered, " << name;
          }
      EXPECT_LT(pos(order[1], "transformer.h.1.attn.c_attn.weight"), pos(order[1], "transformer.h.0.mlp.c_proj.weight"))
          << what << ": block 1's deferred gradients before block 0's";
      EXPECT_LT(pos(order[1], "transformer.h.2.attn.c_attn.weight"), wte1) << what << ": block 2 is not deferred";
    }
  MPI_Comm_free(&self);
}

// Export with the Hugging Face names and shapes, import into a fresh model: the same loss on a batch.
TEST(Gpt2, SafetensorsExportImportRoundTrip) {
  Trainer a(gpt2_config("fp32", 1), mpi_init(nullptr, nullptr));
  for (int s = 0; s < 3; ++s) a.train_step();
  std::vector<ParamSpec> specs;
  for (int i = 0; i < a.optimizer().num_params(); ++i) specs.push_back(a.optimizer().spec(i));
  const std::vector<float> master = a.optimizer().gather_master();
  const StFile f = gpt2_export(specs, master, a.config().model);
  ASSERT_TRUE(f.tensors.count("transformer.wte.weight"));
  EXPECT_EQ(f.tensors.at("transformer.wte.weight").shape, (std::vector<int64_t>{50, 32}));  // unpadded
  EXPECT_EQ(f.tensors.at("transformer.h.1.attn.c_attn.weight").shape, (std::vector<int64_t>{32, 96}));
  EXPECT_EQ(f.tensors.at("transformer.h.0.mlp.c_proj.weight").shape, (std::vector<int64_t>{128, 32}));
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const std::string path = shard_dir() + "/export-" + std::to_string(rank) + ".safetensors";
  write_safetensors(path, f);
  Trainer b(gpt2_config("fp32", 2, {"model.init_from=" + path}), mpi_init(nullptr, nullptr));
  const std::vector<float> back = b.optimizer().gather_master();
  // Identical except the padded wte rows, which import fills with zeros.
  size_t diff = 0, pos = 0;
  for (const ParamSpec& s : specs) {
    const size_t n = size_t(s.numel());
    const size_t real = s.layer == "wte" ? size_t(50 * 32) : n;
    for (size_t k = 0; k < real; ++k) diff += back[pos + k] != master[pos + k];
    pos += n;
  }
  EXPECT_EQ(diff, 0u);
  const Batch batch = a.train_batch(0, 4);
  const std::vector<int32_t> in(batch.inputs, batch.inputs + 64), tg(batch.targets, batch.targets + 64);
  Batch bb = batch;
  bb.inputs = in.data();
  bb.targets = tg.data();
  EXPECT_EQ(batch_loss(a, bb), batch_loss(b, bb));
  // A shape that does not fit is an input error naming the file and the tensor.
  try {
    Trainer c(gpt2_config("fp32", 0, {"model.init_from=" + path, "model.n_embd=64"}), mpi_init(nullptr, nullptr));
    ADD_FAILURE() << "a 32-wide export loaded into a 64-wide model";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("transformer."), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace mpt
