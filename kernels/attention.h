// Causal multi-head self-attention, the GPT-2 layout. qkv is row-major [B, T, 3C] with C = H * D: columns
// [0, C) are q, [C, 2C) k, [2C, 3C) v, and head h uses columns h*D .. h*D+D-1 of each.
// forward:  out[b, t, h*D:(h+1)*D] = sum_{s<=t} softmax_s(q_t . k_s / sqrt(D)) v_s          ([B, T, C])
//           lse[b, h, t] = log sum_{s<=t} exp(q_t . k_s / sqrt(D))                        (FP32, kept for backward)
// backward: dqkv ([B, T, 3C], overwritten) from dout, qkv, out and lse; delta [B, H, T] is FP32 scratch
//           (delta[b,h,t] = dout_t . out_t, the softmax-backward row term).
// Arithmetic is FP32 whatever the storage dtype t; every output element is rounded once. The CUDA version
// is fused (flash-style): it never stores the T x T score matrix, recomputes scores in backward from lse,
// and computes dq and dk/dv in separate passes so no float atomics are needed (deterministic).
#pragma once
#include "kernels/exec.h"
namespace mpt {
namespace cpu {
void attention_forward(const void* qkv, void* out, float* lse, DType t, int B, int T, int H, int D);
void attention_backward(const void* dout, const void* qkv, const void* out, const float* lse, float* delta,
                        void* dqkv, DType t, int B, int T, int H, int D);
}
namespace cuda {
void attention_forward(const void* qkv, void* out, float* lse, DType t, int B, int T, int H, int D, Stream s);
void attention_backward(const void* dout, const void* qkv, const void* out, const float* lse, float* delta,
                        void* dqkv, DType t, int B, int T, int H, int D, Stream s);
}
namespace ops {
inline void attention_forward(const Exec& e, const void* qkv, void* out, float* lse, DType t, int B, int T, int H,
                              int D) {
  e.cuda() ? cuda::attention_forward(qkv, out, lse, t, B, T, H, D, e.stream)
           : cpu::attention_forward(qkv, out, lse, t, B, T, H, D);
}
inline void attention_backward(const Exec& e, const void* dout, const void* qkv, const void* out, const float* lse,
                               float* delta, void* dqkv, DType t, int B, int T, int H, int D) {
  e.cuda() ? cuda::attention_backward(dout, qkv, out, lse, delta, dqkv, t, B, T, H, D, e.stream)
           : cpu::attention_backward(dout, qkv, out, lse, delta, dqkv, t, B, T, H, D);
}
}  // namespace ops
}  // namespace mpt
