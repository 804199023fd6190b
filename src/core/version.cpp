#include "src/core/version.h"

#include <string>

#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>

#include "kernels/gemm.h"

#ifndef MPT_VERSION
#define MPT_VERSION "unknown"
#endif
#ifndef MPT_GIT_COMMIT
#define MPT_GIT_COMMIT "unknown"
#endif

namespace mpt {
namespace {

// CUDA encodes versions as 1000 * major + 10 * minor.
std::string cuda_version(int v) { return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10); }

}  // namespace

std::string version_text() {
  std::string s = std::string("mptrain ") + MPT_VERSION + " (commit " + MPT_GIT_COMMIT + ")\n";
  int rt = 0, drv = 0;
  s += "CUDA runtime: ";
  s += cudaRuntimeGetVersion(&rt) == cudaSuccess && rt > 0 ? cuda_version(rt) : std::string("unavailable");
  // 0 (or an error) means no driver is installed: the CPU path still works.
  s += ", driver: ";
  s += cudaDriverGetVersion(&drv) == cudaSuccess && drv > 0 ? cuda_version(drv) : std::string("none");
  cudaGetLastError();
  s += "\n";
  int nv = 0;
  s += "NCCL: ";
  if (ncclGetVersion(&nv) == ncclSuccess && nv > 0)
    s += std::to_string(nv / 10000) + "." + std::to_string((nv % 10000) / 100) + "." + std::to_string(nv % 100);
  else
    s += "unavailable";
  s += " (built against " + std::to_string(NCCL_MAJOR) + "." + std::to_string(NCCL_MINOR) + "." +
       std::to_string(NCCL_PATCH) + ")\n";
  char mpi[MPI_MAX_LIBRARY_VERSION_STRING] = {0};
  int len = 0;
  std::string lib = MPI_Get_library_version(mpi, &len) == MPI_SUCCESS ? std::string(mpi, size_t(len > 0 ? len : 0))
                                                                       : std::string("unavailable");
  // Open MPI's string carries its repository and release date after a comma; the first line is enough.
  lib = lib.substr(0, lib.find_first_of(",\n"));
  s += "MPI: " + lib + "\n";
  s += "CPU GEMM: " + cpu::gemm_backends() + "\n";
  return s;
}

}  // namespace mpt
