// Config: defaults agree with the struct initialisers, every key reaches its struct field, file and
// --set layering, and every error path names the right file (or --set) and the exact key path.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "src/core/check.h"
#include "src/config/config.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;
using nlohmann::json;
using mpt::Config;

namespace {

// Keys in default_config_json(). Adding a key means extending expect_same_config() and the wiring
// table below; this count makes a forgotten one fail loudly instead of going untested.
constexpr size_t kLeafKeys = 93;

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "mpt_config_test_XXXXXX").string();
    if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  std::string write(const std::string& name, const std::string& text) const {
    const fs::path p = path_ / name;
    std::ofstream(p, std::ios::binary) << text;
    return p.string();
  }
  fs::path path() const { return path_; }

 private:
  fs::path path_;
};

// f must throw InputError with exactly this file and key path, and a message holding every fragment.
void expect_input_error(const std::function<void()>& f, const std::string& file, const std::string& field,
                        const std::vector<std::string>& fragments) {
  try {
    f();
  } catch (const mpt::InputError& e) {
    EXPECT_EQ(e.file(), file);
    EXPECT_EQ(e.field(), field);
    const std::string what = e.what();
    const std::string head = file + (field.empty() ? "" : ": " + field) + ": ";
    EXPECT_EQ(what.rfind(head, 0), 0u) << "message: " << what;
    for (const std::string& frag : fragments)
      EXPECT_NE(what.find(frag), std::string::npos) << "message: " << what << "\nlacks: " << frag;
    return;
  }
  ADD_FAILURE() << "no InputError (expected " << file << ": " << field << ")";
}

#define EXPECT_INPUT_ERROR(stmt, file, field, ...)                                         \
  do {                                                                                     \
    SCOPED_TRACE(#stmt);                                                                   \
    expect_input_error([&] { (void)(stmt); }, file, field, std::vector<std::string>{__VA_ARGS__}); \
  } while (0)

void collect_leaves(const json& j, const std::string& prefix, std::vector<std::string>& out) {
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string p = prefix.empty() ? it.key() : prefix + "." + it.key();
    if (it->is_object())
      collect_leaves(*it, p, out);
    else
      out.push_back(p);
  }
}

std::vector<std::string> leaf_paths() {
  std::vector<std::string> out;
  collect_leaves(mpt::default_config_json(), "", out);
  return out;
}

json::json_pointer pointer(const std::string& dotted) {
  std::string p = "/" + dotted;
  std::replace(p.begin(), p.end(), '.', '/');
  return json::json_pointer(p);
}

void expect_same_config(const Config& a, const Config& b) {
  EXPECT_EQ(a.model.type, b.model.type);
  EXPECT_EQ(a.model.input_dim, b.model.input_dim);
  EXPECT_EQ(a.model.hidden, b.model.hidden);
  EXPECT_EQ(a.model.num_classes, b.model.num_classes);
  EXPECT_EQ(a.model.activation, b.model.activation);
  EXPECT_EQ(a.model.layernorm, b.model.layernorm);
  EXPECT_EQ(a.model.init_std, b.model.init_std);
  EXPECT_EQ(a.data.dataset, b.data.dataset);
  EXPECT_EQ(a.data.dir, b.data.dir);
  EXPECT_EQ(a.data.train_limit, b.data.train_limit);
  EXPECT_EQ(a.data.test_limit, b.data.test_limit);
  EXPECT_EQ(a.data.format, b.data.format);
  EXPECT_EQ(a.precision.mode, b.precision.mode);
  ASSERT_EQ(a.precision.layers.size(), b.precision.layers.size());
  for (size_t i = 0; i < a.precision.layers.size(); ++i) {
    EXPECT_EQ(a.precision.layers[i].pattern, b.precision.layers[i].pattern);
    EXPECT_EQ(a.precision.layers[i].dtype, b.precision.layers[i].dtype);
  }
  EXPECT_EQ(a.loss_scale.enabled, b.loss_scale.enabled);
  EXPECT_EQ(a.loss_scale.init, b.loss_scale.init);
  EXPECT_EQ(a.loss_scale.growth_factor, b.loss_scale.growth_factor);
  EXPECT_EQ(a.loss_scale.backoff_factor, b.loss_scale.backoff_factor);
  EXPECT_EQ(a.loss_scale.growth_interval, b.loss_scale.growth_interval);
  EXPECT_EQ(a.loss_scale.min, b.loss_scale.min);
  EXPECT_EQ(a.loss_scale.max, b.loss_scale.max);
  EXPECT_EQ(a.loss_scale.hysteresis, b.loss_scale.hysteresis);
  EXPECT_EQ(a.optimizer.lr, b.optimizer.lr);
  EXPECT_EQ(a.optimizer.beta1, b.optimizer.beta1);
  EXPECT_EQ(a.optimizer.beta2, b.optimizer.beta2);
  EXPECT_EQ(a.optimizer.eps, b.optimizer.eps);
  EXPECT_EQ(a.optimizer.weight_decay, b.optimizer.weight_decay);
  EXPECT_EQ(a.optimizer.warmup_steps, b.optimizer.warmup_steps);
  EXPECT_EQ(a.optimizer.schedule, b.optimizer.schedule);
  EXPECT_EQ(a.optimizer.min_lr, b.optimizer.min_lr);
  EXPECT_EQ(a.optimizer.clip_norm, b.optimizer.clip_norm);
  EXPECT_EQ(a.zero.stage, b.zero.stage);
  EXPECT_EQ(a.zero.bucket_mb, b.zero.bucket_mb);
  EXPECT_EQ(a.train.batch_size, b.train.batch_size);
  EXPECT_EQ(a.train.grad_accum, b.train.grad_accum);
  EXPECT_EQ(a.train.epochs, b.train.epochs);
  EXPECT_EQ(a.train.steps, b.train.steps);
  EXPECT_EQ(a.train.seed, b.train.seed);
  EXPECT_EQ(a.train.eval_each_epoch, b.train.eval_each_epoch);
  EXPECT_EQ(a.log.every, b.log.every);
  EXPECT_EQ(a.log.metrics, b.log.metrics);
  EXPECT_EQ(a.log.quiet, b.log.quiet);
  EXPECT_EQ(a.checkpoint.dir, b.checkpoint.dir);
  EXPECT_EQ(a.checkpoint.every_steps, b.checkpoint.every_steps);
  EXPECT_EQ(a.checkpoint.resume, b.checkpoint.resume);
  EXPECT_EQ(a.debug.inject_inf_step, b.debug.inject_inf_step);
  EXPECT_EQ(a.debug.inject_inf_rank, b.debug.inject_inf_rank);
  EXPECT_EQ(a.debug.check_consistency, b.debug.check_consistency);
  EXPECT_EQ(a.debug.skip_bucket_comm, b.debug.skip_bucket_comm);
  EXPECT_EQ(a.device, b.device);
  EXPECT_EQ(a.cpu.gemm, b.cpu.gemm);
  EXPECT_EQ(a.cpu.threads, b.cpu.threads);
}

