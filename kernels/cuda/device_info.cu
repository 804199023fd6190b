// kernels/device_info.h on the CUDA runtime. Queries that fail return "nothing" instead of going through
// MPT_FATAL: asking whether a GPU exists must work on machines without one.
#include "kernels/device_info.h"

#include <cuda_runtime.h>
#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <string>
#include <utility>

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

namespace {

// The few NVML entry points sample_power uses, declared by their documented C signatures (NVML returns 0 on
// success; handles are opaque pointers; clock type 1 is the SM clock; temperature sensor 0 is the GPU die).
using NvmlDevice = void*;
struct Nvml {
  bool ok = false;
  int (*init)() = nullptr;
  int (*by_pci)(const char*, NvmlDevice*) = nullptr;
  int (*clock)(NvmlDevice, int, unsigned*) = nullptr;
  int (*max_clock)(NvmlDevice, int, unsigned*) = nullptr;
  int (*power)(NvmlDevice, unsigned*) = nullptr;
  int (*limit)(NvmlDevice, unsigned*) = nullptr;
  int (*temperature)(NvmlDevice, int, unsigned*) = nullptr;
  int (*reasons)(NvmlDevice, unsigned long long*) = nullptr;
  int (*energy)(NvmlDevice, unsigned long long*) = nullptr;
};

template <class F>
void bind(void* lib, const char* name, F* f) {
  *f = reinterpret_cast<F>(dlsym(lib, name));
}

const Nvml& nvml() {
  static Nvml n;
  static std::once_flag once;
  std::call_once(once, [] {
    void* lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) return;
    bind(lib, "nvmlInit_v2", &n.init);
    bind(lib, "nvmlDeviceGetHandleByPciBusId_v2", &n.by_pci);
    bind(lib, "nvmlDeviceGetClockInfo", &n.clock);
    bind(lib, "nvmlDeviceGetMaxClockInfo", &n.max_clock);
    bind(lib, "nvmlDeviceGetPowerUsage", &n.power);
    bind(lib, "nvmlDeviceGetEnforcedPowerLimit", &n.limit);
    bind(lib, "nvmlDeviceGetTemperature", &n.temperature);
    bind(lib, "nvmlDeviceGetCurrentClocksEventReasons", &n.reasons);
    if (!n.reasons) bind(lib, "nvmlDeviceGetCurrentClocksThrottleReasons", &n.reasons);
    bind(lib, "nvmlDeviceGetTotalEnergyConsumption", &n.energy);
    n.ok = n.init && n.by_pci && n.init() == 0;  // the library stays loaded for the process
  });
  return n;
}

}  // namespace

PowerSample sample_power(int index) {
  PowerSample s;
  const Nvml& n = nvml();
  if (!n.ok || index < 0 || index >= cuda_device_count()) return s;
  char bus[32] = {0};
  if (cudaDeviceGetPCIBusId(bus, int(sizeof bus), index) != cudaSuccess) {
    cudaGetLastError();
    return s;
  }
  NvmlDevice dev = nullptr;
  if (n.by_pci(bus, &dev) != 0) return s;
  s.ok = true;
  unsigned u = 0;
  unsigned long long ull = 0;
  if (n.clock && n.clock(dev, 1, &u) == 0) s.sm_mhz = u;
  if (n.max_clock && n.max_clock(dev, 1, &u) == 0) s.sm_max_mhz = u;
  if (n.power && n.power(dev, &u) == 0) s.watts = 1e-3 * u;
  if (n.limit && n.limit(dev, &u) == 0) s.limit_watts = 1e-3 * u;
  if (n.temperature && n.temperature(dev, 0, &u) == 0) s.temperature_c = u;
  if (n.reasons && n.reasons(dev, &ull) == 0) s.reasons = ull;
  if (n.energy && n.energy(dev, &ull) == 0) s.energy_joules = 1e-3 * double(ull);
  return s;
}

std::string clock_reason_names(unsigned long long reasons) {
  // NVML's clock-event reason bits (the idle bit 0x1 says nothing about a busy step and is left out).
  static const std::pair<unsigned long long, const char*> kNames[] = {
      {0x2, "application clocks"}, {0x4, "power cap"},       {0x8, "hardware slowdown"},
      {0x10, "sync boost"},        {0x20, "thermal (software)"}, {0x40, "thermal (hardware)"},
      {0x80, "power brake"},       {0x100, "display clock"}};
  std::string out;
  for (const auto& [bit, name] : kNames)
    if (reasons & bit) out += (out.empty() ? "" : ", ") + std::string(name);
  return out;
}

}  // namespace mpt
