// Token files of other tools (src/data/tokens.h, data.format): llm.c shards (1024-byte int32 header, uint16
// tokens) and nanoGPT's raw uint16 .bin files, format detection under `auto`, and every header and
// size check. Files are written here byte by byte; tokens are fresh random values every run.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "src/core/check.h"
#include "src/data/tokens.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using mpt::ShardFormat;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    std::string t = (fs::temp_directory_path() / "mpt_formats_test_XXXXXX").string();
    if (!mkdtemp(t.data())) throw std::runtime_error("mkdtemp failed");
    path = t;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& n) const { return (path / n).string(); }
};

void put_le(std::vector<uint8_t>& b, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) b.push_back(uint8_t(v >> (8 * i)));
}
void write_bytes(const std::string& p, const std::vector<uint8_t>& b) {
  std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}

std::vector<uint8_t> raw_tokens(const std::vector<int32_t>& t) {
  std::vector<uint8_t> b;
  for (const int32_t x : t) put_le(b, uint32_t(x), 2);
  return b;
}
// header[0..2] = magic, version, count (count_override if >= 0); the other 253 int32 are random, as llm.c
// leaves them unspecified.
std::vector<uint8_t> llmc_file(mpt::Rng& r, const std::vector<int32_t>& t, int64_t version = 1,
                               int64_t count_override = -1, uint32_t magic = mpt::kLlmcMagic) {
  std::vector<uint8_t> b;
  put_le(b, magic, 4);
  put_le(b, uint64_t(version), 4);
  put_le(b, uint64_t(count_override >= 0 ? count_override : int64_t(t.size())), 4);
  for (int i = 3; i < 256; ++i) put_le(b, r.below(1u << 31), 4);
  const auto payload = raw_tokens(t);
  b.insert(b.end(), payload.begin(), payload.end());
  return b;
}
std::vector<int32_t> random_tokens(mpt::Rng& r, size_t n, uint64_t vocab) {
  std::vector<int32_t> t(n);
  for (auto& x : t) x = int32_t(r.below(vocab));
  return t;
}

// The reader throws InputError naming `path` and `field`, with every `parts` in the message.
template <class F>
void expect_error(F&& f, const std::string& path, const std::string& field, std::vector<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "no error for " << path << "; expected " << field;
  } catch (const mpt::InputError& e) {
    EXPECT_EQ(e.file(), path) << e.what();
    EXPECT_EQ(e.field(), field) << e.what();
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << "'" << p << "' not in: " << e.what();
  }
}

}  // namespace

TEST(TokenFormats, ParseNames) {
  EXPECT_EQ(mpt::parse_shard_format("auto"), ShardFormat::Auto);
  EXPECT_EQ(mpt::parse_shard_format("mptrain"), ShardFormat::Mptrain);
  EXPECT_EQ(mpt::parse_shard_format("llmc"), ShardFormat::Llmc);
  EXPECT_EQ(mpt::parse_shard_format("nanogpt"), ShardFormat::Nanogpt);
  EXPECT_THROW(mpt::parse_shard_format("llm.c"), std::invalid_argument);
}

TEST(TokenFormats, LlmcReadsUnderLlmcAndAuto) {
  TempDir d;
  mpt::Rng r = mpt::test::fresh_rng();
  const uint64_t vocab = 50257;
  for (int c = 0; c < 5; ++c) {
    auto t = random_tokens(r, r.below(3000), vocab);
    if (!t.empty()) t[r.below(t.size())] = int32_t(vocab - 1);  // the largest legal token
    const std::string p = d.file("llmc" + std::to_string(c) + ".bin");
    write_bytes(p, llmc_file(r, t));
    for (const ShardFormat f : {ShardFormat::Llmc, ShardFormat::Auto}) {
      const mpt::TokenShard s = mpt::read_tokens_file(p, f, vocab);
      EXPECT_EQ(s.tokens, t);
      EXPECT_EQ(s.vocab, vocab);
    }
  }
}

TEST(TokenFormats, NanogptReadsRawTokens) {
  TempDir d;
  mpt::Rng r = mpt::test::fresh_rng();
  const uint64_t vocab = 1000 + r.below(60000);
  const auto t = random_tokens(r, 1 + r.below(5000), vocab);
  const std::string p = d.file("train.bin");
  write_bytes(p, raw_tokens(t));
  const mpt::TokenShard s = mpt::read_tokens_file(p, ShardFormat::Nanogpt, vocab);
  EXPECT_EQ(s.tokens, t);
  EXPECT_EQ(s.vocab, vocab);
  // Without data.format=nanogpt a headerless file is refused, and the message says what to set.
  expect_error([&] { mpt::read_tokens_file(p, ShardFormat::Auto, vocab); }, p, "magic",
               {"MPTTOKEN", "20240520", "data.format=nanogpt"});
  // An empty file is a valid nanoGPT file with no tokens.
  write_bytes(d.file("empty.bin"), {});
  EXPECT_TRUE(mpt::read_tokens_file(d.file("empty.bin"), ShardFormat::Nanogpt, vocab).tokens.empty());
}

