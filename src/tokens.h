// Token shards: the on-disk format of language-model training data, the text -> shard converter
// (byte-level vocabulary) and a synthetic shard generator for benchmarks.
//
// Shard file (little-endian):
//   offset 0   char[8]  magic "MPTTOKEN"
//          8   uint32   version (1)
//         12   uint32   bytes per token (1, 2 or 4: uint8, uint16, uint32)
//         16   uint64   token count
//         24   uint64   vocabulary size (every token is < this)
//         32   32 bytes reserved (zero)
//         64   tokens
// Byte-level vocabulary: token = byte value (0..255) and 256 = end of text between documents, so the
// vocabulary has 257 entries and tokens are stored as uint16.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mpt {

inline constexpr int kByteVocab = 257;
inline constexpr int32_t kEndOfText = 256;

struct TokenShard {
  std::string path;
  uint64_t vocab = 0;
  std::vector<int32_t> tokens;
};

// Throws InputError naming the file and the header field (magic, version, bytes per token, token count,
// vocabulary size) for a bad or truncated shard, or the first token >= vocab.
TokenShard read_token_shard(const std::string& path);
// Atomic (temporary file + rename). bytes_per_token is chosen from vocab (<=256: 1, <=65536: 2, else 4).
void write_token_shard(const std::string& path, const std::vector<int32_t>& tokens, uint64_t vocab);

// Expands a shard list: each entry is a file path or a glob pattern ('*', '?'; sorted). Throws InputError
// (file = the pattern, field = `field`) when an entry matches nothing.
std::vector<std::string> expand_shard_paths(const std::vector<std::string>& entries, const std::string& field);

// All tokens of the listed shards, concatenated in order; vocab is the largest shard vocabulary.
struct TokenStream {
  uint64_t vocab = 0;
  std::vector<int32_t> tokens;
};
TokenStream load_token_stream(const std::vector<std::string>& paths);

// Byte-level encoding of documents: bytes as tokens, kEndOfText after each document.
std::vector<int32_t> encode_bytes(const std::vector<std::string>& documents);
std::string decode_bytes(const std::vector<int32_t>& tokens);  // kEndOfText -> "\n<|endoftext|>\n"

// `mptrain tokenize --out DIR [--val-fraction F] [--shard-tokens N] FILE...`: each input file (plain or
// .gz) is one document; writes DIR/train-NNNNN.bin and DIR/val-00000.bin (the last F of the tokens).
// Returns the exit code (2 for bad input).
int tokenize_command(int argc, char** argv);
// `mptrain synth-tokens --out FILE --tokens N [--vocab V] [--seed S]`: random tokens with a Zipf-like
// frequency profile, for benchmarks where the text does not matter.
int synth_tokens_command(int argc, char** argv);

// Disjoint windows of seq_len + 1 tokens for language-model training. Window w covers tokens
// [w * seq_len, w * seq_len + seq_len] (inputs are the first seq_len, targets the last seq_len), so
// consecutive windows share one token and every token except the first is a target exactly once.
class TokenWindows {
 public:
  TokenWindows(const TokenStream* s, int seq_len);
  int64_t count() const { return count_; }
  // inputs [seq_len] and targets [seq_len] of window w.
  void get(int64_t w, int32_t* inputs, int32_t* targets) const;
  int seq_len() const { return seq_len_; }

 private:
  const TokenStream* s_;
  int seq_len_;
  int64_t count_;
};

}  // namespace mpt