class ConfigFileTest : public ::testing::Test {
 protected:
  TempDir dir;
};

}  // namespace

// ---------------------------------------------------------------- defaults

TEST(ConfigDefaults, EmptyObjectGivesTheStructInitialisers) {
  const Config c = mpt::config_from_json(json::object(), "empty.json");
  const Config d;
  expect_same_config(c, d);
  EXPECT_EQ(c.source, "empty.json");
  EXPECT_EQ(c.resolved, mpt::default_config_json());
}

TEST(ConfigDefaults, DefaultJsonFedBackIsANoOp) {
  const Config c = mpt::config_from_json(mpt::default_config_json(), "defaults");
  expect_same_config(c, Config{});
  EXPECT_EQ(c.resolved, mpt::default_config_json());
}

TEST(ConfigDefaults, NestingAndKeyCount) {
  const json& d = mpt::default_config_json();
  const std::set<std::string> top = {"model", "data", "precision", "loss_scale", "optimizer", "zero", "watchdog",
                                     "train", "log", "checkpoint", "debug", "monitor", "device", "cpu"};
  std::set<std::string> got;
  for (auto it = d.begin(); it != d.end(); ++it) got.insert(it.key());
  EXPECT_EQ(got, top);
  EXPECT_EQ(leaf_paths().size(), kLeafKeys);
  EXPECT_TRUE(d.at("precision").at("layers").is_array());
  EXPECT_TRUE(d.at("model").at("hidden").is_array());
  EXPECT_TRUE(d.at("device").is_string());
  // An integer key must not be stored as a float default (that would make its help line read "64.0").
  EXPECT_TRUE(d.at("train").at("batch_size").is_number_integer());
  EXPECT_TRUE(d.at("train").at("seed").is_number_unsigned());
}

