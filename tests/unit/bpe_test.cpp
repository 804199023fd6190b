// GPT-2 byte-level BPE (src/data/bpe.h): character classes, pre-tokenization, the byte alphabet, merges by rank
// on a small vocabulary built here, file validation, and (when launch/setup.sh has put GPT-2's files in
// .data/gpt2-bpe) known token ids and round trips on GPT-2's own vocabulary.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "src/data/bpe.h"
#include "src/core/check.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using mpt::BpeTokenizer;
using mpt::CharClass;

namespace {

std::string utf8(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += char(cp);
  } else if (cp < 0x800) {
    s += char(0xC0 | (cp >> 6)), s += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    s += char(0xE0 | (cp >> 12)), s += char(0x80 | ((cp >> 6) & 0x3F)), s += char(0x80 | (cp & 0x3F));
  } else {
    s += char(0xF0 | (cp >> 18)), s += char(0x80 | ((cp >> 12) & 0x3F)), s += char(0x80 | ((cp >> 6) & 0x3F));
    s += char(0x80 | (cp & 0x3F));
  }
  return s;
}

// Raw bytes -> how the files write them (the byte alphabet, UTF-8).
std::string in_alphabet(const std::string& raw) {
  std::string s;
  for (const char c : raw) s += utf8(mpt::bpe_byte_to_code_point(static_cast<unsigned char>(c)));
  return s;
}

// A vocabulary of the 256 byte tokens (id = byte), one token per merge in order, then <|endoftext|>.
struct SmallVocab {
  std::string encoder, merges;
};
SmallVocab small_vocab(const std::vector<std::pair<std::string, std::string>>& merges) {
  nlohmann::json j = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) j[in_alphabet(std::string(1, char(b)))] = b;
  SmallVocab v;
  v.merges = "#version: 0.2\n";
  int id = 256;
  for (const auto& [l, r] : merges) {
    j[in_alphabet(l + r)] = id++;
    v.merges += in_alphabet(l) + " " + in_alphabet(r) + "\n";
  }
  j["<|endoftext|>"] = id;
  v.encoder = j.dump();
  return v;
}

// Ids 256.. in order: "bc" (rank 0) before "ab" (rank 1); " w"; "xx" then "xxx" (from "xx" + "x").
const std::vector<std::pair<std::string, std::string>> kMerges = {
    {"b", "c"}, {"a", "b"}, {" ", "w"}, {"x", "x"}, {"xx", "x"}};
BpeTokenizer small_tokenizer() {
  const SmallVocab v = small_vocab(kMerges);
  return BpeTokenizer::from_strings(v.encoder, v.merges);
}

