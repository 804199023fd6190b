// The one error idiom (DESIGN.md, Conventions).
// - A failed library call (CUDA, cuBLAS, NCCL, MPI) is fatal: fatal_call() prints host, rank, file:line,
//   the call's text and the library's message, runs the abort hook that comm/ installs (ncclCommAbort,
//   then MPI_Abort) so that no peer hangs, and aborts.
// - Bad input (config, data, checkpoint) throws InputError naming the file and the field; the CLI prints
//   it as one line and exits with code 2 on every rank.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <stdexcept>
#include <string>

#include <unistd.h>

namespace mpt {

class InputError : public std::runtime_error {
 public:
  InputError(const std::string& file, const std::string& field, const std::string& what)
      : std::runtime_error(file + (field.empty() ? "" : ": " + field) + ": " + what), file_(file), field_(field) {}
  const std::string& file() const { return file_; }
  const std::string& field() const { return field_; }

 private:
  std::string file_, field_;
};

inline constexpr int kExitBadInput = 2;

struct FatalState {
  int rank = -1;
  std::function<void()> abort_hook;  // installed by comm/bootstrap
  // Installed by comm/bootstrap with the first NCCL communicator: "" while every communicator is healthy,
  // else the asynchronous error one of them reports (polled by the watchdog thread).
  std::function<std::string()> async_error_poll;
};
inline FatalState& fatal_state() {
  static FatalState s;
  return s;
}

// Prints "mptrain: [host rank r] <what>", runs the abort hook (every rank ends) and aborts this process.
[[noreturn]] inline void fatal_exit(const std::string& what) {
  char host[256] = "?";
  gethostname(host, sizeof host - 1);
  std::fprintf(stderr, "mptrain: [%s rank %d] %s\n", host, fatal_state().rank, what.c_str());
  std::fflush(stderr);
  if (fatal_state().abort_hook) {
    auto hook = std::move(fatal_state().abort_hook);
    fatal_state().abort_hook = nullptr;
    hook();
  }
  std::abort();
}

[[noreturn]] inline void fatal_call(const char* file, int line, const char* call, const std::string& msg) {
  fatal_exit(std::string(file) + ":" + std::to_string(line) + ": " + call + " failed: " + msg);
}

}  // namespace mpt

#define MPT_FATAL(call, msg) ::mpt::fatal_call(__FILE__, __LINE__, call, msg)