// Every key, set by --set to a fresh non-default value, must land in its own struct field.
TEST(ConfigDefaults, EveryKeyReachesItsField) {
  mpt::Rng r = mpt::test::fresh_rng();
  auto n = [&r](int lo, int span) { return lo + int(r.below(uint64_t(span))); };
  auto u = [&r](double lo, double hi) { return lo + (hi - lo) * double(r.uniform()); };
  struct Key {
    std::string path;
    json value;
    std::function<void(const Config&, const json&)> check;
  };
#define KEY(path, value, field) \
  Key{path, json(value), [](const Config& c, const json& v) { EXPECT_EQ(c.field, v.get<decltype(c.field)>()) << path; }}
  const json layers = json::array({{{"pattern", "fc" + std::to_string(n(0, 9)) + "*"}, {"dtype", "fp32"}},
                                   {{"pattern", "head?"}, {"dtype", "bf16"}}});
  const std::vector<Key> keys = {
      KEY("model.type", "gpt2", model.type),
      KEY("model.input_dim", n(1, 5000), model.input_dim),
      KEY("model.hidden", (std::vector<int>{n(1, 999), n(1, 999), n(1, 999)}), model.hidden),
      KEY("model.num_classes", n(2, 500), model.num_classes),
      KEY("model.activation", "relu", model.activation),
      KEY("model.layernorm", true, model.layernorm),
      KEY("model.init_std", float(u(0.001, 0.5)), model.init_std),
      KEY("model.n_layer", n(3, 20), model.n_layer),
      KEY("model.n_head", 4, model.n_head),
      KEY("model.n_embd", n(0, 2) == 0 ? 256 : 512, model.n_embd),  // 4 heads of 64 or 128
      KEY("model.seq_len", n(65, 4000), model.seq_len),
      KEY("model.vocab", n(300, 60000), model.vocab),
      KEY("model.init_from", "w" + std::to_string(n(0, 100)) + ".safetensors", model.init_from),
      KEY("data.dataset", "tokens", data.dataset),
      KEY("data.train_shards", (std::vector<std::string>{"t" + std::to_string(n(0, 99)), "u*"}), data.train_shards),
      KEY("data.val_shards", (std::vector<std::string>{"v" + std::to_string(n(0, 99))}), data.val_shards),
      KEY("data.format", (std::vector<std::string>{"mptrain", "llmc", "nanogpt"}[size_t(n(0, 3))]), data.format),
      KEY("precision.fallback", "fp32", precision.fallback),
      KEY("precision.max_output_err", u(0.02, 0.5), precision.max_output_err),
      KEY("precision.max_grad_err", u(0.06, 0.5), precision.max_grad_err),
      KEY("precision.max_range_frac", u(0.02, 1.0), precision.max_range_frac),
      KEY("precision.memory_budget_gib", u(0.5, 80.0), precision.memory_budget_gib),
      KEY("precision.auto_batches", n(2, 100), precision.auto_batches),
      KEY("precision.auto_timing", "flops", precision.auto_timing),
      KEY("precision.reanalyze_every", int64_t(n(1, 100000)), precision.reanalyze_every),
      KEY("train.eval_every", n(1, 1000), train.eval_every),
      KEY("train.eval_batches", n(1, 1000), train.eval_batches),
      KEY("monitor.enabled", false, monitor.enabled),
      KEY("monitor.window", n(101, 1000), monitor.window),
      KEY("monitor.min_history", n(21, 80), monitor.min_history),
      KEY("monitor.spike_zscore", u(1.0, 5.0), monitor.spike_zscore),
      KEY("monitor.on_loss_spike", "skip", monitor.on_loss_spike),
      KEY("monitor.on_grad_spike", "stop", monitor.on_grad_spike),
      KEY("monitor.on_nan_loss", "fallback", monitor.on_nan_loss),
      KEY("monitor.max_overflow_rate", u(0.01, 0.45), monitor.max_overflow_rate),
      KEY("monitor.on_overflow_rate", "log", monitor.on_overflow_rate),
      KEY("monitor.min_scale_patience", n(51, 500), monitor.min_scale_patience),
      KEY("monitor.on_min_scale", "stop", monitor.on_min_scale),
      KEY("monitor.recover_after", int64_t(n(1, 100000)), monitor.recover_after),
      KEY("monitor.max_recoveries", n(3, 50), monitor.max_recoveries),
      KEY("data.dir", "/tmp/fm" + std::to_string(n(0, 1000)), data.dir),
      // Past 2^32 so that a 32-bit read would show.
      KEY("data.train_limit", int64_t(5000000000) + n(0, 1000), data.train_limit),
      KEY("data.test_limit", int64_t(7000000000) + n(0, 1000), data.test_limit),
      KEY("precision.mode", "bf16", precision.mode),
      Key{"precision.layers", layers,
          [](const Config& c, const json& v) {
            ASSERT_EQ(c.precision.layers.size(), v.size());
            for (size_t i = 0; i < v.size(); ++i) {
              EXPECT_EQ(c.precision.layers[i].pattern, v[i]["pattern"].get<std::string>());
              EXPECT_EQ(c.precision.layers[i].dtype, v[i]["dtype"].get<std::string>());
            }
          }},
      KEY("loss_scale.enabled", "on", loss_scale.enabled),
      KEY("loss_scale.init", u(2.0, 60000.0), loss_scale.init),
      KEY("loss_scale.growth_factor", u(1.1, 4.0), loss_scale.growth_factor),
      KEY("loss_scale.backoff_factor", u(0.1, 0.45), loss_scale.backoff_factor),
      KEY("loss_scale.growth_interval", n(1, 1000), loss_scale.growth_interval),
      KEY("loss_scale.min", u(0.01, 1.5), loss_scale.min),
      KEY("loss_scale.max", u(2e7, 1e9), loss_scale.max),
      KEY("loss_scale.hysteresis", n(2, 10), loss_scale.hysteresis),
      KEY("optimizer.lr", u(2e-3, 1e-1), optimizer.lr),
      KEY("optimizer.beta1", u(0.0, 0.85), optimizer.beta1),
      KEY("optimizer.beta2", u(0.0, 0.99), optimizer.beta2),
      KEY("optimizer.eps", u(1e-10, 1e-9), optimizer.eps),
      KEY("optimizer.weight_decay", u(0.01, 0.5), optimizer.weight_decay),
      KEY("optimizer.warmup_steps", n(1, 10000), optimizer.warmup_steps),
      KEY("optimizer.schedule", "constant", optimizer.schedule),
      KEY("optimizer.min_lr", u(1e-6, 1e-3), optimizer.min_lr),
      KEY("optimizer.clip_norm", u(1.5, 10.0), optimizer.clip_norm),
      KEY("optimizer.state_dtype", (std::vector<std::string>{"bf16", "int8"}[size_t(n(0, 2))]), optimizer.state_dtype),
      KEY("optimizer.state_block", 128 << n(0, 5), optimizer.state_block),
      KEY("zero.stage", n(0, 2), zero.stage),
      KEY("zero.bucket_mb", u(1.0, 24.0), zero.bucket_mb),
      KEY("zero.overlap", false, zero.overlap),
      KEY("zero.symmetric_memory", false, zero.symmetric_memory),
      KEY("zero.reorder_backward", false, zero.reorder_backward),
      KEY("zero.copy_engine_reduce", false, zero.copy_engine_reduce),
      KEY("zero.offload", "cpu", zero.offload),
      KEY("train.batch_size", n(65, 4096), train.batch_size),
      KEY("train.grad_accum", n(2, 64), train.grad_accum),
      KEY("train.epochs", n(2, 100), train.epochs),
      KEY("train.steps", int64_t(3000000000) + n(0, 1000), train.steps),
      // Top bit set: the full unsigned 64-bit range must survive.
      KEY("train.seed", r.next() | (uint64_t(1) << 63), train.seed),
      KEY("train.eval_each_epoch", false, train.eval_each_epoch),
      KEY("log.every", n(51, 1000), log.every),
      KEY("log.metrics", "m" + std::to_string(n(0, 100)) + ".jsonl", log.metrics),
      KEY("log.quiet", true, log.quiet),
      KEY("checkpoint.dir", "ck" + std::to_string(n(0, 100)), checkpoint.dir),
      KEY("checkpoint.every_steps", n(1, 1000), checkpoint.every_steps),
      KEY("checkpoint.resume", false, checkpoint.resume),
      KEY("checkpoint.keep_last", n(1, 10), checkpoint.keep_last),
      KEY("checkpoint.fallback_to_previous", true, checkpoint.fallback_to_previous),
      KEY("watchdog.timeout_s", double(n(1, 600)), watchdog_timeout_s),
      KEY("debug.inject_inf_step", int64_t(n(0, 1000)), debug.inject_inf_step),
      KEY("debug.inject_inf_rank", n(1, 64), debug.inject_inf_rank),
      KEY("debug.check_consistency", true, debug.check_consistency),
      KEY("debug.skip_bucket_comm", true, debug.skip_bucket_comm),
      KEY("device", "cpu", device),
      KEY("cpu.gemm", "blas", cpu.gemm),
      KEY("cpu.threads", n(1, 64), cpu.threads),
  };
#undef KEY
  std::vector<std::string> table_paths, overrides;
  for (const Key& k : keys) {
    table_paths.push_back(k.path);
    overrides.push_back(k.path + "=" + k.value.dump());
    if (k.path != "data.dataset" && k.path != "zero.stage") {
      EXPECT_NE(k.value, mpt::default_config_json().at(pointer(k.path))) << k.path << " must move off its default";
    }
  }
  std::vector<std::string> leaves = leaf_paths();
  std::sort(leaves.begin(), leaves.end());
  std::sort(table_paths.begin(), table_paths.end());
  EXPECT_EQ(table_paths, leaves);

  const Config c = mpt::config_from_json(json::object(), "cfg", overrides);
  for (const Key& k : keys) {
    SCOPED_TRACE(k.path);
    k.check(c, k.value);
    EXPECT_EQ(c.resolved.at(pointer(k.path)), k.value);
  }
}

