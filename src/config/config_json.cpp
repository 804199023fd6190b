// Config text and merging: strict JSON parsing, unknown-key suggestions, merging with provenance and the
// --set overrides (src/config/config_json.h).
#include "src/config/config_json.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <sstream>

#include "src/config/config.h"
#include "src/core/check.h"

namespace mpt::config_detail {

std::string join_path(const std::string& prefix, const std::string& key) {
  return prefix.empty() ? key : prefix + "." + key;
}

// Short, one-line rendering of a value for "got ..." in messages.
std::string describe(const json& v) {
  auto clip = [](std::string s) { return s.size() > 60 ? s.substr(0, 57) + "..." : s; };
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "boolean " + v.dump();
    case json::value_t::string: return "string " + clip(v.dump());
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
    case json::value_t::number_float: return "number " + v.dump();
    case json::value_t::array: return "array " + clip(v.dump());
    case json::value_t::object: return "object";
    default: return v.type_name();
  }
}

// Whole numbers print without ".0" so that integer ranges read naturally ("in [0, 2]").
std::string num_str(double x) {
  if (x == std::trunc(x) && std::fabs(x) < 1e15) return std::to_string(int64_t(x));
  return json(x).dump();
}
namespace {

// ---- suggestions for unknown keys

// Optimal string alignment distance: a swapped pair of letters counts as one edit, the commonest typo.
size_t edit_distance(const std::string& a, const std::string& b) {
  const size_t n = a.size(), m = b.size();
  std::vector<std::vector<size_t>> d(n + 1, std::vector<size_t>(m + 1));
  for (size_t i = 0; i <= n; ++i) d[i][0] = i;
  for (size_t j = 0; j <= m; ++j) d[0][j] = j;
  for (size_t i = 1; i <= n; ++i)
    for (size_t j = 1; j <= m; ++j) {
      const size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  return d[n][m];
}

std::string lower(std::string s) {
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

void collect_paths(const json& shape, const std::string& prefix, std::vector<std::string>& out) {
  for (auto it = shape.begin(); it != shape.end(); ++it) {
    const std::string p = join_path(prefix, it.key());
    out.push_back(p);
    if (it->is_object()) collect_paths(*it, p, out);
  }
}

// Closest known keys to `path`, compared on the last name; a key under another parent costs one edit
// more, so a sibling wins a tie but "train.lr" still finds "optimizer.lr".
std::vector<std::string> closest_keys(const std::string& path, const std::vector<std::string>& known) {
  auto split_last = [](const std::string& p) {
    const size_t dot = p.rfind('.');
    return dot == std::string::npos ? std::make_pair(std::string(), p)
                                    : std::make_pair(p.substr(0, dot), p.substr(dot + 1));
  };
  const auto [parent, name] = split_last(path);
  const std::string lname = lower(name);
  const size_t limit = lname.size() <= 3 ? 1 : lname.size() <= 6 ? 2 : 3;
  size_t best = limit + 1;
  std::vector<std::string> hits;
  for (const std::string& k : known) {
    const auto [kparent, kname] = split_last(k);
    const size_t d = edit_distance(lname, lower(kname)) + (kparent == parent ? 0 : 1);
    if (d < best) {
      best = d;
      hits.clear();
    }
    if (d == best && d <= limit) hits.push_back(k);
  }
  if (hits.size() > 3) hits.resize(3);
  return hits;
}

const std::vector<std::string>& known_paths() {
  static const std::vector<std::string> k = [] {
    std::vector<std::string> out;
    collect_paths(default_config_json(), "", out);
    return out;
  }();
  return k;
}

// ---- strict JSON text parsing

// nlohmann keeps the last of two equal keys without a word; a config that says lr twice is a mistake,
// so the parse callback tracks where it is and rejects the second one. It also stops a document nested
// deeper than any config can be (the deepest key is 3 levels down): without the limit a 100,000-level
// document costs memory quadratic in its depth before any key is checked.
constexpr int kMaxConfigDepth = 32;
class DuplicateKeyCheck {
 public:
  // `base`: the key path the parsed text sits at ("" for a file, the key of a --set).
  DuplicateKeyCheck(std::string file, std::string base) : file_(std::move(file)), base_(std::move(base)) {}
  bool operator()(int depth, json::parse_event_t ev, json& parsed) {
    if (depth > kMaxConfigDepth)
      throw InputError(file_, child_path(), "nested more than " + std::to_string(kMaxConfigDepth) + " levels deep");
    switch (ev) {
      case json::parse_event_t::object_start: frames_.push_back({false, child_path(), {}, {}, 0}); break;
      case json::parse_event_t::array_start: frames_.push_back({true, child_path(), {}, {}, 0}); break;
      case json::parse_event_t::key: {
        Frame& f = frames_.back();
        f.key = parsed.get<std::string>();
        if (!f.keys.insert(f.key).second) throw InputError(file_, join_path(f.path, f.key), "duplicate key");
        break;
      }
      case json::parse_event_t::object_end:
      case json::parse_event_t::array_end:
        frames_.pop_back();
        next_element();
        break;
      case json::parse_event_t::value: next_element(); break;
    }
    return true;
  }

 private:
  struct Frame {
    bool array;
    std::string path;
    std::set<std::string> keys;
    std::string key;
    size_t index;
  };
  std::string child_path() const {
    if (frames_.empty()) return base_;
    const Frame& f = frames_.back();
    return f.array ? f.path + "[" + std::to_string(f.index) + "]" : join_path(f.path, f.key);
  }
  void next_element() {
    if (!frames_.empty() && frames_.back().array) ++frames_.back().index;
  }
  std::string file_, base_;
  std::vector<Frame> frames_;
};

// RFC 3629 UTF-8: no overlong forms, no surrogates, nothing past U+10FFFF.
bool valid_utf8(const std::string& s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  for (size_t i = 0; i < n;) {
    const unsigned c = p[i];
    size_t len;
    unsigned cp;
    if (c < 0x80) { ++i; continue; }
    if (c >= 0xC2 && c <= 0xDF) len = 2, cp = c & 0x1F;
    else if (c >= 0xE0 && c <= 0xEF) len = 3, cp = c & 0x0F;
    else if (c >= 0xF0 && c <= 0xF4) len = 4, cp = c & 0x07;
    else return false;
    if (i + len > n) return false;
    for (size_t k = 1; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (p[i + k] & 0x3F);
    }
    if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
      return false;
    i += len;
  }
  return true;
}

// nlohmann messages start with "[json.exception.<kind>.<id>] "; the reader needs only the rest.
std::string strip_json_prefix(const std::string& what) {
  const size_t close = what.rfind("] ", 40);
  return what.rfind("[json.exception.", 0) == 0 && close != std::string::npos ? what.substr(close + 2) : what;
}
}  // namespace

std::string unknown_key_message(const std::string& path, const std::vector<std::string>& known) {
  const std::vector<std::string> hits = closest_keys(path, known);
  if (hits.empty()) return "unknown key";
  std::string s = "unknown key (did you mean ";
  for (size_t i = 0; i < hits.size(); ++i) s += (i == 0 ? "" : i + 1 == hits.size() ? " or " : ", ") + hits[i];
  return s + "?)";
}

json parse_json_text(const std::string& text, const std::string& file) {
  try {
    return json::parse(text, DuplicateKeyCheck(file, ""));
  } catch (const json::parse_error& e) {
    // e.byte is 1-based and points at the character that broke the parse.
    const size_t upto = std::min(text.size(), e.byte > 0 ? size_t(e.byte - 1) : size_t(0));
    size_t line = 1, col_start = 0;
    for (size_t i = 0; i < upto; ++i)
      if (text[i] == '\n') ++line, col_start = i + 1;
    std::string detail = e.what();
    const size_t col_pos = detail.find("column ");
    const size_t sep = col_pos == std::string::npos ? std::string::npos : detail.find(": ", col_pos);
    if (sep != std::string::npos) detail = detail.substr(sep + 2);
    throw InputError(file, "",
                     "JSON syntax error at line " + std::to_string(line) + ", column " +
                         std::to_string(upto - col_start + 1) + " (byte " + std::to_string(e.byte) + "): " + detail);
  } catch (const json::out_of_range& e) {
    // A number past double's range (1e400) lands here, without a position.
    throw InputError(file, "", std::string("JSON number out of range: ") + strip_json_prefix(e.what()));
  }
}

// Overlays src on dst. `shape` is the matching defaults subtree: it, not dst, says what is an object,
// so a leaf that a file wrongly set to an object never becomes a place to merge into.
void merge(json& dst, const json& shape, const json& src, const std::string& prefix, int source, Provenance& prov) {
  const std::string& file = prov.names[size_t(source)];
  if (!src.is_object()) throw InputError(file, prefix, "expected object, got " + describe(src));
  for (auto it = src.begin(); it != src.end(); ++it) {
    const std::string path = join_path(prefix, it.key());
    if (!shape.contains(it.key())) throw InputError(file, path, unknown_key_message(path, known_paths()));
    const json& sub = shape.at(it.key());
    if (sub.is_object()) {
      merge(dst[it.key()], sub, *it, path, source, prov);
    } else {
      dst[it.key()] = *it;
      prov.set_by[path] = source;
    }
  }
}

void apply_override(json& doc, const std::string& ov, int source, Provenance& prov) {
  const std::string& file = prov.names[size_t(source)];
  const size_t eq = ov.find('=');
  if (eq == std::string::npos) throw InputError(file, "", "expected key.path=value (no '=')");
  const std::string key = ov.substr(0, eq), text = ov.substr(eq + 1);
  if (key.empty()) throw InputError(file, "", "expected key.path=value (empty key path)");

  std::vector<std::string> parts;
  for (size_t start = 0;;) {
    const size_t dot = key.find('.', start);
    parts.push_back(key.substr(start, dot == std::string::npos ? std::string::npos : dot - start));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  const json* shape = &default_config_json();
  json* target = &doc;
  std::string path;
  for (const std::string& part : parts) {
    if (part.empty()) throw InputError(file, key, "empty name in key path");
    if (!shape->is_object()) {
      if (shape->is_array())
        throw InputError(file, key, path + " is an array; set it whole, e.g. " + path + "=[...]");
      throw InputError(file, key, "unknown key (" + path + " is not an object)");
    }
    path = join_path(path, part);
    if (!shape->contains(part)) throw InputError(file, path, unknown_key_message(path, known_paths()));
    shape = &shape->at(part);
    target = &(*target)[part];
  }

  // Anything that is not valid JSON is a plain string, so --set data.dir=/x/y needs no quotes. The JSON
  // parser checks UTF-8 itself; the plain string must be checked here, or it would break the first
  // serialisation of the config (checkpoint headers, metrics).
  json value;
  try {
    value = json::parse(text, DuplicateKeyCheck(file, key));
  } catch (const json::parse_error&) {
    if (!valid_utf8(text)) throw InputError(file, key, "the value is not valid UTF-8");
    value = text;
  } catch (const json::out_of_range& e) {
    throw InputError(file, key, std::string("number out of range: ") + strip_json_prefix(e.what()));
  }
  if (shape->is_object()) {
    merge(*target, *shape, value, key, source, prov);
  } else {
    *target = std::move(value);
    prov.set_by[key] = source;
  }
}

}  // namespace mpt::config_detail
