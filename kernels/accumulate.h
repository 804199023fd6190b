// accumulate: dst[i] = round_to(t, float(dst[i]) + float(src[i])). The sum is one FP32 add rounded once
// to t; for two fp16 or bf16 operands FP32 has enough bits that this equals rounding the exact sum once.
// src and dst must not overlap. Used to add a later micro-batch's reduced gradients into a ZeRO-2
// gradient shard.
//
// sum_parts: dst[i] = round_to(t, (...((float(part_0[i]) + float(part_1[i])) + float(part_2[i])) ...) +
// float(part_{p-1}[i])), where part_r = parts + r * n: p blocks of n values summed in FP32 in block order and
// rounded once. It is the reduction half of a reduce-scatter whose exchange ran as an all-to-all (block r
// came from rank r; NcclCommunicator on symmetric windows), with the order and the single rounding of
// MpiCommunicator's reduce-scatter, so the GPU and the CPU reduce-scatter of the same values agree bit for
// bit. For p = 2 half-precision blocks it is the correctly rounded sum (see accumulate). dst must not
// overlap parts.
#pragma once
#include "kernels/exec.h"

namespace mpt {
namespace cpu {
void accumulate(const void* src, void* dst, DType t, size_t n);
void sum_parts(const void* parts, void* dst, DType t, size_t n, int p);
}
namespace cuda {
void accumulate(const void* src, void* dst, DType t, size_t n, Stream s);
void sum_parts(const void* parts, void* dst, DType t, size_t n, int p, Stream s);
}
namespace ops {
inline void accumulate(const Exec& e, const void* src, void* dst, DType t, size_t n) {
  OpScope scope(e, [&] { return OpInfo{"accumulate", double(n), double(n) * (double(dtype_size(t)) + 8)}; });
  e.cuda() ? cuda::accumulate(src, dst, t, n, e.stream) : cpu::accumulate(src, dst, t, n);
}
inline void sum_parts(const Exec& e, const void* parts, void* dst, DType t, size_t n, int p) {
  OpScope scope(e, [&] { return OpInfo{"sum_parts x" + std::to_string(p), double(n) * double(p - 1),
                                       double(n) * double(p + 1) * double(dtype_size(t))}; });
  e.cuda() ? cuda::sum_parts(parts, dst, t, n, p, e.stream) : cpu::sum_parts(parts, dst, t, n, p);
}
}  // namespace ops
}  // namespace mpt