// ---------------------------------------------------------------- file and overrides

TEST_F(ConfigFileTest, FileMergesOverDefaults) {
  const std::string path = dir.write("run.json", R"({
    "model": {"hidden": [32], "activation": "relu"},
    "optimizer": {"lr": 0.01},
    "precision": {"mode": "fp16", "layers": [{"pattern": "head", "dtype": "fp32"}]},
    "train": {"seed": 18446744073709551615},
    "device": "cpu"
  })");
  const Config c = mpt::load_config(path, {});
  EXPECT_EQ(c.source, path);
  EXPECT_EQ(c.model.hidden, std::vector<int>{32});
  EXPECT_EQ(c.model.activation, "relu");
  EXPECT_EQ(c.optimizer.lr, 0.01);
  EXPECT_EQ(c.precision.mode, "fp16");
  ASSERT_EQ(c.precision.layers.size(), 1u);
  EXPECT_EQ(c.precision.layers[0].pattern, "head");
  EXPECT_EQ(c.precision.layers[0].dtype, "fp32");
  EXPECT_EQ(c.train.seed, 18446744073709551615ull);
  EXPECT_EQ(c.device, "cpu");
  // Siblings of what the file set keep their defaults.
  const Config d;
  EXPECT_EQ(c.model.input_dim, d.model.input_dim);
  EXPECT_EQ(c.model.type, d.model.type);
  EXPECT_EQ(c.optimizer.beta2, d.optimizer.beta2);
  EXPECT_EQ(c.train.batch_size, d.train.batch_size);

  json want = mpt::default_config_json();
  want["model"]["hidden"] = {32};
  want["model"]["activation"] = "relu";
  want["optimizer"]["lr"] = 0.01;
  want["precision"]["mode"] = "fp16";
  want["precision"]["layers"] = json::array({{{"pattern", "head"}, {"dtype", "fp32"}}});
  want["train"]["seed"] = 18446744073709551615ull;
  want["device"] = "cpu";
  EXPECT_EQ(c.resolved, want);
}

TEST_F(ConfigFileTest, OverridesOfEveryKind) {
  const std::string path = dir.write("o.json", R"({"optimizer": {"lr": 0.01, "beta1": 0.8}, "log": {"every": 7}})");
  const Config c = mpt::load_config(
      path, {
                "optimizer.lr=0.05",                                          // number over the file's
                "train.batch_size=128",                                       // integer
                "data.dir=/data/fm",                                          // not JSON: plain string
                "log.metrics=\"m.jsonl\"",                                    // quoted JSON string
                "checkpoint.dir=/a=b",                                        // only the first '=' splits
                "model.layernorm=true",                                       // bool
                "model.hidden=[512,128,64]",                                  // array
                "loss_scale={\"init\": 1024, \"hysteresis\": 3}",            // object merges
                "precision.layers=[{\"pattern\":\"fc*\",\"dtype\":\"bf16\"}]",  // array of objects
                "train.epochs=2",
                "train.epochs=5",  // later wins
                "debug.inject_inf_step=1e2",  // integral float is an integer
            });
  EXPECT_EQ(c.optimizer.lr, 0.05);
  EXPECT_EQ(c.optimizer.beta1, 0.8);  // from the file, untouched by the lr override
  EXPECT_EQ(c.log.every, 7);
  EXPECT_EQ(c.train.batch_size, 128);
  EXPECT_EQ(c.data.dir, "/data/fm");
  EXPECT_EQ(c.log.metrics, "m.jsonl");
  EXPECT_EQ(c.checkpoint.dir, "/a=b");
  EXPECT_TRUE(c.model.layernorm);
  EXPECT_EQ(c.model.hidden, (std::vector<int>{512, 128, 64}));
  EXPECT_EQ(c.loss_scale.init, 1024.0);
  EXPECT_EQ(c.loss_scale.hysteresis, 3);
  EXPECT_EQ(c.loss_scale.growth_interval, Config{}.loss_scale.growth_interval);  // merged, not replaced
  ASSERT_EQ(c.precision.layers.size(), 1u);
  EXPECT_EQ(c.precision.layers[0].pattern, "fc*");
  EXPECT_EQ(c.precision.layers[0].dtype, "bf16");
  EXPECT_EQ(c.train.epochs, 5);
  EXPECT_EQ(c.debug.inject_inf_step, 100);
  EXPECT_EQ(c.resolved["optimizer"]["lr"], 0.05);
  EXPECT_EQ(c.resolved["optimizer"]["beta1"], 0.8);
  EXPECT_EQ(c.resolved["data"]["dir"], "/data/fm");
  EXPECT_EQ(c.resolved["train"]["epochs"], 5);
  // Normalised: the run and the resolved JSON agree that this is the integer 100.
  EXPECT_TRUE(c.resolved["debug"]["inject_inf_step"].is_number_integer());
  EXPECT_EQ(c.resolved["debug"]["inject_inf_step"], 100);
}

TEST(ConfigOverrides, EmptyValueAndQuotedNumberAreStrings) {
  const Config c = mpt::config_from_json(json::object(), "cfg", {"log.metrics=", "checkpoint.dir=\"123\""});
  EXPECT_EQ(c.log.metrics, "");
  EXPECT_EQ(c.checkpoint.dir, "123");
}