TEST(TokenFormats, AutoStillReadsOwnShards) {
  TempDir d;
  mpt::Rng r = mpt::test::fresh_rng();
  const auto t = random_tokens(r, 1 + r.below(2000), 257);
  mpt::write_token_shard(d.file("own.bin"), t, 257);
  const mpt::TokenShard s = mpt::read_tokens_file(d.file("own.bin"), ShardFormat::Auto, 50257);
  EXPECT_EQ(s.tokens, t);
  EXPECT_EQ(s.vocab, 257u);  // its own header, not the model's
  EXPECT_EQ(mpt::read_tokens_file(d.file("own.bin"), ShardFormat::Mptrain).tokens, t);
  // ... and names the format mismatch when told otherwise.
  expect_error([&] { mpt::read_tokens_file(d.file("own.bin"), ShardFormat::Llmc, 50257); }, d.file("own.bin"), "magic",
               {"mptrain shard"});
  expect_error([&] { mpt::read_tokens_file(d.file("own.bin"), ShardFormat::Nanogpt, 50257); }, d.file("own.bin"),
               "magic", {"mptrain", "data.format=auto"});
}

TEST(TokenFormats, LlmcHeaderCorruption) {
  TempDir d;
  mpt::Rng r = mpt::test::fresh_rng();
  const auto t = random_tokens(r, 10 + r.below(500), 50257);
  const std::string p = d.file("bad.bin");
  auto check = [&](const std::vector<uint8_t>& bytes, const std::string& field, std::vector<std::string> parts) {
    write_bytes(p, bytes);
    for (const ShardFormat f : {ShardFormat::Llmc, ShardFormat::Auto})
      expect_error([&] { mpt::read_tokens_file(p, f, 50257); }, p, field, parts);
  };
  const int64_t version = 2 + int64_t(r.below(100));
  check(llmc_file(r, t, version), "version", {"version " + std::to_string(version), "expected 1"});
  const int64_t more = int64_t(t.size() + 1 + r.below(1000));
  check(llmc_file(r, t, 1, more), "token count", {"truncated", std::to_string(more), std::to_string(t.size())});
  const int64_t fewer = int64_t(r.below(t.size()));
  check(llmc_file(r, t, 1, fewer), "token count", {"beyond the " + std::to_string(fewer) + " tokens"});
  check(llmc_file(r, t, 1, 0x80000000ll + int64_t(r.below(1000))), "token count", {"negative"});
  auto cut = llmc_file(r, t);
  cut.resize(12 + r.below(1024 - 12));
  check(cut, "header", {"truncated", std::to_string(cut.size()) + " of 1024"});
  auto odd = llmc_file(r, t);
  odd.push_back(uint8_t(r.below(256)));
  check(odd, "token count", {"1 bytes beyond"});
  // A wrong magic under llmc names the magic; under auto it is an unknown file.
  write_bytes(p, llmc_file(r, t, 1, -1, mpt::kLlmcMagic + 1 + uint32_t(r.below(1000))));
  expect_error([&] { mpt::read_tokens_file(p, ShardFormat::Llmc, 50257); }, p, "magic", {"expected magic 20240520"});
  expect_error([&] { mpt::read_tokens_file(p, ShardFormat::Auto, 50257); }, p, "magic", {"data.format=nanogpt"});
}

TEST(TokenFormats, TokenOutsideModelVocabularyNamesItsIndex) {
  TempDir d;
  mpt::Rng r = mpt::test::fresh_rng();
  const uint64_t vocab = 300 + r.below(50000);
  auto t = random_tokens(r, 100 + r.below(2000), vocab);
  const size_t at = r.below(t.size());
  t[at] = int32_t(vocab + r.below(65536 - vocab));
  const std::vector<std::string> parts = {"token " + std::to_string(t[at]), "at index " + std::to_string(at),
                                          "model.vocab " + std::to_string(vocab)};
  write_bytes(d.file("l.bin"), llmc_file(r, t));
  expect_error([&] { mpt::read_tokens_file(d.file("l.bin"), ShardFormat::Auto, vocab); }, d.file("l.bin"), "tokens", parts);
  write_bytes(d.file("n.bin"), raw_tokens(t));
  expect_error([&] { mpt::read_tokens_file(d.file("n.bin"), ShardFormat::Nanogpt, vocab); }, d.file("n.bin"), "tokens", parts);
  // One more vocabulary entry and both read.
  EXPECT_EQ(mpt::read_tokens_file(d.file("n.bin"), ShardFormat::Nanogpt, uint64_t(t[at]) + 1).tokens, t);
}

TEST(TokenFormats, NanogptSizeAndMagicChecks) {
  TempDir d;
  mpt::Rng r = mpt::test::fresh_rng();
  auto b = raw_tokens(random_tokens(r, 1 + r.below(1000), 50257));
  b.push_back(uint8_t(r.below(256)));
  write_bytes(d.file("odd.bin"), b);
  expect_error([&] { mpt::read_tokens_file(d.file("odd.bin"), ShardFormat::Nanogpt, 50257); }, d.file("odd.bin"),
               "file size", {"odd size " + std::to_string(b.size())});
  write_bytes(d.file("l.bin"), llmc_file(r, random_tokens(r, 10, 50257)));
  expect_error([&] { mpt::read_tokens_file(d.file("l.bin"), ShardFormat::Nanogpt, 50257); }, d.file("l.bin"), "magic",
               {"llm.c"});
}

TEST(TokenFormats, StreamConcatenatesFilesOfOneFormat) {
  TempDir d;
  mpt::Rng r = mpt::test::fresh_rng();
  std::vector<std::string> paths;
  std::vector<int32_t> all;
  for (int k = 0; k < 3; ++k) {
    const auto t = random_tokens(r, 1 + r.below(1000), 50257);
    paths.push_back(d.file("s" + std::to_string(k) + ".bin"));
    write_bytes(paths.back(), llmc_file(r, t));
    all.insert(all.end(), t.begin(), t.end());
  }
  const mpt::TokenStream s = mpt::load_token_stream(paths, ShardFormat::Llmc, 50257);
  EXPECT_EQ(s.tokens, all);
  EXPECT_EQ(s.vocab, 50257u);
}
