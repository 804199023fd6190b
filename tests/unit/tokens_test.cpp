// Token shards (format, every header error), shard globs, byte-level encoding, training windows and the
// tokenize / synth-tokens commands.
#include <gtest/gtest.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "src/core/check.h"
#include "src/data/tokens.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;

namespace {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "mpt_tokens_test_XXXXXX").string();
    if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}
void write_bytes(const std::string& path, const std::vector<uint8_t>& b) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}
void write_text(const std::string& path, const std::string& s) {
  std::ofstream f(path, std::ios::binary);
  f << s;
}

void put_le(std::vector<uint8_t>& b, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) b.push_back(uint8_t(v >> (8 * i)));
}
uint64_t get_le(const std::vector<uint8_t>& b, size_t at, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | b[at + size_t(i)];
  return v;
}

// A shard assembled byte by byte from the format description, independent of the writer.
std::vector<uint8_t> shard_bytes(const std::vector<uint64_t>& tokens, uint64_t vocab, uint32_t bpt,
                                 uint32_t version = 1, uint64_t count_override = UINT64_MAX) {
  std::vector<uint8_t> b = {'M', 'P', 'T', 'T', 'O', 'K', 'E', 'N'};
  put_le(b, version, 4);
  put_le(b, bpt, 4);
  put_le(b, count_override == UINT64_MAX ? tokens.size() : count_override, 8);
  put_le(b, vocab, 8);
  b.resize(64, 0);
  for (const uint64_t t : tokens) put_le(b, t, int(bpt));
  return b;
}

std::vector<int32_t> random_tokens(mpt::Rng& r, size_t n, uint64_t vocab) {
  std::vector<int32_t> t(n);
  for (auto& x : t) x = int32_t(r.below(vocab));
  return t;
}

// Runs a command with a C-style argument vector.
int run(int (*cmd)(int, char**), std::vector<std::string> args) {
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  return cmd(int(args.size()), argv.data());
}

void expect_field(const std::string& path, const std::string& field) {
  try {
    (void)mpt::read_token_shard(path);
    ADD_FAILURE() << "no error for a shard with a bad " << field;
  } catch (const mpt::InputError& e) {
    EXPECT_EQ(e.file(), path);
    EXPECT_EQ(e.field(), field) << e.what();
  }
}

bool has_tmp_files(const fs::path& dir) {
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().find(".tmp") != std::string::npos) return true;
  return false;
}

}  // namespace

TEST(TokenShard, RoundTripEachTokenWidth) {
  TempDir d;
  auto r = mpt::test::fresh_rng();
  // One vocabulary per stored width: the writer must pick 1, 2 or 4 bytes from the vocabulary alone.
  const uint64_t vocabs[] = {2 + r.below(255), 257 + r.below(65536 - 257 + 1), 65537 + r.below(1u << 30)};
  const uint32_t widths[] = {1, 2, 4};
  for (int k = 0; k < 3; ++k) {
    const size_t n = 1 + r.below(5000);
    auto tokens = random_tokens(r, n, vocabs[k]);
    tokens[r.below(n)] = int32_t(vocabs[k] - 1);  // the largest legal token must survive the narrowest width
    const std::string path = d.file("s" + std::to_string(k) + ".bin");
    mpt::write_token_shard(path, tokens, vocabs[k]);

    const auto raw = read_bytes(path);
    ASSERT_EQ(raw.size(), 64 + n * widths[k]);
    EXPECT_EQ(std::string(raw.begin(), raw.begin() + 8), "MPTTOKEN");
    EXPECT_EQ(get_le(raw, 8, 4), 1u);
    EXPECT_EQ(get_le(raw, 12, 4), widths[k]);
    EXPECT_EQ(get_le(raw, 16, 8), n);
    EXPECT_EQ(get_le(raw, 24, 8), vocabs[k]);
    for (size_t i = 32; i < 64; ++i) EXPECT_EQ(raw[i], 0) << "reserved byte " << i;
    for (size_t i = 0; i < n; ++i)
      ASSERT_EQ(get_le(raw, 64 + i * widths[k], int(widths[k])), uint64_t(tokens[i])) << "token " << i;

    const auto s = mpt::read_token_shard(path);
    EXPECT_EQ(s.path, path);
    EXPECT_EQ(s.vocab, vocabs[k]);
    EXPECT_EQ(s.tokens, tokens);
  }
  EXPECT_FALSE(has_tmp_files(d.path()));
}

