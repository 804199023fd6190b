// Storage dtypes and their conversions. Header-only so that kernels, comm and core share one definition.
// float -> fp16 / bf16 rounds to nearest even and is bit-identical to CUDA's __float2half_rn and
// __float2bfloat16_rn (NaN becomes the canonical 0x7FFF in both, as CUDA does); tests/test_dtype.cpp
// checks every bit pattern against CUDA's host-side conversions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>

namespace mpt {

enum class DType : uint8_t { F32 = 0, F16 = 1, BF16 = 2 };

inline constexpr size_t dtype_size(DType t) { return t == DType::F32 ? 4 : 2; }
inline constexpr const char* dtype_name(DType t) {
  return t == DType::F32 ? "fp32" : (t == DType::F16 ? "fp16" : "bf16");
}
inline bool is_half(DType t) { return t != DType::F32; }
// Returns false when the name is unknown.
inline bool parse_dtype(std::string_view s, DType* out) {
  if (s == "fp32") { *out = DType::F32; return true; }
  if (s == "fp16") { *out = DType::F16; return true; }
  if (s == "bf16") { *out = DType::BF16; return true; }
  return false;
}

// Trivial 16-bit storage types; arithmetic always goes through float.
struct half_t { uint16_t bits; };
struct bf16_t { uint16_t bits; };
static_assert(sizeof(half_t) == 2 && sizeof(bf16_t) == 2);

inline uint32_t float_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float bits_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

inline uint16_t float_to_half_bits(float f) {
  const uint32_t x = float_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t a = x & 0x7fffffffu;
  if (a > 0x7f800000u) return 0x7fffu;                // NaN: canonical, sign dropped (as CUDA does)
  if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // >= 65520 rounds to inf; inf stays inf
  if (a >= 0x38800000u) {                              // normal half range (>= 2^-14)
    uint32_t h = (a - 0x38000000u) >> 13;
    const uint32_t rem = a & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
    return uint16_t(sign | h);
  }
  // Subnormal half: value in units of 2^-24 is mant * 2^(e-126).
  const uint32_t e = a >> 23;
  if (e == 0) return uint16_t(sign);                   // float zero/subnormal: far below 2^-25
  const uint32_t shift = 126u - e;                     // >= 14 here
  if (shift > 25u) return uint16_t(sign);
  const uint32_t mant = (a & 0x7fffffu) | 0x800000u;
  uint32_t q = mant >> shift;
  const uint32_t r = mant & ((1u << shift) - 1u);
  const uint32_t halfway = 1u << (shift - 1u);
  if (r > halfway || (r == halfway && (q & 1u))) ++q;
  return uint16_t(sign | q);
}

inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu;
  uint32_t m = h & 0x3ffu;
  if (e == 0x1fu) return bits_float(sign | 0x7f800000u | (m << 13));
  if (e != 0) return bits_float(sign | ((e + 112u) << 23) | (m << 13));
  if (m == 0) return bits_float(sign);
  // subnormal: normalise
  int exp = 113;
  while (!(m & 0x400u)) { m <<= 1; --exp; }
  m &= 0x3ffu;
  return bits_float(sign | (uint32_t(exp) << 23) | (m << 13));
}

inline uint16_t float_to_bf16_bits(float f) {
  const uint32_t x = float_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
  const uint32_t lsb = (x >> 16) & 1u;
  return uint16_t((x + 0x7fffu + lsb) >> 16);
}
inline float bf16_bits_to_float(uint16_t b) { return bits_float(uint32_t(b) << 16); }

inline half_t to_half(float f) { return half_t{float_to_half_bits(f)}; }
inline bf16_t to_bf16(float f) { return bf16_t{float_to_bf16_bits(f)}; }
inline float to_float(half_t h) { return half_bits_to_float(h.bits); }
inline float to_float(bf16_t b) { return bf16_bits_to_float(b.bits); }

// Rounds a float to what storing it in dtype t and reading it back gives.
inline float round_to(DType t, float v) {
  switch (t) {
    case DType::F16: return half_bits_to_float(float_to_half_bits(v));
    case DType::BF16: return bf16_bits_to_float(float_to_bf16_bits(v));
    default: return v;
  }
}

// Element i of a buffer of dtype t, as float.
inline float load_elem(const void* p, DType t, size_t i) {
  switch (t) {
    case DType::F16: return half_bits_to_float(static_cast<const uint16_t*>(p)[i]);
    case DType::BF16: return bf16_bits_to_float(static_cast<const uint16_t*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}
inline void store_elem(void* p, DType t, size_t i, float v) {
  switch (t) {
    case DType::F16: static_cast<uint16_t*>(p)[i] = float_to_half_bits(v); break;
    case DType::BF16: static_cast<uint16_t*>(p)[i] = float_to_bf16_bits(v); break;
    default: static_cast<float*>(p)[i] = v;
  }
}

// Bulk conversions used by the CPU kernels and the MPI communicator.
inline void to_float_n(const void* src, DType t, float* dst, size_t n) {
  if (t == DType::F32) { std::memcpy(dst, src, n * 4); return; }
  const uint16_t* s = static_cast<const uint16_t*>(src);
  if (t == DType::BF16) {
    for (size_t i = 0; i < n; ++i) dst[i] = bf16_bits_to_float(s[i]);
  } else {
    for (size_t i = 0; i < n; ++i) dst[i] = half_bits_to_float(s[i]);
  }
}
inline void from_float_n(const float* src, void* dst, DType t, size_t n) {
  if (t == DType::F32) { std::memcpy(dst, src, n * 4); return; }
  uint16_t* d = static_cast<uint16_t*>(dst);
  if (t == DType::BF16) {
    for (size_t i = 0; i < n; ++i) d[i] = float_to_bf16_bits(src[i]);
  } else {
    for (size_t i = 0; i < n; ++i) d[i] = float_to_half_bits(src[i]);
  }
}

}  // namespace mpt