// Random text: ASCII words and punctuation, whitespace runs (tabs, newlines, no-break and ideographic
// spaces, line separator), accented and combining characters, CJK, emoji and any other code point.
std::string random_utf8(mpt::Rng& r, size_t n) {
  static const uint32_t spaces[] = {' ', ' ', ' ', '\t', '\n', '\r', 0xA0, 0x3000, 0x2028, 0x85};
  static const char* contractions[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'"};
  std::string s;
  while (s.size() < n) {
    switch (r.below(10)) {
      case 0: case 1: s += char('a' + r.below(26)); break;
      case 2: s += char('0' + r.below(10)); break;
      case 3: s += utf8(spaces[r.below(std::size(spaces))]); break;
      case 4: s += char("!?.,;:-()\"*"[r.below(11)]); break;
      case 5: s += contractions[r.below(std::size(contractions))]; break;
      case 6: s += utf8(uint32_t(0xC0 + r.below(0x250 - 0xC0))); if (r.below(3) == 0) s += utf8(uint32_t(0x300 + r.below(0x70))); break;
      case 7: s += utf8(uint32_t(0x4E00 + r.below(0x5000))); break;
      case 8: s += utf8(uint32_t(0x1F300 + r.below(0x700))); break;
      default: {
        uint32_t cp;
        do cp = uint32_t(0x80 + r.below(0x110000 - 0x80)); while (cp >= 0xD800 && cp <= 0xDFFF);
        s += utf8(cp);
      }
    }
  }
  return s;
}

// MPT_BPE_DIR overrides the build's default (the checkout's .data/gpt2-bpe).
std::string bpe_dir() {
  if (const char* d = std::getenv("MPT_BPE_DIR")) return d;
  return MPT_BPE_DIR_DEFAULT;
}

// GPT-2's tokenizer, loaded once; nullptr (the test skips) when the files are absent.
const BpeTokenizer* gpt2() {
  static const BpeTokenizer* t = [] () -> const BpeTokenizer* {
    const std::string d = bpe_dir();
    if (!fs::exists(d + "/encoder.json") || !fs::exists(d + "/vocab.bpe")) return nullptr;
    return new BpeTokenizer(BpeTokenizer::load(d));
  }();
  return t;
}
#define NEED_GPT2()                                                                                          \
  if (!gpt2()) GTEST_SKIP() << "GPT-2 BPE files not found in " << bpe_dir() << " (run launch/setup.sh with npm)"

#define EXPECT_LOAD_ERROR(enc, mer, field_substr, what_substr)                                                \
  do {                                                                                                        \
    try {                                                                                                     \
      BpeTokenizer::from_strings(enc, mer, "E.json", "M.bpe");                                                \
      ADD_FAILURE() << "no error; expected " << what_substr;                                                  \
    } catch (const mpt::InputError& e) {                                                                      \
      EXPECT_NE(std::string(e.field()).find(field_substr), std::string::npos) << e.what();                   \
      EXPECT_NE(std::string(e.what()).find(what_substr), std::string::npos) << e.what();                     \
    }                                                                                                         \
  } while (0)

}  // namespace

TEST(BpeUnicode, CharacterClasses) {
  const std::vector<std::pair<uint32_t, CharClass>> cases = {
      {'A', CharClass::Letter},    {'z', CharClass::Letter},   {0xE9, CharClass::Letter},   // e acute
      {0x4E2D, CharClass::Letter}, {0x20000, CharClass::Letter}, {0x3B1, CharClass::Letter},  // CJK, ext B, alpha
      {'7', CharClass::Number},    {0x663, CharClass::Number}, {0x216B, CharClass::Number}, {0xBD, CharClass::Number},
      {' ', CharClass::Space},     {'\t', CharClass::Space},   {0x85, CharClass::Space},    {0xA0, CharClass::Space},
      {0x3000, CharClass::Space},  {0x2028, CharClass::Space}, {0x1C, CharClass::Other},    {0x1F, CharClass::Other},
      {0x301, CharClass::Other},   {0x1F600, CharClass::Other}, {'_', CharClass::Other},   {'\'', CharClass::Other},
      {0xFEFF, CharClass::Other},  {0x10FFFF, CharClass::Other}, {0xAD, CharClass::Other}};
  for (const auto& [cp, want] : cases) EXPECT_EQ(int(mpt::char_class(cp)), int(want)) << std::hex << "U+" << cp;
}

TEST(BpePretokenize, KnownSplits) {
  // Expected pieces from the reference pattern in Python's `regex` module.
  const std::vector<std::pair<std::string, std::vector<std::string>>> cases = {
      {"Hello world's  end", {"Hello", " world", "'s", " ", " end"}},
      {"a  \tb\n\n c ", {"a", "  ", "\t", "b", "\n\n", " c", " "}},
      {"x'LL y'll 're", {"x", "'", "LL", " y", "'ll", " '", "re"}},
      {"12ab 3.5 !!?  ", {"12", "ab", " 3", ".", "5", " !!?", "  "}},
      {"\u4e2d\u6587 \U0001F600\U0001F600 e\u0301", {"\u4e2d\u6587", " \U0001F600\U0001F600", " e", "\u0301"}},
      {"\u3000x\u00a0 y", {"\u3000", "x", "\u00a0", " y"}},
      {"  ", {"  "}},
      {"", {}},
  };
  for (const auto& [text, want] : cases) {
    std::vector<std::string> got;
    for (const auto p : mpt::bpe_pretokenize(text)) got.emplace_back(p);
    EXPECT_EQ(got, want) << text;
  }
}

