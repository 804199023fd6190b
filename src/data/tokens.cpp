#include "src/data/tokens.h"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string_view>

#include <fcntl.h>
#include <glob.h>
#include <sys/stat.h>
#include <unistd.h>

#include "src/core/check.h"
#include "src/core/rng.h"

namespace mpt {

namespace {

constexpr char kShardMagic[8] = {'M', 'P', 'T', 'T', 'O', 'K', 'E', 'N'};
constexpr uint32_t kShardVersion = 1;
constexpr size_t kShardHeaderBytes = 64;
// Tokens are converted between the file's width and int32 in chunks of this many, so that neither
// reading nor writing needs a second full-size copy of a shard.
constexpr size_t kChunkTokens = size_t(1) << 20;

uint64_t get_le(const uint8_t* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
void put_le(uint8_t* p, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) p[i] = uint8_t(v >> (8 * i));
}

uint32_t bytes_for_vocab(uint64_t vocab) { return vocab <= 256 ? 1 : (vocab <= 65536 ? 2 : 4); }

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
using FilePtr = std::unique_ptr<std::FILE, FileCloser>;

// Temporary file in the destination's directory (so rename stays on one file system), flushed to the
// disk before it replaces the destination: a crash leaves either the old file or the new one.
void write_file_atomically(const std::string& path, const std::string& field, const uint8_t* head, size_t head_len,
                           const std::function<bool(std::FILE*)>& body) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw InputError(path, field, std::string("cannot create temporary file: ") + std::strerror(errno));
  bool ok = std::fwrite(head, 1, head_len, f) == head_len && body(f);
  ok = ok && std::fflush(f) == 0 && ::fsync(fileno(f)) == 0;
  const int saved = errno;
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) {
    std::remove(tmp.c_str());
    throw InputError(path, field, std::string("write failed: ") + std::strerror(saved ? saved : EIO));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    std::remove(tmp.c_str());
    throw InputError(path, field, std::string("cannot rename into place: ") + std::strerror(e));
  }
  // The rename itself is only durable once the directory entry is on disk; best effort.
  const std::string dir = std::filesystem::path(path).parent_path().string();
  const int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

// count tokens of bpt bytes from f into out; a token >= vocab is refused under `field`, naming its index
// and `limit` (what bounds it).
void read_payload(std::FILE* f, const std::string& path, uint64_t count, uint32_t bpt, uint64_t vocab,
                  const char* field, const std::string& limit, std::vector<int32_t>& out) {
  out.resize(size_t(count));
  std::vector<uint8_t> buf(kChunkTokens * bpt);
  for (uint64_t done = 0; done < count;) {
    const size_t n = size_t(std::min<uint64_t>(kChunkTokens, count - done));
    if (std::fread(buf.data(), bpt, n, f) != n)
      throw InputError(path, "token count", "read failed after " + std::to_string(done) + " tokens");
    for (size_t i = 0; i < n; ++i) {
      const uint64_t t = get_le(buf.data() + i * bpt, int(bpt));
      if (t >= vocab)
        throw InputError(path, field, "token " + std::to_string(t) + " at index " + std::to_string(done + i) +
                                          " is >= " + limit);
      out[size_t(done) + i] = int32_t(t);
    }
    done += n;
  }
}

bool has_glob_chars(const std::string& s) { return s.find_first_of("*?[") != std::string::npos; }


}  // namespace

// ---- shard files

