#include "src/data/bpe.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <queue>
#include <sstream>
#include <stdexcept>

#include "src/core/check.h"

namespace mpt {
namespace {

using json = nlohmann::json;

struct Range {
  uint32_t first, last;
  uint8_t cls;
};
constexpr Range kRanges[] = {
#include "src/data/unicode_tables.inc"
};

constexpr uint32_t kInvalid = 0xFFFFFFFFu;  // a byte that is not part of valid UTF-8

// One code point of UTF-8 at p (n bytes available): its value and length. Overlong forms, surrogates,
// values above U+10FFFF and cut sequences are invalid: the first byte alone, as kInvalid.
uint32_t next_code_point(const unsigned char* p, size_t n, size_t* len) {
  *len = 1;
  const unsigned c = p[0];
  if (c < 0x80) return c;
  int extra;
  uint32_t v, min;
  if (c >= 0xC2 && c <= 0xDF) extra = 1, v = c & 0x1F, min = 0x80;
  else if (c >= 0xE0 && c <= 0xEF) extra = 2, v = c & 0x0F, min = 0x800;
  else if (c >= 0xF0 && c <= 0xF4) extra = 3, v = c & 0x07, min = 0x10000;
  else return kInvalid;
  if (size_t(extra) >= n) return kInvalid;
  for (int k = 1; k <= extra; ++k) {
    if ((p[k] & 0xC0) != 0x80) return kInvalid;
    v = (v << 6) | (p[k] & 0x3F);
  }
  if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return kInvalid;
  *len = size_t(extra) + 1;
  return v;
}

// Printable Latin-1 bytes stand for themselves; the rest (controls, space, DEL, U+0080..U+00A0, the soft
// hyphen U+00AD) are given U+0100 onwards in byte order, so that every token is printable text.
struct ByteAlphabet {
  uint32_t to_cp[256];
  int16_t to_byte[0x144];
  ByteAlphabet() {
    std::fill(std::begin(to_byte), std::end(to_byte), int16_t(-1));
    uint32_t next = 0x100;
    for (unsigned b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      to_cp[b] = printable ? b : next++;
      to_byte[to_cp[b]] = int16_t(b);
    }
  }
};
const ByteAlphabet& alphabet() {
  static const ByteAlphabet a;
  return a;
}

// A token as written in the files (byte alphabet, UTF-8) -> the raw bytes; false if a character is
// outside the alphabet or the text is not UTF-8.
bool alphabet_to_bytes(std::string_view s, std::string* out, std::string* bad) {
  out->clear();
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  for (size_t i = 0; i < s.size();) {
    size_t len;
    const uint32_t cp = next_code_point(p + i, s.size() - i, &len);
    if (cp == kInvalid) {
      *bad = "invalid UTF-8";
      return false;
    }
    if (cp >= 0x144 || alphabet().to_byte[cp] < 0) {
      char b[64];
      std::snprintf(b, sizeof b, "U+%04X is not in the byte-level alphabet", unsigned(cp));
      *bad = b;
      return false;
    }
    out->push_back(char(alphabet().to_byte[cp]));
    i += len;
  }
  return true;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw InputError(path, "open", std::string("cannot open: ") + std::strerror(errno) +
                                       " (launch/setup.sh puts GPT-2's BPE files in .data/gpt2-bpe)");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw InputError(path, "read", "read failed");
  return ss.str();
}

std::string shown(std::string_view s) {
  std::string q = "'";
  for (const char c : s.substr(0, 40)) q += (static_cast<unsigned char>(c) < 0x20) ? '?' : c;
  return q + (s.size() > 40 ? "...'" : "'");
}

constexpr size_t kCacheMaxPiece = 64;         // longer pieces are rare and not worth keeping
constexpr size_t kCacheMaxEntries = 1 << 20;

}  // namespace

CharClass char_class(uint32_t cp) {
  if (cp < 0x80) {  // fast path for ASCII, same answers as the table
    if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z')) return CharClass::Letter;
    if (cp >= '0' && cp <= '9') return CharClass::Number;
    if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D)) return CharClass::Space;
    return CharClass::Other;
  }
  const Range* end = std::end(kRanges);
  const Range* r = std::upper_bound(std::begin(kRanges), end, cp, [](uint32_t v, const Range& x) { return v < x.first; });
  if (r == std::begin(kRanges)) return CharClass::Other;
  --r;
  return cp <= r->last ? CharClass(r->cls) : CharClass::Other;
}

uint32_t bpe_byte_to_code_point(uint8_t b) { return alphabet().to_cp[b]; }