TEST(TokenShard, ReadsHandBuiltFileIncludingWiderThanNeeded) {
  TempDir d;
  auto r = mpt::test::fresh_rng();
  for (const uint32_t bpt : {1u, 2u, 4u}) {
    // A writer may store a small vocabulary in a wider type; only a too-narrow width is an error.
    const uint64_t vocab = bpt == 1 ? 256 : (bpt == 2 ? 50257 : 100000 + r.below(1000000));
    std::vector<uint64_t> tokens(1 + r.below(300));
    for (auto& t : tokens) t = r.below(vocab);
    const std::string path = d.file("hand" + std::to_string(bpt) + ".bin");
    write_bytes(path, shard_bytes(tokens, vocab, bpt));
    const auto s = mpt::read_token_shard(path);
    EXPECT_EQ(s.vocab, vocab);
    ASSERT_EQ(s.tokens.size(), tokens.size());
    for (size_t i = 0; i < tokens.size(); ++i) EXPECT_EQ(uint64_t(s.tokens[i]), tokens[i]);
  }
  write_bytes(d.file("wide.bin"), shard_bytes({3, 1, 2}, 5, 4));
  EXPECT_EQ(mpt::read_token_shard(d.file("wide.bin")).tokens, (std::vector<int32_t>{3, 1, 2}));
}

TEST(TokenShard, EveryHeaderErrorNamesItsField) {
  TempDir d;
  auto r = mpt::test::fresh_rng();
  std::vector<uint64_t> tokens(10 + r.below(100));
  for (auto& t : tokens) t = r.below(257);
  const auto good = shard_bytes(tokens, 257, 2);
  write_bytes(d.file("good.bin"), good);
  ASSERT_NO_THROW(mpt::read_token_shard(d.file("good.bin")));

  auto bad = good;
  bad[r.below(8)] ^= 0x20;
  write_bytes(d.file("magic.bin"), bad);
  expect_field(d.file("magic.bin"), "magic");

  write_bytes(d.file("tiny.bin"), std::vector<uint8_t>(good.begin(), good.begin() + 5));
  expect_field(d.file("tiny.bin"), "magic");

  write_bytes(d.file("short_header.bin"), std::vector<uint8_t>(good.begin(), good.begin() + 8 + r.below(56)));
  expect_field(d.file("short_header.bin"), "header");

  write_bytes(d.file("version.bin"), shard_bytes(tokens, 257, 2, 2 + uint32_t(r.below(100))));
  expect_field(d.file("version.bin"), "version");

  write_bytes(d.file("bpt3.bin"), shard_bytes({}, 257, 3));
  expect_field(d.file("bpt3.bin"), "bytes per token");
  // 257 tokens do not fit in one byte.
  write_bytes(d.file("bpt_narrow.bin"), shard_bytes({1, 2}, 257, 1));
  expect_field(d.file("bpt_narrow.bin"), "bytes per token");

  bad = good;
  bad.resize(good.size() - 1 - r.below(2 * tokens.size() - 1));
  write_bytes(d.file("truncated.bin"), bad);
  expect_field(d.file("truncated.bin"), "token count");

  bad = good;
  bad.push_back(7);
  write_bytes(d.file("trailing.bin"), bad);
  expect_field(d.file("trailing.bin"), "token count");

  // A count whose byte size overflows uint64 must not wrap around into "fits".
  write_bytes(d.file("huge_count.bin"), shard_bytes(tokens, 257, 2, 1, (uint64_t(1) << 63) + tokens.size() / 2));
  expect_field(d.file("huge_count.bin"), "token count");

  write_bytes(d.file("vocab0.bin"), shard_bytes({}, 0, 1));
  expect_field(d.file("vocab0.bin"), "vocabulary size");

  auto over = tokens;
  const size_t at = r.below(over.size());
  over[at] = 257 + r.below(65536 - 257);
  write_bytes(d.file("over.bin"), shard_bytes(over, 257, 2));
  try {
    (void)mpt::read_token_shard(d.file("over.bin"));
    ADD_FAILURE() << "token >= vocab accepted";
  } catch (const mpt::InputError& e) {
    EXPECT_EQ(e.field(), "vocabulary size");
    EXPECT_NE(std::string(e.what()).find("index " + std::to_string(at)), std::string::npos) << e.what();
  }

  expect_field(d.file("missing.bin"), "open");
}

