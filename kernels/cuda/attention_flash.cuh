// Tensor-core causal attention for half and bf16 storage (FlashAttention-2 structure), used by the public
// launchers in kernels/cuda/attention.cu. Internal to kernels/cuda: callers go through kernels/attention.h.
#pragma once

#include <cuda_runtime.h>

#include "src/core/dtype.h"

namespace mpt::cuda::flash {

// True when these kernels can run the call: half or bf16 storage, head dim 16, 32, 64 or 128, an sm_80+
// device, and 16-byte aligned tensors (the tiles move with 16-byte asynchronous copies).
bool usable(DType t, int D, const void* const* ptrs, int nptrs);

// Same contracts as mpt::cuda::attention_forward / attention_backward (kernels/attention.h); delta must
// already hold dout . out (the backward launcher computes it first).
void forward(const void* qkv, void* out, float* lse, DType t, int B, int T, int H, int D, cudaStream_t s);
// scratch: when 16-byte aligned and at least ds_bytes(B, T, H) long, dQ is computed from dS stored there by
// the dK/dV pass (one product per tile instead of three); else (null) dQ is recomputed. Same bits either way
// is not promised: the two forms round the same dS but sum the scores in different orders.
size_t ds_bytes(int B, int T, int H);
void backward(const void* dout, const void* qkv, const float* lse, const float* delta, void* dqkv, void* scratch,
              size_t scratch_bytes, DType t, int B, int T, int H, int D, cudaStream_t s);

}  // namespace mpt::cuda::flash
