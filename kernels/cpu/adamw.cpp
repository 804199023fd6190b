// CPU twin of kernels/adamw.h, in exactly the order the header gives (PyTorch's AdamW), all in FP32.
#include "kernels/adamw.h"

#include <algorithm>
#include <cmath>
#include <vector>

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
  // In chunks, so that the arithmetic is one branch-free loop the compiler vectorises (this file is built
  // with -fno-math-errno: std::sqrt becomes the IEEE square-root instruction, with the same results), and
  // the parameter is stored by one bulk conversion per chunk. zero.offload runs this on the host.
  constexpr size_t kChunk = 1024;
  float out[kChunk];
  const size_t ps = dtype_size(pt);
  for (size_t c = 0; c < n; c += kChunk) {
    const size_t len = std::min(kChunk, n - c);
    float* __restrict ms = master + c;
    float* __restrict mm = m + c;
    float* __restrict vv = v + c;
    const float* __restrict gg = grad + c;
    for (size_t i = 0; i < len; ++i) {
      const float g = gg[i] * h.grad_coef;
      float p = ms[i] * decay;
      const float mi = h.beta1 * mm[i] + one_b1 * g;
      const float vi = h.beta2 * vv[i] + one_b2 * g * g;
      p -= step * mi / (std::sqrt(vi) / sqrt_bc2 + h.eps);
      ms[i] = p;
      mm[i] = mi;
      vv[i] = vi;
      out[i] = p;
    }
    if (param_out) from_float_n(out, static_cast<char*>(param_out) + c * ps, pt, len);
  }
}

void adamw_segments(float* master, float* m, float* v, const void* grad, DType gt, float grad_unscale, void* params,
                    DType pt, const AdamWSegment* segs, int nsegs, const AdamWHyper& h) {
  if (nsegs <= 0) return;
  if (!master || !m || !v || !grad || !segs) kernel_arg_error("adamw_segments", "null pointer");
  std::vector<float> g;
  for (int k = 0; k < nsegs; ++k) {
    const AdamWSegment& s = segs[k];
    if (s.len < 0 || s.len > kAdamWSegmentMax) kernel_arg_error("adamw_segments", "segment length out of range");
    g.resize(size_t(s.len));
    to_float_n(static_cast<const char*>(grad) + size_t(s.grad_off) * dtype_size(gt), gt, g.data(), g.size());
    for (float& x : g) x *= grad_unscale;
    AdamWHyper hk = h;
    if (!s.decay) hk.weight_decay = 0.f;
    adamw(master + s.store, m + s.store, v + s.store, g.data(),
          params ? static_cast<char*>(params) + size_t(s.param_off) * dtype_size(pt) : nullptr, pt, size_t(s.len), hk);
  }
}

}  // namespace mpt::cpu