TEST(TokenShard, WriterRejectsTokensOutsideTheVocabulary) {
  TempDir d;
  auto r = mpt::test::fresh_rng();
  auto t = random_tokens(r, 50, 100);
  t[r.below(50)] = 100;
  EXPECT_THROW(mpt::write_token_shard(d.file("a.bin"), t, 100), mpt::InputError);
  t = random_tokens(r, 50, 100);
  t[r.below(50)] = -1;
  EXPECT_THROW(mpt::write_token_shard(d.file("b.bin"), t, 100), mpt::InputError);
  EXPECT_THROW(mpt::write_token_shard(d.file("c.bin"), {}, 0), mpt::InputError);
  EXPECT_FALSE(fs::exists(d.file("a.bin")));
  EXPECT_FALSE(has_tmp_files(d.path()));
}

TEST(TokenShard, GlobExpansionIsSortedAndKeepsEntryOrder) {
  TempDir d;
  for (const char* n : {"train-00002.bin", "train-00000.bin", "train-00001.bin", "val-00000.bin", "notes.txt"})
    write_text(d.file(n), "x");
  const auto got = mpt::expand_shard_paths({d.file("val-00000.bin"), d.file("train-*.bin"), d.file("val-0000?.bin")},
                                           "data.train_shards");
  const std::vector<std::string> want = {d.file("val-00000.bin"), d.file("train-00000.bin"), d.file("train-00001.bin"),
                                         d.file("train-00002.bin"), d.file("val-00000.bin")};
  EXPECT_EQ(got, want);
  EXPECT_TRUE(mpt::expand_shard_paths({}, "f").empty());

  try {
    (void)mpt::expand_shard_paths({d.file("train-*.bin"), d.file("test-*.bin")}, "data.val_shards");
    ADD_FAILURE() << "a pattern matching nothing was accepted";
  } catch (const mpt::InputError& e) {
    EXPECT_EQ(e.file(), d.file("test-*.bin"));
    EXPECT_EQ(e.field(), "data.val_shards");
  }
  try {
    (void)mpt::expand_shard_paths({d.file("absent.bin")}, "data.train_shards");
    ADD_FAILURE() << "a missing plain path was accepted";
  } catch (const mpt::InputError& e) {
    EXPECT_EQ(e.file(), d.file("absent.bin"));
    EXPECT_EQ(e.field(), "data.train_shards");
  }
}

TEST(TokenStream, ConcatenatesShardsInOrderWithLargestVocab) {
  TempDir d;
  auto r = mpt::test::fresh_rng();
  const uint64_t vocabs[] = {200, 70000, 257};
  std::vector<int32_t> all;
  std::vector<std::string> paths;
  for (int k = 0; k < 3; ++k) {
    const auto t = random_tokens(r, 1 + r.below(2000), vocabs[k]);
    all.insert(all.end(), t.begin(), t.end());
    paths.push_back(d.file("s" + std::to_string(k) + ".bin"));
    mpt::write_token_shard(paths.back(), t, vocabs[k]);
  }
  const auto s = mpt::load_token_stream(paths);
  EXPECT_EQ(s.vocab, 70000u);
  EXPECT_EQ(s.tokens, all);
}

