// Per-op profile of training steps (`mptrain profile`, launch/profile.sh). Installed as the OpTimer of
// kernels/exec.h, it brackets every ops:: call with CUDA events on the op's stream (host clocks on CPU
// ranks), and the whole step with one more pair, so the table's rows and the step time come from one
// timeline: what the rows do not cover is launch gaps, host work, copies and waits for the host.
#pragma once

#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "comm/communicator.h"
#include "kernels/exec.h"

namespace mpt {

struct ProfileRow {
  std::string name;  // op and shape
  int launches = 0;
  double ms = 0, flops = 0, bytes = 0;  // totals over the launches
};

// Where the compute stream idles: the time between one op's end and the next op's begin on the stream the
// step runs on (and from the step's begin to its first op, from its last op to the step's end), by the
// position in the step, averaged over the profiled steps.
struct ProfileGap {
  int position = 0;    // 0: before the first op; k: after the k-th op of the step on the compute stream
  std::string after;   // the op before the gap ("(step begins)" for position 0)
  std::string before;  // the op after it ("(step ends)" for the last)
  double ms = 0;
};

struct ProfileReport {
  std::vector<ProfileRow> rows;  // by time, largest first
  double step_ms = 0;            // the step between the outer events
  double ops_ms = 0;             // sum of the rows
  int steps = 1;                 // profiled steps; times are per step
  std::vector<ProfileGap> gaps;  // by position; empty when the profiled steps ran different op sequences
  double gaps_ms = 0;            // sum of the gaps
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
  // Brackets one step (on the compute stream of the Exec given to the constructor: the stream whose gaps
  // the report lists).
  void start_step();
  void stop_step();
  // Waits for the device and aggregates; times are divided by the number of steps bracketed.
  ProfileReport report();

 private:
  struct Mark;
  Mark* mark();
  Exec ex_;
  Stream compute_ = nullptr;  // the constructor's stream
  std::vector<Mark*> marks_;  // one per timed op, in launch order
  std::vector<std::pair<OpInfo, size_t>> ops_;  // info and index of the begin mark (end mark follows)
  std::vector<std::pair<size_t, size_t>> steps_;  // begin and end mark of each step
  size_t step_begin_ = 0;
  int depth_ = 0;
};

std::string format_profile(const ProfileReport& r, const Ceilings& c, double unprofiled_ms);
// The largest gaps (at most max_rows), largest first.
std::string format_gaps(const ProfileReport& r, int max_rows);
nlohmann::json profile_json(const ProfileReport& r, const Ceilings& c, double unprofiled_ms);

// One rank's profile, as gather_profiles hands it to every rank: ms per step by op name.
// The GPU's clock and power while a set of steps ran (NVML samples every 10 ms; n = 0: none, e.g. CPU ranks).
struct ClockStat {
  double sm_mhz = 0, watts = 0;
  int samples = 0;
};

struct RankProfile {
  int rank = 0;
  double step_ms = 0, ops_ms = 0, unprofiled_ms = 0, gaps_ms = 0;
  ClockStat clock;
  std::map<std::string, double> ms;
  std::vector<ProfileGap> gaps;
};
// Every rank's report on every rank (collective, on the communicator's host side).
std::vector<RankProfile> gather_profiles(Communicator& comm, const ProfileReport& r, double unprofiled_ms,
                                         const ClockStat& clock = {});
nlohmann::json rank_profiles_json(const std::vector<RankProfile>& ranks);

// What communication costs each op (`mptrain profile --without-comm`): the same steps profiled with the
// bucket collectives and without them (debug.skip_bucket_comm), on every rank. An op missing from one
// side counts 0 there.
struct CommCostRow {
  std::string op;
  double with_ms = 0, without_ms = 0;  // means over the ranks
  std::vector<double> diff_by_rank;    // with - without, rank by rank
  double diff() const { return with_ms - without_ms; }
};
struct CommCost {
  std::vector<CommCostRow> rows;           // every op, by difference, largest first
  CommCostRow ops, other, step, unprofiled;  // sum of the ops, not in any op, the profiled step, the median step
  CommCostRow sm_mhz, watts;                 // the GPUs' clock and power on each side (0 without NVML)
  // The compute stream's gaps, position by position ("<op> -> <op> (position k)"), by difference, largest
  // first; empty unless every rank ran the same op sequence on both sides.
  std::vector<CommCostRow> gaps;
};
CommCost comm_cost(const std::vector<RankProfile>& with, const std::vector<RankProfile>& without);
// The rows whose difference is largest in size (at most max_rows; the rest summed in one line), then the
// sums and the step.
std::string format_comm_cost(const CommCost& c, int max_rows);
nlohmann::json comm_cost_json(const CommCost& c);

}  // namespace mpt
