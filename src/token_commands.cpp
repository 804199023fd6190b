// `mptrain tokenize` (text -> token shards, byte-level or GPT-2 BPE, and back with --decode) and
// `mptrain synth-tokens`.
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string_view>

#include "src/bpe.h"
#include "src/check.h"
#include "src/rng.h"
#include "src/tokens.h"

namespace mpt {
namespace {
// Whole file through zlib, which passes files without a gzip header through unchanged.
std::string read_text_file(const std::string& path) {
  errno = 0;
  gzFile g = gzopen(path.c_str(), "rb");
  if (!g) throw InputError(path, "open", std::string("cannot open: ") + std::strerror(errno ? errno : ENOENT));
  gzbuffer(g, 1 << 20);
  std::string out;
  std::vector<char> buf(1 << 20);
  for (;;) {
    const int r = gzread(g, buf.data(), unsigned(buf.size()));
    if (r < 0) {
      int err = 0;
      const std::string msg = gzerror(g, &err);
      gzclose(g);
      throw InputError(path, "read", "read failed: " + (err == Z_ERRNO ? std::string(std::strerror(errno)) : msg));
    }
    if (r == 0) break;
    out.append(buf.data(), size_t(r));
  }
  // A gzip stream cut short reads as a clean end of file plus Z_BUF_ERROR.
  int err = 0;
  const char* msg = gzerror(g, &err);
  if (err != Z_OK && err != Z_STREAM_END) {
    const std::string m = msg ? msg : "unknown error";
    gzclose(g);
    throw InputError(path, "read", "truncated or corrupt gzip data: " + m);
  }
  gzclose(g);
  return out;
}

// ---- command-line helpers shared by tokenize and synth-tokens

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// "--name VALUE" or "--name=VALUE"; advances i past the value.
bool take_option(int argc, char** argv, int& i, const char* name, std::string* value) {
  const std::string_view a = argv[i];
  const size_t n = std::strlen(name);
  if (a.substr(0, n) != name) return false;
  if (a.size() == n) {
    if (i + 1 >= argc) throw UsageError(std::string(name) + " needs a value");
    *value = argv[++i];
    return true;
  }
  if (a[n] != '=') return false;
  *value = std::string(a.substr(n + 1));
  return true;
}

uint64_t parse_u64(const std::string& opt, const std::string& s, uint64_t lo, uint64_t hi) {
  uint64_t v = 0;
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || s.empty())
    throw UsageError(opt + " expects a non-negative integer, got '" + s + "'");
  if (v < lo || v > hi)
    throw UsageError(opt + " must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " + s);
  return v;
}

double parse_fraction(const std::string& opt, const std::string& s) {
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(s.c_str(), &end);
  if (s.empty() || *end != '\0' || errno != 0 || !std::isfinite(v))
    throw UsageError(opt + " expects a number, got '" + s + "'");
  if (v < 0.0 || v >= 1.0) throw UsageError(opt + " must be in [0, 1), got " + s);
  return v;
}

std::string shard_name(const char* split, size_t index) {
  char b[32];
  std::snprintf(b, sizeof b, "%s-%05zu.bin", split, index);
  return b;
}

// Removes DIR/<split>-NNNNN.bin files from an earlier run that this run did not rewrite, so a glob over
// the directory never mixes two tokenizations.
void remove_stale_shards(const std::string& dir, const char* split, size_t written) {
  const std::string prefix = std::string(split) + "-", suffix = ".bin";
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.size() < prefix.size() + 5 + suffix.size() || name.compare(0, prefix.size(), prefix) != 0 ||
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
      continue;
    const std::string digits = name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
    uint64_t index = 0;
    const auto [end, err] = std::from_chars(digits.data(), digits.data() + digits.size(), index);
    if (err != std::errc() || end != digits.data() + digits.size()) continue;
    if (index >= written) std::filesystem::remove(e.path(), ec);
  }
}

// Writes tokens [begin, end) of the stream as shards of at most per_shard tokens.
std::vector<std::string> write_split(const std::string& dir, const char* split, const std::vector<uint16_t>& stream,
                                     size_t begin, size_t end, size_t per_shard) {
  std::vector<std::string> names;
  std::vector<int32_t> chunk;
  for (size_t b = begin; b < end; b += per_shard) {
    const size_t e = std::min(end, b + per_shard);
    chunk.assign(stream.begin() + std::ptrdiff_t(b), stream.begin() + std::ptrdiff_t(e));
    names.push_back(shard_name(split, names.size()));
    write_token_shard(dir + "/" + names.back(), chunk, kByteVocab);
  }
  remove_stale_shards(dir, split, names.size());
  return names;
}

std::string list_names(const std::vector<std::string>& names) {
  if (names.empty()) return "none";
  if (names.size() <= 4) {
    std::string s;
    for (const auto& n : names) s += (s.empty() ? "" : " ") + n;
    return s;
  }
  return names.front() + " .. " + names.back();
}

const char* kTokenizeUsage =
    "usage: mptrain tokenize --out DIR [--val-fraction F] [--shard-tokens N] FILE...\n"
    "  Byte-level tokenization (vocabulary 257: bytes and end-of-text). Each FILE (plain or .gz) is one\n"
    "  document. Writes DIR/train-NNNNN.bin and DIR/val-NNNNN.bin; validation is the last F of the tokens.\n"
    "  --val-fraction F    in [0, 1), default 0.05 (0: no validation shard)\n"
    "  --shard-tokens N    tokens per shard, default 100000000\n";

const char* kSynthUsage =
    "usage: mptrain synth-tokens --out FILE --tokens N [--vocab V] [--seed S]\n"
    "  Random tokens with a Zipf-like frequency profile (token k has probability ~ 1/(k+1)), for\n"
    "  benchmarks where the text does not matter. Default vocabulary 50257 (GPT-2), seed 1.\n";

