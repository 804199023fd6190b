// AdamW on an FP32 master shard, writing the new model-dtype parameters in the same pass.
// Per element, with g = grad[i] * grad_coef (grad_coef folds the clip coefficient in):
//   p  = p * (1 - lr * weight_decay)
//   m  = beta1 * m + (1 - beta1) * g
//   v  = beta2 * v + (1 - beta2) * g * g
//   p -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)      with bc1 = 1 - beta1^t, bc2 = 1 - beta2^t
//   param_out[i] = round_to(pt, p)                          (param_out may be null)
// This is PyTorch's torch.optim.AdamW update order, so trajectories can be compared against it.
#pragma once
#include "kernels/exec.h"

namespace mpt {

struct AdamWHyper {
  float lr = 1e-3f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.f;
  float bc1 = 1.f, bc2 = 1.f;  // bias corrections 1 - beta^t
  float grad_coef = 1.f;
};

namespace cpu {
void adamw(float* master, float* m, float* v, const float* grad, void* param_out, DType pt, size_t n,
           const AdamWHyper& h);
}
namespace cuda {
void adamw(float* master, float* m, float* v, const float* grad, void* param_out, DType pt, size_t n,
           const AdamWHyper& h, Stream s);
}
namespace ops {
inline void adamw(const Exec& e, float* master, float* m, float* v, const float* grad, void* param_out, DType pt,
                  size_t n, const AdamWHyper& h) {
  // master, m, v read and written, grad read, the parameter written.
  OpScope scope(e, [&] { return OpInfo{"adamw", 12.0 * double(n), double(n) * (28.0 + double(dtype_size(pt)))}; });
  e.cuda() ? cuda::adamw(master, m, v, grad, param_out, pt, n, h, e.stream)
           : cpu::adamw(master, m, v, grad, param_out, pt, n, h);
}
}  // namespace ops
}  // namespace mpt
