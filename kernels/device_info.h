// What the trainer needs to know about the CUDA devices: presence, name, capability, memory. The
// functions never abort: without a driver or a device they report "none" (count 0, present = false).
#pragma once

#include <cstddef>
#include <string>

namespace mpt {

struct DeviceInfo {
  bool present = false;
  int index = -1;
  std::string name;
  int cc_major = 0, cc_minor = 0;
  size_t total_mem = 0;       // bytes
  bool bf16 = false;          // native bf16 arithmetic and tensor cores (compute capability >= 8.0)
  bool tensor_cores = false;  // fp16 tensor cores (compute capability >= 7.0)
};

// Number of visible CUDA devices; 0 when there is no driver, no device, or the query fails.
int cuda_device_count();

// Properties of device `index`; present = false when it does not exist or cannot be queried.
DeviceInfo query_device(int index);

// Bytes in use on the current device (total - free from cudaMemGetInfo: includes the CUDA context and
// other processes on the device). Each call also updates the peak below. 0 when the query fails.
size_t device_memory_used();
// Largest device_memory_used() seen so far in this process (sampled now as well).
size_t peak_device_memory();
void reset_peak_device_memory();

}  // namespace mpt