TokenShard read_token_shard(const std::string& path) {
  FilePtr f(std::fopen(path.c_str(), "rb"));
  if (!f) throw InputError(path, "open", std::string("cannot open token shard: ") + std::strerror(errno));
  struct stat st{};
  if (::fstat(fileno(f.get()), &st) != 0 || !S_ISREG(st.st_mode))
    throw InputError(path, "open", "not a regular file");
  const uint64_t file_size = uint64_t(st.st_size);

  uint8_t h[kShardHeaderBytes];
  const size_t got = std::fread(h, 1, kShardHeaderBytes, f.get());
  if (got < 8 || std::memcmp(h, kShardMagic, 8) != 0)
    throw InputError(path, "magic", got < 8 ? "file too short for a token shard header"
                                            : "not a token shard (expected magic \"MPTTOKEN\")");
  if (got < kShardHeaderBytes)
    throw InputError(path, "header", "truncated: " + std::to_string(got) + " of " +
                                         std::to_string(kShardHeaderBytes) + " header bytes");
  const uint32_t version = uint32_t(get_le(h + 8, 4));
  if (version != kShardVersion)
    throw InputError(path, "version", "unsupported version " + std::to_string(version) + " (expected 1)");
  const uint32_t bpt = uint32_t(get_le(h + 12, 4));
  if (bpt != 1 && bpt != 2 && bpt != 4)
    throw InputError(path, "bytes per token", "must be 1, 2 or 4, found " + std::to_string(bpt));
  const uint64_t count = get_le(h + 16, 8);
  const uint64_t vocab = get_le(h + 24, 8);
  if (vocab == 0) throw InputError(path, "vocabulary size", "is 0");
  // Tokens are held as int32 in memory.
  if (vocab > (uint64_t(1) << 31))
    throw InputError(path, "vocabulary size", std::to_string(vocab) + " exceeds 2^31");
  if (bytes_for_vocab(vocab) > bpt)
    throw InputError(path, "bytes per token",
                     std::to_string(bpt) + " cannot hold tokens of vocabulary size " + std::to_string(vocab));
  const uint64_t payload = file_size - kShardHeaderBytes;
  if (count > payload / bpt)
    throw InputError(path, "token count", "file truncated: header says " + std::to_string(count) +
                                              " tokens but only " + std::to_string(payload / bpt) + " are present");
  if (count * bpt != payload)
    throw InputError(path, "token count", "file has " + std::to_string(payload - count * bpt) +
                                              " bytes beyond the " + std::to_string(count) + " tokens the header lists");

  TokenShard s;
  s.path = path;
  s.vocab = vocab;
  read_payload(f.get(), path, count, bpt, vocab, "vocabulary size", "vocabulary size " + std::to_string(vocab), s.tokens);
  return s;
}

ShardFormat parse_shard_format(const std::string& name) {
  if (name == "auto") return ShardFormat::Auto;
  if (name == "mptrain") return ShardFormat::Mptrain;
  if (name == "llmc") return ShardFormat::Llmc;
  if (name == "nanogpt") return ShardFormat::Nanogpt;
  throw std::invalid_argument("unknown token shard format '" + name + "' (auto, mptrain, llmc or nanogpt)");
}

