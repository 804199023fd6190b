// CPU twin of kernels/adamw_lowp.h: block by block, the arithmetic of kernels/adamw_lowp_math.h.
#include "kernels/adamw_lowp.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/adamw_lowp_math.h"

namespace mpt::cpu {

namespace {
lowp::Scalars scalars_of(const AdamWHyper& h) {
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
  return k;
}

void check_block(const AdamWQBlock& b, const AdamWSegment* segs, const char* who) {
  if (b.len < 0 || b.len > kQBlock || b.nsegs < 0) kernel_arg_error(who, "quantisation block out of range");
  int64_t at = b.store;
  for (int j = 0; j < b.nsegs; ++j) {
    const AdamWSegment& s = segs[b.seg_begin + j];
    if (s.store != at || s.len < 0) kernel_arg_error(who, "segments do not tile their block in order");
    at += s.len;
  }
  if (at != b.store + b.len) kernel_arg_error(who, "segments do not cover their block");
}
}  // namespace

void adamw_lowp(float* master, void* m, void* v, float* scales, StateDType sd, const void* grad, DType gt,
                float grad_unscale, void* params, DType pt, const AdamWSegment* segs, const AdamWQBlock* blocks,
                int nblocks, const AdamWHyper& h) {
  if (nblocks <= 0) return;
  if (sd == StateDType::F32) kernel_arg_error("adamw_lowp", "fp32 states use adamw_segments");
  if (!master || !m || !v || !grad || !segs || !blocks || (sd == StateDType::I8 && !scales))
    kernel_arg_error("adamw_lowp", "null pointer");
  if (!(h.bc1 > 0.f) || !(h.bc2 > 0.f)) kernel_arg_error("adamw_lowp", "bias corrections must be positive");
  const lowp::Scalars k = scalars_of(h);
  std::vector<float> nm(static_cast<size_t>(kQBlock)), nu(static_cast<size_t>(kQBlock));
  auto* m16 = static_cast<uint16_t*>(m);
  auto* v16 = static_cast<uint16_t*>(v);
  auto* m8 = static_cast<int8_t*>(m);
  auto* v8 = static_cast<uint8_t*>(v);
  for (int bi = 0; bi < nblocks; ++bi) {
    const AdamWQBlock& b = blocks[bi];
    check_block(b, segs, "adamw_lowp");
    const float mmax = sd == StateDType::I8 ? scales[2 * bi] : 0.f;
    const float umax = sd == StateDType::I8 ? scales[2 * bi + 1] : 0.f;
    float new_mmax = 0.f, new_umax = 0.f;
    for (int j = 0; j < b.nsegs; ++j) {
      const AdamWSegment& s = segs[b.seg_begin + j];
      const float decay = s.decay ? k.decay : 1.f;
      for (int64_t i = 0; i < s.len; ++i) {
        const int64_t e = s.store + i;
        const float g = (load_elem(grad, gt, size_t(s.grad_off + i)) * grad_unscale) * k.grad_coef;
        float mi, vi;
        if (sd == StateDType::BF16) {
          mi = lowp::from_bf16(m16[e]);
          vi = lowp::from_bf16(v16[e]);
        } else {
          mi = lowp::dequant_m(m8[e], mmax);
          const float u = lowp::dequant_u(v8[e], umax);
          vi = lowp::mul(u, u);
        }
        const float p = lowp::update(master[e], g, mi, vi, decay, k);
        master[e] = p;
        if (params) store_elem(params, pt, size_t(s.param_off + i), p);
        if (sd == StateDType::BF16) {
          m16[e] = lowp::to_bf16(mi);
          v16[e] = lowp::to_bf16(vi);
        } else {
          const int64_t l = e - b.store;
          const float u = lowp::sqrt_(vi);
          nm[size_t(l)] = mi;
          nu[size_t(l)] = u;
          new_mmax = std::max(new_mmax, std::fabs(mi));
          new_umax = std::max(new_umax, u);
        }
      }
    }
    if (sd != StateDType::I8) continue;
    // The scales of the NEW values: the whole block is updated before any of it is requantised.
    for (int64_t l = 0; l < b.len; ++l) {
      m8[b.store + l] = lowp::quant_m(nm[size_t(l)], new_mmax);
      v8[b.store + l] = lowp::quant_u(nu[size_t(l)], new_umax);
    }
    scales[2 * bi] = new_mmax;
    scales[2 * bi + 1] = new_umax;
  }
}

void lowp_state_to_f32(const void* m, const void* v, const float* scales, StateDType sd, const AdamWQBlock* blocks,
                       int nblocks, float* m_out, float* v_out) {
  for (int bi = 0; bi < nblocks; ++bi) {
    const AdamWQBlock& b = blocks[bi];
    for (int64_t e = b.store; e < b.store + b.len; ++e) {
      if (sd == StateDType::BF16) {
        m_out[e] = lowp::from_bf16(static_cast<const uint16_t*>(m)[e]);
        v_out[e] = lowp::from_bf16(static_cast<const uint16_t*>(v)[e]);
      } else {
        m_out[e] = lowp::dequant_m(static_cast<const int8_t*>(m)[e], scales[2 * bi]);
        const float u = lowp::dequant_u(static_cast<const uint8_t*>(v)[e], scales[2 * bi + 1]);
        v_out[e] = lowp::mul(u, u);
      }
    }
  }
}

void lowp_state_from_f32(const float* m_in, const float* v_in, StateDType sd, const AdamWQBlock* blocks, int nblocks,
                         void* m, void* v, float* scales) {
  for (int bi = 0; bi < nblocks; ++bi) {
    const AdamWQBlock& b = blocks[bi];
    if (sd == StateDType::BF16) {
      for (int64_t e = b.store; e < b.store + b.len; ++e) {
        static_cast<uint16_t*>(m)[e] = lowp::to_bf16(m_in[e]);
        static_cast<uint16_t*>(v)[e] = lowp::to_bf16(v_in[e]);
      }
      continue;
    }
    float mmax = 0.f, umax = 0.f;
    for (int64_t e = b.store; e < b.store + b.len; ++e) {
      mmax = std::max(mmax, std::fabs(m_in[e]));
      umax = std::max(umax, lowp::sqrt_(std::max(v_in[e], 0.f)));
    }
    for (int64_t e = b.store; e < b.store + b.len; ++e) {
      static_cast<int8_t*>(m)[e] = lowp::quant_m(m_in[e], mmax);
      static_cast<uint8_t*>(v)[e] = lowp::quant_u(lowp::sqrt_(std::max(v_in[e], 0.f)), umax);
    }
    scales[2 * bi] = mmax;
    scales[2 * bi + 1] = umax;
  }
}

}  // namespace mpt::cpu
