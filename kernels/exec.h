// Where a kernel runs. Every op header declares mpt::cpu::<op>(...) and mpt::cuda::<op>(..., stream);
// the inline dispatcher mpt::ops::<op>(const Exec&, ...) picks one. Pointers passed to cuda:: launchers
// are device pointers; pointers passed to cpu:: functions are host pointers.
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>

#include "src/dtype.h"

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

// Shape errors in launchers are programming errors: they throw with the op's name.
[[noreturn]] inline void kernel_arg_error(const char* op, const std::string& what) {
  throw std::invalid_argument(std::string(op) + ": " + what);
}

}  // namespace mpt
