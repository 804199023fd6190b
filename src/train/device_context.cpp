#include "src/train/device_context.h"

#include <algorithm>
#include <cstdio>
#include <thread>

#include <cublasLt.h>

#include "comm/device_select.h"
#include "kernels/device_info.h"
#include "kernels/gemm.h"
#include "src/core/check.h"
#include "src/core/cuda_check.h"

namespace mpt {

namespace {
constexpr size_t kGemmWorkspace = 32u << 20;
}  // namespace

std::string human_bytes(double b) {
  char buf[32];
  if (b >= 1 << 30) std::snprintf(buf, sizeof buf, "%.2f GiB", b / double(1 << 30));
  else std::snprintf(buf, sizeof buf, "%.1f MiB", b / double(1 << 20));
  return buf;
}

DeviceContext::DeviceContext(const Config& cfg, const WorldInfo& world) {
  const int ngpu = cuda_device_count();
  if (cfg.device == "cuda" && ngpu == 0)
    throw InputError(cfg.source, "device", "'cuda' requested but no CUDA device is visible on " + world.host);
  const bool use_cuda = cfg.device == "cuda" || (cfg.device == "auto" && ngpu > 0);
  if (!use_cuda) {
    ex_.device = Device::CPU;
    desc_ = "cpu";
    setup_cpu_gemm(cfg, world);
    return;
  }
  const DeviceChoice choice = choose_cuda_device(world.local_rank, world.local_size, ngpu);
  if (choice.device < 0) throw InputError(cfg.source, "device", world.host + ": " + choice.error);
  const DeviceInfo info = query_device(select_cuda_device(world));
  hw_.cuda = true;
  name_ = info.name;
  hw_.cc_major = info.cc_major;
  hw_.cc_minor = info.cc_minor;
  char buf[256];
  std::snprintf(buf, sizeof buf, "cuda:%d %s (sm%d%d, %s, bf16 %s, tensor cores %s)", info.index, info.name.c_str(),
                info.cc_major, info.cc_minor, human_bytes(double(info.total_mem)).c_str(), info.bf16 ? "yes" : "no",
                info.tensor_cores ? "yes" : "no");
  desc_ = buf;
  ex_.device = Device::CUDA;
  cudaStream_t s, c;
  MPT_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  MPT_CUDA_CHECK(cudaStreamCreateWithFlags(&c, cudaStreamNonBlocking));
  ex_.stream = reinterpret_cast<Stream>(s);
  comm_stream_ = reinterpret_cast<Stream>(c);
  cublasLtHandle_t h;
  if (cublasLtCreate(&h) != CUBLAS_STATUS_SUCCESS) MPT_FATAL("cublasLtCreate", "cannot create a cuBLASLt handle");
  ex_.blas = h;
  MPT_CUDA_CHECK(cudaMalloc(&ex_.workspace, kGemmWorkspace));
  ex_.workspace_bytes = kGemmWorkspace;
}

DeviceContext::~DeviceContext() {
  if (ex_.cuda()) {
    if (ex_.blas) cublasLtDestroy(static_cast<cublasLtHandle_t>(ex_.blas));
    if (ex_.workspace) cudaFree(ex_.workspace);
    cudaStreamDestroy(reinterpret_cast<cudaStream_t>(ex_.stream));
    cudaStreamDestroy(reinterpret_cast<cudaStream_t>(comm_stream_));
  }
}

void DeviceContext::setup_cpu_gemm(const Config& cfg, const WorldInfo& world) {
  if (cfg.cpu.gemm == "own") {
    cpu::set_gemm_backend(cpu::GemmBackend::Own);
    return;
  }
  if (!cpu::gemm_has_blas())
    throw InputError(cfg.source, "cpu.gemm",
                     "'blas' needs a build with OpenBLAS (install libopenblas-dev and rebuild); this one has none");
  const int hw = int(std::max(1u, std::thread::hardware_concurrency()));
  const int threads = cfg.cpu.threads > 0 ? cfg.cpu.threads : std::max(1, hw / std::max(1, world.local_size));
  cpu::set_gemm_backend(cpu::GemmBackend::Blas, threads);
  desc_ = "cpu (gemm: blas, " + std::to_string(threads) + " thread(s) per rank)";
}

}  // namespace mpt
