// The KV-cache GPT-2 forward (src/gpt2_decode.h) against the full forward, on CPU ranks (and on a GPU with
// MPT_TEST_DEVICE=cuda). Each rank builds its own model (a communicator of one) with fresh random weights
// scaled so that every branch matters (weights ~ 1/sqrt(fan_in), embeddings ~ U(-1, 1), LayerNorm gains
// 1 +- 0.3), and a fresh random token sequence filling the context.
//
// Reference: the logits after a prefix of length t+1 are row t of the full forward over the sequence
// (causal attention: rows <= t do not see later tokens), as the full forward computes them for the last
// position of that prefix.
// CPU: the decode step runs the same FP32 operations in the same order as the full forward's row (the own
// GEMM accumulates in increasing k order whatever m is; cpu::attention_decode repeats attention_forward's
// row), so the logits must be bitwise equal in fp32, fp16 and bf16 alike.
// CUDA: cuBLASLt may pick other kernels for one row, and the half tensor-core attention rounds P where the
// decode kernel does not, so stored activations can differ by a rounding (u_t = 2^-11 fp16, 2^-8 bf16;
// 2^-20 for fp32's order-dependent sums). Along the residual path a token meets n = 10 L + 3 roundings
// (ln_1, c_attn, attention, c_proj, residual, ln_2, c_fc, GELU, mlp.c_proj, residual per block; embedding,
// ln_f, logits), so ln_f's output moves relatively by at most ~n u_t per element, independently across
// elements; logit v = sum_c lnf_c wte_vc then moves by ~n u_t sqrt(sum_c (lnf_c wte_vc)^2) (a random walk)
// and the limit is 4 times that plus two roundings of the logit. A wrong cache row, position or key count
// moves logits by O(their spread) and fails.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <mpi.h>

#include "src/model/gpt2.h"
#include "src/model/gpt2_decode.h"
#include "src/train/sample.h"
#include "src/data/tokens.h"
#include "src/train/train.h"
#include "tests/test_util.h"

namespace mpt {
namespace {

std::string test_device() {
  const char* d = std::getenv("MPT_TEST_DEVICE");
  return d ? d : "cpu";
}
constexpr int kVocab = 61, kSeq = 24, kLayers = 2;

// The Trainer needs token shards to exist; the decode checks never read them.
std::string decode_shard_dir() {
  static std::string dir = [] {
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    char name[64];
    std::snprintf(name, sizeof name, "mpt-decode-test-%d-%llu", rank,
                  static_cast<unsigned long long>(test::test_seed() % 1000000007ull));
    const std::string d = (std::filesystem::temp_directory_path() / name).string();
    std::filesystem::create_directories(d);
    Rng r(test::test_seed());
    std::vector<int32_t> t(4000);
    for (auto& v : t) v = int32_t(r.uniform(0.f, float(kVocab)));
    for (const char* part : {"train", "val"}) write_token_shard(d + "/" + part + "-00000.bin", t, kVocab);
    return d;
  }();
  return dir;
}

Config decode_config(const std::string& mode) {
  nlohmann::json j = {
      {"model", {{"type", "gpt2"}, {"n_layer", kLayers}, {"n_head", 2}, {"n_embd", 64}, {"seq_len", kSeq},
                 {"vocab", kVocab}}},
      {"data", {{"dataset", "tokens"}, {"train_shards", {decode_shard_dir() + "/train-*.bin"}},
                {"val_shards", {decode_shard_dir() + "/val-*.bin"}}}},
      {"precision", {{"mode", mode}}},
      {"train", {{"batch_size", 2}, {"steps", 1}}},
      {"log", {{"quiet", true}}},
      {"device", test_device()}};
  return config_from_json(j, "gpt2_decode_test", {});
}

// Fresh random weights written into the model's parameter copies.
void randomize(Trainer& t, Rng& r) {
  const std::vector<ParamSpec> specs = t.model().param_specs();
  ShardedOptimizer& opt = t.optimizer();
  for (int i = 0; i < opt.num_params(); ++i) {
    const ParamSpec& s = specs[size_t(i)];
    const ParamView& v = opt.view(i);
    const bool emb = s.layer == "wte" || s.layer == "wpe";
    const bool norm = s.layer.find("ln") != std::string::npos;
    const bool bias = s.name.size() > 5 && s.name.compare(s.name.size() - 5, 5, ".bias") == 0;
    const float a = emb ? 1.f : bias ? 0.2f : norm ? 0.3f : std::sqrt(3.f / float(s.shape[0]));
    std::vector<uint8_t> raw(size_t(v.numel) * dtype_size(v.dtype));
    for (int64_t k = 0; k < v.numel; ++k)
      store_elem(raw.data(), v.dtype, size_t(k), (norm && !bias ? 1.f : 0.f) + r.uniform(-a, a));
    copy_from_host(raw.data(), v.param, t.exec().device, raw.size(), t.exec().stream);
  }
}

struct FullForward {
  std::vector<float> logits, lnf;  // [kSeq, kVocab], [kSeq, C]
};
FullForward full_forward(Trainer& t, const std::vector<int32_t>& tokens) {
  std::vector<int32_t> seq(size_t(kSeq), 0);
  std::copy(tokens.begin(), tokens.end(), seq.begin());
  Batch b;
  b.n = 1;
  b.inputs = seq.data();
  b.targets = seq.data();
  double loss = 0;
  int64_t correct = 0;
  t.model().evaluate(b, &loss, &correct);
  auto& m = dynamic_cast<Gpt2&>(t.model());
  return {m.logits(1), m.layer_output("ln_f")};
}

// Per-logit limits of the header comment (zero on CPU: bitwise).
std::vector<double> limits(Trainer& t, const FullForward& f, int row) {
  std::vector<double> lim(size_t(kVocab), 0.0);
  if (!t.exec().cuda()) return lim;
  const DType md = t.model_dtype();
  const double u = md == DType::F16 ? 0x1p-11 : md == DType::BF16 ? 0x1p-8 : 0x1p-20;
  const ParamView& w = t.optimizer().view(0);  // wte [Vp, C]
  std::vector<uint8_t> raw(size_t(w.numel) * dtype_size(w.dtype));
  copy_to_host(w.param, t.exec().device, raw.data(), raw.size(), t.exec().stream);
  const size_t C = f.lnf.size() / size_t(kSeq);
  for (int v = 0; v < kVocab; ++v) {
    double ss = 0;
    for (size_t c = 0; c < C; ++c) {
      const double p = double(f.lnf[size_t(row) * C + c]) * load_elem(raw.data(), w.dtype, size_t(v) * C + c);
      ss += p * p;
    }
    const double logit = std::fabs(f.logits[size_t(row) * kVocab + size_t(v)]);
    lim[size_t(v)] = 4 * (10 * kLayers + 3) * u * std::sqrt(ss) + 2 * u * logit;
  }
  return lim;
}

size_t count_bad(const std::string& what, const std::vector<float>& got, const FullForward& f, int row,
                 const std::vector<double>& lim) {
  size_t bad = 0;
  for (int v = 0; v < kVocab; ++v) {
    const double ref = f.logits[size_t(row) * kVocab + size_t(v)], g = got[size_t(v)];
    if (!(std::fabs(g - ref) <= lim[size_t(v)]) && ++bad <= 3)
      ADD_FAILURE() << what << " position " << row << " logit " << v << ": cache " << g << " full " << ref
                    << " limit " << lim[size_t(v)];
  }
  return bad;
}

class Gpt2Decode : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_split(MPI_COMM_WORLD, rank_, 0, &self_);
  }
  void TearDown() override { MPI_Comm_free(&self_); }
  int rank_ = 0;
  MPI_Comm self_ = MPI_COMM_NULL;
};