TEST(ConfigOverrides, BadSyntax) {
  const json e = json::object();
  EXPECT_INPUT_ERROR(mpt::config_from_json(e, "cfg", {"optimizer.lr"}), "--set optimizer.lr", "", "no '='");
  EXPECT_INPUT_ERROR(mpt::config_from_json(e, "cfg", {"=1"}), "--set =1", "", "empty key path");
  EXPECT_INPUT_ERROR(mpt::config_from_json(e, "cfg", {"optimizer..lr=1"}), "--set optimizer..lr=1", "optimizer..lr",
                     "empty name");
  EXPECT_INPUT_ERROR(mpt::config_from_json(e, "cfg", {"optimizer.lrr=0.1"}), "--set optimizer.lrr=0.1",
                     "optimizer.lrr", "unknown key (did you mean optimizer.lr?)");
  EXPECT_INPUT_ERROR(mpt::config_from_json(e, "cfg", {"optimiser.lr=0.1"}), "--set optimiser.lr=0.1", "optimiser",
                     "did you mean optimizer?");
  EXPECT_INPUT_ERROR(mpt::config_from_json(e, "cfg", {"optimizer.lr.x=1"}), "--set optimizer.lr.x=1",
                     "optimizer.lr.x", "optimizer.lr is not an object");
  EXPECT_INPUT_ERROR(mpt::config_from_json(e, "cfg", {"precision.layers.0.dtype=fp32"}),
                     "--set precision.layers.0.dtype=fp32", "precision.layers.0.dtype", "is an array; set it whole");
  EXPECT_INPUT_ERROR(mpt::config_from_json(e, "cfg", {"optimizer.lr=abc"}), "--set optimizer.lr=abc", "optimizer.lr",
                     "expected number, got string \"abc\"");
  EXPECT_INPUT_ERROR(mpt::config_from_json(e, "cfg", {"optimizer=5"}), "--set optimizer=5", "optimizer",
                     "expected object, got number 5");
  EXPECT_INPUT_ERROR(mpt::config_from_json(e, "cfg", {"optimizer={\"lrr\": 1}"}), "--set optimizer={\"lrr\": 1}",
                     "optimizer.lrr", "did you mean optimizer.lr?");
  EXPECT_INPUT_ERROR(mpt::config_from_json(e, "cfg", {"optimizer.lr=1e400"}), "--set optimizer.lr=1e400",
                     "optimizer.lr", "number out of range");
  EXPECT_INPUT_ERROR(mpt::config_from_json(e, "cfg", {"optimizer={\"lr\": 0.1, \"lr\": 0.2}"}),
                     "--set optimizer={\"lr\": 0.1, \"lr\": 0.2}", "optimizer.lr", "duplicate key");
  // The blame goes to the override that is wrong, not to the first one.
  EXPECT_INPUT_ERROR(mpt::config_from_json(e, "cfg", {"train.epochs=2", "train.epochs=0"}), "--set train.epochs=0",
                     "train.epochs", "must be >= 1, got 0");
  // A later good override repairs an earlier bad value: validation sees only the final config.
  EXPECT_EQ(mpt::config_from_json(e, "cfg", {"train.epochs=0", "train.epochs=3"}).train.epochs, 3);
}

// A rule across two keys blames whichever source set one of them last.
TEST_F(ConfigFileTest, CrossKeyRuleBlamesTheLaterSource) {
  const std::string path = dir.write("x.json", R"({"optimizer": {"min_lr": 0.0005}, "loss_scale": {"init": 2}})");
  EXPECT_INPUT_ERROR(mpt::load_config(path, {"optimizer.lr=0.0001"}), "--set optimizer.lr=0.0001", "optimizer.min_lr",
                     "optimizer.lr", "got 0.0005");
  EXPECT_INPUT_ERROR(mpt::load_config(path, {"loss_scale.min=4"}), "--set loss_scale.min=4", "loss_scale.init",
                     "[loss_scale.min, loss_scale.max] = [4, 16777216], got 2");
  // Without overrides the file itself is fine.
  EXPECT_EQ(mpt::load_config(path, {}).optimizer.min_lr, 0.0005);
}

// ---------------------------------------------------------------- file-level errors

TEST_F(ConfigFileTest, MissingFileAndDirectory) {
  const std::string missing = (dir.path() / "nope.json").string();
  EXPECT_INPUT_ERROR(mpt::load_config(missing, {}), missing, "", "cannot open", "No such file");
  const std::string d = dir.path().string();
  EXPECT_INPUT_ERROR(mpt::load_config(d, {}), d, "", "cannot open");
}

TEST_F(ConfigFileTest, SyntaxErrorNamesLineAndColumn) {
  // The stray comma makes the '}' on line 4, column 3 the first bad character.
  const std::string p = dir.write("bad.json", "{\n  \"model\": {\n    \"type\": \"mlp\",\n  }\n}\n");
  EXPECT_INPUT_ERROR(mpt::load_config(p, {}), p, "", "JSON syntax error at line 4, column 3");
  const std::string empty = dir.write("empty.json", "");
  EXPECT_INPUT_ERROR(mpt::load_config(empty, {}), empty, "", "JSON syntax error at line 1");
  const std::string trailing = dir.write("trail.json", "{}\n\n  x");
  EXPECT_INPUT_ERROR(mpt::load_config(trailing, {}), trailing, "", "line 3, column 3");
}

TEST_F(ConfigFileTest, DuplicateKeysAndNonObjectTopLevel) {
  const std::string dup = dir.write("dup.json", R"({"optimizer": {"lr": 0.1, "lr": 0.2}})");
  EXPECT_INPUT_ERROR(mpt::load_config(dup, {}), dup, "optimizer.lr", "duplicate key");
  const std::string dup2 = dir.write("dup2.json", R"({"precision": {"layers": [
      {"pattern": "a", "dtype": "fp16"}, {"pattern": "b", "dtype": "fp16", "dtype": "bf16"}]}})");
  EXPECT_INPUT_ERROR(mpt::load_config(dup2, {}), dup2, "precision.layers[1].dtype", "duplicate key");
  // Equal keys in different objects are not duplicates.
  const std::string ok = dir.write("ok.json", R"({"loss_scale": {"min": 2}, "optimizer": {"min_lr": 0}})");
  EXPECT_EQ(mpt::load_config(ok, {}).loss_scale.min, 2.0);
  const std::string huge = dir.write("huge.json", R"({"optimizer": {"lr": 1e400}})");
  EXPECT_INPUT_ERROR(mpt::load_config(huge, {}), huge, "", "number out of range", "1e400");
  const std::string arr = dir.write("arr.json", "[1, 2]");
  EXPECT_INPUT_ERROR(mpt::load_config(arr, {}), arr, "", "top level must be a JSON object");
}

// ---------------------------------------------------------------- unknown keys

