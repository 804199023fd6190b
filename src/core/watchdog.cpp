#include "src/core/watchdog.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <thread>
#include <vector>

#include "src/core/check.h"

namespace mpt {

namespace {

using Clock = std::chrono::steady_clock;

struct State {
  std::mutex mu;
  std::condition_variable cv;
  std::thread thread;
  bool running = false;
  double timeout_s = 0;
  std::vector<std::string> names;  // nested WaitScopes of the main thread, outermost first
  Clock::time_point since;         // when the outermost began
  std::atomic<int64_t> step{-1};
  std::thread poller;
  std::string poll_error;  // set by the poller: an NCCL communicator failed asynchronously
};
State& state() {
  static State s;
  return s;
}

void watch() {
  State& s = state();
  std::unique_lock<std::mutex> lock(s.mu);
  while (s.running) {
    s.cv.wait_for(lock, std::chrono::milliseconds(200));
    if (!s.running) continue;
    if (!s.poll_error.empty()) {
      const std::string what = !s.names.empty() ? s.names.back() : std::string("computation");
      const std::string error = s.poll_error;
      const long long step = static_cast<long long>(s.step.load());
      lock.unlock();
      fatal_exit("watchdog: " + error + " (this rank was in " + what + " of step " + std::to_string(step) +
                 "). Ending the job");
    }
    if (s.names.empty()) continue;
    const double waited = std::chrono::duration<double>(Clock::now() - s.since).count();
    if (waited < s.timeout_s) continue;
    const std::string what = s.names.back();
    const long long step = static_cast<long long>(s.step.load());
    lock.unlock();
    char msg[768];
    std::snprintf(msg, sizeof msg,
                  "watchdog: no progress for %.0f s (watchdog.timeout_s = %g) in step %lld, waiting in %s; another "
                  "rank has stopped or hangs. Ending the job",
                  waited, s.timeout_s, step, what.c_str());
    // The fatal path prints host and rank, aborts the communicator (every rank ends) and this process.
    fatal_exit(msg);
  }
}

// Asks the communicators for asynchronous errors (a peer's connection lost, a remote abort), which would
// otherwise leave the collective kernels spinning. Its own thread, holding no lock of the watchdog while
// it asks: ncclCommGetAsyncError was seen to block while a collective of the communicator waited for a
// stopped peer, and a blocked poll must never keep the timeout from firing.
void poll_loop() {
  State& s = state();
  const auto poll = fatal_state().async_error_poll;  // installed with the communicators, before the start
  std::unique_lock<std::mutex> lock(s.mu);
  while (s.running) {
    s.cv.wait_for(lock, std::chrono::milliseconds(500));
    if (!s.running || !poll) continue;
    lock.unlock();
    std::string error = poll();
    lock.lock();
    if (!error.empty() && s.poll_error.empty()) s.poll_error = std::move(error);
  }
}

}  // namespace

void watchdog_start(double timeout_s) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.running || !(timeout_s > 0)) return;
  s.timeout_s = timeout_s;
  s.names.clear();
  s.running = true;
  s.poll_error.clear();
  s.thread = std::thread(watch);
  s.poller = std::thread(poll_loop);
}

void watchdog_stop() {
  State& s = state();
  {
    std::lock_guard<std::mutex> lock(s.mu);
    if (!s.running) return;
    s.running = false;
  }
  s.cv.notify_all();
  s.thread.join();
  s.poller.join();
}

void watchdog_set_step(int64_t step) { state().step.store(step); }

WaitScope::WaitScope(std::string what) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  if (!s.running) return;
  counted_ = true;
  if (s.names.empty()) s.since = Clock::now();
  s.names.push_back(std::move(what));
}

WaitScope::~WaitScope() {
  if (!counted_) return;
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  if (!s.names.empty()) s.names.pop_back();
}

}  // namespace mpt