TEST(ByteEncoding, RoundTripOfRandomBytesAndUtf8) {
  auto r = mpt::test::fresh_rng();
  std::vector<std::string> docs(2 + r.below(4));
  for (auto& doc : docs) {
    doc.resize(r.below(500));
    for (auto& c : doc) c = char(r.below(256));  // every byte value, NUL and bytes >= 0x80 included
  }
  docs.push_back("na\xC3\xAFve caf\xC3\xA9 \xE2\x80\x94 \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E \xF0\x9F\x99\x82");
  const auto t = mpt::encode_bytes(docs);
  std::string expect;
  size_t at = 0;
  for (const auto& doc : docs) {
    for (const char c : doc) {
      ASSERT_LT(at, t.size());
      EXPECT_EQ(t[at++], int32_t(static_cast<unsigned char>(c)));
    }
    ASSERT_LT(at, t.size());
    EXPECT_EQ(t[at++], mpt::kEndOfText);
    expect += doc + "\n<|endoftext|>\n";
  }
  EXPECT_EQ(at, t.size());
  EXPECT_EQ(mpt::decode_bytes(t), expect);
  // A UTF-8 character is several tokens, one per byte.
  const auto snowman = mpt::encode_bytes({"\xE2\x98\x83"});
  EXPECT_EQ(snowman, (std::vector<int32_t>{0xE2, 0x98, 0x83, mpt::kEndOfText}));
  EXPECT_EQ(mpt::decode_bytes({0xE2, 0x98, 0x83}), "\xE2\x98\x83");
}

TEST(TokenWindows, EveryTokenAfterTheFirstIsATargetOnce) {
  auto r = mpt::test::fresh_rng();
  for (int trial = 0; trial < 20; ++trial) {
    const int L = 1 + int(r.below(64));
    const int64_t full = 1 + int64_t(r.below(40));
    // Half the trials end exactly on a window boundary; the others have a tail shorter than a window.
    const int64_t tail = trial % 2 ? int64_t(r.below(uint64_t(L))) : 0;
    const int64_t n = full * L + 1 + tail;
    // Distinct values (a permutation), so a value identifies its position in the stream.
    const auto perm = mpt::permutation(n, r.next());
    mpt::TokenStream s;
    s.vocab = uint64_t(n);
    std::vector<int64_t> pos(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      s.tokens.push_back(int32_t(perm[size_t(i)]));
      pos[size_t(perm[size_t(i)])] = i;
    }
    const mpt::TokenWindows w(&s, L);
    ASSERT_EQ(w.count(), full) << "n " << n << " L " << L;
    EXPECT_EQ(w.seq_len(), L);
    std::vector<int> as_target(static_cast<size_t>(n), 0);
    std::vector<int32_t> in(static_cast<size_t>(L)), tg(static_cast<size_t>(L));
    for (int64_t k = 0; k < w.count(); ++k) {
      w.get(k, in.data(), tg.data());
      for (int i = 0; i < L; ++i) {
        EXPECT_EQ(pos[size_t(in[size_t(i)])], k * L + i);
        EXPECT_EQ(pos[size_t(tg[size_t(i)])], pos[size_t(in[size_t(i)])] + 1) << "targets are inputs shifted by one";
        ++as_target[size_t(pos[size_t(tg[size_t(i)])])];
      }
    }
    EXPECT_EQ(as_target[0], 0);
    for (int64_t i = 1; i < n; ++i)
      ASSERT_EQ(as_target[size_t(i)], i <= full * L ? 1 : 0) << "position " << i << " of " << n << ", L " << L;
    EXPECT_THROW(w.get(w.count(), in.data(), tg.data()), std::out_of_range);
    EXPECT_THROW(w.get(-1, in.data(), tg.data()), std::out_of_range);
  }
  mpt::TokenStream one;
  one.tokens = {5};
  EXPECT_EQ(mpt::TokenWindows(&one, 4).count(), 0);
  EXPECT_THROW(mpt::TokenWindows(&one, 0), std::invalid_argument);
}