TEST_F(ConfigFileTest, UnknownKeysAndSuggestions) {
  struct Case {
    const char* text;
    const char* field;
    const char* message;  // the whole text after "file: field: "
  };
  const Case cases[] = {
      {R"({"optimizer": {"lrr": 0.1}})", "optimizer.lrr", "unknown key (did you mean optimizer.lr?)"},
      {R"({"optimiser": {}})", "optimiser", "unknown key (did you mean optimizer?)"},
      {R"({"modle": {}})", "modle", "unknown key (did you mean model?)"},
      {R"({"lr": 0.1})", "lr", "unknown key (did you mean optimizer.lr?)"},
      {R"({"train": {"lr": 0.1}})", "train.lr", "unknown key (did you mean optimizer.lr?)"},
      {R"({"optimizer": {"beta": 0.9}})", "optimizer.beta",
       "unknown key (did you mean optimizer.beta1 or optimizer.beta2?)"},
      {R"({"model": {"hiden": [4]}})", "model.hiden",
       "unknown key (did you mean model.hidden?)"},
      {R"({"optimizer": {"LR": 0.1}})", "optimizer.LR", "unknown key (did you mean optimizer.lr?)"},
      {R"({"loss_scale": {"growth_intreval": 5}})", "loss_scale.growth_intreval",
       "unknown key (did you mean loss_scale.growth_interval?)"},
      {R"({"train": {"banana": 1}})", "train.banana", "unknown key"},
      {R"({"zzzzqq": 1})", "zzzzqq", "unknown key"},
      {R"({"precision": {"layers": [{"pattern": "a", "dtpye": "fp16"}]}})", "precision.layers[0].dtpye",
       "unknown key (did you mean precision.layers[0].dtype?)"},
  };
  int i = 0;
  for (const Case& k : cases) {
    const std::string p = dir.write("u" + std::to_string(i++) + ".json", k.text);
    SCOPED_TRACE(k.text);
    try {
      mpt::load_config(p, {});
      ADD_FAILURE() << "accepted";
    } catch (const mpt::InputError& e) {
      EXPECT_EQ(e.file(), p);
      EXPECT_EQ(e.field(), k.field);
      EXPECT_EQ(std::string(e.what()), p + ": " + k.field + ": " + k.message);
    }
  }
}

// ---------------------------------------------------------------- wrong types

TEST_F(ConfigFileTest, WrongTypes) {
  struct Case {
    const char* text;
    const char* field;
    const char* fragment;
  };
  const Case cases[] = {
      {R"({"optimizer": {"lr": "abc"}})", "optimizer.lr", "expected number, got string \"abc\""},
      {R"({"optimizer": {"eps": null}})", "optimizer.eps", "expected number, got null"},
      {R"({"train": {"batch_size": 2.5}})", "train.batch_size", "expected integer, got number 2.5"},
      {R"({"train": {"batch_size": "64"}})", "train.batch_size", "expected integer, got string \"64\""},
      {R"({"train": {"epochs": 1e10}})", "train.epochs", "must be in [1, 2147483647], got"},
      {R"({"train": {"steps": 9223372036854775808}})", "train.steps",
       "must be in [0, 9223372036854775807], got 9223372036854775808"},
      {R"({"train": {"steps": 1e30}})", "train.steps", "must be in [0, 9223372036854775807], got 1e+30"},
      {R"({"debug": {"inject_inf_step": -9223372036854775808}})", "debug.inject_inf_step",
       "must be >= -1, got -9223372036854775808"},
      {R"({"train": {"seed": 18446744073709551616}})", "train.seed", "must be in [0, 18446744073709551615]"},
      {R"({"train": {"seed": -1}})", "train.seed", "must be in [0, 18446744073709551615], got -1"},
      {R"({"train": {"seed": 1.5}})", "train.seed", "expected integer, got number 1.5"},
      {R"({"train": {"seed": "7"}})", "train.seed", "expected integer, got string \"7\""},
      {R"({"model": {"layernorm": "yes"}})", "model.layernorm", "expected boolean, got string \"yes\""},
      {R"({"model": {"layernorm": 1}})", "model.layernorm", "expected boolean, got number 1"},
      {R"({"model": {"hidden": 256}})", "model.hidden", "expected array of integers, got number 256"},
      {R"({"model": {"hidden": [64, "a"]}})", "model.hidden[1]", "expected integer, got string \"a\""},
      {R"({"model": {"hidden": [64, 1.5]}})", "model.hidden[1]", "expected integer, got number 1.5"},
      {R"({"model": 5})", "model", "expected object, got number 5"},
      {R"({"model": {"type": ["mlp"]}})", "model.type", "expected string, got array"},
      {R"({"device": 1})", "device", "expected string, got number 1"},
      {R"({"log": {"metrics": false}})", "log.metrics", "expected string, got boolean false"},
      {R"({"checkpoint": {"resume": 1}})", "checkpoint.resume", "expected boolean, got number 1"},
      {R"({"optimizer": {"lr": {"x": 1}}})", "optimizer.lr", "expected number, got object"},
      {R"({"precision": {"layers": {}}})", "precision.layers", "expected array of {\"pattern\", \"dtype\"} objects"},
      {R"({"precision": {"layers": [5]}})", "precision.layers[0]", "expected object"},
      {R"({"precision": {"layers": "autox"}})", "precision.layers", "objects or \"auto\", got"},
      {R"({"precision": {"auto_timing": "guess"}})", "precision.auto_timing", "must be one of {measure, flops}"},
      {R"({"precision": {"auto_batches": 0}})", "precision.auto_batches", "must be in [1, 1000]"},
      {R"({"precision": {"max_range_frac": 1.5}})", "precision.max_range_frac", "must be in [0, 1]"},
      {R"({"precision": {"memory_budget_gib": -1}})", "precision.memory_budget_gib", "must be >= 0"},
      {R"({"precision": {"reanalyze_every": -3}})", "precision.reanalyze_every", "must be >= 0"},
      {R"({"precision": {"layers": [{"pattern": 3, "dtype": "fp16"}]}})", "precision.layers[0].pattern",
       "expected string, got number 3"},
  };
  int i = 0;
  for (const Case& k : cases) {
    const std::string p = dir.write("t" + std::to_string(i++) + ".json", k.text);
    EXPECT_INPUT_ERROR(mpt::load_config(p, {}), p, k.field, k.fragment);
  }
}

