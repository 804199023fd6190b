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
// vocabulary has 257 entries and tokens are stored as uint16. GPT-2 BPE shards (tokenize --bpe, src/data/bpe.h)
// have vocabulary 50257 (end of text 50256), also uint16.
//
// Shards written by other tools are read too (data.format):
//   llm.c    header of 256 little-endian int32 (1024 bytes): [0] magic 20240520, [1] version 1, [2] token
//            count; then the tokens as uint16. No vocabulary is recorded: model.vocab bounds the tokens.
//   nanoGPT  raw little-endian uint16 tokens, no header (token count = file size / 2); model.vocab bounds them.
//   auto     MPTTOKEN or the llm.c magic decide; a raw nanoGPT file must be named (data.format=nanogpt).
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

enum class ShardFormat { Auto, Mptrain, Llmc, Nanogpt };
inline constexpr uint32_t kLlmcMagic = 20240520;
inline constexpr size_t kLlmcHeaderBytes = 1024;
// "auto" | "mptrain" | "llmc" | "nanogpt"; std::invalid_argument for anything else.
ShardFormat parse_shard_format(const std::string& name);
// Reads a token file in `format`. `vocab` bounds the tokens of llm.c and nanoGPT files, which record no
// vocabulary (model.vocab; 0: 65536, any uint16), and is their TokenShard::vocab; an mptrain shard is
// bounded by its own header. Throws InputError naming the file, the field and, for a token out of
// range, its index.
TokenShard read_tokens_file(const std::string& path, ShardFormat format, uint64_t vocab = 0);
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
TokenStream load_token_stream(const std::vector<std::string>& paths, ShardFormat format = ShardFormat::Auto,
                              uint64_t vocab = 0);

// Byte-level encoding of documents: bytes as tokens, kEndOfText after each document.
std::vector<int32_t> encode_bytes(const std::vector<std::string>& documents);
std::string decode_bytes(const std::vector<int32_t>& tokens);  // kEndOfText -> "\n<|endoftext|>\n"

// `mptrain tokenize --out DIR [--bpe BPE_DIR] [--val-fraction F] [--shard-tokens N] FILE...`: each input
// file (plain or .gz) is one document; writes DIR/train-NNNNN.bin and DIR/val-00000.bin (the last F of
// the tokens), byte-level or GPT-2 BPE. `mptrain tokenize --decode [--bpe BPE_DIR] [--format F] --out FILE
// SHARD...`: the text back. Returns the exit code (2 for bad input).
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
