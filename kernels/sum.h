// sum: acc[0] = float(double(acc[0]) + sum_i double(x[i])) for n FP32 values: the sum is formed in double
// and rounded to FP32 once. It is how a micro-batch's per-target losses reach the loss of the step on the
// device (the sum then rides in the statistics collective, DESIGN.md step 3), so the host never reads a
// loss inside a step. Double, because an FP32 running sum of B*T terms (1e4..1e6) would lose about sqrt(n)
// ulps; in double the result is within one FP32 rounding of the exact value whatever the order, so the
// CPU twin (a sequential sum) and the CUDA kernel (one block, a fixed tree) agree to one ulp.
// Deterministic: no atomics, one block, equal inputs give equal bits run after run.
#pragma once
#include <cstdint>

#include "kernels/exec.h"

namespace mpt {
namespace cpu {
void sum(const float* x, int64_t n, float* acc);
}
namespace cuda {
void sum(const float* x, int64_t n, float* acc, Stream s);
}
namespace ops {
inline void sum(const Exec& e, const float* x, int64_t n, float* acc) {
  OpScope scope(e, [&] { return OpInfo{"sum " + std::to_string(n), double(n), double(n) * 4.0}; });
  e.cuda() ? cuda::sum(x, n, acc, e.stream) : cpu::sum(x, n, acc);
}
}  // namespace ops
}  // namespace mpt
