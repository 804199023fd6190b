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

// The device's power and clock state, from NVML (the driver's management library, opened at run time, so
// that nothing links against it): what a power-capped GPU's step time follows. ok = false where NVML or the
// device is missing (CPU machines); each field is 0 where the device does not report it.
struct PowerSample {
  bool ok = false;
  unsigned sm_mhz = 0;              // SM clock now
  unsigned sm_max_mhz = 0;          // the SM clock's ceiling (boost)
  double watts = 0;                 // board power now (the driver's averaged reading)
  double limit_watts = 0;           // the enforced power limit
  unsigned temperature_c = 0;
  unsigned long long reasons = 0;   // NVML clock-event reason bits now (see clock_reason_names)
  double energy_joules = 0;         // the device's energy counter since the driver loaded (Volta+), for means
};
PowerSample sample_power(int index);
// Names of the reason bits that lower clocks ("power cap", "thermal", ...); the idle bit is left out.
std::string clock_reason_names(unsigned long long reasons);

}  // namespace mpt