TEST(BpePretokenize, PiecesCoverRandomBytesExactly) {
  mpt::Rng r = mpt::test::fresh_rng();
  for (int c = 0; c < 200; ++c) {
    std::string s = random_utf8(r, 1 + r.below(200));
    if (c % 2) s[r.below(s.size())] = char(0x80 + r.below(0x80));  // invalid UTF-8 somewhere
    std::string joined;
    for (const auto p : mpt::bpe_pretokenize(s)) {
      ASSERT_FALSE(p.empty());
      ASSERT_EQ(p.data(), s.data() + joined.size());
      joined += p;
    }
    EXPECT_EQ(joined, s);
  }
}

TEST(BpeAlphabet, PrintableBytesStandForThemselvesTheRestFollow0x100) {
  std::vector<bool> used(0x144, false);
  uint32_t next = 0x100;
  for (int b = 0; b < 256; ++b) {
    const uint32_t cp = mpt::bpe_byte_to_code_point(uint8_t(b));
    const bool printable = (b > ' ' && b < 0x7F) || (b >= 0xA1 && b != 0xAD);
    EXPECT_EQ(cp, printable ? uint32_t(b) : next++) << "byte " << b;
    ASSERT_LT(cp, 0x144u);
    EXPECT_FALSE(used[cp]) << "two bytes share U+" << std::hex << cp;
    used[cp] = true;
  }
  EXPECT_EQ(mpt::bpe_byte_to_code_point(' '), 0x120u);
  EXPECT_EQ(mpt::bpe_byte_to_code_point('\n'), 0x10Au);
}

TEST(BpeMerges, LowestRankFirstNotLeftmost) {
  const BpeTokenizer t = small_tokenizer();
  EXPECT_EQ(t.vocab_size(), 262);
  EXPECT_EQ(t.end_of_text(), 261);
  // "bc" has rank 0, "ab" rank 1: a merge by position would give [ab, c] = [257, 99].
  EXPECT_EQ(t.encode("abc"), (std::vector<int32_t>{97, 256}));
  EXPECT_EQ(t.encode("ab"), (std::vector<int32_t>{257}));
  // Every occurrence of the best pair in one left-to-right pass: xxxxx -> xx xx x -> xx xxx.
  EXPECT_EQ(t.encode("xxxxx"), (std::vector<int32_t>{259, 260}));
  EXPECT_EQ(t.encode("xxxx"), (std::vector<int32_t>{259, 259}));
  // The space before a word belongs to the word's piece: " w" merges; without the rule it would not.
  EXPECT_EQ(t.encode("a w"), (std::vector<int32_t>{97, 258}));
  EXPECT_EQ(t.encode("a  w"), (std::vector<int32_t>{97, 32, 258}));
  // Merges never cross pieces: "b" + "c" across a space stay apart.
  EXPECT_EQ(t.encode("b c"), (std::vector<int32_t>{98, 32, 99}));
  EXPECT_EQ(t.decode({97, 256, 261, 258}), "abc<|endoftext|> w");
  EXPECT_THROW(t.decode({262}), std::out_of_range);
}

TEST(BpeMerges, RandomBytesRoundTrip) {
  const BpeTokenizer t = small_tokenizer();
  mpt::Rng r = mpt::test::fresh_rng();
  for (int c = 0; c < 300; ++c) {
    std::string s(r.below(300), '\0');
    for (auto& ch : s) ch = r.below(2) ? "abcxw "[r.below(6)] : char(r.below(256));
    const auto ids = t.encode(s);
    for (const int32_t id : ids) ASSERT_LT(id, t.end_of_text());
    EXPECT_EQ(t.decode(ids), s);
  }
}