// Every position of a random sequence: prefill of a random-length prompt, then one step per token.
TEST_P(Gpt2Decode, LogitsEqualFullForwardAtEveryPosition) {
  Trainer t(decode_config(GetParam()), mpi_init(nullptr, nullptr), self_);
  Rng r = test::fresh_rng();
  randomize(t, r);
  std::vector<int32_t> seq(static_cast<size_t>(kSeq));
  for (auto& v : seq) v = int32_t(r.uniform(0.f, float(kVocab)));
  const FullForward f = full_forward(t, seq);
  const int prompt = 1 + int(r.uniform(0.f, float(kSeq / 2)));
  Gpt2Decoder dec(dynamic_cast<Gpt2&>(t.model()), kSeq);
  size_t bad = count_bad("prefill", dec.prefill(std::vector<int32_t>(seq.begin(), seq.begin() + prompt)), f,
                         prompt - 1, limits(t, f, prompt - 1));
  for (int pos = prompt; pos < kSeq; ++pos)
    bad += count_bad("step", dec.step(seq[size_t(pos)]), f, pos, limits(t, f, pos));
  EXPECT_EQ(bad, 0u) << GetParam() << ", prompt of " << prompt;
  EXPECT_TRUE(dec.full());
  EXPECT_THROW(dec.step(seq[0]), std::logic_error);
}

// Greedy generation through begin / extend, longer than the context (the window slides), against the
// argmax of the full forward over the window the cache holds. On a GPU a different choice is accepted only
// when the two logits are within the limits of each other (a near tie).
TEST_P(Gpt2Decode, GreedyTokensMatchFullForward) {
  Trainer t(decode_config(GetParam()), mpi_init(nullptr, nullptr), self_);
  Rng r = test::fresh_rng();
  randomize(t, r);
  std::vector<int32_t> text(size_t(1 + int(r.uniform(0.f, 4.f))));
  for (auto& v : text) v = int32_t(r.uniform(0.f, float(kVocab)));
  Gpt2Decoder dec(dynamic_cast<Gpt2&>(t.model()), kSeq);
  Rng unused(1);
  std::vector<float> logits = dec.begin(text);
  int slides = 0, mismatches = 0;
  for (int i = 0; i < 3 * kSeq; ++i) {
    const int32_t next = sample_token(logits, 0.0, 0, unused);
    const int len = dec.length();
    const std::vector<int32_t> window(text.end() - len, text.end());
    const FullForward f = full_forward(t, window);
    const std::vector<double> lim = limits(t, f, len - 1);
    const std::vector<float> row(f.logits.begin() + std::ptrdiff_t(len - 1) * kVocab,
                                 f.logits.begin() + std::ptrdiff_t(len) * kVocab);
    const int32_t want = sample_token(row, 0.0, 0, unused);
    if (next != want) {
      const double gap = double(row[size_t(want)]) - double(row[size_t(next)]);
      EXPECT_LE(gap, lim[size_t(want)] + lim[size_t(next)]) << "token " << i << ": cache chose " << next
                                                            << ", full forward " << want;
      ++mismatches;
    }
    text.push_back(next);
    const bool was_full = dec.full();
    logits = dec.extend(text);
    slides += was_full;
    if (was_full) {
      EXPECT_EQ(dec.length(), (kSeq + 1) / 2);
    }
  }
  EXPECT_GE(slides, 2);
  if (!t.exec().cuda()) {
    EXPECT_EQ(mismatches, 0);
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, Gpt2Decode, ::testing::Values("fp32", "fp16", "bf16"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace mpt
