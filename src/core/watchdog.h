// The watchdog: ends the whole job when this rank has waited for its peers longer than watchdog.timeout_s.
// A rank that stops (a crashed node, a SIGSTOP, a hung driver) would otherwise leave every other rank in a
// collective forever. The code marks each place that waits for other ranks with a WaitScope naming it: a
// collective or readback on the host, and the whole of a training step, because on GPUs the host also
// blocks in plain device readbacks (the loss) once the compute stream waits on a collective that a peer
// never joins. The time counts from the outermost open scope, so a training step that takes longer than
// watchdog.timeout_s counts as hung; the message names the innermost scope. A second thread polls the NCCL
// communicators for asynchronous errors and ends the job at once when one reports an error. Ending: the
// message names host, rank, step and wait, and the fatal path aborts the communicator (NCCL, bounded, then
// MPI) so that every rank exits non-zero.
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