bool wants_help(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (!std::strcmp(argv[i], "-h") || !std::strcmp(argv[i], "--help")) return true;
  return false;
}
}  // namespace

// ---- commands

int tokenize_command(int argc, char** argv) {
  if (wants_help(argc, argv)) {
    std::fputs(kTokenizeUsage, stdout);
    return 0;
  }
  std::string out_dir;
  double val_fraction = 0.05;
  uint64_t shard_tokens = 100000000;
  std::vector<std::string> files;
  try {
    for (int i = 1; i < argc; ++i) {
      std::string v;
      if (take_option(argc, argv, i, "--out", &v)) {
        out_dir = v;
      } else if (take_option(argc, argv, i, "--val-fraction", &v)) {
        val_fraction = parse_fraction("--val-fraction", v);
      } else if (take_option(argc, argv, i, "--shard-tokens", &v)) {
        shard_tokens = parse_u64("--shard-tokens", v, 1, uint64_t(1) << 40);
      } else if (argv[i][0] == '-' && argv[i][1] != '\0') {
        throw UsageError(std::string("unknown option '") + argv[i] + "'");
      } else {
        files.emplace_back(argv[i]);
      }
    }
    if (out_dir.empty()) throw UsageError("--out DIR is required");
    if (files.empty()) throw UsageError("no input files");
  } catch (const UsageError& e) {
    std::fprintf(stderr, "mptrain tokenize: %s\n%s", e.what(), kTokenizeUsage);
    return kExitBadInput;
  }

  try {
    // The whole corpus is held as 16-bit tokens: the validation split is the tail of the stream, which is
    // only known once every file is read.
    std::vector<uint16_t> stream;
    uint64_t bytes = 0;
    for (const auto& f : files) {
      const std::string text = read_text_file(f);
      bytes += text.size();
      for (const char c : text) stream.push_back(uint16_t(static_cast<unsigned char>(c)));
      stream.push_back(uint16_t(kEndOfText));
    }
    std::error_code ec;
    std::filesystem::create_directories(out_dir, ec);
    if (ec) throw InputError(out_dir, "--out", "cannot create directory: " + ec.message());

    const size_t n = stream.size();
    const size_t n_val = size_t(std::floor(double(n) * val_fraction));
    const size_t n_train = n - n_val;
    const auto train = write_split(out_dir, "train", stream, 0, n_train, size_t(shard_tokens));
    const auto val = write_split(out_dir, "val", stream, n_train, n, size_t(shard_tokens));
    std::printf("tokenize: %zu files, %llu bytes -> %zu train tokens, %zu val tokens (vocab %d) in %s: %s%s%s\n",
                files.size(), static_cast<unsigned long long>(bytes), n_train, n_val, kByteVocab, out_dir.c_str(),
                list_names(train).c_str(), val.empty() ? "" : ", ", val.empty() ? "" : list_names(val).c_str());
    return 0;
  } catch (const InputError& e) {
    std::fprintf(stderr, "mptrain tokenize: %s\n", e.what());
    return kExitBadInput;
  }
}

int synth_tokens_command(int argc, char** argv) {
  if (wants_help(argc, argv)) {
    std::fputs(kSynthUsage, stdout);
    return 0;
  }
  std::string out;
  uint64_t n = 0, vocab = 50257, seed = 1;
  try {
    for (int i = 1; i < argc; ++i) {
      std::string v;
      if (take_option(argc, argv, i, "--out", &v)) {
        out = v;
      } else if (take_option(argc, argv, i, "--tokens", &v)) {
        n = parse_u64("--tokens", v, 1, uint64_t(1) << 34);
      } else if (take_option(argc, argv, i, "--vocab", &v)) {
        vocab = parse_u64("--vocab", v, 2, uint64_t(1) << 31);
      } else if (take_option(argc, argv, i, "--seed", &v)) {
        seed = parse_u64("--seed", v, 0, UINT64_MAX);
      } else {
        throw UsageError(std::string("unexpected argument '") + argv[i] + "'");
      }
    }
    if (out.empty()) throw UsageError("--out FILE is required");
    if (n == 0) throw UsageError("--tokens N is required");
  } catch (const UsageError& e) {
    std::fprintf(stderr, "mptrain synth-tokens: %s\n%s", e.what(), kSynthUsage);
    return kExitBadInput;
  }

  try {
    // Zipf with exponent 1 over ranks, the usual first approximation of word frequencies: a few tokens
    // dominate and most are rare, so embedding and softmax traffic look like real text's.
    std::vector<double> cdf(static_cast<size_t>(vocab));
    double acc = 0.0;
    for (uint64_t k = 0; k < vocab; ++k) cdf[size_t(k)] = (acc += 1.0 / double(k + 1));
    for (auto& c : cdf) c /= acc;
    Rng rng(seed);
    std::vector<int32_t> tokens(static_cast<size_t>(n));
    for (auto& t : tokens) {
      const double u = double(rng.next() >> 11) * (1.0 / 9007199254740992.0);  // 53 bits in [0, 1)
      const size_t k = size_t(std::upper_bound(cdf.begin(), cdf.end(), u) - cdf.begin());
      t = int32_t(std::min<size_t>(k, size_t(vocab - 1)));
    }
    write_token_shard(out, tokens, vocab);
    std::printf("synth-tokens: %llu tokens, vocab %llu, seed %llu -> %s\n", static_cast<unsigned long long>(n),
                static_cast<unsigned long long>(vocab), static_cast<unsigned long long>(seed), out.c_str());
    return 0;
  } catch (const InputError& e) {
    std::fprintf(stderr, "mptrain synth-tokens: %s\n", e.what());
    return kExitBadInput;
  }
}

}  // namespace mpt