TEST(BpeFiles, ClearErrors) {
  const SmallVocab v = small_vocab(kMerges);
  EXPECT_LOAD_ERROR("{\"a\": 1", v.merges, "json", "not valid JSON");
  EXPECT_LOAD_ERROR("[1, 2]", v.merges, "vocabulary", "expected a JSON object");
  EXPECT_LOAD_ERROR("{\"a\": {\"b\": 1}}", v.merges, "vocabulary", "nested");
  nlohmann::json j = nlohmann::json::parse(v.encoder);
  auto with = [&](const std::string& key, const nlohmann::json& val) {
    nlohmann::json k = j;
    k[key] = val;
    return k.dump();
  };
  auto without = [&](const std::string& key) {
    nlohmann::json k = j;
    k.erase(key);
    return k.dump();
  };
  EXPECT_LOAD_ERROR(with("<|endoftext|>", "x"), v.merges, "token '<|endoftext|>'", "must be an integer");
  EXPECT_LOAD_ERROR(with("<|endoftext|>", 5), v.merges, "token '", "id 5 is used twice");
  EXPECT_LOAD_ERROR(with("<|endoftext|>", 4000), v.merges, "token '<|endoftext|>'", "outside [0, 262)");
  EXPECT_LOAD_ERROR(with("\t", 261), v.merges, "token", "U+0009 is not in the byte-level alphabet");
  nlohmann::json no_a = j;
  no_a.erase("a");
  no_a["\u0143\u0143"] = 97;  // keeps the ids dense
  EXPECT_LOAD_ERROR(no_a.dump(), v.merges, "vocabulary", "byte 0x61 is missing");
  nlohmann::json no_eot = j;
  no_eot.erase("<|endoftext|>");
  no_eot["zz"] = 261;
  EXPECT_LOAD_ERROR(no_eot.dump(), v.merges, "vocabulary", "<|endoftext|> is missing");
  EXPECT_LOAD_ERROR(without("a"), v.merges, "token '<|endoftext|>'", "id 261 is outside [0, 261)");  // ids not dense
  EXPECT_LOAD_ERROR(v.encoder, v.merges + "a  b\n", "line 7", "two tokens separated by one space");
  EXPECT_LOAD_ERROR(v.encoder, v.merges + "ab\n", "line 7", "two tokens separated by one space");
  EXPECT_LOAD_ERROR(v.encoder, v.merges + "a q\n", "line 7", "the merged token is not in E.json");
  EXPECT_LOAD_ERROR(v.encoder, v.merges + "b c\n", "line 7", "listed twice");
  // The loaders name the file they read.
  const std::string missing = "/nonexistent-" + std::to_string(mpt::test::fresh_rng().next());
  try {
    BpeTokenizer::load(missing);
    ADD_FAILURE() << "loading from a missing directory succeeded";
  } catch (const mpt::InputError& e) {
    EXPECT_EQ(e.file(), missing + "/encoder.json");
    EXPECT_EQ(e.field(), "open");
  }
}

// ---------------------------------------------------------------- GPT-2's vocabulary

TEST(BpeGpt2, Vocabulary) {
  NEED_GPT2();
  EXPECT_EQ(gpt2()->vocab_size(), 50257);
  EXPECT_EQ(gpt2()->end_of_text(), 50256);
  EXPECT_EQ(gpt2()->merge_count(), 50000u);
  EXPECT_EQ(gpt2()->token_bytes(50256), "<|endoftext|>");
}

