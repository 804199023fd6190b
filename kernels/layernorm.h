// LayerNorm over the last dimension of a row-major [rows, cols] x. Statistics and arithmetic are FP32
// whatever the storage dtypes: x, y, dy, dx use dtype xt; gamma, beta, dgamma, dbeta use dtype pt.
// forward: y = (x - mean) * rstd * gamma + beta; mean and rstd (FP32, one per row) are saved for backward.
// backward: dx is overwritten; dgamma and dbeta are accumulated (+=, FP32 sums, rounded once to pt),
// deterministically (no float atomics).
#pragma once
#include "kernels/exec.h"

namespace mpt {
namespace cpu {
void layernorm_forward(const void* x, DType xt, const void* gamma, const void* beta, DType pt, void* y,
                       float* mean, float* rstd, int rows, int cols, float eps);
void layernorm_backward(const void* dy, const void* x, DType xt, const void* gamma, DType pt,
                        const float* mean, const float* rstd, void* dx, void* dgamma, void* dbeta,
                        int rows, int cols);
}
namespace cuda {
void layernorm_forward(const void* x, DType xt, const void* gamma, const void* beta, DType pt, void* y,
                       float* mean, float* rstd, int rows, int cols, float eps, Stream s);
void layernorm_backward(const void* dy, const void* x, DType xt, const void* gamma, DType pt,
                        const float* mean, const float* rstd, void* dx, void* dgamma, void* dbeta,
                        int rows, int cols, Stream s);
}
namespace ops {
inline void layernorm_forward(const Exec& e, const void* x, DType xt, const void* gamma, const void* beta,
                              DType pt, void* y, float* mean, float* rstd, int rows, int cols, float eps) {
  e.cuda() ? cuda::layernorm_forward(x, xt, gamma, beta, pt, y, mean, rstd, rows, cols, eps, e.stream)
           : cpu::layernorm_forward(x, xt, gamma, beta, pt, y, mean, rstd, rows, cols, eps);
}
inline void layernorm_backward(const Exec& e, const void* dy, const void* x, DType xt, const void* gamma,
                               DType pt, const float* mean, const float* rstd, void* dx, void* dgamma,
                               void* dbeta, int rows, int cols) {
  e.cuda() ? cuda::layernorm_backward(dy, x, xt, gamma, pt, mean, rstd, dx, dgamma, dbeta, rows, cols, e.stream)
           : cpu::layernorm_backward(dy, x, xt, gamma, pt, mean, rstd, dx, dgamma, dbeta, rows, cols);
}
}  // namespace ops
}  // namespace mpt