TEST(TokenizeCommand, ShardsPlainAndGzipFilesWithValidationTail) {
  TempDir d;
  auto r = mpt::test::fresh_rng();
  std::vector<std::string> docs(3);
  for (auto& doc : docs) {
    doc.resize(500 + r.below(3000));
    for (auto& c : doc) c = char(32 + r.below(95));
  }
  docs[1][r.below(docs[1].size())] = char(0xC3);  // a non-ASCII byte survives
  write_text(d.file("a.txt"), docs[0]);
  gzFile g = gzopen(d.file("b.txt.gz").c_str(), "wb");
  ASSERT_NE(g, nullptr);
  ASSERT_EQ(gzwrite(g, docs[1].data(), unsigned(docs[1].size())), int(docs[1].size()));
  gzclose(g);
  write_text(d.file("c"), docs[2]);

  const auto want = mpt::encode_bytes(docs);
  const size_t per_shard = 700 + r.below(900);
  const std::string out = d.file("shards");
  testing::internal::CaptureStdout();
  const int rc = run(mpt::tokenize_command, {"tokenize", "--out", out, "--val-fraction", "0.1", "--shard-tokens",
                                             std::to_string(per_shard), d.file("a.txt"), d.file("b.txt.gz"), d.file("c")});
  const std::string summary = testing::internal::GetCapturedStdout();
  ASSERT_EQ(rc, 0);
  EXPECT_NE(summary.find("3 files"), std::string::npos) << summary;
  EXPECT_EQ(std::count(summary.begin(), summary.end(), '\n'), 1) << "one-line summary: " << summary;

  const size_t n_val = size_t(std::floor(double(want.size()) * 0.1));
  const size_t n_train = want.size() - n_val;
  const auto train = mpt::expand_shard_paths({out + "/train-*.bin"}, "t");
  ASSERT_EQ(train.size(), (n_train + per_shard - 1) / per_shard);
  std::vector<int32_t> got;
  for (size_t i = 0; i < train.size(); ++i) {
    char name[32];
    std::snprintf(name, sizeof name, "/train-%05zu.bin", i);
    EXPECT_EQ(train[i], out + name);
    const auto s = mpt::read_token_shard(train[i]);
    EXPECT_EQ(s.vocab, uint64_t(mpt::kByteVocab));
    EXPECT_EQ(s.tokens.size(), std::min(per_shard, n_train - i * per_shard));
    got.insert(got.end(), s.tokens.begin(), s.tokens.end());
  }
  const auto val = mpt::load_token_stream(mpt::expand_shard_paths({out + "/val-*.bin"}, "v"));
  EXPECT_EQ(val.tokens.size(), n_val);
  got.insert(got.end(), val.tokens.begin(), val.tokens.end());
  EXPECT_EQ(got, want);

  // A rerun with larger shards leaves no stale shard of the first run behind.
  testing::internal::CaptureStdout();
  const int rc2 = run(mpt::tokenize_command, {"tokenize", "--out", out, "--val-fraction", "0", d.file("a.txt"),
                                              d.file("b.txt.gz"), d.file("c")});
  testing::internal::GetCapturedStdout();
  ASSERT_EQ(rc2, 0);
  EXPECT_EQ(mpt::expand_shard_paths({out + "/train-*.bin"}, "t"), std::vector<std::string>{out + "/train-00000.bin"});
  EXPECT_FALSE(fs::exists(out + "/val-00000.bin"));
  EXPECT_EQ(mpt::read_token_shard(out + "/train-00000.bin").tokens, want);
}

