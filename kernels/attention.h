// Causal multi-head self-attention, the GPT-2 layout. qkv is row-major [B, T, 3C] with C = H * D: columns
// [0, C) are q, [C, 2C) k, [2C, 3C) v, and head h uses columns h*D .. h*D+D-1 of each.
// forward:  out[b, t, h*D:(h+1)*D] = sum_{s<=t} softmax_s(q_t . k_s / sqrt(D)) v_s          ([B, T, C])
//           lse[b, h, t] = log sum_{s<=t} exp(q_t . k_s / sqrt(D))                        (FP32, kept for backward)
// backward: dqkv ([B, T, 3C], overwritten) from dout, qkv, out and lse; delta [B, H, T] is FP32 scratch
//           (delta[b,h,t] = dout_t . out_t, the softmax-backward row term).
// Arithmetic: scores, softmax statistics, lse, delta and every accumulation are FP32; every output element
// is rounded once. The CPU twin keeps P and dS in FP32 as well. The CUDA version with half or bf16 storage
// runs on tensor cores (FlashAttention-2 structure) and rounds P (for out and dv) and dS (for dq and dk) to
// the storage dtype as the operand of those products, as FlashAttention and cuDNN do: each term of such a sum
// moves by at most u_t |term| (u_t = 2^-8 bf16, 2^-11 fp16). FP32 storage runs FP32 CUDA-core kernels.
// The CUDA version never stores the T x T score matrix, recomputes scores in backward from lse, and computes
// dq in a pass of its own so that no float atomics are needed (deterministic). Given a scratch buffer of
// attention_backward_scratch_bytes (about B H T^2 bytes: the lower triangle of dS in the storage dtype), the
// tensor-core backward stores dS from its dK/dV pass there and forms dq from it with one product instead of
// recomputing three; the scratch is only used during the call (a dead activation buffer can lend it).
// Without it (null) dq is recomputed.
#pragma once
#include "kernels/exec.h"
namespace mpt {
// Causal FLOPs: two T x T x D products over the lower triangle, 4 B H T^2 D / 2 (the backward's five
// products count 2.5 times that, whatever the kernel recomputes).
inline double attention_flops(int B, int T, int H, int D) { return 2.0 * B * H * double(T) * T * D; }
namespace cpu {
void attention_forward(const void* qkv, void* out, float* lse, DType t, int B, int T, int H, int D);
void attention_backward(const void* dout, const void* qkv, const void* out, const float* lse, float* delta,
                        void* dqkv, DType t, int B, int T, int H, int D);
}
namespace cuda {
void attention_forward(const void* qkv, void* out, float* lse, DType t, int B, int T, int H, int D, Stream s);
// Bytes of scratch the backward can use for these shapes (0: none; FP32 storage, unsupported head dims).
size_t attention_backward_scratch_bytes(DType t, int B, int T, int H, int D);
void attention_backward(const void* dout, const void* qkv, const void* out, const float* lse, float* delta,
                        void* dqkv, DType t, int B, int T, int H, int D, Stream s, void* scratch = nullptr,
                        size_t scratch_bytes = 0);
}
namespace ops {
inline void attention_forward(const Exec& e, const void* qkv, void* out, float* lse, DType t, int B, int T, int H,
                              int D) {
  OpScope scope(e, [&] {
    return OpInfo{"attention_forward " + dims_str({B, T, H, D}), attention_flops(B, T, H, D),
                  4.0 * B * T * H * D * double(dtype_size(t)) + 4.0 * B * H * T};
  });
  e.cuda() ? cuda::attention_forward(qkv, out, lse, t, B, T, H, D, e.stream)
           : cpu::attention_forward(qkv, out, lse, t, B, T, H, D);
}
// scratch (may be null) as for cuda::attention_backward; the CPU twin needs none.
inline void attention_backward(const Exec& e, const void* dout, const void* qkv, const void* out, const float* lse,
                               float* delta, void* dqkv, DType t, int B, int T, int H, int D, void* scratch = nullptr,
                               size_t scratch_bytes = 0) {
  OpScope scope(e, [&] {
    return OpInfo{"attention_backward " + dims_str({B, T, H, D}), 2.5 * attention_flops(B, T, H, D),
                  8.0 * B * T * H * D * double(dtype_size(t)) + 8.0 * B * H * T};
  });
  e.cuda() ? cuda::attention_backward(dout, qkv, out, lse, delta, dqkv, t, B, T, H, D, e.stream, scratch, scratch_bytes)
           : cpu::attention_backward(dout, qkv, out, lse, delta, dqkv, t, B, T, H, D);
}
}  // namespace ops
}  // namespace mpt
