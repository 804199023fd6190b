// Bounded fuzzing of every reader of outside input (label `fuzz`): config files and --set values, IDX
// (.gz) files, token shards (own and llm.c), GPT-2 BPE files, checkpoints and safetensors. Each starts
// from a valid input and applies
// random mutations (bit flips, byte overwrites, truncations, insertions, duplicated spans, extreme values
// in 4- and 8-byte fields); every case must end in a clean InputError or a valid result, never in another
// exception, a crash or a hang (ctest's timeout). Mutations are fresh each run (the seed is printed).
#include <gtest/gtest.h>
#include <zlib.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "src/data/bpe.h"
#include "src/core/check.h"
#include "src/io/checkpoint.h"
#include "src/config/config.h"
#include "src/data/data.h"
#include "src/io/safetensors.h"
#include "src/data/tokens.h"
#include "tests/test_util.h"

namespace mpt {
namespace {

namespace fs = std::filesystem;
constexpr int kCases = 300;  // per reader; the whole suite runs in a few seconds

struct TempDir {
  fs::path path;
  TempDir() {
    char t[] = "/tmp/mpt-fuzz-XXXXXX";
    path = mkdtemp(t);
  }
  ~TempDir() { fs::remove_all(path); }
};

std::vector<uint8_t> read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
void write_all(const fs::path& p, const std::vector<uint8_t>& b) {
  std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}

// One random mutation of b; `what` describes it for the failure message.
std::vector<uint8_t> mutate(Rng& r, std::vector<uint8_t> b, std::string* what) {
  if (b.empty()) b.push_back(0);
  const size_t n = b.size(), at = size_t(r.below(n));
  switch (r.below(7)) {
    case 0:
      b[at] ^= uint8_t(1u << r.below(8));
      *what = "bit flip at " + std::to_string(at);
      break;
    case 1:
      b[at] = uint8_t(r.below(256));
      *what = "byte set at " + std::to_string(at);
      break;
    case 2:
      b.resize(at);
      *what = "truncated to " + std::to_string(at);
      break;
    case 3: {
      const size_t k = 1 + size_t(r.below(16));
      std::vector<uint8_t> ins(k);
      for (auto& x : ins) x = uint8_t(r.below(256));
      b.insert(b.begin() + long(at), ins.begin(), ins.end());
      *what = std::to_string(k) + " bytes inserted at " + std::to_string(at);
      break;
    }
    case 4: {
      const size_t len = std::min<size_t>(n - at, 1 + size_t(r.below(64)));
      std::vector<uint8_t> span(b.begin() + long(at), b.begin() + long(at + len));
      b.insert(b.begin() + long(at), span.begin(), span.end());
      *what = "span of " + std::to_string(len) + " duplicated at " + std::to_string(at);
      break;
    }
    case 5: {  // an extreme 4- or 8-byte value at an aligned offset (lengths, counts, sizes)
      const uint64_t vals[] = {0, 1, 0x7fffffffull, 0x80000000ull, 0xffffffffull, 0x7fffffffffffffffull,
                               0xffffffffffffffffull};
      const uint64_t v = vals[r.below(7)];
      const size_t w = r.below(2) ? 4 : 8, off = (at / w) * w;
      for (size_t i = 0; i < w && off + i < b.size(); ++i) b[off + i] = uint8_t(v >> (8 * i));
      *what = std::to_string(w) + "-byte field at " + std::to_string(off) + " set to " + std::to_string(v);
      break;
    }
    default: {
      const size_t k = 1 + size_t(r.below(8));
      for (size_t i = 0; i < k; ++i) b[size_t(r.below(b.size()))] = uint8_t(r.below(256));
      *what = std::to_string(k) + " random bytes";
      break;
    }
  }
  return b;
}

// Runs the reader on kCases mutations of `valid` written to `path`: InputError or success, nothing else.
void fuzz(const std::vector<uint8_t>& valid, const fs::path& path, const std::function<void()>& reader) {
  Rng r = test::fresh_rng();
  int errors = 0;
  for (int c = 0; c < kCases; ++c) {
    std::string what;
    std::vector<uint8_t> m = mutate(r, valid, &what);
    if (r.below(4) == 0) m = mutate(r, m, &what);  // sometimes two at once
    write_all(path, m);
    try {
      reader();
    } catch (const InputError&) {
      ++errors;
    } catch (const std::exception& e) {
      ADD_FAILURE() << path.filename() << ", " << what << ": " << typeid(e).name() << ": " << e.what();
    }
  }
  // The mutations must reach the checks, or the test proves nothing.
  EXPECT_GT(errors, kCases / 4) << "only " << errors << " of " << kCases << " mutations were refused";
}

TEST(Fuzz, ConfigFiles) {
  TempDir d;
  const fs::path p = d.path / "c.json";
  const std::string text = R"({"model": {"type": "mlp", "hidden": [32, 16], "num_classes": 10},
  "precision": {"mode": "bf16", "layers": [{"pattern": "fc1", "dtype": "fp32"}]},
  "optimizer": {"lr": 0.001, "weight_decay": 0.01}, "zero": {"stage": 2, "bucket_mb": 1.5},
  "train": {"batch_size": 64, "epochs": 1}, "checkpoint": {"dir": "ck", "keep_last": 2}, "device": "cpu"})";
  fuzz(std::vector<uint8_t>(text.begin(), text.end()), p, [&] { load_config(p.string(), {}); });
}

