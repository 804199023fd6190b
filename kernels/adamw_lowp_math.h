// The per-element arithmetic of kernels/adamw_lowp.h, written once for the CPU twin and the CUDA kernel:
// every operation is one explicitly rounded FP32 operation (no contraction into FMAs), square roots and
// divisions are IEEE (correctly rounded on both sides) and rint rounds half to even on both, so the two
// produce the same bits.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define MPT_HD __host__ __device__ __forceinline__
#else
#define MPT_HD inline
#endif

namespace mpt::lowp {

MPT_HD float mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
MPT_HD float add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
MPT_HD float sub(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
MPT_HD float div(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
MPT_HD float sqrt_(float a) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}
MPT_HD float rint_(float a) {
#if defined(__CUDA_ARCH__)
  return rintf(a);
#else
  return std::nearbyint(a);  // the default rounding mode: to nearest, ties to even
#endif
}

// Scalars derived once on the host.
struct Scalars {
  float decay, step, sqrt_bc2, beta1, one_b1, beta2, one_b2, eps, grad_coef;
};

// m, v: this element's dequantised moments on entry, the new ones on exit; returns the new master value.
// g is the unscaled, clipped gradient. The order is kernels/adamw.h's.
MPT_HD float update(float p, float g, float& m, float& v, float decay, const Scalars& h) {
  p = mul(p, decay);
  m = add(mul(h.beta1, m), mul(h.one_b1, g));
  v = add(mul(h.beta2, v), mul(mul(h.one_b2, g), g));
  const float denom = add(div(sqrt_(v), h.sqrt_bc2), h.eps);
  return sub(p, div(mul(h.step, m), denom));
}

// int8 m: signed code, square-root companded against the block's max |m|.
MPT_HD int8_t quant_m(float x, float mmax) {
  if (!(mmax > 0.f)) return 0;
  float c = rint_(mul(127.f, sqrt_(div(fabsf(x), mmax))));
  c = c > 127.f ? 127.f : c;
  const int k = int(c);
  return int8_t(x < 0.f ? -k : k);
}
MPT_HD float dequant_m(int8_t q, float mmax) {
  const int k = q < 0 ? -int(q) : int(q);
  const float t = div(float(k), 127.f);
  const float x = mul(mmax, mul(t, t));
  return q < 0 ? -x : x;
}
// int8 v, kept as u = sqrt(v): unsigned code companded against the block's max u; u > 0 never gives code 0.
MPT_HD uint8_t quant_u(float u, float umax) {
  if (!(umax > 0.f) || !(u > 0.f)) return 0;
  float c = rint_(mul(255.f, sqrt_(div(u, umax))));
  c = c > 255.f ? 255.f : (c < 1.f ? 1.f : c);
  return uint8_t(int(c));
}
MPT_HD float dequant_u(uint8_t c, float umax) {
  const float t = div(float(c), 255.f);
  return mul(umax, mul(t, t));
}

// bf16 storage as its bits; rounding to nearest even, the same bits as src/core/dtype.h (and __float2bfloat16_rn).
MPT_HD uint16_t to_bf16(float f) {
  uint32_t u;
#if defined(__CUDA_ARCH__)
  u = __float_as_uint(f);
#else
  __builtin_memcpy(&u, &f, 4);
#endif
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
MPT_HD float from_bf16(uint16_t b) {
  const uint32_t u = uint32_t(b) << 16;
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  __builtin_memcpy(&f, &u, 4);
  return f;
#endif
}

}  // namespace mpt::lowp
