// accumulate: dst[i] = round_to(t, float(dst[i]) + float(src[i])). The sum is one FP32 add rounded once
// to t; for two fp16 or bf16 operands FP32 has enough bits that this equals rounding the exact sum once.
// src and dst must not overlap. Used to add a later micro-batch's reduced gradients into a ZeRO-2
// gradient shard.
#pragma once
#include "kernels/exec.h"

namespace mpt {
namespace cpu {
void accumulate(const void* src, void* dst, DType t, size_t n);
}
namespace cuda {
void accumulate(const void* src, void* dst, DType t, size_t n, Stream s);
}
namespace ops {
inline void accumulate(const Exec& e, const void* src, void* dst, DType t, size_t n) {
  OpScope scope(e, [&] { return OpInfo{"accumulate", double(n), double(n) * (double(dtype_size(t)) + 8)}; });
  e.cuda() ? cuda::accumulate(src, dst, t, n, e.stream) : cpu::accumulate(src, dst, t, n);
}
}  // namespace ops
}  // namespace mpt
