// kernels/device_info.h on the CUDA runtime. Queries that fail return "nothing" instead of going through
// MPT_FATAL: asking whether a GPU exists must work on machines without one.
#include "kernels/device_info.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>

namespace mpt {

namespace {
std::atomic<size_t>& peak() {
  static std::atomic<size_t> p{0};
  return p;
}
}  // namespace

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // do not leave the failure for the next error check to report
    return 0;
  }
  return n;
}

DeviceInfo query_device(int index) {
  DeviceInfo info;
  info.index = index;
  if (index < 0 || index >= cuda_device_count()) return info;
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, index) != cudaSuccess) {
    cudaGetLastError();
    return info;
  }
  info.present = true;
  info.name = prop.name;
  info.cc_major = prop.major;
  info.cc_minor = prop.minor;
  info.total_mem = prop.totalGlobalMem;
  info.bf16 = prop.major >= 8;
  info.tensor_cores = prop.major >= 7;
  return info;
}

size_t device_memory_used() {
  size_t free_b = 0, total_b = 0;
  if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  const size_t used = total_b - free_b;
  size_t p = peak().load(std::memory_order_relaxed);
  while (used > p && !peak().compare_exchange_weak(p, used, std::memory_order_relaxed)) {
  }
  return used;
}

size_t peak_device_memory() {
  device_memory_used();
  return peak().load(std::memory_order_relaxed);
}

void reset_peak_device_memory() { peak().store(0, std::memory_order_relaxed); }

}  // namespace mpt