TEST(TokenizeCommand, BadArgumentsExitWithTwo) {
  TempDir d;
  write_text(d.file("a.txt"), "some text");
  const std::string out = d.file("o");
  testing::internal::CaptureStderr();
  EXPECT_EQ(run(mpt::tokenize_command, {"tokenize", d.file("a.txt")}), 2);
  EXPECT_EQ(run(mpt::tokenize_command, {"tokenize", "--out", out}), 2);
  EXPECT_EQ(run(mpt::tokenize_command, {"tokenize", "--out", out, "--frobnicate", d.file("a.txt")}), 2);
  EXPECT_EQ(run(mpt::tokenize_command, {"tokenize", "--out", out, "--val-fraction", "1.5", d.file("a.txt")}), 2);
  EXPECT_EQ(run(mpt::tokenize_command, {"tokenize", "--out", out, "--shard-tokens", "0", d.file("a.txt")}), 2);
  EXPECT_EQ(run(mpt::tokenize_command, {"tokenize", "--out", out, "--shard-tokens", "12x", d.file("a.txt")}), 2);
  EXPECT_EQ(run(mpt::tokenize_command, {"tokenize", "--out", out, "--val-fraction"}), 2);
  EXPECT_EQ(run(mpt::tokenize_command, {"tokenize", "--out", out, d.file("missing.txt")}), 2);
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("missing.txt"), std::string::npos) << err;
  EXPECT_FALSE(fs::exists(out + "/train-00000.bin"));
}

TEST(SynthTokens, DeterministicZipfProfile) {
  TempDir d;
  auto r = mpt::test::fresh_rng();
  const uint64_t seed = r.next() >> 1, vocab = 500 + r.below(1500), n = 300000;
  testing::internal::CaptureStdout();
  auto synth = [&](const std::string& name, uint64_t s) {
    return run(mpt::synth_tokens_command, {"synth-tokens", "--out", d.file(name), "--tokens", std::to_string(n),
                                           "--vocab", std::to_string(vocab), "--seed", std::to_string(s)});
  };
  ASSERT_EQ(synth("a.bin", seed), 0);
  ASSERT_EQ(synth("b.bin", seed), 0);
  ASSERT_EQ(synth("c.bin", seed + 1), 0);
  testing::internal::GetCapturedStdout();
  EXPECT_EQ(read_bytes(d.file("a.bin")), read_bytes(d.file("b.bin")));
  EXPECT_NE(read_bytes(d.file("a.bin")), read_bytes(d.file("c.bin")));

  const auto s = mpt::read_token_shard(d.file("a.bin"));
  ASSERT_EQ(s.tokens.size(), n);
  EXPECT_EQ(s.vocab, vocab);
  std::vector<double> freq(vocab, 0.0);
  for (const int32_t t : s.tokens) freq[size_t(t)] += 1.0 / double(n);
  double h = 0.0;
  for (uint64_t k = 1; k <= vocab; ++k) h += 1.0 / double(k);
  // Token k should have probability 1/((k+1) H_V). Each frequency is a mean of n Bernoulli draws, so its
  // standard deviation is sqrt(p(1-p)/n) <= 7e-4 here; 6 sigma keeps false alarms out.
  for (const uint64_t k : {0ull, 1ull, 2ull, 9ull, 99ull}) {
    const double p = 1.0 / (double(k + 1) * h);
    EXPECT_NEAR(freq[size_t(k)], p, 6.0 * std::sqrt(p * (1 - p) / double(n))) << "token " << k;
  }
  // The tail gets its share too: the upper half of the ranks carries ln(2)/H_V of the mass.
  double upper = 0.0, p_upper = 0.0;
  for (uint64_t k = vocab / 2; k < vocab; ++k) {
    upper += freq[size_t(k)];
    p_upper += 1.0 / (double(k + 1) * h);
  }
  EXPECT_NEAR(upper, p_upper, 6.0 * std::sqrt(p_upper * (1 - p_upper) / double(n)));

  testing::internal::CaptureStderr();
  EXPECT_EQ(run(mpt::synth_tokens_command, {"synth-tokens", "--tokens", "10"}), 2);
  EXPECT_EQ(run(mpt::synth_tokens_command, {"synth-tokens", "--out", d.file("x.bin")}), 2);
  EXPECT_EQ(run(mpt::synth_tokens_command, {"synth-tokens", "--out", d.file("x.bin"), "--tokens", "10", "--vocab", "1"}), 2);
  testing::internal::GetCapturedStderr();
}
