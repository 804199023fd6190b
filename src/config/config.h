// The training configuration: JSON file + `--set key.path=value` overrides.
// Defaults live in exactly one place (default_config_json() in src/config/defaults.cpp); every key a user can set is
// there, so an unknown key is an error, not ignored. Errors throw InputError naming the file and the key path.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace mpt {

// The LayerNorm epsilon of every GPT-2 LayerNorm (ln_1, ln_2, ln_f), as Hugging Face's layer_norm_epsilon.
inline constexpr float kGpt2LayerNormEps = 1e-5f;
// The prefix of GPT-2's parameter names (Hugging Face's: transformer.h.0.ln_1.weight).
inline constexpr const char* kGpt2HfPrefix = "transformer.";

struct ModelConfig {
  std::string type = "mlp";            // mlp | gpt2
  int input_dim = 784;                 // mlp
  std::vector<int> hidden = {256, 256};
  int num_classes = 10;
  std::string activation = "gelu";     // gelu | relu
  bool layernorm = false;              // LayerNorm after each hidden Linear (before the activation)
  float init_std = 0.f;                // 0: PyTorch's default Linear init (uniform +-1/sqrt(fan_in))
  // gpt2
  int n_layer = 2, n_head = 2, n_embd = 64;
  int seq_len = 64;                    // context length T (position embeddings)
  int vocab = 257;                     // real vocabulary; padded to a multiple of 128 for the GEMMs
  std::string init_from = "";          // safetensors file with Hugging Face GPT-2 names ("" : random init)
};

struct DataConfig {
  std::string dataset = "fashion-mnist";
  std::string dir = "/usr/share/datasets/fashion-mnist";
  int64_t train_limit = 0;             // 0: all examples; else the first N (tests, quick runs)
  int64_t test_limit = 0;
  // token shards (dataset "tokens"): file paths or glob patterns
  std::vector<std::string> train_shards;
  std::vector<std::string> val_shards;
  std::string format = "auto";         // auto | mptrain | llmc | nanogpt (src/data/tokens.h)
};

struct LayerPrecision {
  std::string pattern;                 // glob on layer names: '*' and '?'
  std::string dtype;                   // fp32 | fp16 | bf16
};

struct PrecisionConfig {
  std::string mode = "auto";           // fp32 | tf32 | fp16 | bf16 | auto
  std::vector<LayerPrecision> layers;  // in file order; the last matching pattern wins
  std::string fallback = "auto";       // precision after a fallback: auto (bf16 where supported, else fp32) | bf16 | fp32 | none
  // layers = "auto" (src/train/precision_auto.h): the per-layer policy is chosen at start from the analysis,
  // the hardware, the measured GEMM speed and the memory budget; `layers` then holds its rules.
  bool layers_auto = false;
  double max_output_err = 1e-2;        // thresholds of the analysis (mptrain analyze and auto)
  double max_grad_err = 5e-2;
  double max_range_frac = 1e-2;        // fp16: gradient fraction under- or overflowing at the loss scale
  double memory_budget_gib = 0;        // auto: per-rank estimate must fit (0: no budget)
  int auto_batches = 1;                // auto: micro-batches the analysis runs on
  std::string auto_timing = "measure"; // auto: measure (GEMMs timed on this device) | flops (fixed model)
  int64_t reanalyze_every = 0;         // auto: decide again every N steps (0: only at start)
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
  std::string state_dtype = "fp32";    // AdamW m and v storage: fp32 | bf16 | int8 (kernels/adamw_lowp.h)
  int state_block = 64;                // int8: elements per quantisation block, a power of two in [64, 2048]
};

struct ZeroConfig {
  int stage = 2;                       // 0 | 1 | 2
  double bucket_mb = 25.0;             // gradient bucket size (MiB)
  std::string offload = "none";        // none | cpu: master weights and AdamW state in host memory, the
                                       // update on host threads (src/optim/sharded_adamw.h)
  bool overlap = true;                 // GPUs: collectives overlap backward / the next forward (false: the
                                       // compute stream waits for each one at once; a baseline for bench)
  bool symmetric_memory = true;        // GPUs, 2+ ranks: parameters and gradients in NCCL symmetric windows
                                       // (comm/bootstrap.h NcclOptions): copy-engine all-gathers
  bool copy_engine_reduce = true;      // with symmetric_memory: reduce-scatter = copy-engine all-to-all + one
                                       // local sum kernel (comm/bootstrap.h NcclOptions)
  bool reorder_backward = true;        // 2+ ranks, overlap on: backward moves independent work so that the
                                       // last bucket completes earlier (GradSink::reduces_during_backward)
};

struct TrainConfig {
  int batch_size = 64;                 // per rank, per micro-batch
  int grad_accum = 1;                  // micro-batches per step
  int epochs = 1;
  int64_t steps = 0;                   // > 0: stop after this many steps (overrides epochs)
  uint64_t seed = 1234;
  bool eval_each_epoch = true;
  int eval_every = 0;                  // > 0: validation every N steps as well
  int eval_batches = 0;                // > 0: cap on validation micro-batches per evaluation (0: all)
};

// Stability monitor (src/optim/stability.h): rolling windows over the agreed per-step loss, gradient norm and
// overflow flag. Actions: log | skip (skip that update) | fallback (switch precision) | stop.
struct MonitorConfig {
  bool enabled = true;
  int window = 100;                    // steps in the rolling windows
  int min_history = 20;                // clean steps needed before z-scores are trusted
  double spike_zscore = 6.0;           // loss (or grad norm) this many std devs above the window mean
  std::string on_loss_spike = "log";
  std::string on_grad_spike = "log";
  std::string on_nan_loss = "skip";    // a non-finite loss (the gradient may still be finite)
  double max_overflow_rate = 0.5;      // overflowing fraction of the last `window` steps ...
  std::string on_overflow_rate = "fallback";
  int min_scale_patience = 50;         // fp16: steps in a row at loss_scale.min (overflowing) ...
  std::string on_min_scale = "fallback";
  // Recovery: after a fallback, this many clean steps in a row in the safer precision (0: never) and the
  // faster one is tried again, at most max_recoveries times; a recovery the monitor sends back doubles the
  // wait before the next.
  int64_t recover_after = 0;
  int max_recoveries = 2;
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
  int keep_last = 0;                   // newest K checkpoint files kept; 0: all
  bool fallback_to_previous = false;   // damaged latest: resume from the newest intact one
};

struct DebugConfig {
  int64_t inject_inf_step = -1;        // put an inf into one rank's gradient at this step (tests)
  int inject_inf_rank = 0;
  bool check_consistency = false;      // compare scale and a parameter checksum across ranks every step
  bool skip_bucket_comm = false;       // timing only: no gradient reduce-scatter / parameter all-gather
};

// CPU ranks (device cpu). The own GEMM stays the default: it is bitwise reproducible across machines
// and thread counts, which the tests and the CPU-vs-CUDA comparisons rely on; blas is opt-in speed.
struct CpuConfig {
  std::string gemm = "own";  // own | blas (kernels/gemm.h)
  int threads = 0;           // host threads per rank (BLAS GEMM; zero.offload's update); 0: hardware threads / ranks on the node
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
  MonitorConfig monitor;
  double watchdog_timeout_s = 60;      // watchdog.timeout_s (src/core/watchdog.h); 0: off
  std::string device = "auto";         // auto | cuda | cpu
  CpuConfig cpu;
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