// Ids from the gpt-3-encoder npm package's own encoder (node), not from this implementation.
TEST(BpeGpt2, KnownIds) {
  NEED_GPT2();
  const std::vector<std::pair<std::string, std::vector<int32_t>>> cases = {
      {"Hello world", {15496, 995}},
      {" world", {995}},
      {"world", {6894}},
      {"I can't believe it's not butter. We've got 12345 reasons; they'll say I'd agree, you're right, I'm sure.",
       {40, 460, 470, 1975, 340, 338, 407, 9215, 13, 775, 1053, 1392, 17031, 2231, 3840, 26, 484, 1183, 910, 314, 1549,
        4236, 11, 345, 821, 826, 11, 314, 1101, 1654, 13}},
      {"Numbers: 3.14159, 2024-05-20, 1,000,000 and 007!!!",
       {49601, 25, 513, 13, 1415, 19707, 11, 48609, 12, 2713, 12, 1238, 11, 352, 11, 830, 11, 830, 290, 3571, 22, 10185}},
      {"Punctuation runs?!... --- *** ((()))", {47, 16260, 2288, 4539, 12248, 986, 11420, 17202, 14808, 3419, 4008}},
      {"Multiple   spaces    here  and\ttabs\t\tand\n\nnewlines\n  trailing   ",
       {31217, 220, 220, 9029, 220, 220, 220, 994, 220, 290, 197, 8658, 82, 197, 197, 392, 198, 198, 3605, 6615, 198, 220,
        25462, 220, 220, 220}},
      {"Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u2013 \u201cquotes\u201d \u2014 \u65e5\u672c\u8a9e\u306e\u30c6\u30ad"
       "\u30b9\u30c8 \u4e2d\u6587 \U0001F600\U0001F389 \u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac "
       "\u0440\u0443\u0441\u0441\u043a\u0438\u0439",
       {34, 1878, 2634, 41492, 40560, 16345, 2634, 784, 564, 250, 421, 6421, 447, 251, 851, 10545, 245, 98, 17312,
        105, 45739, 252, 5641, 24336, 25084, 43302, 220, 40792, 23877, 229, 30325, 222, 8582, 236, 231, 7377, 243,
        39377, 39377, 138, 115, 26180, 29945, 43000, 138, 105, 220, 21169, 35072, 21727, 21727, 31583, 18849, 140, 117}},
      {"  leading spaces and a trailing newline\n", {220, 3756, 9029, 290, 257, 25462, 649, 1370, 198}},
      {"e\u0301 combining marks a\u0308\u0323 n\u0303o", {68, 136, 223, 19771, 8849, 257, 136, 230, 136, 96, 299, 136, 225, 78}},
      {"'s 'S 'll 'LL don't DON'T o'clock rock'n'roll",
       {338, 705, 50, 705, 297, 705, 3069, 836, 470, 23917, 6, 51, 267, 6, 15750, 3881, 6, 77, 6, 2487}},
      {"The quick brown fox jumps over the lazy dog.", {464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13}},
      {"Roman \u216b, half \u00bd, Arabic-Indic \u0663\u0664, superscript x\u00b2",
       {32454, 2343, 227, 104, 11, 2063, 25208, 11, 17526, 12, 5497, 291, 18923, 96, 149, 97, 11, 22754, 6519, 2124, 31185}},
      {"full\u3000width\u3000space and no\u00a0break", {12853, 5099, 222, 10394, 5099, 222, 13200, 290, 645, 1849, 9032}},
  };
  for (const auto& [text, want] : cases) {
    EXPECT_EQ(gpt2()->encode(text), want) << text;
    EXPECT_EQ(gpt2()->decode(want), text);
  }
}

