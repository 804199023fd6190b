// Exposed communication: how long a step waits for collectives with nothing else to do. On GPUs the
// compute stream waits on the communication stream at a few points (a stage-2 staging slot still being
// reduced, the tail of the gradient reduction, the statistics all-reduce, the all-gather of updated
// parameters): a timing event recorded on the compute stream just before such a wait and one just after
// it bound the time that stream stood still. Collectives that block the host (every collective of CPU
// ranks, the loss all-reduce) are timed with the host clock while the device has nothing queued.
// Communication that overlaps computation costs nothing here, which is what `mptrain bench` reports.
// Off by default: each bracket is then one branch.
#pragma once

#include <array>
#include <chrono>
#include <utility>
#include <vector>

#include "kernels/exec.h"

namespace mpt {

// Where a wait happens, so that the exposed time can be told apart (mptrain bench reports each).
enum class ExposureSite {
  Gradients,   // the gradient reduction: its tail after backward (CPU ranks: every bucket's collective)
  Staging,     // ZeRO-2: a staging slot whose previous reduce-scatter has not finished
  Statistics,  // the all-reduce of {non-finite count, sum of squares, loss}
  Parameters,  // the all-gather of updated parameters, before the forward (or the update) reads them
};
inline constexpr int kExposureSites = 4;
inline constexpr const char* kExposureSiteNames[kExposureSites] = {"gradients", "staging", "statistics", "parameters"};

class ExposureProbe {
 public:
  ExposureProbe() = default;
  ~ExposureProbe();
  ExposureProbe(const ExposureProbe&) = delete;
  ExposureProbe& operator=(const ExposureProbe&) = delete;

  void enable(const Exec& ex);
  bool on() const { return on_; }
  // A wait of the compute stream (CUDA; a no-op on CPU ranks, whose collectives are host waits).
  void stream_begin(ExposureSite site);
  void stream_end();
  // A wait of the host for other ranks (CPU ranks: every collective; GPUs: host-side collectives).
  void host_begin(ExposureSite site);
  void host_end();
  // Marks the end of a training step (between steps, on the host): take_ms can then split its time by step.
  void end_step();
  // Exposed milliseconds since the last take (synchronizes the compute stream), then starts over;
  // by_site (optional) gets the same time split by site, per_step (optional) split by the steps that
  // end_step closed since the last take (time after the last end_step is left out of per_step).
  double take_ms(std::array<double, kExposureSites>* by_site = nullptr, std::vector<double>* per_step = nullptr);

 private:
  bool on_ = false;
  Exec ex_;
  std::vector<std::pair<void*, void*>> events_;  // cudaEvent_t pairs, reused step after step
  std::vector<ExposureSite> sites_;              // the site of each pair
  size_t used_ = 0;
  bool open_ = false;
  std::array<double, kExposureSites> host_ms_{};
  ExposureSite host_site_ = ExposureSite::Gradients;
  std::chrono::steady_clock::time_point host_t0_;
  int host_depth_ = 0;
  double host_total_ = 0;                               // host_ms_ summed, since the last take
  std::vector<std::pair<size_t, double>> step_ends_;    // at each end_step: used_ and host_total_
};

}  // namespace mpt