TokenShard read_tokens_file(const std::string& path, ShardFormat format, uint64_t vocab) {
  if (format == ShardFormat::Mptrain) return read_token_shard(path);
  FilePtr f(std::fopen(path.c_str(), "rb"));
  if (!f) throw InputError(path, "open", std::string("cannot open token file: ") + std::strerror(errno));
  struct stat st{};
  if (::fstat(fileno(f.get()), &st) != 0 || !S_ISREG(st.st_mode))
    throw InputError(path, "open", "not a regular file");
  const uint64_t file_size = uint64_t(st.st_size);
  uint8_t head[8] = {};
  const size_t got = std::fread(head, 1, sizeof head, f.get());
  const bool own = got == 8 && std::memcmp(head, kShardMagic, 8) == 0;
  const bool llmc = got >= 4 && get_le(head, 4) == kLlmcMagic;
  if (format == ShardFormat::Auto) {
    if (own) return read_token_shard(path);
    if (!llmc)
      throw InputError(path, "magic", "neither an mptrain shard (magic \"MPTTOKEN\") nor an llm.c shard (magic 20240520); "
                                      "if it is a raw uint16 token file (nanoGPT's .bin), set data.format=nanogpt");
    format = ShardFormat::Llmc;
  }
  // llm.c and nanoGPT files record no vocabulary; the model's bounds their tokens.
  const uint64_t limit = vocab == 0 ? 65536 : std::min<uint64_t>(vocab, 65536);
  const std::string limit_desc = vocab == 0 ? "65536" : "model.vocab " + std::to_string(vocab);
  TokenShard s;
  s.path = path;
  s.vocab = limit;
  uint64_t count = 0;
  if (format == ShardFormat::Llmc) {
    if (!llmc)
      throw InputError(path, "magic", own ? "an mptrain shard, not an llm.c one (set data.format=auto or mptrain)"
                                          : "not an llm.c token shard (expected magic 20240520)");
    uint8_t h[kLlmcHeaderBytes];
    std::memcpy(h, head, got);
    const size_t rest = std::fread(h + got, 1, kLlmcHeaderBytes - got, f.get());
    if (got + rest < kLlmcHeaderBytes)
      throw InputError(path, "header", "truncated: " + std::to_string(got + rest) + " of " +
                                           std::to_string(kLlmcHeaderBytes) + " header bytes");
    const int32_t version = int32_t(uint32_t(get_le(h + 4, 4)));
    if (version != 1)
      throw InputError(path, "version", "unsupported llm.c shard version " + std::to_string(version) +
                                            " (expected 1: uint16 tokens)");
    const int32_t n = int32_t(uint32_t(get_le(h + 8, 4)));
    if (n < 0) throw InputError(path, "token count", "is negative (" + std::to_string(n) + ")");
    count = uint64_t(n);
    const uint64_t payload = file_size - kLlmcHeaderBytes;
    if (count > payload / 2)
      throw InputError(path, "token count", "file truncated: header says " + std::to_string(count) +
                                                " tokens but only " + std::to_string(payload / 2) + " are present");
    if (count * 2 != payload)
      throw InputError(path, "token count", "file has " + std::to_string(payload - count * 2) +
                                                " bytes beyond the " + std::to_string(count) + " tokens the header lists");
  } else {
    if (own || llmc)
      throw InputError(path, "magic", std::string("starts with the magic of ") + (own ? "an mptrain" : "an llm.c") +
                                          " shard, not raw nanoGPT tokens (set data.format=auto)");
    if (file_size % 2 != 0)
      throw InputError(path, "file size", "odd size " + std::to_string(file_size) +
                                              ": a nanoGPT .bin file holds 2-byte (uint16) tokens");
    count = file_size / 2;
    if (std::fseek(f.get(), 0, SEEK_SET) != 0) throw InputError(path, "open", "cannot seek");
  }
  read_payload(f.get(), path, count, 2, limit, "tokens", limit_desc, s.tokens);
  return s;
}

void write_token_shard(const std::string& path, const std::vector<int32_t>& tokens, uint64_t vocab) {
  if (vocab == 0 || vocab > (uint64_t(1) << 31))
    throw InputError(path, "vocabulary size", "must be in [1, 2^31], got " + std::to_string(vocab));
  for (size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] < 0 || uint64_t(tokens[i]) >= vocab)
      throw InputError(path, "vocabulary size", "token " + std::to_string(tokens[i]) + " at index " +
                                                    std::to_string(i) + " is outside [0, " + std::to_string(vocab) + ")");
  const uint32_t bpt = bytes_for_vocab(vocab);
  uint8_t h[kShardHeaderBytes] = {};
  std::memcpy(h, kShardMagic, 8);
  put_le(h + 8, kShardVersion, 4);
  put_le(h + 12, bpt, 4);
  put_le(h + 16, tokens.size(), 8);
  put_le(h + 24, vocab, 8);
  write_file_atomically(path, "tokens", h, sizeof h, [&](std::FILE* f) {
    std::vector<uint8_t> buf(kChunkTokens * bpt);
    for (size_t done = 0; done < tokens.size();) {
      const size_t n = std::min(kChunkTokens, tokens.size() - done);
      for (size_t i = 0; i < n; ++i) put_le(buf.data() + i * bpt, uint32_t(tokens[done + i]), int(bpt));
      if (std::fwrite(buf.data(), bpt, n, f) != n) return false;
      done += n;
    }
    return true;
  });
}

