// CUDA version of kernels/adamw_lowp.h: one thread block per quantisation block. Every thread dequantises,
// updates and writes the master and parameter of its elements, keeping the new m and sqrt(v) in shared
// memory; after a block-wide max of the new values the block requantises them against the new scales.
// The arithmetic is kernels/adamw_lowp_math.h's, shared with the CPU twin, so both give the same bits.
#include "kernels/adamw_lowp.h"
#include "kernels/adamw_lowp_math.h"
#include "kernels/cuda/cuda_util.cuh"

#include <cmath>

namespace mpt::cuda {

using namespace mpt::cuda_detail;

namespace {
constexpr int kLowpThreads = 256;

// Max over the block of non-negative values (blockDim.x a multiple of 32); contains __syncthreads.
__device__ __forceinline__ float block_max_nonneg(float x, float* shm) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  x = warp_max(x);
  if (lane == 0) shm[warp] = x;
  __syncthreads();
  if (warp == 0) {
    float w = lane < int(blockDim.x >> 5) ? shm[lane] : 0.f;
    w = warp_max(w);
    if (lane == 0) shm[32] = w;
  }
  __syncthreads();
  const float r = shm[32];
  __syncthreads();
  return r;
}
}  // namespace

template <StateDType SD, class G, class P>
static __global__ void __launch_bounds__(kLowpThreads)
    adamw_lowp_kernel(float* __restrict__ master, void* __restrict__ m, void* __restrict__ v,
                      float* __restrict__ scales, const G* __restrict__ grad, float grad_unscale,
                      P* __restrict__ params, const AdamWSegment* __restrict__ segs,
                      const AdamWQBlock* __restrict__ blocks, int max_len, lowp::Scalars k) {
  extern __shared__ float lowp_shm[];  // int8: new m, then new sqrt(v), max_len each
  __shared__ float red[33];
  float* nm = lowp_shm;
  float* nu = lowp_shm + max_len;
  const AdamWQBlock b = blocks[blockIdx.x];
  float mmax = 0.f, umax = 0.f;
  if constexpr (SD == StateDType::I8) {
    mmax = scales[2 * blockIdx.x];
    umax = scales[2 * blockIdx.x + 1];
  }
  auto* m16 = static_cast<uint16_t*>(m);
  auto* v16 = static_cast<uint16_t*>(v);
  auto* m8 = static_cast<int8_t*>(m);
  auto* v8 = static_cast<uint8_t*>(v);
  float lm = 0.f, lu = 0.f;
  for (int j = 0; j < b.nsegs; ++j) {
    const AdamWSegment sg = segs[b.seg_begin + j];
    const float decay = sg.decay ? k.decay : 1.f;
    for (int64_t i = threadIdx.x; i < sg.len; i += blockDim.x) {
      const int64_t e = sg.store + i;
      const float g = __fmul_rn(__fmul_rn(to_f32(grad[sg.grad_off + i]), grad_unscale), k.grad_coef);
      float mi, vi;
      if constexpr (SD == StateDType::BF16) {
        mi = lowp::from_bf16(m16[e]);
        vi = lowp::from_bf16(v16[e]);
      } else {
        mi = lowp::dequant_m(m8[e], mmax);
        const float u = lowp::dequant_u(v8[e], umax);
        vi = __fmul_rn(u, u);
      }
      const float p = lowp::update(master[e], g, mi, vi, decay, k);
      master[e] = p;
      if (params) store_f32(params, size_t(sg.param_off + i), p);
      if constexpr (SD == StateDType::BF16) {
        m16[e] = lowp::to_bf16(mi);
        v16[e] = lowp::to_bf16(vi);
      } else {
        const float u = __fsqrt_rn(vi);
        nm[e - b.store] = mi;
        nu[e - b.store] = u;
        lm = fmaxf(lm, fabsf(mi));
        lu = fmaxf(lu, u);
      }
    }
  }
  if constexpr (SD == StateDType::I8) {
    // Every thread has read its old codes and the old scales before any is overwritten: the reductions
    // below synchronise the block.
    const float new_mmax = block_max_nonneg(lm, red);
    const float new_umax = block_max_nonneg(lu, red);
    for (int64_t l = threadIdx.x; l < b.len; l += blockDim.x) {
      m8[b.store + l] = lowp::quant_m(nm[l], new_mmax);
      v8[b.store + l] = lowp::quant_u(nu[l], new_umax);
    }
    if (threadIdx.x == 0) {
      scales[2 * blockIdx.x] = new_mmax;
      scales[2 * blockIdx.x + 1] = new_umax;
    }
  }
}

void adamw_lowp(float* master, void* m, void* v, float* scales, StateDType sd, const void* grad, DType gt,
                float grad_unscale, void* params, DType pt, const AdamWSegment* segs, const AdamWQBlock* blocks,
                int nblocks, int64_t max_len, const AdamWHyper& h, Stream s) {
  if (nblocks <= 0) return;
  if (max_len < 1 || max_len > kQBlock) kernel_arg_error("adamw_lowp", "max_len out of range");
  // Small blocks get fewer threads (a multiple of a warp), so that no warp idles through a block.
  const unsigned threads = unsigned(std::min<int64_t>(kLowpThreads, (max_len + 31) / 32 * 32));
  const size_t shm = sd == StateDType::I8 ? 2 * size_t(max_len) * sizeof(float) : 0;
  if (sd == StateDType::F32) kernel_arg_error("adamw_lowp", "fp32 states use adamw_segments");
  if (!master || !m || !v || !grad || !segs || !blocks || (sd == StateDType::I8 && !scales))
    kernel_arg_error("adamw_lowp", "null pointer");
  if (!(h.bc1 > 0.f) || !(h.bc2 > 0.f)) kernel_arg_error("adamw_lowp", "bias corrections must be positive");
  lowp::Scalars k{};
  k.decay = 1.f - h.lr * h.weight_decay;
  k.step = h.lr / h.bc1;
  k.sqrt_bc2 = std::sqrt(h.bc2);
  k.beta1 = h.beta1;
  k.one_b1 = 1.f - h.beta1;
  k.beta2 = h.beta2;
  k.one_b2 = 1.f - h.beta2;
  k.eps = h.eps;
  k.grad_coef = h.grad_coef;
  dispatch_dtype(gt, "adamw_lowp", [&](auto gtag) {
    using G = typename decltype(gtag)::type;
    dispatch_dtype(pt, "adamw_lowp", [&](auto ptag) {
      using P = typename decltype(ptag)::type;
      if (sd == StateDType::I8)
        adamw_lowp_kernel<StateDType::I8, G, P><<<unsigned(nblocks), threads, shm, to_cuda(s)>>>(
            master, m, v, scales, static_cast<const G*>(grad), grad_unscale, static_cast<P*>(params), segs, blocks,
            int(max_len), k);
      else
        adamw_lowp_kernel<StateDType::BF16, G, P><<<unsigned(nblocks), threads, shm, to_cuda(s)>>>(
            master, m, v, scales, static_cast<const G*>(grad), grad_unscale, static_cast<P*>(params), segs, blocks,
            int(max_len), k);
    });
  });
  MPT_LAUNCH_CHECK("adamw_lowp_kernel");
}

}  // namespace mpt::cuda