TEST(ConfigTypes, NumbersAcceptedAcrossIntAndFloat) {
  const Config c = mpt::config_from_json(
      json::parse(R"({"train": {"batch_size": 64.0, "grad_accum": 1e1, "seed": 18446744073709551615},
                      "optimizer": {"lr": 1, "clip_norm": 0}, "model": {"hidden": [8.0, 4]}})"),
      "cfg");
  EXPECT_EQ(c.train.batch_size, 64);
  EXPECT_EQ(c.train.grad_accum, 10);
  EXPECT_EQ(c.train.seed, 18446744073709551615ull);
  EXPECT_EQ(c.optimizer.lr, 1.0);
  EXPECT_EQ(c.optimizer.clip_norm, 0.0);
  EXPECT_EQ(c.model.hidden, (std::vector<int>{8, 4}));
  EXPECT_TRUE(c.resolved["train"]["batch_size"].is_number_integer());
  EXPECT_TRUE(c.resolved["model"]["hidden"][0].is_number_integer());
}

// ---------------------------------------------------------------- value ranges, every key group

TEST_F(ConfigFileTest, OutOfRangeValues) {
  struct Case {
    const char* text;
    const char* field;
    const char* fragment;
  };
  const Case cases[] = {
      // optimizer state storage
      {R"({"optimizer": {"state_dtype": "int4"}})", "optimizer.state_dtype", "must be one of {fp32, bf16, int8}"},
      {R"({"optimizer": {"state_block": 100}})", "optimizer.state_block", "must be a power of two in [64, 2048], got 100"},
      {R"({"optimizer": {"state_block": 4096}})", "optimizer.state_block", "must be a power of two in [64, 2048], got 4096"},
      {R"({"optimizer": {"state_block": 32}})", "optimizer.state_block", "must be >= 64, got 32"},
      // model
      {R"({"model": {"type": "cnn"}})", "model.type", "must be one of {mlp, gpt2}, got \"cnn\""},
      {R"({"model": {"input_dim": 0}})", "model.input_dim", "must be >= 1, got 0"},
      {R"({"model": {"hidden": [64, 0]}})", "model.hidden[1]", "must be >= 1, got 0"},
      {R"({"model": {"num_classes": 1}})", "model.num_classes", "must be >= 2, got 1"},
      {R"({"model": {"activation": "tanh"}})", "model.activation", "must be one of {gelu, relu}"},
      {R"({"model": {"init_std": -0.1}})", "model.init_std", "must be >= 0, got -0.1"},
      {R"({"model": {"init_std": 1e300}})", "model.init_std", "must fit in a float"},
      // data
      {R"({"data": {"dataset": "mnist"}})", "data.dataset", "must be one of {fashion-mnist, tokens}, got \"mnist\""},
      {R"({"data": {"dataset": "tokens"}})", "data.train_shards", "needs at least one training shard"},
      {R"({"data": {"train_shards": "x.bin"}})", "data.train_shards", "expected array of strings"},
      {R"({"data": {"format": "llm.c"}})", "data.format", "must be one of {auto, mptrain, llmc, nanogpt}, got \"llm.c\""},
      {R"({"model": {"type": "gpt2", "n_embd": 100, "n_head": 3}})", "model.n_embd", "must be a multiple of model.n_head"},
      {R"({"model": {"type": "gpt2", "n_embd": 96, "n_head": 2}})", "model.n_head", "head size n_embd / n_head = 48"},
      {R"({"precision": {"fallback": "fp8"}})", "precision.fallback", "must be one of {auto, bf16, fp32, none}"},
      {R"({"monitor": {"on_nan_loss": "ignore"}})", "monitor.on_nan_loss", "must be one of {log, skip, fallback, stop}"},
      {R"({"monitor": {"max_overflow_rate": 0}})", "monitor.max_overflow_rate", "must be in (0, 1], got 0"},
      {R"({"monitor": {"window": 1}})", "monitor.window", "must be >= 2, got 1"},
      {R"({"data": {"dir": ""}})", "data.dir", "must not be empty"},
      {R"({"data": {"train_limit": -1}})", "data.train_limit", "must be >= 0, got -1"},
      {R"({"data": {"test_limit": -5}})", "data.test_limit", "must be >= 0, got -5"},
      // precision
      {R"({"precision": {"mode": "fp8"}})", "precision.mode", "must be one of {fp32, tf32, fp16, bf16, auto}"},
      {R"({"precision": {"layers": [{"pattern": "", "dtype": "fp16"}]}})", "precision.layers[0].pattern",
       "must not be empty"},
      {R"({"precision": {"layers": [{"pattern": "a", "dtype": "fp16"}, {"pattern": "b", "dtype": "tf32"}]}})",
       "precision.layers[1].dtype", "must be one of {fp32, fp16, bf16}, got \"tf32\""},
      {R"({"precision": {"layers": [{"pattern": "a"}]}})", "precision.layers[0].dtype", "missing"},
      {R"({"precision": {"layers": [{"dtype": "bf16"}]}})", "precision.layers[0].pattern", "missing"},
      // loss_scale
      {R"({"loss_scale": {"enabled": "yes"}})", "loss_scale.enabled", "must be one of {auto, on, off}"},
      {R"({"loss_scale": {"init": 0.5}})", "loss_scale.init", "must be in [loss_scale.min, loss_scale.max]"},
      {R"({"loss_scale": {"init": 1e9}})", "loss_scale.init", "= [1, 16777216], got 1000000000"},
      {R"({"loss_scale": {"min": 0}})", "loss_scale.min", "must be > 0, got 0"},
      {R"({"loss_scale": {"min": 4, "max": 2, "init": 3}})", "loss_scale.max", "must be >= loss_scale.min (4), got 2"},
      {R"({"loss_scale": {"growth_factor": 1}})", "loss_scale.growth_factor", "must be > 1, got 1"},
      {R"({"loss_scale": {"backoff_factor": 1}})", "loss_scale.backoff_factor", "must be in (0, 1), got 1"},
      {R"({"loss_scale": {"backoff_factor": 0}})", "loss_scale.backoff_factor", "must be in (0, 1), got 0"},
      {R"({"loss_scale": {"growth_interval": 0}})", "loss_scale.growth_interval", "must be >= 1, got 0"},
      {R"({"loss_scale": {"hysteresis": 0}})", "loss_scale.hysteresis", "must be >= 1, got 0"},
      // optimizer
      {R"({"optimizer": {"lr": 0}})", "optimizer.lr", "must be > 0, got 0"},
      {R"({"optimizer": {"lr": -1e-3}})", "optimizer.lr", "must be > 0, got -0.001"},
      {R"({"optimizer": {"beta1": 1}})", "optimizer.beta1", "must be in [0, 1), got 1"},
      {R"({"optimizer": {"beta2": -0.1}})", "optimizer.beta2", "must be in [0, 1), got -0.1"},
      {R"({"optimizer": {"eps": 0}})", "optimizer.eps", "must be > 0, got 0"},
      {R"({"optimizer": {"weight_decay": -0.01}})", "optimizer.weight_decay", "must be >= 0, got -0.01"},
      {R"({"optimizer": {"warmup_steps": -1}})", "optimizer.warmup_steps", "must be >= 0, got -1"},
      {R"({"optimizer": {"schedule": "linear"}})", "optimizer.schedule", "must be one of {cosine, constant}"},
      {R"({"optimizer": {"min_lr": -1}})", "optimizer.min_lr", "must be >= 0, got -1"},
      {R"({"optimizer": {"min_lr": 0.01}})", "optimizer.min_lr", "must be in [0, optimizer.lr] = [0, 0.001], got 0.01"},
      {R"({"optimizer": {"clip_norm": -1}})", "optimizer.clip_norm", "must be >= 0, got -1"},
      // zero
      {R"({"zero": {"stage": 3}})", "zero.stage", "must be in [0, 2], got 3"},
      {R"({"zero": {"stage": -1}})", "zero.stage", "must be in [0, 2], got -1"},
      {R"({"zero": {"bucket_mb": 0}})", "zero.bucket_mb", "must be > 0, got 0"},
      // train
      {R"({"train": {"batch_size": 0}})", "train.batch_size", "must be >= 1, got 0"},
      {R"({"train": {"grad_accum": 0}})", "train.grad_accum", "must be >= 1, got 0"},
      {R"({"train": {"epochs": 0}})", "train.epochs", "must be >= 1, got 0"},
      {R"({"train": {"steps": -1}})", "train.steps", "must be >= 0, got -1"},
      // log, checkpoint, debug, device
      {R"({"log": {"every": 0}})", "log.every", "must be >= 1, got 0"},
      {R"({"checkpoint": {"every_steps": -1}})", "checkpoint.every_steps", "must be >= 0, got -1"},
      {R"({"debug": {"inject_inf_rank": -1}})", "debug.inject_inf_rank", "must be >= 0, got -1"},
      {R"({"debug": {"inject_inf_step": -2}})", "debug.inject_inf_step", "must be >= -1, got -2"},
      {R"({"device": "tpu"})", "device", "must be one of {auto, cuda, cpu}, got \"tpu\""},
  };
  int i = 0;
  for (const Case& k : cases) {
    const std::string p = dir.write("r" + std::to_string(i++) + ".json", k.text);
    EXPECT_INPUT_ERROR(mpt::load_config(p, {}), p, k.field, k.fragment);
  }
}