TEST(Fuzz, SetValues) {
  Rng r = test::fresh_rng();
  const std::vector<std::string> keys = {"train.batch_size", "optimizer.lr", "model.hidden", "precision.layers",
                                         "data.dir", "zero.stage", "precision.mode", "loss_scale.init", "model"};
  const std::vector<std::string> seeds = {"64", "3e-4", "[256, 256]", "[{\"pattern\": \"fc1\", \"dtype\": \"fp16\"}]",
                                          "/tmp/x", "1", "bf16", "1e400", "{\"hidden\": [8]}"};
  const nlohmann::json base = nlohmann::json::parse(R"({"device": "cpu"})");
  int errors = 0;
  for (int c = 0; c < kCases; ++c) {
    const size_t k = size_t(r.below(keys.size()));
    std::string what;
    std::vector<uint8_t> v = mutate(r, std::vector<uint8_t>(seeds[k].begin(), seeds[k].end()), &what);
    if (r.below(8) == 0) v.assign(size_t(r.below(3)) * 1000 + 1, uint8_t('['));  // deep nesting
    const std::string ov = keys[size_t(r.below(keys.size()))] + "=" + std::string(v.begin(), v.end());
    try {
      config_from_json(base, "fuzz", {ov});
    } catch (const InputError&) {
      ++errors;
    } catch (const std::exception& e) {
      ADD_FAILURE() << "--set " << ov.substr(0, 200) << " (" << what << "): " << e.what();
    }
  }
  EXPECT_GT(errors, kCases / 4);
}

std::vector<uint8_t> be32(uint32_t v) { return {uint8_t(v >> 24), uint8_t(v >> 16), uint8_t(v >> 8), uint8_t(v)}; }

std::vector<uint8_t> gzip(const std::vector<uint8_t>& raw, const fs::path& tmp) {
  gzFile f = gzopen(tmp.c_str(), "wb");
  gzwrite(f, raw.data(), unsigned(raw.size()));
  gzclose(f);
  return read_all(tmp);
}

TEST(Fuzz, IdxFiles) {
  TempDir d;
  Rng r = test::fresh_rng();
  const uint32_t count = 20, rows = 6, cols = 5;
  std::vector<uint8_t> img = be32(0x803), lab = be32(0x801);
  for (uint32_t v : {count, rows, cols}) {
    const auto b = be32(v);
    img.insert(img.end(), b.begin(), b.end());
  }
  const auto c = be32(count);
  lab.insert(lab.end(), c.begin(), c.end());
  for (uint32_t i = 0; i < count * rows * cols; ++i) img.push_back(uint8_t(r.below(256)));
  for (uint32_t i = 0; i < count; ++i) lab.push_back(uint8_t(r.below(10)));
  const fs::path ip = d.path / "images.gz", lp = d.path / "labels.gz";
  write_all(lp, gzip(lab, d.path / "t.gz"));
  // The compressed file and the plain one, mutated.
  fuzz(gzip(img, d.path / "t.gz"), ip, [&] { load_idx(ip.string(), lp.string()); });
  fuzz(img, ip, [&] { load_idx(ip.string(), lp.string()); });
}

TEST(Fuzz, TokenShards) {
  TempDir d;
  Rng r = test::fresh_rng();
  std::vector<int32_t> tokens(500);
  for (auto& t : tokens) t = int32_t(r.below(257));
  const fs::path p = d.path / "s.bin";
  write_token_shard(p.string(), tokens, 257);
  const std::vector<uint8_t> valid = read_all(p);
  fuzz(valid, p, [&] { read_token_shard(p.string()); });
}

