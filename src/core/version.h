// `mptrain --version`: the program's version and git commit (fixed when CMake configured the build) and
// the versions of the libraries it runs on, as found at run time.
#pragma once

#include <string>

namespace mpt {

// Several lines: "mptrain <version> (commit <hash>)", then CUDA runtime and driver, NCCL, MPI library and
// the CPU GEMM backends. Needs no GPU and no MPI job (MPI_Get_library_version works before MPI_Init).
std::string version_text();

}  // namespace mpt
