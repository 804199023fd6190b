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

#include "src/data/bpe.h"
#include "src/core/check.h"
#include "src/core/rng.h"
#include "src/data/tokens.h"

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
                                     size_t begin, size_t end, size_t per_shard, uint64_t vocab) {
  std::vector<std::string> names;
  std::vector<int32_t> chunk;
  for (size_t b = begin; b < end; b += per_shard) {
    const size_t e = std::min(end, b + per_shard);
    chunk.assign(stream.begin() + std::ptrdiff_t(b), stream.begin() + std::ptrdiff_t(e));
    names.push_back(shard_name(split, names.size()));
    write_token_shard(dir + "/" + names.back(), chunk, vocab);
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
    "usage: mptrain tokenize --out DIR [--bpe BPE_DIR] [--val-fraction F] [--shard-tokens N] FILE...\n"
    "       mptrain tokenize --decode [--bpe BPE_DIR] [--format F] --out FILE SHARD...\n"
    "  Each FILE (plain or .gz) is one document; an end-of-text token follows each. Writes DIR/train-NNNNN.bin\n"
    "  and DIR/val-NNNNN.bin; validation is the last F of the tokens. Without --bpe the vocabulary is\n"
    "  byte-level (257: the bytes and end-of-text 256).\n"
    "  --bpe BPE_DIR       GPT-2's byte-level BPE from BPE_DIR/encoder.json and BPE_DIR/vocab.bpe (vocabulary\n"
    "                      50257, end-of-text 50256; launch/setup.sh puts the files in .data/gpt2-bpe)\n"
    "  --val-fraction F    in [0, 1), default 0.05 (0: no validation shard)\n"
    "  --shard-tokens N    tokens per shard, default 100000000\n"
    "  --decode            the reverse: the tokens of the SHARDs (in order) as text into FILE ('-': standard\n"
    "                      output), byte-level or, with --bpe, BPE. An end-of-text token is written as\n"
    "                      <|endoftext|>, except at the very end, so one tokenized file decodes to its bytes.\n"
    "  --format F          --decode: shard format auto (default) | mptrain | llmc | nanogpt\n"
;

const char* kSynthUsage =
    "usage: mptrain synth-tokens --out FILE --tokens N [--vocab V] [--seed S]\n"
    "  Random tokens with a Zipf-like frequency profile (token k has probability ~ 1/(k+1)), for\n"
    "  benchmarks where the text does not matter. Default vocabulary 50257 (GPT-2), seed 1.\n";

bool wants_help(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    if (!std::strcmp(argv[i], "-h") || !std::strcmp(argv[i], "--help")) return true;
  return false;
}

// ---- commands

// The text of the tokens in `shards`, for --decode.
int decode_shards(const std::vector<std::string>& shards, const std::string& bpe_dir, ShardFormat format,
                  const std::string& out) {
  std::unique_ptr<BpeTokenizer> bpe;
  if (!bpe_dir.empty()) bpe = std::make_unique<BpeTokenizer>(BpeTokenizer::load(bpe_dir));
  const uint64_t vocab = bpe ? uint64_t(bpe->vocab_size()) : uint64_t(kByteVocab);
  const int32_t eot = bpe ? bpe->end_of_text() : kEndOfText;
  std::vector<int32_t> tokens;
  for (const auto& path : shards) {
    TokenShard s = read_tokens_file(path, format, vocab);
    if (s.vocab > vocab)
      throw InputError(path, "vocabulary size",
                       std::to_string(s.vocab) + " is larger than the " +
                           (bpe ? "BPE vocabulary (" + std::to_string(vocab) + ")"
                                : std::string("byte-level vocabulary (257); pass --bpe DIR for GPT-2 BPE tokens")));
    tokens.insert(tokens.end(), s.tokens.begin(), s.tokens.end());
  }
  // End of text terminates each document: the last one is dropped, the others separate documents.
  if (!tokens.empty() && tokens.back() == eot) tokens.pop_back();
  std::string text;
  static const std::string kEotText = "<|endoftext|>";
  for (const int32_t t : tokens) {
    if (t == eot) text += kEotText;
    else if (bpe) text += bpe->token_bytes(t);
    else text.push_back(char(static_cast<unsigned char>(t)));
  }
  const bool to_stdout = out == "-";
  std::FILE* f = to_stdout ? stdout : std::fopen(out.c_str(), "wb");
  if (!f) throw InputError(out, "--out", std::string("cannot create: ") + std::strerror(errno));
  bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  ok = (to_stdout ? std::fflush(f) == 0 : std::fclose(f) == 0) && ok;
  if (!ok) throw InputError(out, "--out", "write failed");
  std::fprintf(to_stdout ? stderr : stdout, "tokenize --decode: %zu shards, %zu tokens -> %zu bytes (%s) in %s\n",
               shards.size(), tokens.size(), text.size(), bpe ? "GPT-2 BPE" : "byte-level", out.c_str());
  return 0;
}

}  // namespace

int tokenize_command(int argc, char** argv) {
  if (wants_help(argc, argv)) {
    std::fputs(kTokenizeUsage, stdout);
    return 0;
  }
  std::string out, bpe_dir;
  double val_fraction = 0.05;
  uint64_t shard_tokens = 100000000;
  bool decode = false, split_options = false;
  ShardFormat format = ShardFormat::Auto;
  std::string format_name;
  std::vector<std::string> files;
  try {
    for (int i = 1; i < argc; ++i) {
      std::string v;
      if (take_option(argc, argv, i, "--out", &v)) {
        out = v;
      } else if (take_option(argc, argv, i, "--bpe", &v)) {
        if (v.empty()) throw UsageError("--bpe needs a directory");
        bpe_dir = v;
      } else if (take_option(argc, argv, i, "--val-fraction", &v)) {
        val_fraction = parse_fraction("--val-fraction", v);
        split_options = true;
      } else if (take_option(argc, argv, i, "--shard-tokens", &v)) {
        shard_tokens = parse_u64("--shard-tokens", v, 1, uint64_t(1) << 40);
        split_options = true;
      } else if (take_option(argc, argv, i, "--format", &v)) {
        try {
          format = parse_shard_format(v);
        } catch (const std::invalid_argument& e) {
          throw UsageError(std::string("--format: ") + e.what());
        }
        format_name = v;
      } else if (!std::strcmp(argv[i], "--decode")) {
        decode = true;
      } else if (argv[i][0] == '-' && argv[i][1] != '\0') {
        throw UsageError(std::string("unknown option '") + argv[i] + "'");
      } else {
        files.emplace_back(argv[i]);
      }
    }
    if (out.empty()) throw UsageError(decode ? "--out FILE is required" : "--out DIR is required");
    if (files.empty()) throw UsageError(decode ? "no shards to decode" : "no input files");
    if (decode && split_options) throw UsageError("--val-fraction and --shard-tokens apply to encoding, not --decode");
    if (!decode && !format_name.empty()) throw UsageError("--format applies to --decode");
  } catch (const UsageError& e) {
    std::fprintf(stderr, "mptrain tokenize: %s\n%s", e.what(), kTokenizeUsage);
    return kExitBadInput;
  }

  try {
    if (decode) return decode_shards(files, bpe_dir, format, out);
    std::unique_ptr<BpeTokenizer> bpe;
    if (!bpe_dir.empty()) {
      bpe = std::make_unique<BpeTokenizer>(BpeTokenizer::load(bpe_dir));
      if (bpe->vocab_size() > 65536)
        throw InputError(bpe_dir + "/encoder.json", "vocabulary", "tokenize stores 16-bit tokens; " +
                                                                      std::to_string(bpe->vocab_size()) + " tokens do not fit");
    }
    const uint64_t vocab = bpe ? uint64_t(bpe->vocab_size()) : uint64_t(kByteVocab);
    // The whole corpus is held as 16-bit tokens: the validation split is the tail of the stream, which is
    // only known once every file is read.
    std::vector<uint16_t> stream;
    uint64_t bytes = 0;
    for (const auto& f : files) {
      const std::string text = read_text_file(f);
      bytes += text.size();
      if (bpe) {
        for (const int32_t t : bpe->encode(text)) stream.push_back(uint16_t(t));
        stream.push_back(uint16_t(bpe->end_of_text()));
      } else {
        for (const char c : text) stream.push_back(uint16_t(static_cast<unsigned char>(c)));
        stream.push_back(uint16_t(kEndOfText));
      }
    }
    std::error_code ec;
    std::filesystem::create_directories(out, ec);
    if (ec) throw InputError(out, "--out", "cannot create directory: " + ec.message());

    const size_t n = stream.size();
    const size_t n_val = size_t(std::floor(double(n) * val_fraction));
    const size_t n_train = n - n_val;
    const auto train = write_split(out, "train", stream, 0, n_train, size_t(shard_tokens), vocab);
    const auto val = write_split(out, "val", stream, n_train, n, size_t(shard_tokens), vocab);
    std::printf("tokenize: %zu files, %llu bytes -> %zu train tokens, %zu val tokens (%s, vocab %llu) in %s: %s%s%s\n",
                files.size(), static_cast<unsigned long long>(bytes), n_train, n_val, bpe ? "GPT-2 BPE" : "byte-level",
                static_cast<unsigned long long>(vocab), out.c_str(), list_names(train).c_str(), val.empty() ? "" : ", ",
                val.empty() ? "" : list_names(val).c_str());
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