namespace {

// Calls f(piece) for each piece of text in order.
template <class F>
void for_each_piece(std::string_view text, F&& f) {
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  struct Char {
    uint32_t cp;
    size_t len;
    CharClass cls;
  };
  auto at = [&](size_t i) -> Char {
    size_t len;
    const uint32_t cp = next_code_point(p + i, n - i, &len);
    return {cp, len, cp == kInvalid ? CharClass::Other : char_class(cp)};
  };
  // End of the run of characters of class c that starts at i.
  auto run_end = [&](size_t i, CharClass c) {
    while (i < n) {
      const Char ch = at(i);
      if (ch.cls != c) break;
      i += ch.len;
    }
    return i;
  };

  for (size_t i = 0; i < n;) {
    const Char cur = at(i);
    size_t end = 0;
    // 's 't 're 've 'm 'll 'd (case-sensitive)
    if (cur.cp == '\'' && i + 1 < n) {
      const char a = text[i + 1], b = i + 2 < n ? text[i + 2] : '\0';
      if (a == 's' || a == 't' || a == 'm' || a == 'd') end = i + 2;
      else if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) end = i + 3;
    }
    // ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+': one optional U+0020, then a run of one class.
    if (!end) {
      size_t j = i;
      Char c = cur;
      if (cur.cp == ' ' && i + 1 < n) j = i + 1, c = at(j);
      if (c.cls != CharClass::Space) end = run_end(j, c.cls);
    }
    // '\s+(?!\S)' then '\s+': a whitespace run leaves its last character to the piece that follows it,
    // unless the run ends the text or is one character long.
    if (!end) {
      size_t j = i, last = i;
      while (j < n) {
        const Char c = at(j);
        if (c.cls != CharClass::Space) break;
        last = j;
        j += c.len;
      }
      end = (j == n || last == i) ? j : last;
    }
    f(text.substr(i, end - i));
    i = end;
  }
}

}  // namespace

std::vector<std::string_view> bpe_pretokenize(std::string_view text) {
  std::vector<std::string_view> pieces;
  for_each_piece(text, [&](std::string_view s) { pieces.push_back(s); });
  return pieces;
}

BpeTokenizer BpeTokenizer::load(const std::string& dir) {
  const std::string enc = dir + "/encoder.json", mer = dir + "/vocab.bpe";
  const std::string enc_text = read_file(enc);
  const std::string mer_text = read_file(mer);
  return from_strings(enc_text, mer_text, enc, mer);
}

BpeTokenizer BpeTokenizer::from_strings(const std::string& encoder_json, const std::string& merges,
                                        const std::string& enc_name, const std::string& mer_name) {
  BpeTokenizer t;
  json vocab;
  try {
    // A flat object: anything nested is refused before it is built.
    vocab = json::parse(encoder_json, [&](int depth, json::parse_event_t ev, json&) {
      if (depth > 0 && (ev == json::parse_event_t::object_start || ev == json::parse_event_t::array_start))
        throw InputError(enc_name, "vocabulary", "values must be token ids, found a nested object or array");
      return true;
    });
  } catch (const json::parse_error& e) {
    throw InputError(enc_name, "json", std::string("not valid JSON: ") + e.what());
  }
  if (!vocab.is_object())
    throw InputError(enc_name, "vocabulary", "expected a JSON object {\"token\": id, ...}");
  const size_t n = vocab.size();
  if (n < 257 || n > (size_t(1) << 31))
    throw InputError(enc_name, "vocabulary", "has " + std::to_string(n) +
                                                 " tokens; needs the 256 byte tokens and <|endoftext|>");
  t.bytes_.assign(n, std::string());
  std::vector<bool> seen(n, false);
  std::unordered_map<std::string, int32_t> ids;
  ids.reserve(n);
  std::string raw, bad;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const json& v = it.value();
    if (!v.is_number_integer())
      throw InputError(enc_name, "token " + shown(it.key()), "id must be an integer, found " + std::string(v.type_name()));
    const int64_t id = v.get<int64_t>();
    if (id < 0 || uint64_t(id) >= n)
      throw InputError(enc_name, "token " + shown(it.key()),
                       "id " + std::to_string(id) + " is outside [0, " + std::to_string(n) + ")");
    if (seen[size_t(id)]) throw InputError(enc_name, "token " + shown(it.key()), "id " + std::to_string(id) + " is used twice");
    seen[size_t(id)] = true;
    if (it.key().empty()) throw InputError(enc_name, "vocabulary", "empty token (id " + std::to_string(id) + ")");
    if (!alphabet_to_bytes(it.key(), &raw, &bad)) throw InputError(enc_name, "token " + shown(it.key()), bad);
    t.bytes_[size_t(id)] = raw;
    ids[raw] = int32_t(id);
  }
  if (ids.size() != n) throw InputError(enc_name, "vocabulary", "two tokens stand for the same bytes");
  for (unsigned b = 0; b < 256; ++b) {
    const auto it = ids.find(std::string(1, char(b)));
    if (it == ids.end()) {
      char m[64];
      std::snprintf(m, sizeof m, "the token of byte 0x%02X is missing", b);
      throw InputError(enc_name, "vocabulary", m);
    }
    t.byte_token_[b] = it->second;
  }
  const auto eot = ids.find("<|endoftext|>");
  if (eot == ids.end()) throw InputError(enc_name, "vocabulary", "the token <|endoftext|> is missing");
  t.eot_ = eot->second;

  // vocab.bpe: an optional "#version" first line, then "left right" per line, rank = order.
  std::string left, right;
  size_t line_no = 0, pos = 0;
  while (pos < merges.size()) {
    size_t nl = merges.find('\n', pos);
    if (nl == std::string::npos) nl = merges.size();
    std::string_view line(merges.data() + pos, nl - pos);
    pos = nl + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty() || (line_no == 1 && line[0] == '#')) continue;
    const std::string field = "line " + std::to_string(line_no);
    const size_t sp = line.find(' ');
    if (sp == 0 || sp == std::string_view::npos || sp + 1 == line.size() || line.find(' ', sp + 1) != std::string_view::npos)
      throw InputError(mer_name, field, "expected two tokens separated by one space, found " + shown(line));
    if (!alphabet_to_bytes(line.substr(0, sp), &left, &bad) || !alphabet_to_bytes(line.substr(sp + 1), &right, &bad))
      throw InputError(mer_name, field, bad + " in " + shown(line));
    const auto l = ids.find(left), r = ids.find(right), m = ids.find(left + right);
    const char* missing = l == ids.end() ? "its left token" : r == ids.end() ? "its right token"
                                                            : m == ids.end() ? "the merged token" : nullptr;
    if (missing)
      throw InputError(mer_name, field, "merge " + shown(line) + ": " + missing + " is not in " + enc_name);
    const uint64_t key = (uint64_t(uint32_t(l->second)) << 32) | uint32_t(r->second);
    if (!t.merges_.emplace(key, Merge{int32_t(t.merges_.size()), m->second}).second)
      throw InputError(mer_name, field, "merge " + shown(line) + " is listed twice");
  }
  return t;
}

