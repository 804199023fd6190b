// CPU twin of kernels/adamw.h, in exactly the order the header gives (PyTorch's AdamW), all in FP32.
#include "kernels/adamw.h"

#include <cmath>

namespace mpt::cpu {

void adamw(float* master, float* m, float* v, const float* grad, void* param_out, DType pt, size_t n,
           const AdamWHyper& h) {
  if (n == 0) return;
  if (!master || !m || !v || !grad) kernel_arg_error("adamw", "null pointer");
  if (!(h.bc1 > 0.f) || !(h.bc2 > 0.f)) kernel_arg_error("adamw", "bias corrections must be positive");
  const float decay = 1.f - h.lr * h.weight_decay;
  const float step = h.lr / h.bc1;
  const float sqrt_bc2 = std::sqrt(h.bc2);
  const float one_b1 = 1.f - h.beta1, one_b2 = 1.f - h.beta2;
  for (size_t i = 0; i < n; ++i) {
    const float g = grad[i] * h.grad_coef;
    float p = master[i] * decay;
    const float mi = h.beta1 * m[i] + one_b1 * g;
    const float vi = h.beta2 * v[i] + one_b2 * g * g;
    p -= step * mi / (std::sqrt(vi) / sqrt_bc2 + h.eps);
    master[i] = p;
    m[i] = mi;
    v[i] = vi;
    if (param_out) store_elem(param_out, pt, i, p);
  }
}

}  // namespace mpt::cpu