// The edges of every range are inside it.
TEST(ConfigRanges, BoundariesAreAccepted) {
  const Config c = mpt::config_from_json(json::parse(R"({
      "model": {"type": "gpt2", "input_dim": 1, "hidden": [], "num_classes": 2, "init_std": 0},
      "data": {"train_limit": 0, "test_limit": 0},
      "precision": {"mode": "fp32", "layers": []},
      "loss_scale": {"enabled": "off", "min": 1e-30, "max": 1e-30, "init": 1e-30, "growth_factor": 1.0000001,
                     "backoff_factor": 0.9999, "growth_interval": 1, "hysteresis": 1},
      "optimizer": {"lr": 1e-12, "beta1": 0, "beta2": 0, "eps": 1e-300, "weight_decay": 0, "warmup_steps": 0,
                    "min_lr": 1e-12, "clip_norm": 0},
      "zero": {"stage": 0, "bucket_mb": 1e-6},
      "train": {"batch_size": 1, "grad_accum": 1, "epochs": 1, "steps": 0, "seed": 0},
      "log": {"every": 1},
      "checkpoint": {"every_steps": 0},
      "debug": {"inject_inf_step": -1, "inject_inf_rank": 0},
      "device": "cuda"})"),
                                         "edges");
  EXPECT_EQ(c.model.type, "gpt2");
  EXPECT_TRUE(c.model.hidden.empty());
  EXPECT_EQ(c.loss_scale.init, 1e-30);
  EXPECT_EQ(c.optimizer.min_lr, c.optimizer.lr);
  EXPECT_EQ(c.zero.stage, 0);
  EXPECT_EQ(c.train.seed, 0u);
  EXPECT_EQ(c.device, "cuda");
  EXPECT_EQ(mpt::config_from_json(json::object(), "s", {"zero.stage=2"}).zero.stage, 2);
}

// ---------------------------------------------------------------- help

TEST(ConfigHelp, OneAlignedLinePerKey) {
  const std::string help = mpt::config_help();
  std::vector<std::string> lines;
  std::istringstream in(help);
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  ASSERT_EQ(lines.size(), kLeafKeys);

  std::set<std::string> seen;
  size_t def_col = 0, text_col = 0;
  for (const std::string& line : lines) {
    SCOPED_TRACE(line);
    const size_t start = line.find_first_not_of(' ');
    const size_t end = line.find(' ', start);
    ASSERT_NE(end, std::string::npos);
    const std::string path = line.substr(start, end - start);
    EXPECT_TRUE(seen.insert(path).second) << "twice: " << path;
    const json def = mpt::default_config_json().at(pointer(path));  // throws for a key that does not exist
    const size_t dcol = line.find_first_not_of(' ', end);
    const std::string dtext = def.dump();
    EXPECT_EQ(line.compare(dcol, dtext.size(), dtext), 0) << "default of " << path << " should read " << dtext;
    const size_t tcol = line.find_first_not_of(' ', dcol + dtext.size());
    ASSERT_NE(tcol, std::string::npos) << "no description for " << path;
    EXPECT_GE(line.size() - tcol, 4u);
    if (def_col == 0) def_col = dcol, text_col = tcol;
    EXPECT_EQ(dcol, def_col);
    EXPECT_EQ(tcol, text_col);
  }
  const std::vector<std::string> leaves = leaf_paths();
  EXPECT_EQ(seen, std::set<std::string>(leaves.begin(), leaves.end()));
}