void BpeTokenizer::encode_piece(std::string_view piece, std::vector<int32_t>& out) const {
  if (piece.size() <= kCacheMaxPiece) {
    const auto it = cache_.find(std::string(piece));
    if (it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  // Symbols in a doubly linked list; candidate merges in a heap ordered by (rank, position). Taking the
  // lowest rank and, among equal ranks (the same pair), the leftmost first gives the same result as
  // merging every occurrence of the best pair in one left-to-right pass, in O(n log n).
  const int n = int(piece.size());
  std::vector<int32_t> id(static_cast<size_t>(n));
  std::vector<int> prev(static_cast<size_t>(n)), next(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    id[size_t(i)] = byte_token_[static_cast<unsigned char>(piece[size_t(i)])];
    prev[size_t(i)] = i - 1;
    next[size_t(i)] = i + 1 < n ? i + 1 : -1;
  }
  struct Cand {
    int32_t rank;
    int pos;
    int32_t left, right, result;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
  auto consider = [&](int a) {
    if (a < 0 || next[size_t(a)] < 0) return;
    const int b = next[size_t(a)];
    const auto it = merges_.find((uint64_t(uint32_t(id[size_t(a)])) << 32) | uint32_t(id[size_t(b)]));
    if (it != merges_.end()) heap.push({it->second.rank, a, id[size_t(a)], id[size_t(b)], it->second.result});
  };
  for (int i = 0; i + 1 < n; ++i) consider(i);
  std::vector<bool> dead(static_cast<size_t>(n), false);
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    const int a = c.pos, b = next[size_t(a)];
    // Stale when a neighbour has been merged away since the candidate was pushed.
    if (dead[size_t(a)] || b < 0 || id[size_t(a)] != c.left || id[size_t(b)] != c.right) continue;
    id[size_t(a)] = c.result;
    dead[size_t(b)] = true;
    next[size_t(a)] = next[size_t(b)];
    if (next[size_t(a)] >= 0) prev[size_t(next[size_t(a)])] = a;
    consider(prev[size_t(a)]);
    consider(a);
  }
  const size_t start = out.size();
  for (int i = 0; i >= 0 && n > 0; i = next[size_t(i)]) out.push_back(id[size_t(i)]);
  if (piece.size() <= kCacheMaxPiece) {
    if (cache_.size() >= kCacheMaxEntries) cache_.clear();
    cache_.emplace(std::string(piece), std::vector<int32_t>(out.begin() + std::ptrdiff_t(start), out.end()));
  }
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 1);
  for_each_piece(text, [&](std::string_view piece) { encode_piece(piece, out); });
  return out;
}

const std::string& BpeTokenizer::token_bytes(int32_t id) const {
  if (id < 0 || id >= vocab_size())
    throw std::out_of_range("token " + std::to_string(id) + " is outside the vocabulary of " +
                            std::to_string(vocab_size()));
  return bytes_[size_t(id)];
}

std::string BpeTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string s;
  for (const int32_t i : ids) s += token_bytes(i);
  return s;
}

}  // namespace mpt