TEST(BpeGpt2, RoundTrip) {
  NEED_GPT2();
  const std::vector<std::string> fixed = {
      "", " ", "\n", "\t\t  \n \r\n", "trailing spaces   ", "emoji \U0001F468\u200D\U0001F469\u200D\U0001F467 family",
      "\u6f22\u5b57\u304b\u306a\u4ea4\u3058\u308a", "a\u0308\u0323\u0301\u0302 stacked marks", "it's we'll THEY'RE",
      "1234567890 3.14 -0.5e10", "<|endoftext|> is text here"};
  for (const auto& s : fixed) EXPECT_EQ(gpt2()->decode(gpt2()->encode(s)), s) << s;
  mpt::Rng r = mpt::test::fresh_rng();
  for (int c = 0; c < 300; ++c) {
    const std::string s = random_utf8(r, 1 + r.below(400));
    const auto ids = gpt2()->encode(s);
    EXPECT_LE(ids.size(), s.size());
    EXPECT_EQ(gpt2()->decode(ids), s);
  }
  // Not UTF-8 at all: byte-level BPE still encodes every byte.
  std::string raw(2000, '\0');
  for (auto& ch : raw) ch = char(r.below(256));
  EXPECT_EQ(gpt2()->decode(gpt2()->encode(raw)), raw);
}

// The merge loop against a plain implementation written from the description in src/data/bpe.h (repeat: find
// the adjacent pair of lowest rank, merge all its occurrences left to right), on GPT-2's files.
TEST(BpeGpt2, SameIdsAsPlainMergeLoop) {
  NEED_GPT2();
  std::map<std::string, int32_t> ids;
  std::map<std::pair<std::string, std::string>, int> ranks;
  {
    std::ifstream f(bpe_dir() + "/encoder.json");
    const nlohmann::json j = nlohmann::json::parse(f);
    std::map<std::string, std::string> raw_of;  // alphabet text -> raw byte
    for (int b = 0; b < 256; ++b) raw_of[utf8(mpt::bpe_byte_to_code_point(uint8_t(b)))] = std::string(1, char(b));
    auto to_raw = [&](const std::string& s) {
      std::string out;
      for (size_t i = 0; i < s.size();) {
        const size_t len = (static_cast<unsigned char>(s[i]) < 0x80) ? 1 : 2;  // the alphabet is below U+0800
        out += raw_of.at(s.substr(i, len));
        i += len;
      }
      return out;
    };
    for (auto it = j.begin(); it != j.end(); ++it) ids[to_raw(it.key())] = it.value().get<int32_t>();
    std::ifstream m(bpe_dir() + "/vocab.bpe");
    std::string line;
    std::getline(m, line);  // #version
    while (std::getline(m, line)) {
      const size_t sp = line.find(' ');
      if (sp == std::string::npos) continue;
      ranks[{to_raw(line.substr(0, sp)), to_raw(line.substr(sp + 1))}] = int(ranks.size());
    }
  }
  auto plain = [&](std::string_view piece) {
    std::vector<std::string> w;
    for (const char c : piece) w.emplace_back(1, c);
    for (;;) {
      int best = -1;
      std::pair<std::string, std::string> pair;
      for (size_t i = 0; i + 1 < w.size(); ++i) {
        const auto it = ranks.find({w[i], w[i + 1]});
        if (it != ranks.end() && (best < 0 || it->second < best)) best = it->second, pair = it->first;
      }
      if (best < 0) break;
      std::vector<std::string> next;
      for (size_t i = 0; i < w.size(); ++i) {
        if (i + 1 < w.size() && w[i] == pair.first && w[i + 1] == pair.second) {
          next.push_back(w[i] + w[i + 1]);
          ++i;
        } else {
          next.push_back(w[i]);
        }
      }
      w = std::move(next);
    }
    std::vector<int32_t> out;
    for (const auto& s : w) out.push_back(ids.at(s));
    return out;
  };
  mpt::Rng r = mpt::test::fresh_rng();
  for (int c = 0; c < 100; ++c) {
    const std::string s = random_utf8(r, 1 + r.below(300));
    std::vector<int32_t> want;
    for (const auto p : mpt::bpe_pretokenize(s)) {
      const auto v = plain(p);
      want.insert(want.end(), v.begin(), v.end());
    }
    EXPECT_EQ(gpt2()->encode(s), want) << s;
  }
}
