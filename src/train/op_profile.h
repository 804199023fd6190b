// Per-op profile of training steps (`mptrain profile`, launch/profile.sh). Installed as the OpTimer of
// kernels/exec.h, it brackets every ops:: call with CUDA events on the op's stream (host clocks on CPU
// ranks), and the whole step with one more pair, so the table's rows and the step time come from one
// timeline: what the rows do not cover is launch gaps, host work, copies and waits for the host.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/exec.h"

namespace mpt {

struct ProfileRow {
  std::string name;  // op and shape
  int launches = 0;
  double ms = 0, flops = 0, bytes = 0;  // totals over the launches
};

struct ProfileReport {
  std::vector<ProfileRow> rows;  // by time, largest first
  double step_ms = 0;            // the step between the outer events
  double ops_ms = 0;             // sum of the rows
  int steps = 1;                 // profiled steps; times are per step
};

// The ceilings a row is compared with: a row whose FLOP per byte exceeds peak_tflops / peak_gbs is held
// against the matrix rate, any other against the copy bandwidth. Defaults: measured on an H200 (bf16 GEMM
// ~790 TFLOP/s, device copy ~4.3 TB/s, counting bytes read plus written).
struct Ceilings {
  double tflops = 790, gbs = 4300;
};

class OpProfiler : public OpTimer {
 public:
  explicit OpProfiler(const Exec& e);
  ~OpProfiler() override;
  OpProfiler(const OpProfiler&) = delete;
  OpProfiler& operator=(const OpProfiler&) = delete;

  void begin(const Exec& e, OpInfo info) override;
  void end(const Exec& e) override;
  // Brackets one step (on the compute stream of the Exec given to the constructor).
  void start_step();
  void stop_step();
  // Waits for the device and aggregates; times are divided by the number of steps bracketed.
  ProfileReport report();

 private:
  struct Mark;
  Mark* mark();
  Exec ex_;
  std::vector<Mark*> marks_;  // one per timed op, in launch order
  std::vector<std::pair<OpInfo, size_t>> ops_;  // info and index of the begin mark (end mark follows)
  std::vector<std::pair<size_t, size_t>> steps_;  // begin and end mark of each step
  size_t step_begin_ = 0;
  int depth_ = 0;
};

std::string format_profile(const ProfileReport& r, const Ceilings& c, double unprofiled_ms);
nlohmann::json profile_json(const ProfileReport& r, const Ceilings& c, double unprofiled_ms);

}  // namespace mpt
