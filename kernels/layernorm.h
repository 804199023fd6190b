// LayerNorm over the last dimension of a row-major [rows, cols] x. Statistics and arithmetic are FP32
// whatever the storage dtypes: x, y, dy, dx use dtype xt; gamma, beta, dgamma, dbeta use dtype pt.
// forward: y = (x - mean) * rstd * gamma + beta; mean and rstd (FP32, one per row) are saved for backward.
// backward: dx is overwritten; dgamma and dbeta are accumulated (+=, FP32 sums, rounded once to pt),
// deterministically (no float atomics). With accumulate_dx the input gradient is added to dx instead
// (old dx + new term in FP32, rounded once): the residual stream's gradient in a pre-LN transformer.
// residual_layernorm_forward fuses the residual add in front: res = a + b (FP32 add, rounded once to xt;
// res may alias a), then y = LayerNorm(res) with the statistics of the ROUNDED res, which is what the
// backward pass (given res as x) sees.
#pragma once
#include "kernels/exec.h"

namespace mpt {
namespace cpu {
void layernorm_forward(const void* x, DType xt, const void* gamma, const void* beta, DType pt, void* y,
                       float* mean, float* rstd, int rows, int cols, float eps);
void layernorm_backward(const void* dy, const void* x, DType xt, const void* gamma, DType pt,
                        const float* mean, const float* rstd, void* dx, void* dgamma, void* dbeta,
                        int rows, int cols, bool accumulate_dx = false);
void residual_layernorm_forward(const void* a, const void* b, DType xt, const void* gamma, const void* beta, DType pt,
                                void* res, void* y, float* mean, float* rstd, int rows, int cols, float eps);
}
namespace cuda {
void layernorm_forward(const void* x, DType xt, const void* gamma, const void* beta, DType pt, void* y,
                       float* mean, float* rstd, int rows, int cols, float eps, Stream s);
void layernorm_backward(const void* dy, const void* x, DType xt, const void* gamma, DType pt,
                        const float* mean, const float* rstd, void* dx, void* dgamma, void* dbeta,
                        int rows, int cols, Stream s, bool accumulate_dx = false);
void residual_layernorm_forward(const void* a, const void* b, DType xt, const void* gamma, const void* beta, DType pt,
                                void* res, void* y, float* mean, float* rstd, int rows, int cols, float eps,
                                Stream s);
}
namespace ops {
inline void layernorm_forward(const Exec& e, const void* x, DType xt, const void* gamma, const void* beta,
                              DType pt, void* y, float* mean, float* rstd, int rows, int cols, float eps) {
  OpScope scope(e, [&] {
    return OpInfo{"layernorm_forward " + dims_str({rows, cols}), 8.0 * rows * cols,
                  2.0 * rows * cols * double(dtype_size(xt)) + 8.0 * rows};
  });
  e.cuda() ? cuda::layernorm_forward(x, xt, gamma, beta, pt, y, mean, rstd, rows, cols, eps, e.stream)
           : cpu::layernorm_forward(x, xt, gamma, beta, pt, y, mean, rstd, rows, cols, eps);
}
inline void layernorm_backward(const Exec& e, const void* dy, const void* x, DType xt, const void* gamma,
                               DType pt, const float* mean, const float* rstd, void* dx, void* dgamma,
                               void* dbeta, int rows, int cols, bool accumulate_dx = false) {
  OpScope scope(e, [&] {
    return OpInfo{"layernorm_backward " + dims_str({rows, cols}), 12.0 * rows * cols,
                  (accumulate_dx ? 4.0 : 3.0) * rows * cols * double(dtype_size(xt)) + 8.0 * rows};
  });
  e.cuda() ? cuda::layernorm_backward(dy, x, xt, gamma, pt, mean, rstd, dx, dgamma, dbeta, rows, cols, e.stream,
                                      accumulate_dx)
           : cpu::layernorm_backward(dy, x, xt, gamma, pt, mean, rstd, dx, dgamma, dbeta, rows, cols, accumulate_dx);
}
inline void residual_layernorm_forward(const Exec& e, const void* a, const void* b, DType xt, const void* gamma,
                                       const void* beta, DType pt, void* res, void* y, float* mean, float* rstd,
                                       int rows, int cols, float eps) {
  OpScope scope(e, [&] {
    return OpInfo{"residual_layernorm_forward " + dims_str({rows, cols}), 9.0 * rows * cols,
                  4.0 * rows * cols * double(dtype_size(xt)) + 8.0 * rows};
  });
  e.cuda() ? cuda::residual_layernorm_forward(a, b, xt, gamma, beta, pt, res, y, mean, rstd, rows, cols, eps, e.stream)
           : cpu::residual_layernorm_forward(a, b, xt, gamma, beta, pt, res, y, mean, rstd, rows, cols, eps);
}
}  // namespace ops
}  // namespace mpt