std::vector<std::string> expand_shard_paths(const std::vector<std::string>& entries, const std::string& field) {
  std::vector<std::string> out;
  for (const auto& e : entries) {
    if (!has_glob_chars(e)) {
      struct stat st{};
      if (::stat(e.c_str(), &st) != 0) throw InputError(e, field, "no such file");
      out.push_back(e);
      continue;
    }
    glob_t g{};
    const int rc = ::glob(e.c_str(), GLOB_NOSORT, nullptr, &g);
    std::vector<std::string> matches;
    if (rc == 0)
      for (size_t i = 0; i < g.gl_pathc; ++i) matches.emplace_back(g.gl_pathv[i]);
    globfree(&g);
    if (rc == GLOB_NOMATCH || (rc == 0 && matches.empty())) throw InputError(e, field, "pattern matches no file");
    if (rc != 0) throw InputError(e, field, "cannot expand pattern (read error)");
    // Byte order rather than glob's locale collation, so every rank and machine sees the same order.
    std::sort(matches.begin(), matches.end());
    out.insert(out.end(), matches.begin(), matches.end());
  }
  return out;
}

TokenStream load_token_stream(const std::vector<std::string>& paths, ShardFormat format, uint64_t vocab) {
  TokenStream s;
  for (const auto& p : paths) {
    TokenShard sh = read_tokens_file(p, format, vocab);
    s.vocab = std::max(s.vocab, sh.vocab);
    if (s.tokens.empty()) {
      s.tokens = std::move(sh.tokens);
    } else {
      s.tokens.insert(s.tokens.end(), sh.tokens.begin(), sh.tokens.end());
    }
  }
  return s;
}

// ---- byte-level encoding

std::vector<int32_t> encode_bytes(const std::vector<std::string>& documents) {
  size_t n = 0;
  for (const auto& d : documents) n += d.size() + 1;
  std::vector<int32_t> t;
  t.reserve(n);
  for (const auto& d : documents) {
    for (const char c : d) t.push_back(int32_t(static_cast<unsigned char>(c)));
    t.push_back(kEndOfText);
  }
  return t;
}

std::string decode_bytes(const std::vector<int32_t>& tokens) {
  std::string s;
  s.reserve(tokens.size());
  for (const int32_t t : tokens) {
    if (t >= 0 && t < 256) {
      s.push_back(char(static_cast<unsigned char>(t)));
    } else if (t == kEndOfText) {
      s += "\n<|endoftext|>\n";
    } else {
      // A model with a padded vocabulary can emit ids outside the byte vocabulary; show them rather than
      // fail, as U+FFFD (the Unicode replacement character).
      s += "\xEF\xBF\xBD";
    }
  }
  return s;
}

// ---- windows

TokenWindows::TokenWindows(const TokenStream* s, int seq_len) : s_(s), seq_len_(seq_len), count_(0) {
  if (!s) throw std::invalid_argument("TokenWindows: null token stream");
  if (seq_len <= 0) throw std::invalid_argument("TokenWindows: seq_len must be positive");
  const int64_t n = int64_t(s->tokens.size());
  count_ = n > 0 ? (n - 1) / seq_len : 0;
}

void TokenWindows::get(int64_t w, int32_t* inputs, int32_t* targets) const {
  if (w < 0 || w >= count_)
    throw std::out_of_range("TokenWindows: window " + std::to_string(w) + " of " + std::to_string(count_));
  const int32_t* t = s_->tokens.data() + w * seq_len_;
  std::memcpy(inputs, t, size_t(seq_len_) * sizeof(int32_t));
  std::memcpy(targets, t + 1, size_t(seq_len_) * sizeof(int32_t));
}


}  // namespace mpt