// llm.c shards: magic, version, token count and the reserved words of the 1024-byte header, the tokens
// against model.vocab; under data.format=llmc and auto.
TEST(Fuzz, LlmcShards) {
  TempDir d;
  Rng r = test::fresh_rng();
  std::vector<uint8_t> valid;
  auto put32 = [&](uint32_t v) {
    for (int i = 0; i < 4; ++i) valid.push_back(uint8_t(v >> (8 * i)));
  };
  const uint32_t n = 500;
  put32(kLlmcMagic);
  put32(1);
  put32(n);
  for (int i = 3; i < 256; ++i) put32(0);
  for (uint32_t i = 0; i < n; ++i) {
    const uint32_t t = uint32_t(r.below(50257));
    valid.push_back(uint8_t(t));
    valid.push_back(uint8_t(t >> 8));
  }
  const fs::path p = d.path / "llmc.bin";
  write_all(p, valid);
  ASSERT_EQ(read_tokens_file(p.string(), ShardFormat::Llmc, 50257).tokens.size(), n);
  fuzz(valid, p, [&] { read_tokens_file(p.string(), ShardFormat::Llmc, 50257); });
  fuzz(valid, p, [&] { read_tokens_file(p.string(), ShardFormat::Auto, 50257); });
}

// GPT-2 BPE files (a small vocabulary of the same shape): encoder.json and vocab.bpe.
TEST(Fuzz, BpeFiles) {
  TempDir d;
  auto alpha = [](const std::string& raw) {
    std::string s;
    for (const char c : raw) {
      const uint32_t cp = bpe_byte_to_code_point(static_cast<unsigned char>(c));
      if (cp < 0x80) s += char(cp);
      else s += char(0xC0 | (cp >> 6)), s += char(0x80 | (cp & 0x3F));
    }
    return s;
  };
  std::string enc = "{", mer = "#version: 0.2\n";
  for (int b = 0; b < 256; ++b) {
    std::string key = alpha(std::string(1, char(b)));
    if (key == "\"" || key == "\\") key = "\\" + key;
    enc += "\"" + key + "\": " + std::to_string(b) + ", ";
  }
  const char* merges[][2] = {{"t", "h"}, {"th", "e"}, {" ", "the"}, {"a", "n"}, {"an", "d"}, {" ", "and"}};
  int id = 256;
  for (const auto& m : merges) {
    enc += "\"" + alpha(std::string(m[0]) + m[1]) + "\": " + std::to_string(id++) + ", ";
    mer += alpha(m[0]) + " " + alpha(m[1]) + "\n";
  }
  enc += "\"<|endoftext|>\": " + std::to_string(id) + "}";
  const fs::path pe = d.path / "encoder.json", pm = d.path / "vocab.bpe";
  write_all(pe, std::vector<uint8_t>(enc.begin(), enc.end()));
  write_all(pm, std::vector<uint8_t>(mer.begin(), mer.end()));
  ASSERT_EQ(BpeTokenizer::load(d.path.string()).encode(" the and"), (std::vector<int32_t>{258, 261}));
  fuzz(std::vector<uint8_t>(enc.begin(), enc.end()), pe, [&] { BpeTokenizer::load(d.path.string()).encode("the band"); });
  write_all(pe, std::vector<uint8_t>(enc.begin(), enc.end()));
  fuzz(std::vector<uint8_t>(mer.begin(), mer.end()), pm, [&] { BpeTokenizer::load(d.path.string()).encode("the band"); });
}

TEST(Fuzz, Checkpoints) {
  TempDir d;
  Rng r = test::fresh_rng();
  const std::vector<ParamSpec> specs = {{"w", "w", {4, 6}, DType::BF16, true, Init::Zeros, 0.f},
                                        {"b", "b", {6}, DType::BF16, false, Init::Zeros, 0.f}};
  OptimizerState s;
  for (auto* v : {&s.master, &s.m, &s.v})
    for (int i = 0; i < 30; ++i) v->push_back(r.normal());
  CheckpointMeta m;
  m.step = 12;
  m.epoch = 1;
  m.step_in_epoch = 3;
  m.adam_step = 11;
  m.scale = 1024;
  for (const auto& sp : specs) m.params.emplace_back(sp.name, sp.shape);
  const std::string p = save_checkpoint(d.path.string(), m, s);
  const std::vector<uint8_t> valid = read_all(p);
  fuzz(valid, p, [&] {
    CheckpointMeta back;
    OptimizerState st;
    load_checkpoint(p, specs, &back, &st);
  });
}

TEST(Fuzz, Safetensors) {
  TempDir d;
  Rng r = test::fresh_rng();
  StFile f;
  std::vector<float> a(24), b(6);
  for (auto& x : a) x = r.normal();
  for (auto& x : b) x = r.normal();
  f.tensors["w"] = st_from_float(a, {4, 6});
  f.tensors["b"] = st_from_float(b, {6}, DType::BF16);
  f.metadata["format"] = "pt";
  const fs::path p = d.path / "m.safetensors";
  write_safetensors(p.string(), f);
  const std::vector<uint8_t> valid = read_all(p);
  fuzz(valid, p, [&] {
    const StFile g = read_safetensors(p.string());
    for (const auto& [name, t] : g.tensors) t.to_float();
  });
}

}  // namespace
}  // namespace mpt
