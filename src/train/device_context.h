// DeviceContext: what a rank computes on, chosen from the config (device, cpu.*) and owned for the run.
// CUDA: the device this rank selects (comm/device_select.h), the compute stream, the communication stream,
// the cuBLASLt handle and its workspace, all released in the destructor. CPU ranks: the CPU GEMM backend.
#pragma once

#include <string>

#include "comm/bootstrap.h"
#include "kernels/exec.h"
#include "src/config/config.h"
#include "src/config/precision.h"

namespace mpt {

class DeviceContext {
 public:
  // Throws InputError (config source, "device" or "cpu.gemm") when the requested device cannot be had.
  DeviceContext(const Config& cfg, const WorldInfo& world);
  ~DeviceContext();
  DeviceContext(const DeviceContext&) = delete;
  DeviceContext& operator=(const DeviceContext&) = delete;

  const Exec& exec() const { return ex_; }
  Stream comm_stream() const { return comm_stream_; }  // CUDA: where bucket collectives run; null on CPU
  const HardwareCaps& caps() const { return hw_; }
  const std::string& description() const { return desc_; }  // for the banner and the metrics header
  const std::string& name() const { return name_; }         // CUDA device name ("" on CPU ranks)

 private:
  void setup_cpu_gemm(const Config& cfg, const WorldInfo& world);

  Exec ex_;
  Stream comm_stream_ = nullptr;
  HardwareCaps hw_;
  std::string desc_, name_;
};

// "1.5 MiB" / "2.00 GiB", for banners.
std::string human_bytes(double bytes);

}  // namespace mpt
