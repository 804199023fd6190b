// cuda::attention_decode against its CPU twin. Both run the same FP32 formulas; they differ in summation
// order (per-lane partial dots and a butterfly, per-warp online softmax merged across warps) and in expf
// against glibc's exp. With u = 2^-20 (16 times FP32's unit roundoff, as in tests/gpu/attention_test.cpp)
// and, per (batch, head), S = scale |q| max_j |k_j| (a bound on every score, Cauchy-Schwarz):
//   score error ~ u sqrt(D) S; weight P_j relative error ~ u (sqrt(D) S + 2 S + 2) =: u F
//   out_d error ~ u F * 2 max_j |v_jd| (P's errors times |v - out|) + u sqrt(L) max_j |v_jd| (the sum over L)
// Half and bf16: the two sides round FP32 values that differ by at most that bound, so they are within
// that bound plus one ulp of the dtype. A key too many or too few moves an output by ~P_j |v| >> these.
// Outputs are filled with NaN bytes first (an unwritten element fails); cache rows after pos are NaN (a
// read past the query's position makes the output NaN).
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "kernels/attention_decode.h"
#include "tests/gpu/gpu_test_util.h"

namespace mpt::test {
namespace {

struct DecodeShape {
  int B, S, pos, H, D;
  bool large_scores;  // q, k near 10: scores of several hundred, exp overflows without the running maximum
};
std::string decode_name(const DecodeShape& s) {
  return "B" + std::to_string(s.B) + " S" + std::to_string(s.S) + " pos" + std::to_string(s.pos) + " H" +
         std::to_string(s.H) + " D" + std::to_string(s.D) + (s.large_scores ? " large scores" : "");
}

// One key; fewer keys than warps x group (idle warps); odd lengths; head dims 32 / 64 / 128 / 256 and ones
// that are no multiple of 32; GPT-2 124M decode at the end of its context (12 heads of 64, 1024 keys).
const DecodeShape kDecodeShapes[] = {
    {1, 1, 0, 1, 64, false},    {3, 5, 2, 2, 32, false},     {2, 40, 31, 3, 128, false}, {2, 77, 76, 2, 64, false},
    {1, 300, 257, 2, 48, false}, {1, 129, 128, 1, 256, false}, {2, 33, 32, 2, 5, false},   {1, 200, 199, 2, 64, true},
    {4, 1024, 1023, 12, 64, false}, {1, 2048, 1500, 4, 128, false}};

size_t at(const DecodeShape& s, int b, int row, int part, int h, int i) {
  const size_t C = size_t(s.H) * size_t(s.D);
  return (size_t(b) * size_t(s.S) + size_t(row)) * 3 * C + size_t(part) * C + size_t(h) * size_t(s.D) + size_t(i);
}

std::vector<uint8_t> make_cache(Rng& r, DType t, const DecodeShape& s) {
  const size_t C = size_t(s.H) * size_t(s.D);
  std::vector<uint8_t> buf(size_t(s.B) * size_t(s.S) * 3 * C * dtype_size(t));
  for (int b = 0; b < s.B; ++b)
    for (int row = 0; row < s.S; ++row)
      for (int part = 0; part < 3; ++part)
        for (int h = 0; h < s.H; ++h)
          for (int i = 0; i < s.D; ++i) {
            float v = part == 2 ? r.uniform(-1.f, 1.f) : (s.large_scores ? 10.f : 0.f) + r.uniform(-2.f, 2.f);
            if (row > s.pos) v = NAN;
            store_elem(buf.data(), t, at(s, b, row, part, h, i), v);
          }
  return buf;
}

// The FP32 bound of the header comment, per output element [B, C].
std::vector<double> fp32_bound(const DecodeShape& s, DType t, const std::vector<uint8_t>& cache) {
  const double u = 0x1p-20, scale = 1.0 / std::sqrt(double(float(s.D)));
  const int L = s.pos + 1;
  std::vector<double> out(size_t(s.B) * size_t(s.H) * size_t(s.D));
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.H; ++h) {
      auto x = [&](int row, int part, int i) { return double(load_elem(cache.data(), t, at(s, b, row, part, h, i))); };
      double qn = 0, kn = 0;
      for (int i = 0; i < s.D; ++i) qn += x(s.pos, 0, i) * x(s.pos, 0, i);
      for (int j = 0; j < L; ++j) {
        double n = 0;
        for (int i = 0; i < s.D; ++i) n += x(j, 1, i) * x(j, 1, i);
        kn = std::max(kn, n);
      }
      const double S = scale * std::sqrt(qn) * std::sqrt(kn), F = std::sqrt(double(s.D)) * S + 2 * S + 2;
      for (int i = 0; i < s.D; ++i) {
        double vm = 0;
        for (int j = 0; j < L; ++j) vm = std::max(vm, std::fabs(x(j, 2, i)));
        out[(size_t(b) * size_t(s.H) + size_t(h)) * size_t(s.D) + size_t(i)] = u * vm * (2 * F + std::sqrt(double(L)));
      }
    }
  return out;
}

class AttentionDecodeGpu : public GpuTest, public ::testing::WithParamInterface<DType> {};

TEST_P(AttentionDecodeGpu, MatchesCpu) {
  const DType t = GetParam();
  Rng r = fresh_rng();
  for (const DecodeShape& s : kDecodeShapes) {
    SCOPED_TRACE(decode_name(s));
    const std::vector<uint8_t> cache = make_cache(r, t, s);
    const size_t n_out = size_t(s.B) * size_t(s.H) * size_t(s.D);
    std::vector<uint8_t> ref(n_out * dtype_size(t));
    cpu::attention_decode(cache.data(), ref.data(), t, s.B, s.S, s.pos, s.H, s.D);
    DeviceBuffer dc = to_device(cache), dout(ref.size());
    dout.fill(0xFF, stream());
    cuda::attention_decode(dc.get(), dout.get(), t, s.B, s.S, s.pos, s.H, s.D, stream());
    const std::vector<uint8_t> got = to_host<uint8_t>(dout, ref.size());
    const std::vector<float> rf = to_floats(ref, t), gf = to_floats(got, t);
    const std::vector<double> bound = fp32_bound(s, t, cache);
    for (float v : rf) ASSERT_TRUE(std::isfinite(v)) << "the CPU twin gave a non-finite output";
    EXPECT_TRUE(all_close("out", gf, rf, [&](size_t i) { return bound[i] + (t == DType::F32 ? 0.0 : ulp(t, rf[i])); }));

    // The same bits on a second run (no atomics, no timing dependence).
    DeviceBuffer dout2(ref.size());
    dout2.fill(0x00, stream());
    cuda::attention_decode(dc.get(), dout2.get(), t, s.B, s.S, s.pos, s.H, s.D, stream());
    EXPECT_TRUE(same_bits("second run", to_host<uint8_t>(dout2, ref.size()), got, t));
  }
}

TEST_P(AttentionDecodeGpu, BadShapesThrow) {
  const DType t = GetParam();
  DeviceBuffer c(3 * 4 * 4 * 4), o(4 * 4);
  EXPECT_THROW(cuda::attention_decode(c.get(), o.get(), t, 1, 4, 4, 1, 4, stream()), std::invalid_argument);
  EXPECT_THROW(cuda::attention_decode(c.get(), o.get(), t, 1, 4, 0, 1, 257, stream()), std::invalid_argument);
  EXPECT_THROW(cuda::attention_decode(nullptr, o.get(), t, 1, 4, 0, 1, 4, stream()), std::invalid_argument);
  EXPECT_NO_THROW(cuda::attention_decode(nullptr, nullptr, t, 0, 4, 0, 1, 4, stream()));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, AttentionDecodeGpu, ::testing::Values(DType::F32, DType::F16, DType::BF16),
                         dtype_param_name);

}  // namespace
}  // namespace mpt::test
