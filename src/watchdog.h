// The watchdog: ends the whole job when this rank has waited for its peers longer than watchdog.timeout_s.
// A rank that stops (a crashed node, a SIGSTOP, a hung driver) would otherwise leave every other rank in a
// collective forever. Only waits are timed, never computation: the code marks each place that waits for
// other ranks (a collective, a readback that waits for one) with a WaitScope naming it. When a wait runs
// past the limit the watchdog prints this rank, the wait and the step, and takes the fatal path, which
// aborts the communicator (NCCL, then MPI) so that every rank exits non-zero.
#pragma once

#include <cstdint>
#include <string>

namespace mpt {

// Arms the watchdog for the rest of the process (until watchdog_stop); timeout_s <= 0 leaves it off.
void watchdog_start(double timeout_s);
void watchdog_stop();
// The step the waits belong to (named in the message).
void watchdog_set_step(int64_t step);

class WaitScope {
 public:
  explicit WaitScope(std::string what);
  ~WaitScope();
  WaitScope(const WaitScope&) = delete;
  WaitScope& operator=(const WaitScope&) = delete;

 private:
  bool counted_ = false;
};

}  // namespace mpt
