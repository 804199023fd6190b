// CUDA version of kernels/adamw.h: one fused elementwise pass that updates master, m and v and writes the
// model-dtype parameter. The arithmetic follows the header's (and the CPU twin's) order operation by
// operation with explicitly rounded intrinsics, so nvcc cannot contract a multiply-add into an FMA; with
// IEEE division and square root this reproduces the CPU twin's FP32 results, and ranks that update the
// same shard on CPU and GPU agree.
#include "kernels/adamw.h"
#include "kernels/cuda/cuda_util.cuh"

#include <cmath>

namespace mpt::cuda {

using namespace mpt::cuda_detail;

namespace {
// Scalars derived once on the host, exactly as the CPU twin derives them.
struct AdamWScalars {
  float decay, step, sqrt_bc2, beta1, one_b1, beta2, one_b2, eps, grad_coef;
};
}  // namespace

template <class P>
static __global__ void adamw_kernel(float* __restrict__ master, float* __restrict__ m, float* __restrict__ v,
                                    const float* __restrict__ grad, P* __restrict__ param_out, size_t n,
                                    AdamWScalars h) {
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float g = __fmul_rn(grad[i], h.grad_coef);
    float p = __fmul_rn(master[i], h.decay);
    const float mi = __fadd_rn(__fmul_rn(h.beta1, m[i]), __fmul_rn(h.one_b1, g));
    const float vi = __fadd_rn(__fmul_rn(h.beta2, v[i]), __fmul_rn(__fmul_rn(h.one_b2, g), g));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), h.sqrt_bc2), h.eps);
    p = __fsub_rn(p, __fdiv_rn(__fmul_rn(h.step, mi), denom));
    master[i] = p;
    m[i] = mi;
    v[i] = vi;
    if (param_out) store_f32(param_out, i, p);
  }
}

// One block per segment; the same operations as adamw_kernel, after g = (grad * grad_unscale) * grad_coef.
template <class G, class P>
static __global__ void adamw_segments_kernel(float* __restrict__ master, float* __restrict__ m,
                                             float* __restrict__ v, const G* __restrict__ grad, float grad_unscale,
                                             P* __restrict__ params, const AdamWSegment* __restrict__ segs,
                                             AdamWScalars h, float decay_on) {
  const AdamWSegment sg = segs[blockIdx.x];
  const float decay = sg.decay ? decay_on : 1.f;
  float* ms = master + sg.store;
  float* mm = m + sg.store;
  float* vv = v + sg.store;
  const G* gs = grad + sg.grad_off;
  P* ps = params ? params + sg.param_off : nullptr;
  for (int64_t i = threadIdx.x; i < sg.len; i += blockDim.x) {
    const float g = __fmul_rn(__fmul_rn(to_f32(gs[i]), grad_unscale), h.grad_coef);
    float p = __fmul_rn(ms[i], decay);
    const float mi = __fadd_rn(__fmul_rn(h.beta1, mm[i]), __fmul_rn(h.one_b1, g));
    const float vi = __fadd_rn(__fmul_rn(h.beta2, vv[i]), __fmul_rn(__fmul_rn(h.one_b2, g), g));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), h.sqrt_bc2), h.eps);
    p = __fsub_rn(p, __fdiv_rn(__fmul_rn(h.step, mi), denom));
    ms[i] = p;
    mm[i] = mi;
    vv[i] = vi;
    if (ps) store_f32(ps, size_t(i), p);
  }
}

namespace {
AdamWScalars scalars_of(const AdamWHyper& h) {
  AdamWScalars k{};
  k.decay = 1.f - h.lr * h.weight_decay;
  k.step = h.lr / h.bc1;
  k.sqrt_bc2 = std::sqrt(h.bc2);
  k.beta1 = h.beta1;
  k.one_b1 = 1.f - h.beta1;
  k.beta2 = h.beta2;
  k.one_b2 = 1.f - h.beta2;
  k.eps = h.eps;
  k.grad_coef = h.grad_coef;
  return k;
}
}  // namespace

void adamw_segments(float* master, float* m, float* v, const void* grad, DType gt, float grad_unscale, void* params,
                    DType pt, const AdamWSegment* segs, int nsegs, const AdamWHyper& h, Stream s) {
  if (nsegs <= 0) return;
  if (!master || !m || !v || !grad || !segs) kernel_arg_error("adamw_segments", "null pointer");
  if (!(h.bc1 > 0.f) || !(h.bc2 > 0.f)) kernel_arg_error("adamw_segments", "bias corrections must be positive");
  const AdamWScalars k = scalars_of(h);
  dispatch_dtype(gt, "adamw_segments", [&](auto gtag) {
    using G = typename decltype(gtag)::type;
    dispatch_dtype(pt, "adamw_segments", [&](auto ptag) {
      using P = typename decltype(ptag)::type;
      adamw_segments_kernel<G, P><<<unsigned(nsegs), kBlock, 0, to_cuda(s)>>>(
          master, m, v, static_cast<const G*>(grad), grad_unscale, static_cast<P*>(params), segs, k, k.decay);
    });
  });
  MPT_LAUNCH_CHECK("adamw_segments_kernel");
}

void adamw(float* master, float* m, float* v, const float* grad, void* param_out, DType pt, size_t n,
           const AdamWHyper& h, Stream s) {
  if (n == 0) return;
  if (!master || !m || !v || !grad) kernel_arg_error("adamw", "null pointer");
  if (!(h.bc1 > 0.f) || !(h.bc2 > 0.f)) kernel_arg_error("adamw", "bias corrections must be positive");
  AdamWScalars k{};
  k.decay = 1.f - h.lr * h.weight_decay;
  k.step = h.lr / h.bc1;
  k.sqrt_bc2 = std::sqrt(h.bc2);
  k.beta1 = h.beta1;
  k.one_b1 = 1.f - h.beta1;
  k.beta2 = h.beta2;
  k.one_b2 = 1.f - h.beta2;
  k.eps = h.eps;
  k.grad_coef = h.grad_coef;
  const unsigned grid = grid_for(n);
  dispatch_dtype(pt, "adamw", [&](auto tag) {
    using P = typename decltype(tag)::type;
    adamw_kernel<P><<<grid, kBlock, 0, to_cuda(s)>>>(master, m, v, grad, static_cast<P*>(param_out), n, k);
  });
  MPT_LAUNCH_CHECK("adamw_kernel");
}

}  // namespace mpt::cuda
