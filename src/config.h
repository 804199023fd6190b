// The training configuration: JSON file + `--set key.path=value` overrides.
// Defaults live in exactly one place (default_config_json() in config.cpp); every key a user can set is
// there, so an unknown key is an error, not ignored. Errors throw InputError naming the file and the key path.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace mpt {

struct ModelConfig {
  std::string type = "mlp";            // mlp | gpt2 (later)
  int input_dim = 784;                 // mlp
  std::vector<int> hidden = {256, 256};
  int num_classes = 10;
  std::string activation = "gelu";     // gelu | relu
  bool layernorm = false;              // LayerNorm after each hidden Linear (before the activation)
  float init_std = 0.f;                // 0: PyTorch's default Linear init (uniform +-1/sqrt(fan_in))
};

struct DataConfig {
  std::string dataset = "fashion-mnist";
  std::string dir = "/usr/share/datasets/fashion-mnist";
  int64_t train_limit = 0;             // 0: all examples; else the first N (tests, quick runs)
  int64_t test_limit = 0;
};

struct LayerPrecision {
  std::string pattern;                 // glob on layer names: '*' and '?'
  std::string dtype;                   // fp32 | fp16 | bf16
};

struct PrecisionConfig {
  std::string mode = "auto";           // fp32 | tf32 | fp16 | bf16 | auto
  std::vector<LayerPrecision> layers;  // in file order; the last matching pattern wins
};

struct LossScaleConfig {
  std::string enabled = "auto";        // auto (on for fp16, off otherwise) | on | off
  double init = 65536.0;
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  int growth_interval = 2000;
  double min = 1.0;
  double max = 16777216.0;
  int hysteresis = 1;                  // overflowing steps tolerated before the scale backs off
};

struct OptimizerConfig {
  double lr = 1e-3;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double weight_decay = 0.0;           // applied to weight matrices only, not to biases or norms
  int warmup_steps = 0;
  std::string schedule = "cosine";     // cosine | constant
  double min_lr = 0.0;                 // cosine floor
  double clip_norm = 1.0;              // 0: no clipping
};

struct ZeroConfig {
  int stage = 2;                       // 0 | 1 | 2
  double bucket_mb = 25.0;             // gradient bucket size (MiB)
};

struct TrainConfig {
  int batch_size = 64;                 // per rank, per micro-batch
  int grad_accum = 1;                  // micro-batches per step
  int epochs = 1;
  int64_t steps = 0;                   // > 0: stop after this many steps (overrides epochs)
  uint64_t seed = 1234;
  bool eval_each_epoch = true;
};

struct LogConfig {
  int every = 50;                      // progress line every N steps (rank 0)
  std::string metrics = "";            // JSONL path; "" : none
  bool quiet = false;
};

struct CheckpointConfig {
  std::string dir = "";                // "" : no checkpoints
  int every_steps = 0;                 // 0: at the end of each epoch only
  bool resume = true;                  // resume from dir/latest when present
};

struct DebugConfig {
  int64_t inject_inf_step = -1;        // put an inf into one rank's gradient at this step (tests)
  int inject_inf_rank = 0;
  bool check_consistency = false;      // compare scale and a parameter checksum across ranks every step
};

struct Config {
  std::string source;                  // file the config came from (for messages)
  ModelConfig model;
  DataConfig data;
  PrecisionConfig precision;
  LossScaleConfig loss_scale;
  OptimizerConfig optimizer;
  ZeroConfig zero;
  TrainConfig train;
  LogConfig log;
  CheckpointConfig checkpoint;
  DebugConfig debug;
  std::string device = "auto";         // auto | cuda | cpu
  nlohmann::json resolved;             // the full effective config (defaults + file + overrides)
};

// Every key with its default, as JSON.
const nlohmann::json& default_config_json();

// Loads path, applies `key.path=value` overrides (value parsed as JSON, else taken as a string),
// validates everything. Throws InputError(file, key path, message).
Config load_config(const std::string& path, const std::vector<std::string>& overrides);

// Same from an in-memory JSON object (tests); `source` names it in messages.
Config config_from_json(const nlohmann::json& j, const std::string& source,
                        const std::vector<std::string>& overrides = {});

// One line per key: "key.path  default  description" for `mptrain train --help`.
std::string config_help();

}  // namespace mpt
