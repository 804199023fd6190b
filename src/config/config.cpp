// Config loading: defaults (default_config_json, the only place they live), then the file, then the
// `--set` overrides in order, then type checks and validation while the structs are filled.
// Every value remembers which source set it last, so a message names the file or the --set that is wrong.
#include "src/config/config.h"

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

#include "src/core/check.h"

namespace mpt {

using json = nlohmann::json;

const json& default_config_json() {
  static const json d = {
      {"model",
       {{"type", "mlp"},
        {"input_dim", 784},
        {"hidden", json::array({256, 256})},
        {"num_classes", 10},
        {"activation", "gelu"},
        {"layernorm", false},
        {"init_std", 0.0},
        {"n_layer", 2},
        {"n_head", 2},
        {"n_embd", 64},
        {"seq_len", 64},
        {"vocab", 257},
        {"init_from", ""}}},
      {"data",
       {{"dataset", "fashion-mnist"},
        {"dir", "/usr/share/datasets/fashion-mnist"},
        {"train_limit", 0},
        {"test_limit", 0},
        {"train_shards", json::array()},
        {"val_shards", json::array()},
        {"format", "auto"}}},
      {"precision", {{"mode", "auto"}, {"layers", json::array()}, {"fallback", "auto"}}},
      {"loss_scale",
       {{"enabled", "auto"},
        {"init", 65536.0},
        {"growth_factor", 2.0},
        {"backoff_factor", 0.5},
        {"growth_interval", 2000},
        {"min", 1.0},
        {"max", 16777216.0},
        {"hysteresis", 1}}},
      {"optimizer",
       {{"lr", 1e-3},
        {"beta1", 0.9},
        {"beta2", 0.999},
        {"eps", 1e-8},
        {"weight_decay", 0.0},
        {"warmup_steps", 0},
        {"schedule", "cosine"},
        {"min_lr", 0.0},
        {"clip_norm", 1.0}}},
      {"zero", {{"stage", 2}, {"bucket_mb", 25.0}}},
      {"train",
       {{"batch_size", 64},
        {"grad_accum", 1},
        {"epochs", 1},
        {"steps", 0},
        {"seed", uint64_t{1234}},
        {"eval_each_epoch", true},
        {"eval_every", 0},
        {"eval_batches", 0}}},
      {"log", {{"every", 50}, {"metrics", ""}, {"quiet", false}}},
      {"checkpoint", {{"dir", ""}, {"every_steps", 0}, {"resume", true}, {"keep_last", 0},
                      {"fallback_to_previous", false}}},
      {"debug", {{"inject_inf_step", -1}, {"inject_inf_rank", 0}, {"check_consistency", false}}},
      {"watchdog", {{"timeout_s", 60}}},
      {"monitor",
       {{"enabled", true},
        {"window", 100},
        {"min_history", 20},
        {"spike_zscore", 6.0},
        {"on_loss_spike", "log"},
        {"on_grad_spike", "log"},
        {"on_nan_loss", "skip"},
        {"max_overflow_rate", 0.5},
        {"on_overflow_rate", "fallback"},
        {"min_scale_patience", 50},
        {"on_min_scale", "fallback"},
        {"recover_after", 0},
        {"max_recoveries", 2}}},
      {"device", "auto"},
      {"cpu", {{"gemm", "own"}, {"threads", 0}}},
  };
  return d;
}

namespace {

// Help text, in struct order. A test checks that this table and default_config_json() name the same keys.
struct KeyDoc {
  const char* path;
  const char* text;
};
const KeyDoc kKeyDocs[] = {
    {"model.type", "model family: mlp | gpt2"},
    {"model.input_dim", "MLP input features (784 for 28x28 images)"},
    {"model.hidden", "MLP hidden layer widths, each >= 1; [] gives a linear classifier"},
    {"model.num_classes", "output classes (>= 2)"},
    {"model.activation", "hidden activation: gelu | relu"},
    {"model.layernorm", "LayerNorm after each hidden Linear, before the activation"},
    {"model.init_std", "std of the Linear weight init; 0: PyTorch's default, uniform +-1/sqrt(fan_in)"},
    {"model.n_layer", "gpt2: transformer blocks (>= 1)"},
    {"model.n_head", "gpt2: attention heads; n_embd / n_head must be 16, 32, 64 or 128"},
    {"model.n_embd", "gpt2: model width C"},
    {"model.seq_len", "gpt2: context length T (position embeddings)"},
    {"model.vocab", "gpt2: vocabulary size (padded to a multiple of 128 internally)"},
    {"model.init_from", "gpt2: safetensors file with Hugging Face GPT-2 names to start from; \"\": random init"},
    {"data.dataset", "dataset: fashion-mnist | tokens (token shards, for gpt2)"},
    {"data.dir", "directory of {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz"},
    {"data.train_limit", "use the first N training examples; 0: all"},
    {"data.test_limit", "use the first N test examples; 0: all"},
    {"data.train_shards", "tokens: training shard files or glob patterns"},
    {"data.val_shards", "tokens: validation shard files or glob patterns"},
    {"data.format", "tokens: shard format: auto (by magic: MPTTOKEN or llm.c's 20240520) | mptrain | llmc | nanogpt (raw uint16)"},
    {"precision.mode", "compute precision: fp32 | tf32 | fp16 | bf16 | auto"},
    {"precision.layers", "per-layer dtype: [{\"pattern\": glob (* ?), \"dtype\": fp32|fp16|bf16}], last match wins"},
    {"precision.fallback", "precision after a stability fallback: auto (bf16 if supported, else fp32) | bf16 | fp32 | none"},
    {"loss_scale.enabled", "dynamic loss scaling: auto (on for fp16 only) | on | off"},
    {"loss_scale.init", "initial scale S, min <= init <= max"},
    {"loss_scale.growth_factor", "S *= growth_factor after growth_interval clean steps (> 1)"},
    {"loss_scale.backoff_factor", "S *= backoff_factor on overflow (0 < f < 1)"},
    {"loss_scale.growth_interval", "clean steps before S grows (>= 1)"},
    {"loss_scale.min", "lower bound for S (> 0)"},
    {"loss_scale.max", "upper bound for S (>= min)"},
    {"loss_scale.hysteresis", "overflowing steps tolerated before S backs off (>= 1)"},
    {"optimizer.lr", "peak AdamW learning rate (> 0)"},
    {"optimizer.beta1", "AdamW first-moment decay, [0, 1)"},
    {"optimizer.beta2", "AdamW second-moment decay, [0, 1)"},
    {"optimizer.eps", "AdamW denominator epsilon (> 0)"},
    {"optimizer.weight_decay", "decoupled weight decay on weight matrices only (>= 0)"},
    {"optimizer.warmup_steps", "linear learning-rate warm-up steps (>= 0)"},
    {"optimizer.schedule", "after warm-up: cosine (down to min_lr) | constant"},
    {"optimizer.min_lr", "cosine floor, 0 <= min_lr <= lr"},
    {"optimizer.clip_norm", "clip the global gradient norm to this; 0: no clipping"},
    {"zero.stage", "ZeRO stage: 0 | 1 (shard optimizer state) | 2 (and gradients)"},
    {"zero.bucket_mb", "gradient communication bucket size in MiB (> 0)"},
    {"train.batch_size", "examples per rank per micro-batch (>= 1)"},
    {"train.grad_accum", "micro-batches per optimizer step (>= 1)"},
    {"train.epochs", "passes over the training set (>= 1)"},
    {"train.steps", "> 0: stop after this many steps (overrides epochs); 0: use epochs"},
    {"train.seed", "seed for init and data order (unsigned 64-bit)"},
    {"train.eval_each_epoch", "evaluate on the test set after each epoch"},
    {"train.eval_every", "> 0: also evaluate (validation loss) every N steps"},
    {"train.eval_batches", "> 0: at most N micro-batches per evaluation; 0: the whole set"},
    {"log.every", "progress line every N steps, rank 0 (>= 1)"},
    {"log.metrics", "JSONL metrics file (README: Metrics file); an earlier run's file there is moved aside, a resumed run appends; \"\": none"},
    {"log.quiet", "no banner, progress or evaluation lines; the summary stays"},
    {"checkpoint.dir", "checkpoint directory; \"\": no checkpoints"},
    {"checkpoint.every_steps", "also save every N steps; 0: at the end of each epoch only"},
    {"checkpoint.resume", "resume from <dir>/latest when present"},
    {"checkpoint.keep_last", "keep only the newest K checkpoint files (0: keep all)"},
    {"checkpoint.fallback_to_previous", "a damaged latest checkpoint: resume from the newest intact one instead of stopping"},
    {"debug.inject_inf_step", "put an inf into one rank's gradient at this step; -1: never"},
    {"debug.inject_inf_rank", "the rank that gets the injected inf (>= 0)"},
    {"debug.check_consistency", "compare S and a parameter checksum across ranks every step"},
    {"monitor.enabled", "stability monitor over loss, gradient norm and overflow rate"},
    {"monitor.window", "rolling window in steps (>= 2)"},
    {"monitor.min_history", "clean steps before spike z-scores count (>= 2)"},
    {"monitor.spike_zscore", "z-score above the window mean that is a spike (> 0)"},
    {"monitor.on_loss_spike", "log | skip | fallback | stop"},
    {"monitor.on_grad_spike", "log | skip | fallback | stop"},
    {"monitor.on_nan_loss", "log | skip | fallback | stop"},
    {"monitor.max_overflow_rate", "overflowing fraction of the window that triggers on_overflow_rate, (0, 1]"},
    {"monitor.on_overflow_rate", "log | skip | fallback | stop"},
    {"monitor.min_scale_patience", "fp16: overflowing steps in a row at loss_scale.min that trigger on_min_scale (>= 1)"},
    {"monitor.recover_after", "after a precision fallback: clean steps in a row before the faster precision is tried again (0: never)"},
    {"monitor.max_recoveries", "how many times a run tries the faster precision again (>= 0)"},
    {"monitor.on_min_scale", "log | skip | fallback | stop"},
    {"watchdog.timeout_s", "end the job when a rank waits this long for the others in one collective or one training step; 0: off"},
    {"device", "auto | cuda | cpu"},
    {"cpu.gemm", "CPU ranks' GEMM: own (deterministic, the reference) | blas (OpenBLAS, faster; builds with it)"},
    {"cpu.threads", "BLAS threads per rank; 0: the node's cores / ranks on the node (at least 1)"},
};

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

std::string unknown_key_message(const std::string& path, const std::vector<std::string>& known) {
  const std::vector<std::string> hits = closest_keys(path, known);
  if (hits.empty()) return "unknown key";
  std::string s = "unknown key (did you mean ";
  for (size_t i = 0; i < hits.size(); ++i) s += (i == 0 ? "" : i + 1 == hits.size() ? " or " : ", ") + hits[i];
  return s + "?)";
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

// ---- merging with provenance

struct Provenance {
  std::vector<std::string> names;     // [0]: the config source (and the defaults); [i]: the i-th --set
  std::map<std::string, int> set_by;  // key path -> index of the source that set it last

  // A value inside an array (model.hidden[2]) belongs to whoever set the array.
  int of(std::string path) const {
    for (;;) {
      auto it = set_by.find(path);
      if (it != set_by.end()) return it->second;
      const size_t cut = path.find_last_of(".[");
      if (cut == std::string::npos) return 0;
      path.resize(cut);
    }
  }
  const std::string& file_of(const std::string& path) const { return names[size_t(of(path))]; }
};

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

// ---- typed reads and validation

struct Range {
  double lo, hi;
  bool lo_open, hi_open;
  bool contains(double x) const {
    return (lo_open ? x > lo : x >= lo) && (hi_open ? x < hi : x <= hi);
  }
  std::string text() const {
    const bool has_lo = std::isfinite(lo), has_hi = std::isfinite(hi);
    if (has_lo && has_hi)
      return std::string("in ") + (lo_open ? "(" : "[") + num_str(lo) + ", " + num_str(hi) + (hi_open ? ")" : "]");
    if (has_lo) return (lo_open ? "> " : ">= ") + num_str(lo);
    if (has_hi) return (hi_open ? "< " : "<= ") + num_str(hi);
    return "finite";
  }
};
constexpr double kInf = std::numeric_limits<double>::infinity();
Range at_least(double lo) { return {lo, kInf, false, false}; }
Range above(double lo) { return {lo, kInf, true, false}; }

class Reader {
 public:
  Reader(json& doc, const Provenance& prov) : doc_(doc), prov_(prov) {}

  [[noreturn]] void fail(const std::string& path, const std::string& msg) const {
    throw InputError(prov_.file_of(path), path, msg);
  }
  // A rule that ties two keys is blamed on whichever of them was set last.
  [[noreturn]] void fail_pair(const std::string& path, const std::string& other, const std::string& msg) const {
    const int s = std::max(prov_.of(path), prov_.of(other));
    throw InputError(prov_.names[size_t(s)], path, msg);
  }

  json& node(const std::string& path) {
    json* p = &doc_;
    for (size_t start = 0;;) {
      const size_t dot = path.find('.', start);
      p = &(*p)[path.substr(start, dot == std::string::npos ? std::string::npos : dot - start)];
      if (dot == std::string::npos) return *p;
      start = dot + 1;
    }
  }

  std::string str(const std::string& path) { return as_string(node(path), path); }
  std::string nonempty(const std::string& path) {
    std::string s = str(path);
    if (s.empty()) fail(path, "must not be empty");
    return s;
  }
  std::string choice(const std::string& path, std::initializer_list<const char*> allowed) {
    return as_choice(node(path), path, allowed);
  }
  bool boolean(const std::string& path) {
    const json& v = node(path);
    if (!v.is_boolean()) fail(path, "expected boolean, got " + describe(v));
    return v.get<bool>();
  }
  double number(const std::string& path, Range r) { return as_number(node(path), path, r); }
  template <class T>
  T integer(const std::string& path, int64_t lo, int64_t hi = std::numeric_limits<T>::max()) {
    return as_integer<T>(node(path), path, lo, hi);
  }
  uint64_t u64(const std::string& path) {
    json& v = node(path);
    uint64_t u = 0;
    if (v.is_number_unsigned()) {
      u = v.get<uint64_t>();
    } else if (v.is_number_integer()) {
      if (v.get<int64_t>() < 0) fail(path, "must be in [0, 18446744073709551615], got " + v.dump());
      u = uint64_t(v.get<int64_t>());
    } else if (v.is_number_float()) {
      const double d = v.get<double>();
      if (!std::isfinite(d) || d != std::trunc(d)) fail(path, "expected integer, got " + describe(v));
      if (!(d >= 0 && d < 18446744073709551616.0)) fail(path, "must be in [0, 18446744073709551615], got " + v.dump());
      u = uint64_t(d);
    } else {
      fail(path, "expected integer, got " + describe(v));
    }
    v = u;
    return u;
  }

  std::string as_string(const json& v, const std::string& path) const {
    if (!v.is_string()) fail(path, "expected string, got " + describe(v));
    return v.get<std::string>();
  }
  std::string as_choice(const json& v, const std::string& path, std::initializer_list<const char*> allowed) const {
    const std::string s = as_string(v, path);
    std::string set;
    for (const char* a : allowed) {
      if (s == a) return s;
      set += (set.empty() ? "" : ", ") + std::string(a);
    }
    fail(path, "must be one of {" + set + "}, got " + v.dump());
  }
  double as_number(const json& v, const std::string& path, Range r) const {
    if (!v.is_number()) fail(path, "expected number, got " + describe(v));
    const double d = v.get<double>();
    if (!std::isfinite(d) || !r.contains(d)) fail(path, "must be " + r.text() + ", got " + v.dump());
    return d;
  }
  // Accepts 3 and 3.0 (and 1e3), not 2.5; the result is written back as an integer so that `resolved`
  // holds what the run uses.
  template <class T>
  T as_integer(json& v, const std::string& path, int64_t lo, int64_t hi = std::numeric_limits<T>::max()) const {
    // Read exactly as int64 first; every T used here fits in it.
    int64_t i = 0;
    bool beyond = false;  // an integer that not even int64 holds
    if (v.is_number_unsigned()) {
      const uint64_t u = v.get<uint64_t>();
      beyond = u > uint64_t(std::numeric_limits<int64_t>::max());
      i = beyond ? 0 : int64_t(u);
    } else if (v.is_number_integer()) {
      i = v.get<int64_t>();
    } else if (v.is_number_float()) {
      const double d = v.get<double>();
      if (!std::isfinite(d) || d != std::trunc(d)) fail(path, "expected integer, got " + describe(v));
      beyond = !(d >= -9223372036854775808.0 && d < 9223372036854775808.0);
      i = beyond ? 0 : int64_t(d);
    } else {
      fail(path, "expected integer, got " + describe(v));
    }
    if (beyond || i < lo || i > hi) {
      // T's own upper bound is worth naming only to a value past it.
      const bool open_top = hi == int64_t(std::numeric_limits<T>::max()) && !beyond && i <= hi;
      fail(path, "must be " + (open_top ? ">= " + std::to_string(lo)
                                        : "in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]") +
                     ", got " + v.dump());
    }
    const T out = T(i);
    v = out;
    return out;
  }

 private:
  json& doc_;
  const Provenance& prov_;
};

void read_model(Reader& r, ModelConfig& m) {
  m.type = r.choice("model.type", {"mlp", "gpt2"});
  m.input_dim = r.integer<int>("model.input_dim", 1);
  json& hidden = r.node("model.hidden");
  if (!hidden.is_array()) r.fail("model.hidden", "expected array of integers, got " + describe(hidden));
  m.hidden.clear();
  for (size_t i = 0; i < hidden.size(); ++i)
    m.hidden.push_back(r.as_integer<int>(hidden[i], "model.hidden[" + std::to_string(i) + "]", 1));
  // One class makes the softmax loss identically zero: nothing would train.
  m.num_classes = r.integer<int>("model.num_classes", 2);
  m.activation = r.choice("model.activation", {"gelu", "relu"});
  m.layernorm = r.boolean("model.layernorm");
  const double init_std = r.number("model.init_std", at_least(0));
  if (init_std > double(FLT_MAX)) r.fail("model.init_std", "must fit in a float, got " + num_str(init_std));
  m.init_std = float(init_std);
  m.n_layer = r.integer<int>("model.n_layer", 1, 1024);
  m.n_head = r.integer<int>("model.n_head", 1, 1024);
  m.n_embd = r.integer<int>("model.n_embd", 1, 65536);
  m.seq_len = r.integer<int>("model.seq_len", 1, 1 << 20);
  m.vocab = r.integer<int>("model.vocab", 2, 1 << 24);
  m.init_from = r.str("model.init_from");
  // The parameter count, in floating point so that no product overflows, against a ceiling no run can reach
  // (2^34 parameters need over 270 GB for weights and AdamW state): a typo like hidden = [2000000000]
  // is a clear error here instead of a failed allocation later. What fits the machine at hand is checked
  // when the model is built (Trainer).
  double params = 0;
  std::string culprit = "model.n_embd";
  if (m.type == "mlp") {
    double in = m.input_dim, largest = 0;
    auto layer = [&](double out, const std::string& key) {
      const double n = (in + 1) * out;
      params += n;
      if (n > largest) largest = n, culprit = out >= in ? key : (in == m.input_dim ? "model.input_dim" : key);
      in = out;
    };
    for (size_t i = 0; i < m.hidden.size(); ++i) layer(m.hidden[i], "model.hidden[" + std::to_string(i) + "]");
    layer(m.num_classes, "model.num_classes");
  } else {
    const double C = m.n_embd, Vp = std::ceil(m.vocab / 128.0) * 128;
    params = Vp * C + double(m.seq_len) * C + m.n_layer * (12 * C * C + 13 * C) + 2 * C;
  }
  if (params > 0x1p34)
    r.fail(culprit, "the model would have " + num_str(params) + " parameters; at most 2^34 (" + num_str(0x1p34) +
               ") are supported");
  if (m.type == "gpt2") {
    if (m.n_embd % m.n_head != 0)
      r.fail_pair("model.n_embd", "model.n_head", "must be a multiple of model.n_head (" + std::to_string(m.n_head) + ")");
    const int hd = m.n_embd / m.n_head;
    if (hd != 16 && hd != 32 && hd != 64 && hd != 128)
      r.fail_pair("model.n_head", "model.n_embd",
                  "head size n_embd / n_head = " + std::to_string(hd) + " must be 16, 32, 64 or 128");
  }
}

std::vector<std::string> read_string_list(Reader& r, const std::string& path) {
  json& v = r.node(path);
  if (!v.is_array()) r.fail(path, "expected array of strings, got " + describe(v));
  std::vector<std::string> out;
  for (size_t i = 0; i < v.size(); ++i) out.push_back(r.as_string(v[i], path + "[" + std::to_string(i) + "]"));
  return out;
}

void read_data(Reader& r, DataConfig& d) {
  d.dataset = r.choice("data.dataset", {"fashion-mnist", "tokens"});
  d.dir = r.nonempty("data.dir");
  d.train_limit = r.integer<int64_t>("data.train_limit", 0);
  d.test_limit = r.integer<int64_t>("data.test_limit", 0);
  d.train_shards = read_string_list(r, "data.train_shards");
  d.val_shards = read_string_list(r, "data.val_shards");
  d.format = r.choice("data.format", {"auto", "mptrain", "llmc", "nanogpt"});
  if (d.dataset == "tokens" && d.train_shards.empty())
    r.fail("data.train_shards", "dataset 'tokens' needs at least one training shard");
}

void read_precision(Reader& r, PrecisionConfig& p) {
  p.mode = r.choice("precision.mode", {"fp32", "tf32", "fp16", "bf16", "auto"});
  const json& layers = r.node("precision.layers");
  if (!layers.is_array())
    r.fail("precision.layers", "expected array of {\"pattern\", \"dtype\"} objects, got " + describe(layers));
  p.layers.clear();
  static const std::vector<std::string> entry_keys = {"pattern", "dtype"};
  for (size_t i = 0; i < layers.size(); ++i) {
    const std::string at = "precision.layers[" + std::to_string(i) + "]";
    const json& e = layers[i];
    if (!e.is_object()) r.fail(at, "expected object {\"pattern\": ..., \"dtype\": ...}, got " + describe(e));
    for (auto it = e.begin(); it != e.end(); ++it)
      if (it.key() != "pattern" && it.key() != "dtype") {
        std::vector<std::string> known;
        for (const auto& k : entry_keys) known.push_back(at + "." + k);
        r.fail(at + "." + it.key(), unknown_key_message(at + "." + it.key(), known));
      }
    for (const auto& k : entry_keys)
      if (!e.contains(k)) r.fail(at + "." + k, "missing (each entry needs \"pattern\" and \"dtype\")");
    LayerPrecision lp;
    lp.pattern = r.as_string(e.at("pattern"), at + ".pattern");
    if (lp.pattern.empty()) r.fail(at + ".pattern", "must not be empty");
    lp.dtype = r.as_choice(e.at("dtype"), at + ".dtype", {"fp32", "fp16", "bf16"});
    p.layers.push_back(std::move(lp));
  }
  p.fallback = r.choice("precision.fallback", {"auto", "bf16", "fp32", "none"});
}

void read_loss_scale(Reader& r, LossScaleConfig& s) {
  s.enabled = r.choice("loss_scale.enabled", {"auto", "on", "off"});
  s.min = r.number("loss_scale.min", above(0));
  s.max = r.number("loss_scale.max", at_least(0));
  if (s.max < s.min)
    r.fail_pair("loss_scale.max", "loss_scale.min",
                "must be >= loss_scale.min (" + num_str(s.min) + "), got " + num_str(s.max));
  s.init = r.number("loss_scale.init", at_least(0));
  if (s.init < s.min || s.init > s.max) {
    const std::string other = s.init < s.min ? "loss_scale.min" : "loss_scale.max";
    r.fail_pair("loss_scale.init", other,
                "must be in [loss_scale.min, loss_scale.max] = [" + num_str(s.min) + ", " + num_str(s.max) +
                    "], got " + num_str(s.init));
  }
  s.growth_factor = r.number("loss_scale.growth_factor", above(1));
  s.backoff_factor = r.number("loss_scale.backoff_factor", {0, 1, true, true});
  s.growth_interval = r.integer<int>("loss_scale.growth_interval", 1);
  s.hysteresis = r.integer<int>("loss_scale.hysteresis", 1);
}

void read_optimizer(Reader& r, OptimizerConfig& o) {
  o.lr = r.number("optimizer.lr", above(0));
  o.beta1 = r.number("optimizer.beta1", {0, 1, false, true});
  o.beta2 = r.number("optimizer.beta2", {0, 1, false, true});
  o.eps = r.number("optimizer.eps", above(0));
  o.weight_decay = r.number("optimizer.weight_decay", at_least(0));
  o.warmup_steps = r.integer<int>("optimizer.warmup_steps", 0);
  o.schedule = r.choice("optimizer.schedule", {"cosine", "constant"});
  o.min_lr = r.number("optimizer.min_lr", at_least(0));
  if (o.min_lr > o.lr)
    r.fail_pair("optimizer.min_lr", "optimizer.lr",
                "must be in [0, optimizer.lr] = [0, " + num_str(o.lr) + "], got " + num_str(o.min_lr));
  o.clip_norm = r.number("optimizer.clip_norm", at_least(0));
}

void read_rest(Reader& r, Config& c) {
  c.zero.stage = r.integer<int>("zero.stage", 0, 2);
  c.zero.bucket_mb = r.number("zero.bucket_mb", above(0));

  c.train.batch_size = r.integer<int>("train.batch_size", 1);
  c.train.grad_accum = r.integer<int>("train.grad_accum", 1);
  c.train.epochs = r.integer<int>("train.epochs", 1);
  c.train.steps = r.integer<int64_t>("train.steps", 0);
  c.train.seed = r.u64("train.seed");
  c.train.eval_each_epoch = r.boolean("train.eval_each_epoch");
  c.train.eval_every = r.integer<int>("train.eval_every", 0);
  c.train.eval_batches = r.integer<int>("train.eval_batches", 0);

  c.log.every = r.integer<int>("log.every", 1);
  c.log.metrics = r.str("log.metrics");
  c.log.quiet = r.boolean("log.quiet");

  c.checkpoint.dir = r.str("checkpoint.dir");
  c.checkpoint.every_steps = r.integer<int>("checkpoint.every_steps", 0);
  c.checkpoint.resume = r.boolean("checkpoint.resume");
  c.checkpoint.keep_last = r.integer<int>("checkpoint.keep_last", 0);
  c.checkpoint.fallback_to_previous = r.boolean("checkpoint.fallback_to_previous");

  c.debug.inject_inf_step = r.integer<int64_t>("debug.inject_inf_step", -1);
  c.debug.inject_inf_rank = r.integer<int>("debug.inject_inf_rank", 0);
  c.debug.check_consistency = r.boolean("debug.check_consistency");
  c.watchdog_timeout_s = r.number("watchdog.timeout_s", at_least(0));

  MonitorConfig& m = c.monitor;
  m.enabled = r.boolean("monitor.enabled");
  m.window = r.integer<int>("monitor.window", 2);
  m.min_history = r.integer<int>("monitor.min_history", 2);
  m.spike_zscore = r.number("monitor.spike_zscore", above(0));
  m.max_overflow_rate = r.number("monitor.max_overflow_rate", {0, 1, true, false});
  m.min_scale_patience = r.integer<int>("monitor.min_scale_patience", 1);
  m.recover_after = r.integer<int64_t>("monitor.recover_after", 0);
  m.max_recoveries = r.integer<int>("monitor.max_recoveries", 0);
  static const std::initializer_list<const char*> actions = {"log", "skip", "fallback", "stop"};
  m.on_loss_spike = r.choice("monitor.on_loss_spike", actions);
  m.on_grad_spike = r.choice("monitor.on_grad_spike", actions);
  m.on_nan_loss = r.choice("monitor.on_nan_loss", actions);
  m.on_overflow_rate = r.choice("monitor.on_overflow_rate", actions);
  m.on_min_scale = r.choice("monitor.on_min_scale", actions);

  c.device = r.choice("device", {"auto", "cuda", "cpu"});
  c.cpu.gemm = r.choice("cpu.gemm", {"own", "blas"});
  c.cpu.threads = r.integer<int>("cpu.threads", 0, 4096);
}

}  // namespace

Config config_from_json(const json& j, const std::string& source, const std::vector<std::string>& overrides) {
  Provenance prov;
  prov.names.push_back(source);
  for (const std::string& ov : overrides) prov.names.push_back("--set " + ov);

  json doc = default_config_json();
  if (!j.is_object()) throw InputError(source, "", "the top level must be a JSON object, got " + describe(j));
  merge(doc, default_config_json(), j, "", 0, prov);
  for (size_t i = 0; i < overrides.size(); ++i) apply_override(doc, overrides[i], int(i + 1), prov);

  Config c;
  c.source = source;
  Reader r(doc, prov);
  read_model(r, c.model);
  read_data(r, c.data);
  read_precision(r, c.precision);
  read_loss_scale(r, c.loss_scale);
  read_optimizer(r, c.optimizer);
  read_rest(r, c);
  c.resolved = std::move(doc);
  return c;
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) throw InputError(path, "", "cannot open config file: is a directory");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path, "", std::string("cannot open config file: ") + std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw InputError(path, "", std::string("cannot read config file: ") + std::strerror(errno));
  return config_from_json(parse_json_text(text.str(), path), path, overrides);
}

std::string config_help() {
  const json& d = default_config_json();
  size_t wpath = 0, wdef = 0;
  std::vector<std::pair<std::string, std::string>> rows;
  for (const KeyDoc& k : kKeyDocs) {
    std::string pointer = "/" + std::string(k.path);
    std::replace(pointer.begin(), pointer.end(), '.', '/');
    const std::string def = d.at(json::json_pointer(pointer)).dump();
    rows.emplace_back(k.path, def);
    wpath = std::max(wpath, std::strlen(k.path));
    wdef = std::max(wdef, def.size());
  }
  std::string out;
  for (size_t i = 0; i < rows.size(); ++i) {
    out += "  " + rows[i].first + std::string(wpath - rows[i].first.size() + 2, ' ') + rows[i].second +
           std::string(wdef - rows[i].second.size() + 2, ' ') + kKeyDocs[i].text + "\n";
  }
  return out;
}

}  // namespace mpt
