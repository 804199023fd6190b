// What `mptrain export` writes for Hugging Face: config.json (its fields against the model config) and
// the weights in fp16 / bf16 (rounded to nearest even from the FP32 masters, checked against a rounding
// computed here from the bits, so a truncating cast fails).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <unistd.h>

#include "src/model/gpt2.h"
#include "src/io/hf_export.h"
#include "src/io/safetensors.h"
#include "src/data/tokens.h"
#include "tests/test_util.h"

namespace mpt {
namespace {

std::string temp_dir() {
  static int n = 0;
  const auto d = std::filesystem::temp_directory_path() /
                 ("mpt_hf_" + std::to_string(::getpid()) + "_" + std::to_string(++n));
  std::filesystem::create_directories(d);
  return d.string();
}

// float -> bf16 / fp16 bits, round to nearest even, written independently of src/core/dtype.h (finite, normal
// range values only: the test draws those).
uint16_t bf16_rne(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
uint16_t fp16_rne(float f) {
  // For |f| in fp16's normal range: 10 mantissa bits kept of 23, exponent rebiased 127 -> 15.
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t mag = u & 0x7fffffffu;
  const uint32_t rounded = mag + 0xfffu + ((mag >> 13) & 1u);  // RNE at bit 13
  return uint16_t(sign | (((rounded >> 13) - ((127u - 15u) << 10)) & 0x7fffu));
}

TEST(HfExport, ConfigJsonMatchesTheModel) {
  Rng rng = test::fresh_rng();
  ModelConfig m;
  m.type = "gpt2";
  m.n_head = 1 + int(rng.below(8));
  m.n_embd = m.n_head * 64;
  m.n_layer = 1 + int(rng.below(24));
  m.seq_len = 16 + int(rng.below(2048));
  m.vocab = 257 + int(rng.below(60000));
  const std::string dir = temp_dir();
  for (DType t : {DType::F32, DType::F16, DType::BF16}) {
    write_json_file(dir + "/config.json", hf_gpt2_config(m, t, kEndOfText));
    std::ifstream in(dir + "/config.json");
    const nlohmann::json j = nlohmann::json::parse(in);  // throws (fails the test) when not JSON
    EXPECT_EQ(j.at("model_type"), "gpt2");
    EXPECT_EQ(j.at("architectures"), nlohmann::json::array({"GPT2LMHeadModel"}));
    EXPECT_EQ(j.at("n_layer"), m.n_layer);
    EXPECT_EQ(j.at("n_head"), m.n_head);
    EXPECT_EQ(j.at("n_embd"), m.n_embd);
    EXPECT_EQ(j.at("n_positions"), m.seq_len);
    EXPECT_EQ(j.at("n_ctx"), m.seq_len);
    EXPECT_EQ(j.at("vocab_size"), m.vocab);
    EXPECT_EQ(j.at("layer_norm_epsilon").get<double>(), double(kGpt2LayerNormEps));
    EXPECT_EQ(j.at("activation_function"), "gelu_new");  // kernels/activation.h: the tanh form
    EXPECT_EQ(j.at("tie_word_embeddings"), true);
    EXPECT_EQ(j.at("eos_token_id"), kEndOfText);
    EXPECT_EQ(j.at("torch_dtype"), t == DType::F32 ? "float32" : t == DType::F16 ? "float16" : "bfloat16");
    for (const char* p : {"resid_pdrop", "embd_pdrop", "attn_pdrop"}) EXPECT_EQ(j.at(p).get<double>(), 0.0);
  }
  m.vocab = 100;  // no room for the end-of-text token
  EXPECT_TRUE(hf_gpt2_config(m, DType::F32, kEndOfText).at("eos_token_id").is_null());
  std::filesystem::remove_all(dir);
}

TEST(HfExport, WeightsPathOfADirectoryIsModelSafetensors) {
  const std::string dir = temp_dir();
  EXPECT_EQ(export_weights_path(dir), dir + "/model.safetensors");
  EXPECT_EQ(export_weights_path("some/new/dir/"), "some/new/dir/model.safetensors");
  EXPECT_EQ(export_weights_path(dir + "/w.safetensors"), dir + "/w.safetensors");
  std::filesystem::remove_all(dir);
}

// gpt2_export in fp16 / bf16 through a file and back: the dtype is F16 / BF16 and every value is the
// master rounded to nearest even (random masters almost never sit on a tie, so truncation differs in
// about half the elements).
TEST(HfExport, HalfExportsRoundTheMastersToNearestEven) {
  Rng rng = test::fresh_rng();
  ModelConfig m;
  m.type = "gpt2";
  m.n_embd = 16;
  m.vocab = 200;  // the model pads wte to 256 rows; the export drops the padding
  std::vector<ParamSpec> specs(2);
  specs[0].name = "transformer.wte.weight";
  specs[0].layer = "wte";
  specs[0].shape = {256, 16};
  specs[1].name = "transformer.h.0.mlp.c_fc.weight";
  specs[1].layer = "h.0.mlp.c_fc";
  specs[1].shape = {16, 64};
  std::vector<float> master(256 * 16 + 16 * 64);
  // Normal-range magnitudes in fp16 too (>= 2^-14), where fp16_rne above applies.
  for (float& v : master) v = (rng.below(2) ? -1.f : 1.f) * rng.uniform(0x1p-10f, 2.f);
  const std::string dir = temp_dir();
  for (DType t : {DType::F16, DType::BF16}) {
    const std::string path = dir + "/model.safetensors";
    write_safetensors(path, gpt2_export(specs, master, m, t));
    const StFile f = read_safetensors(path);
    const StTensor& wte = f.tensors.at("transformer.wte.weight");
    const StTensor& fc = f.tensors.at("transformer.h.0.mlp.c_fc.weight");
    EXPECT_EQ(wte.dtype, t == DType::BF16 ? "BF16" : "F16");
    EXPECT_EQ(fc.dtype, wte.dtype);
    EXPECT_EQ(wte.shape, (std::vector<int64_t>{200, 16}));
    size_t bad = 0, inexact = 0;
    auto check = [&](const StTensor& x, size_t first) {
      for (int64_t i = 0; i < x.numel(); ++i) {
        uint16_t got;
        std::memcpy(&got, x.data.data() + 2 * size_t(i), 2);
        const float v = master[first + size_t(i)];
        const uint16_t want = t == DType::BF16 ? bf16_rne(v) : fp16_rne(v);
        bad += got != want;
        inexact += (t == DType::BF16 ? bf16_bits_to_float(got) : half_bits_to_float(got)) != v;
      }
    };
    check(wte, 0);
    check(fc, 256 * 16);
    EXPECT_EQ(bad, 0u) << dtype_name(t) << ": values that are not the masters rounded to nearest even";
    EXPECT_GT(inexact, size_t(wte.numel() + fc.numel()) / 2);  // the rounding was really exercised
    // Import accepts the half file and reports what it took and what it ignored.
    StFile extra = f;
    extra.tensors["lm_head.weight"] = wte;
    write_safetensors(path, extra);
    Gpt2ImportReport rep;
    const std::vector<float> back = gpt2_import(path, specs, m, &rep);
    EXPECT_EQ(rep.loaded, 2);
    EXPECT_EQ(rep.ignored, std::vector<std::string>{"lm_head.weight"});
    ASSERT_EQ(back.size(), master.size());
    for (size_t i = 200 * 16; i < 256 * 16; ++i) ASSERT_EQ(back[i], 0.f) << "padded wte row not zero";
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace mpt
