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

// The whole shard in one launch (adamw_segments): the shard is a list of segments, each a run of elements
// updated alike. Segment k covers master / m / v [store, store + len); its gradient is read in the storage
// dtype gt at grad + grad_off and is still loss-scaled: g = (float(grad) * grad_unscale) * h.grad_coef, the
// two products rounded as written (the same bits as unscaling into an FP32 buffer first). The parameter is
// written at params + param_off (dtype pt), and weight decay applies only where decay != 0. Segments are at
// most kAdamWSegmentMax elements long (the CUDA version runs one block per segment); `segs` points to
// memory of the executing device (host for cpu::, device for cuda::).
inline constexpr int64_t kAdamWSegmentMax = 8192;
struct AdamWSegment {
  int64_t store = 0, len = 0, grad_off = 0, param_off = 0;
  int32_t decay = 0, reserved = 0;
};

namespace cpu {
void adamw(float* master, float* m, float* v, const float* grad, void* param_out, DType pt, size_t n,
           const AdamWHyper& h);
void adamw_segments(float* master, float* m, float* v, const void* grad, DType gt, float grad_unscale, void* params,
                    DType pt, const AdamWSegment* segs, int nsegs, const AdamWHyper& h);
}
namespace cuda {
void adamw(float* master, float* m, float* v, const float* grad, void* param_out, DType pt, size_t n,
           const AdamWHyper& h, Stream s);
void adamw_segments(float* master, float* m, float* v, const void* grad, DType gt, float grad_unscale, void* params,
                    DType pt, const AdamWSegment* segs, int nsegs, const AdamWHyper& h, Stream s);
}
namespace ops {
inline void adamw(const Exec& e, float* master, float* m, float* v, const float* grad, void* param_out, DType pt,
                  size_t n, const AdamWHyper& h) {
  // master, m, v read and written, grad read, the parameter written.
  OpScope scope(e, [&] { return OpInfo{"adamw", 12.0 * double(n), double(n) * (28.0 + double(dtype_size(pt)))}; });
  e.cuda() ? cuda::adamw(master, m, v, grad, param_out, pt, n, h, e.stream)
           : cpu::adamw(master, m, v, grad, param_out, pt, n, h);
}
// elems: the total length of the segments (for the profile only).
inline void adamw_segments(const Exec& e, float* master, float* m, float* v, const void* grad, DType gt,
                           float grad_unscale, void* params, DType pt, const AdamWSegment* segs, int nsegs,
                           int64_t elems, const AdamWHyper& h) {
  OpScope scope(e, [&] {
    return OpInfo{"adamw_segments", 12.0 * double(elems),
                  double(elems) * (24.0 + double(dtype_size(gt)) + double(dtype_size(pt)))};
  });
  e.cuda() ? cuda::adamw_segments(master, m, v, grad, gt, grad_unscale, params, pt, segs, nsegs, h, e.stream)
           : cpu::adamw_segments(master, m, v, grad, gt, grad_unscale, params, pt, segs, nsegs, h);
}
}  // namespace ops
}  // namespace mpt
