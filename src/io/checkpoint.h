// Checkpoints: one file per save holding the FP32 master weights and AdamW moments of every parameter in
// spec order (world-size and ZeRO-stage independent: a run may resume on a different number of ranks),
// the loss-scaler state and the position in training. Written atomically: data goes to a temporary file
// in the same directory, is flushed, then renamed over the final name, and `latest` is replaced the same
// way, so a crash never leaves a half-written checkpoint where a reader would take it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "src/core/param.h"

namespace mpt {

struct CheckpointMeta {
  int64_t step = 0;                  // optimizer steps taken (including skipped ones)
  int epoch = 0;                     // epoch the next step belongs to
  int64_t step_in_epoch = 0;         // steps of that epoch already done
  int64_t adam_step = 0;
  double scale = 1;
  int64_t growth_tracker = 0;
  int hysteresis_left = 1;
  int64_t skipped = 0;
  std::vector<std::pair<std::string, std::vector<int64_t>>> params;  // name, shape (spec order)
  nlohmann::json config;
  // The precision the run was in (after fallbacks and recoveries) and the recovery state: {"model": dtype,
  // "layers": [{pattern, dtype}], "recovery": {...}}; null in checkpoints written before it was recorded.
  nlohmann::json precision;
};

// Writes dir/ckpt-<step>.bin and points dir/latest at it. Throws InputError on I/O failure.
std::string save_checkpoint(const std::string& dir, const CheckpointMeta& meta, const OptimizerState& s);

// The checkpoint files of dir (ckpt-<step>.bin), newest (largest step) first.
std::vector<std::string> list_checkpoints(const std::string& dir);
// Removes all but the newest `keep` checkpoint files (keep >= 1), never the one `latest` names.
void prune_checkpoints(const std::string& dir, int keep);
// Removes the temporary files of writes that never finished (a run killed while saving); returns how many.
int remove_stale_temporaries(const std::string& dir);

// Path named by dir/latest, or "" when there is none.
std::string latest_checkpoint(const std::string& dir);

// Reads a checkpoint; throws InputError naming the file and the field for a bad magic, a truncated file,
// or parameters that do not match `specs` (names, shapes).
void load_checkpoint(const std::string& path, const std::vector<ParamSpec>& specs, CheckpointMeta* meta,
                     OptimizerState* s);

}  // namespace mpt
