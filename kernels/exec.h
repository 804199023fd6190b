// Where a kernel runs. Every op header declares mpt::cpu::<op>(...) and mpt::cuda::<op>(..., stream);
// the inline dispatcher mpt::ops::<op>(const Exec&, ...) picks one. Pointers passed to cuda:: launchers
// are device pointers; pointers passed to cpu:: functions are host pointers.
#pragma once

#include <cstddef>
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "src/core/dtype.h"

struct CUstream_st;  // cudaStream_t is CUstream_st*; kernels/ headers stay free of CUDA headers.

namespace mpt {

using Stream = CUstream_st*;

enum class Device { CPU, CUDA };

struct Exec {
  Device device = Device::CPU;
  Stream stream = nullptr;
  void* blas = nullptr;              // cublasLtHandle_t (CUDA only)
  void* workspace = nullptr;         // cuBLASLt workspace (device memory)
  size_t workspace_bytes = 0;
  bool allow_tf32 = false;           // precision mode tf32: fp32 GEMMs may use TF32 tensor cores
  bool cuda() const { return device == Device::CUDA; }
};

// ---- per-op timing (`mptrain profile`)
// While a timer is installed, every ops:: dispatcher brackets its call with begin / end: the timer records
// CUDA events on the op's stream (or host clocks on CPU ranks). Nothing is installed in a normal run, and
// then an op pays one load and one branch; the description (a string) is built only when timing.
struct OpInfo {
  std::string name;  // op and shape, e.g. "gemm 16384x2304x768 NN bias"
  double flops = 0;  // arithmetic of the op, a multiply-add counted as 2
  double bytes = 0;  // the fewest bytes it must move: each input read once, each output written once
};
class OpTimer {
 public:
  virtual ~OpTimer() = default;
  virtual void begin(const Exec& e, OpInfo info) = 0;
  virtual void end(const Exec& e) = 0;
};
inline OpTimer*& installed_op_timer() {
  static OpTimer* timer = nullptr;
  return timer;
}
template <class Describe>
class OpScope {
 public:
  OpScope(const Exec& e, Describe&& describe) : e_(e), t_(installed_op_timer()) {
    if (t_) t_->begin(e_, describe());
  }
  ~OpScope() {
    if (t_) t_->end(e_);
  }
  OpScope(const OpScope&) = delete;
  OpScope& operator=(const OpScope&) = delete;

 private:
  const Exec& e_;
  OpTimer* t_;
};
// "AxBxC" for an op name.
inline std::string dims_str(std::initializer_list<long long> d) {
  std::string s;
  for (long long v : d) s += (s.empty() ? "" : "x") + std::to_string(v);
  return s;
}

// Shape errors in launchers are programming errors: they throw with the op's name.
[[noreturn]] inline void kernel_arg_error(const char* op, const std::string& what) {
  throw std::invalid_argument(std::string(op) + ": " + what);
}

}  // namespace mpt
