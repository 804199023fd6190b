// CUDA runtime error checks for host code (the MPT_FATAL idiom of src/core/check.h).
#pragma once

#include <cuda_runtime_api.h>

#include "src/core/check.h"

#define MPT_CUDA_CHECK(call)                                             \
  do {                                                                   \
    cudaError_t mpt_err_ = (call);                                       \
    if (mpt_err_ != cudaSuccess) MPT_FATAL(#call, cudaGetErrorString(mpt_err_)); \
  } while (0)
