// Config loading: defaults (default_config_json in defaults.cpp, the only place they live), then the file,
// then the `--set` overrides in order (config_json.cpp), then type checks and validation while the structs
// are filled (here). Every value remembers which source set it last, so a message names the file or the
// --set that is wrong.
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

#include "src/config/config_json.h"
#include "src/core/check.h"

namespace mpt {

using namespace config_detail;

namespace {

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
  p.layers_auto = layers.is_string() && layers.get<std::string>() == "auto";
  if (!layers.is_array() && !p.layers_auto)
    r.fail("precision.layers", "expected array of {\"pattern\", \"dtype\"} objects or \"auto\", got " + describe(layers));
  p.layers.clear();
  static const std::vector<std::string> entry_keys = {"pattern", "dtype"};
  for (size_t i = 0; !p.layers_auto && i < layers.size(); ++i) {
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
  p.max_output_err = r.number("precision.max_output_err", above(0));
  p.max_grad_err = r.number("precision.max_grad_err", above(0));
  p.max_range_frac = r.number("precision.max_range_frac", {0, 1, false, false});
  p.memory_budget_gib = r.number("precision.memory_budget_gib", at_least(0));
  p.auto_batches = r.integer<int>("precision.auto_batches", 1, 1000);
  p.auto_timing = r.choice("precision.auto_timing", {"measure", "flops"});
  p.reanalyze_every = r.integer<int64_t>("precision.reanalyze_every", 0);
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
  o.state_dtype = r.choice("optimizer.state_dtype", {"fp32", "bf16", "int8"});
  o.state_block = r.integer<int>("optimizer.state_block", 64);
  if (o.state_block > 2048 || (o.state_block & (o.state_block - 1)) != 0)
    r.fail("optimizer.state_block", "must be a power of two in [64, 2048], got " + std::to_string(o.state_block));
}

void read_rest(Reader& r, Config& c) {
  c.zero.stage = r.integer<int>("zero.stage", 0, 2);
  c.zero.bucket_mb = r.number("zero.bucket_mb", above(0));
  c.zero.overlap = r.boolean("zero.overlap");
  c.zero.symmetric_memory = r.boolean("zero.symmetric_memory");
  c.zero.reorder_backward = r.boolean("zero.reorder_backward");
  c.zero.copy_engine_reduce = r.boolean("zero.copy_engine_reduce");
  c.zero.offload = r.choice("zero.offload", {"none", "cpu"});

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
  c.debug.skip_bucket_comm = r.boolean("debug.skip_bucket_comm");
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

}  // namespace mpt
