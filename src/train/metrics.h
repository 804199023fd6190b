// The metrics JSONL file (schema v1, README "Metrics file") and the progress line: the file itself
// (rotation of an earlier run's file, append on resume, one flushed line per record), timestamps, the
// build's git commit, and the model-FLOPs and peak figures behind the MFU column.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

#include "src/config/config.h"
#include "src/core/dtype.h"

namespace mpt {

inline constexpr int kMetricsSchema = 1;
// One record: keys stay in the order they are given (type first), so that the lines read well.
using MetricsRecord = nlohmann::ordered_json;

double unix_time_now();                      // seconds since 1970-01-01 UTC, sub-second resolution
std::string iso8601_utc(double unix_s);      // "2025-01-31T12:34:56.789Z"
std::string git_commit();                    // of the source tree at configure time; "unknown" outside git
std::string new_run_id();                    // 16 hex digits, fresh per process

// Where an existing metrics file is moved when a fresh run starts on its path: runs/m.jsonl ->
// runs/m.1.jsonl, or the next free number (m.2.jsonl, ...); no extension: m -> m.1.
std::string metrics_rotation_path(const std::string& path);

class MetricsLog {
 public:
  MetricsLog() = default;
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;
  ~MetricsLog() { close(); }

  // Opens `path` for this run (rank 0 only). resuming: appends, first ending a line that a killed run left
  // cut. Otherwise a non-empty file at `path` is moved to metrics_rotation_path() (rotated_to() says where)
  // and a new file is started. Parent folders are created. Failures throw InputError(path, "log.metrics").
  void open(const std::string& path, bool resuming);
  bool enabled() const { return f_ != nullptr; }
  const std::string& rotated_to() const { return rotated_to_; }
  // One record: "time" (unix seconds) is added unless present; the line is flushed, so that a killed run
  // leaves whole lines. No-op when not open.
  void write(MetricsRecord record);
  void close();

 private:
  std::FILE* f_ = nullptr;
  std::string path_, rotated_to_;
};

// Model FLOPs of one training step (forward + backward) per unit: per token for GPT-2,
// 6 N + 12 n_layer n_embd seq_len (N: all parameters; the attention term counts QK^T and AV over the full
// T x T matrix, causal masking not discounted); per sample for the MLP, 6 N.
double train_flops_per_unit(const ModelConfig& m, int64_t params);

// Dense tensor-core peak of one GPU in TFLOP/s for the model dtype (bf16/fp16; fp32 with tf32 on uses the
// TF32 peak, plain fp32 the CUDA-core peak), from the vendor's data sheet for the device name; 0 when the
// device is not in the table (the progress line then shows no MFU).
double peak_tflops(const std::string& device_name, DType model_dtype, bool tf32);

std::string format_duration(double seconds);  // "0:01:23" (h:mm:ss), "-" when not finite or negative

// What the progress line shows (rank 0, every log.every steps, step 1 and the last step).
struct ProgressLine {
  int64_t step = 0, total = 0;  // 1-based
  int epoch = 1;
  double loss = 0, lr = 0, scale = 1, grad_norm = 0;
  bool overflow = false;        // grad norm shown as "-"
  int64_t skipped = 0;
  double rate = 0;              // units per second over the steps since the previous line
  std::string unit;             // "tokens" | "samples"
  double elapsed = 0, eta = 0;  // seconds
  double mfu = -1;              // fraction; < 0: not shown
  double mem_bytes = -1;        // device memory in use; < 0: not shown
};
std::string format_progress(const ProgressLine& p);

}  // namespace mpt
