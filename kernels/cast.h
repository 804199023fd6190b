// cast: y[i] = round_to(yt, x[i]) between fp32, fp16 and bf16 (same dtype: a copy).
#pragma once
#include "kernels/exec.h"

namespace mpt {
namespace cpu {
void cast(const void* x, DType xt, void* y, DType yt, size_t n);
}
namespace cuda {
void cast(const void* x, DType xt, void* y, DType yt, size_t n, Stream s);
}
namespace ops {
inline void cast(const Exec& e, const void* x, DType xt, void* y, DType yt, size_t n) {
  OpScope scope(e, [&] { return OpInfo{"cast", 0, double(n) * double(dtype_size(xt) + dtype_size(yt))}; });
  e.cuda() ? cuda::cast(x, xt, y, yt, n, e.stream) : cpu::cast(x, xt, y, yt, n);
}
}  // namespace ops
}  // namespace mpt
