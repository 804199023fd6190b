// mpt::cpu::attention_decode against a float64 reference, and against row pos of cpu::attention_forward.
//
// The reference reads the same dtype-rounded cache as the kernel, so the kernel's error is its FP32
// arithmetic plus one rounding of each output. E is the first-order bound on the FP32 error of
// tests/kernels/attention_test.cpp's forward, for one row: a score of D products carries u (D + 2)
// sum |q_i k_i| scale; a weight exp(s_j - m) moves relatively by its score's error, the maximum's and
// u (m - s_j) + 2u; the output's sum over L keys adds u (L + 2) (sum P |v| + |o|). The limit is 2 E for
// second-order terms, plus the final rounding: u_t |ref| (u_t = 2^-11 fp16, 2^-8 bf16, 0 for FP32 storage,
// whose rounding E covers) and half of fp16's subnormal spacing. A key too many or too few, a wrong scale
// or a value of the wrong position moves an output by O(P_j |v|), far above these limits.
// Rows after pos are filled with NaN: reading one of them (a causality bug) makes the output NaN.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "kernels/attention_decode.h"
#include "tests/test_util.h"

namespace mpt {
namespace {

constexpr double kU32 = 0x1p-24;

struct DecodeShape {
  int B, S, pos, H, D;
};
std::string decode_name(const DecodeShape& s) {
  return "B" + std::to_string(s.B) + "S" + std::to_string(s.S) + "pos" + std::to_string(s.pos) + "H" +
         std::to_string(s.H) + "D" + std::to_string(s.D);
}

double round_u(DType t) { return t == DType::F16 ? 0x1p-11 : t == DType::BF16 ? 0x1p-8 : 0.0; }
double subnormal_half_spacing(DType t) { return t == DType::F16 ? 0x1p-25 : 0.0; }

size_t cache_index(const DecodeShape& s, int b, int row, int part, int h, int i) {
  const size_t C = size_t(s.H) * size_t(s.D);
  return (size_t(b) * size_t(s.S) + size_t(row)) * 3 * C + size_t(part) * C + size_t(h) * size_t(s.D) + size_t(i);
}

// q, k in [-2, 2) (scores with a spread of ~1.3), v in [-1, 1); rows after pos are NaN.
std::vector<uint8_t> random_cache(Rng& r, DType t, const DecodeShape& s) {
  const size_t C = size_t(s.H) * size_t(s.D);
  std::vector<uint8_t> buf(size_t(s.B) * size_t(s.S) * 3 * C * dtype_size(t));
  for (int b = 0; b < s.B; ++b)
    for (int row = 0; row < s.S; ++row)
      for (int part = 0; part < 3; ++part)
        for (int h = 0; h < s.H; ++h)
          for (int i = 0; i < s.D; ++i) {
            const float v = row > s.pos ? NAN : part < 2 ? r.uniform(-2.f, 2.f) : r.uniform(-1.f, 1.f);
            store_elem(buf.data(), t, cache_index(s, b, row, part, h, i), v);
          }
  return buf;
}

TEST(AttentionDecode, MatchesFloat64Reference) {
  Rng rng = test::fresh_rng();
  // One key; odd cache lengths; head dims 32 / 64 / 128 and a non-power of two; a cache with spare rows.
  const DecodeShape shapes[] = {{2, 1, 0, 3, 32},   {1, 8, 6, 2, 64},     {3, 40, 32, 2, 128},
                                {2, 101, 100, 4, 64}, {1, 300, 254, 1, 5}, {1, 1025, 1024, 2, 32}};
  for (DType t : {DType::F32, DType::F16, DType::BF16}) {
    for (const DecodeShape& s : shapes) {
      const std::string tag = decode_name(s) + " " + dtype_name(t);
      const std::vector<uint8_t> cache = random_cache(rng, t, s);
      const size_t C = size_t(s.H) * size_t(s.D), n_out = size_t(s.B) * C;
      std::vector<uint8_t> out(n_out * dtype_size(t), 0xFF);  // NaN: every element must be written
      cpu::attention_decode(cache.data(), out.data(), t, s.B, s.S, s.pos, s.H, s.D);
      const double scale = 1.0 / std::sqrt(double(float(s.D))), ut = round_u(t);
      const int L = s.pos + 1;
      size_t bad = 0;
      for (int b = 0; b < s.B; ++b)
        for (int h = 0; h < s.H; ++h) {
          auto x = [&](int row, int part, int i) { return double(load_elem(cache.data(), t, cache_index(s, b, row, part, h, i))); };
          std::vector<double> sc(static_cast<size_t>(L)), es(static_cast<size_t>(L));
          for (int j = 0; j < L; ++j) {
            double d = 0, a = 0;
            for (int i = 0; i < s.D; ++i) d += x(s.pos, 0, i) * x(j, 1, i), a += std::fabs(x(s.pos, 0, i) * x(j, 1, i));
            sc[size_t(j)] = d * scale;
            es[size_t(j)] = kU32 * (s.D + 2) * a * scale;
          }
          const double m = *std::max_element(sc.begin(), sc.end()), em = *std::max_element(es.begin(), es.end());
          double l = 0;
          for (double v : sc) l += std::exp(v - m);
          for (int i = 0; i < s.D; ++i) {
            double o = 0, pv = 0, e = 0;
            for (int j = 0; j < L; ++j) o += std::exp(sc[size_t(j)] - m) / l * x(j, 2, i);
            for (int j = 0; j < L; ++j) {
              const double p = std::exp(sc[size_t(j)] - m) / l, v = x(j, 2, i);
              const double rho = es[size_t(j)] + em + kU32 * (m - sc[size_t(j)]) + 2 * kU32;
              e += p * std::fabs(v - o) * rho;
              pv += p * std::fabs(v);
            }
            e += kU32 * (L + 2) * (pv + std::fabs(o));
            const double got = load_elem(out.data(), t, size_t(b) * C + size_t(h) * size_t(s.D) + size_t(i));
            const double lim = 2 * e * (1 + ut) + ut * std::fabs(o) + subnormal_half_spacing(t);
            if (!(std::fabs(got - o) <= lim) && ++bad <= 5)
              ADD_FAILURE() << tag << " b" << b << " h" << h << " i" << i << ": got " << got << " ref " << o
                            << " limit " << lim;
          }
        }
      EXPECT_EQ(bad, 0u) << tag;
    }
  }
}

// The decode op is row pos of the trained full causal attention on the same qkv: bitwise, every row.
TEST(AttentionDecode, EqualsRowOfFullCausalAttention) {
  Rng rng = test::fresh_rng();
  struct Full { int B, T, H, D; };
  const Full shapes[] = {{2, 37, 3, 32}, {1, 64, 2, 64}, {1, 19, 2, 128}, {2, 9, 2, 5}};
  for (DType t : {DType::F32, DType::F16, DType::BF16}) {
    for (const Full& f : shapes) {
      const size_t C = size_t(f.H) * size_t(f.D), es = dtype_size(t);
      const std::vector<uint8_t> qkv = test::random_buffer(rng, t, size_t(f.B) * size_t(f.T) * 3 * C, -2.f, 2.f);
      std::vector<uint8_t> full(size_t(f.B) * size_t(f.T) * C * es);
      cpu::attention_forward(qkv.data(), full.data(), nullptr, t, f.B, f.T, f.H, f.D);
      std::vector<uint8_t> row(size_t(f.B) * C * es);
      size_t bad = 0;
      for (int pos = 0; pos < f.T; ++pos) {
        std::fill(row.begin(), row.end(), uint8_t(0xFF));
        cpu::attention_decode(qkv.data(), row.data(), t, f.B, f.T, pos, f.H, f.D);
        for (int b = 0; b < f.B; ++b) {
          const uint8_t* want = full.data() + (size_t(b) * size_t(f.T) + size_t(pos)) * C * es;
          if (std::memcmp(row.data() + size_t(b) * C * es, want, C * es) != 0 && ++bad <= 5)
            ADD_FAILURE() << dtype_name(t) << " B" << f.B << " T" << f.T << " H" << f.H << " D" << f.D
                          << ": row " << pos << " of sequence " << b << " differs from attention_forward";
        }
      }
      EXPECT_EQ(bad, 0u);
    }
  }
}

TEST(AttentionDecode, BadShapesThrow) {
  std::vector<uint8_t> cache(3 * 4 * 4 * 4), out(4 * 4);
  EXPECT_THROW(cpu::attention_decode(cache.data(), out.data(), DType::F32, 1, 4, 4, 1, 4), std::invalid_argument);
  EXPECT_THROW(cpu::attention_decode(cache.data(), out.data(), DType::F32, 1, 4, -1, 1, 4), std::invalid_argument);
  EXPECT_THROW(cpu::attention_decode(cache.data(), out.data(), DType::F32, 1, 4, 0, 1, 0), std::invalid_argument);
  EXPECT_THROW(cpu::attention_decode(nullptr, out.data(), DType::F32, 1, 4, 0, 1, 4), std::invalid_argument);
}

}  // namespace
}  // namespace mpt
