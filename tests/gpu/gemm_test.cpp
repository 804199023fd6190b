// cuda::gemm (cuBLASLt) against cpu::gemm.
//
// Tolerance, per output element, from mag = sum_p |op(A)_ip op(B)_pj| + |beta C_ij| + |bias_j| (computed
// in double here):
//  - FP32 accumulation: both sides accumulate in FP32 in different orders (the tensor cores' order is
//    unknown). Rounding errors grow like a random walk, ~2^-24 sqrt(k) mag; 2^-21 sqrt(k + 1) mag allows
//    8x that. Wrong layouts, transposes or leading dimensions give errors of the size of the values
//    themselves, and a lost bias one of the size of the bias: orders of magnitude above this. Because it is
//    this tight, the fp32 cases also prove that TF32 is not used unless Exec::allow_tf32 says so.
//  - TF32 (allow_tf32, fp32 only): each input is cut to a 10-bit mantissa, so every product may be off by
//    up to ~2^-10 relative; the tolerance adds 2^-9 mag (worst case, signs aligned).
//  - A half output adds one ulp of its dtype: both sides round FP32 values that differ by the above once.
//  - Activated outputs: the FP32 difference passes through GELU with slope <= 1.13 (x1.2 below), plus the
//    tanh difference the activation test allows (2^-19 (|z| + |y|)). When the fused cuBLASLt GELU epilogue
//    can be in use, its tanh may be a hardware approximation (relative error ~2^-11 on tanh, i.e. at most
//    2^-12 |z| on 0.5 z (1 + tanh)), and the documentation does not say whether GELU sees the FP32 z or
//    the z already rounded for the aux output (half an ulp of z, times the slope 1.13); those cases allow
//    2^-11 |z| + 0.6 ulp(z) more.
#include <cublasLt.h>

#include <cmath>
#include <sstream>

#include "kernels/gemm.h"
#include "tests/gpu/gpu_test_util.h"

namespace mpt::test {
namespace {

struct Case {
  bool ta = false, tb = false;
  int m = 1, n = 1, k = 1;
  int pad_a = 0, pad_b = 0, pad_c = 0;  // extra leading-dimension elements
  float alpha = 1.f, beta = 0.f;
  Epilogue epi = Epilogue::None;
  bool with_pre = false;
  int bias_offset = 0;  // in elements: 1 makes the bias pointer misaligned for the fused epilogues
  bool tf32 = false;
  std::string str() const {
    std::ostringstream o;
    o << "ta=" << ta << " tb=" << tb << " m=" << m << " n=" << n << " k=" << k << " pads=" << pad_a << "," << pad_b
      << "," << pad_c << " alpha=" << alpha << " beta=" << beta << " epi=" << int(epi) << " pre=" << with_pre
      << " bias_off=" << bias_offset << " tf32=" << tf32;
    return o.str();
  }
};

const int kShapes[][3] = {{1, 1, 1}, {37, 29, 53}, {64, 48, 40}, {129, 96, 1000}, {257, 130, 77}};

class GemmFixture : public GpuTest {
 protected:
  void SetUp() override {
    GpuTest::SetUp();
    if (IsSkipped()) return;
    ASSERT_EQ(cublasLtCreate(&handle_), CUBLAS_STATUS_SUCCESS);
    workspace_ = DeviceBuffer(size_t(32) << 20);
  }
  void TearDown() override {
    GpuTest::TearDown();
    if (handle_) cublasLtDestroy(handle_);
    handle_ = nullptr;
  }
  Exec exec(bool tf32) const {
    Exec e;
    e.device = Device::CUDA;
    e.stream = stream();
    e.blas = handle_;
    e.workspace = workspace_.get();
    e.workspace_bytes = workspace_.bytes();
    e.allow_tf32 = tf32;
    return e;
  }

  void run_case(DType t, const Case& c, Rng& r);

  cublasLtHandle_t handle_ = nullptr;
  DeviceBuffer workspace_;
};

void GemmFixture::run_case(DType t, const Case& c, Rng& r) {
  SCOPED_TRACE(std::string(dtype_name(t)) + " " + c.str());
  const size_t es = dtype_size(t);
  const int a_rows = c.ta ? c.k : c.m, a_cols = c.ta ? c.m : c.k;
  const int b_rows = c.tb ? c.n : c.k, b_cols = c.tb ? c.k : c.n;
  const int lda = a_cols + c.pad_a, ldb = b_cols + c.pad_b, ldc = c.n + c.pad_c;
  const bool has_act = c.epi == Epilogue::BiasGelu || c.epi == Epilogue::BiasRelu;

  // Padding of A and B is NaN: reading it would poison the result. C is NaN where beta == 0 (it must not be
  // read), and its padding columns must come back untouched.
  std::vector<uint8_t> a = random_buffer(r, t, size_t(a_rows) * size_t(lda));
  std::vector<uint8_t> b = random_buffer(r, t, size_t(b_rows) * size_t(ldb));
  for (int i = 0; i < a_rows; ++i)
    for (int j = a_cols; j < lda; ++j) store_elem(a.data(), t, size_t(i) * size_t(lda) + size_t(j), NAN);
  for (int i = 0; i < b_rows; ++i)
    for (int j = b_cols; j < ldb; ++j) store_elem(b.data(), t, size_t(i) * size_t(ldb) + size_t(j), NAN);
  std::vector<uint8_t> c0 = random_buffer(r, t, size_t(c.m) * size_t(ldc));
  for (int i = 0; i < c.m; ++i) {
    for (int j = 0; j < ldc; ++j) {
      if (j >= c.n) {
        store_elem(c0.data(), t, size_t(i) * size_t(ldc) + size_t(j), 1024.f);
      } else if (c.beta == 0.f) {
        store_elem(c0.data(), t, size_t(i) * size_t(ldc) + size_t(j), NAN);
      }
    }
  }
  const std::vector<uint8_t> bias = random_buffer(r, t, size_t(c.n) + size_t(c.bias_offset));
  std::vector<uint8_t> pre0(size_t(c.m) * size_t(ldc) * es);
  for (size_t i = 0; i < size_t(c.m) * size_t(ldc); ++i) store_elem(pre0.data(), t, i, 2048.f);
  const bool dgelu = c.epi == Epilogue::DGelu;  // pre_act is then an input: pre-activations in [-4, 4)
  if (dgelu)
    for (int i = 0; i < c.m; ++i)
      for (int j = 0; j < c.n; ++j) store_elem(pre0.data(), t, size_t(i) * size_t(ldc) + size_t(j), r.uniform(-4.f, 4.f));

  GemmDesc d;
  d.trans_a = c.ta;
  d.trans_b = c.tb;
  d.m = c.m;
  d.n = c.n;
  d.k = c.k;
  d.dtype = t;
  d.lda = lda;
  d.ldb = ldb;
  d.ldc = ldc;
  d.alpha = c.alpha;
  d.beta = c.beta;
  d.epilogue = c.epi;

  // CPU reference.
  std::vector<uint8_t> ref_c = c0, ref_pre = pre0;
  {
    GemmDesc h = d;
    h.a = a.data();
    h.b = b.data();
    h.c = ref_c.data();
    h.bias = c.epi == Epilogue::None || dgelu ? nullptr : bias.data() + size_t(c.bias_offset) * es;
    h.pre_act = c.with_pre ? ref_pre.data() : nullptr;
    cpu::gemm(h);
  }
  // GPU.
  DeviceBuffer da = to_device(a), db = to_device(b), dc = to_device(c0), dbias = to_device(bias), dpre = to_device(pre0);
  d.a = da.get();
  d.b = db.get();
  d.c = dc.get();
  d.bias = c.epi == Epilogue::None || dgelu ? nullptr : dbias.at(size_t(c.bias_offset) * es);
  d.pre_act = c.with_pre ? dpre.get() : nullptr;
  cuda::gemm(d, exec(c.tf32));
  const std::vector<uint8_t> got_c = to_host<uint8_t>(dc, c0.size());
  const std::vector<uint8_t> got_pre = to_host<uint8_t>(dpre, pre0.size());

  // Per-element magnitude for the tolerance.
  const std::vector<float> af = to_floats(a, t), bf = to_floats(b, t), cf = to_floats(c0, t);
  const std::vector<float> biasf = to_floats(bias, t);
  std::vector<double> mag(size_t(c.m) * size_t(c.n));
  for (int i = 0; i < c.m; ++i)
    for (int j = 0; j < c.n; ++j) {
      double s = 0;
      for (int p = 0; p < c.k; ++p) {
        const float av = c.ta ? af[size_t(p) * lda + i] : af[size_t(i) * lda + p];
        const float bv = c.tb ? bf[size_t(j) * ldb + p] : bf[size_t(p) * ldb + j];
        s += std::fabs(double(av) * bv);
      }
      if (c.beta != 0.f) s += std::fabs(double(c.beta) * cf[size_t(i) * ldc + j]);
      if (c.epi != Epilogue::None && !dgelu) s += std::fabs(double(biasf[size_t(c.bias_offset) + j]));
      mag[size_t(i) * c.n + j] = s;
    }
  const bool fused_gelu =
      c.epi == Epilogue::BiasGelu && c.bias_offset == 0 && (!c.with_pre || ldc % 8 == 0);

  // Compare the m x n block; padding must be untouched.
  const std::vector<float> gc = to_floats(got_c, t), rc = to_floats(ref_c, t);
  const std::vector<float> gp = to_floats(got_pre, t), rp = to_floats(ref_pre, t);
  std::vector<float> g_out, r_out, g_pre, r_pre, z;
  std::vector<double> m_out;
  for (int i = 0; i < c.m; ++i)
    for (int j = 0; j < ldc; ++j) {
      const size_t o = size_t(i) * size_t(ldc) + size_t(j);
      if (j >= c.n) {
        EXPECT_EQ(gc[o], 1024.f) << "C padding written at row " << i << " col " << j;
        if (c.with_pre) {
          EXPECT_EQ(gp[o], 2048.f) << "pre_act padding written at row " << i << " col " << j;
        }
        continue;
      }
      g_out.push_back(gc[o]);
      r_out.push_back(rc[o]);
      m_out.push_back(mag[size_t(i) * c.n + j]);
      g_pre.push_back(gp[o]);
      r_pre.push_back(rp[o]);
    }
  const double acc_rel = std::ldexp(std::sqrt(double(c.k) + 1), -21) + (c.tf32 ? std::ldexp(1.0, -9) : 0.0);
  const auto out_ulp = [&](double v) { return is_half(t) ? ulp(t, v) : 0.0; };
  // cuBLASLt's bias epilogue for bf16 output rounds the product to bf16 before adding the bias (seen on
  // H200 with CUDA 13: errors of several bf16 ulps of the result where product and bias cancel), so bf16
  // with a bias allows that one extra rounding: half an ulp at the operands' magnitude. fp16 output does
  // the same (seen once: 1 of 12,384 elements 1 fp16 ulp off, m=129 n=96 k=1000 alpha=0.5, bias).
  const bool bf16_bias = is_half(t) && c.epi != Epilogue::None;
  const auto extra = [&](size_t i) { return bf16_bias ? 0.5 * ulp(t, m_out[i]) : 0.0; };
  if (dgelu) {
    // C = act'(z) p with p = alpha acc. Terms: the accumulation error times |act'(z)|; act'(z) itself, an
    // absolute error of a few FP32 ulps of its two terms (0.5 (1 + t) and 0.5 z (1 - t^2) s', s' = sqrt(2/pi)
    // (1 + 3 0.044715 z^2), which cancel near z = -0.75), times |p|. A fused epilogue may use a hardware
    // tanh (relative error ~2^-11 on t: 2^-11 (0.5 + |z| s') |p|) and, like the bias epilogue, may round p
    // to the dtype first (half an ulp of p, times |act'(z)|). |p| comes from the same product without the
    // epilogue on the CPU.
    EXPECT_TRUE(all_close("pre_act untouched", g_pre, r_pre, [](size_t) { return 0.0; }));
    std::vector<uint8_t> plain_c = c0;
    GemmDesc h = d;
    h.a = a.data(), h.b = b.data(), h.c = plain_c.data(), h.epilogue = Epilogue::None, h.bias = nullptr, h.pre_act = nullptr;
    cpu::gemm(h);
    const std::vector<float> pc = to_floats(plain_c, t);
    std::vector<double> p_abs;
    for (int i = 0; i < c.m; ++i)
      for (int j = 0; j < c.n; ++j) p_abs.push_back(std::fabs(double(pc[size_t(i) * size_t(ldc) + size_t(j)])));
    const bool fused = c.with_pre && ldc % 8 == 0;
    EXPECT_TRUE(all_close("C (dgelu)", g_out, r_out, [&](size_t i) {
      const double z = r_pre[i], sp = 0.7978845608028654 * (1 + 3 * 0.044715 * z * z);
      const double th = std::tanh(0.7978845608028654 * (z + 0.044715 * z * z * z));
      const double g = std::fabs(0.5 * (1 + th) + 0.5 * z * (1 - th * th) * sp);
      const double p = p_abs[i] + out_ulp(p_abs[i]);
      double tol = out_ulp(r_out[i]) + 1.2 * acc_rel * m_out[i] * g + std::ldexp(0.5 + std::fabs(z) * sp, -21) * p;
      if (fused) tol += std::ldexp(0.5 + std::fabs(z) * sp, -11) * p + (is_half(t) ? 0.5 * ulp(t, p) * g : 0.0);
      return tol;
    }));
    return;
  }
  if (!has_act) {
    EXPECT_TRUE(all_close("C", g_out, r_out,
                          [&](size_t i) { return out_ulp(r_out[i]) + acc_rel * m_out[i] + extra(i); }));
    return;
  }
  if (c.with_pre)
    EXPECT_TRUE(all_close("pre_act", g_pre, r_pre,
                          [&](size_t i) { return out_ulp(r_pre[i]) + acc_rel * m_out[i] + extra(i); }));
  else
    EXPECT_TRUE(all_close("pre_act untouched", g_pre, r_pre, [](size_t) { return 0.0; }));
  // |z| for the activation terms: the reference pre-activation (recomputed when pre_act is not kept).
  const auto zabs = [&](size_t i) { return c.with_pre ? std::fabs(double(r_pre[i])) : m_out[i]; };
  EXPECT_TRUE(all_close("C (activated)", g_out, r_out, [&](size_t i) {
    double tol = out_ulp(r_out[i]) + 1.2 * acc_rel * m_out[i] + extra(i);
    if (c.epi == Epilogue::BiasGelu) {
      tol += std::ldexp(zabs(i) + std::fabs(double(r_out[i])), -19);
      if (fused_gelu) tol += std::ldexp(zabs(i), -11) + (is_half(t) ? 0.6 * ulp(t, zabs(i)) : 0.0);
    }
    return tol;
  }));
}

class GemmGpu : public GemmFixture, public ::testing::WithParamInterface<DType> {};

TEST_P(GemmGpu, AllTransposesBetaZeroAndOne) {
  const DType t = GetParam();
  Rng r = fresh_rng();
  for (const auto& s : kShapes)
    for (int tr = 0; tr < 4; ++tr)
      for (float beta : {0.f, 1.f}) {
        Case c;
        c.ta = tr & 1;
        c.tb = tr & 2;
        c.m = s[0];
        c.n = s[1];
        c.k = s[2];
        c.pad_a = tr == 3 ? 3 : 0;
        c.pad_b = tr == 1 ? 5 : 0;
        c.pad_c = beta != 0.f ? 2 : 0;
        c.alpha = beta != 0.f ? 0.75f : 1.f;
        c.beta = beta;
        run_case(t, c, r);
      }
}

// Each epilogue through the fused cuBLASLt path (aligned bias, ldc a multiple of 8) and through the
// fallback (odd ldc, misaligned bias), with and without pre_act.
TEST_P(GemmGpu, Epilogues) {
  const DType t = GetParam();
  Rng r = fresh_rng();
  struct Geo { int m, n, k, pad_c, bias_offset; };
  const Geo geos[] = {{64, 48, 40, 8, 0}, {129, 96, 1000, 0, 0}, {37, 29, 53, 0, 0}, {64, 48, 40, 0, 1}, {1, 1, 1, 0, 0}};
  for (Epilogue epi : {Epilogue::Bias, Epilogue::BiasGelu, Epilogue::BiasRelu, Epilogue::DGelu})
    for (const Geo& g : geos)
      for (int tr = 0; tr < 4; ++tr)
        for (bool pre : {false, true}) {
          if (pre && epi == Epilogue::Bias) continue;
          if (!pre && epi == Epilogue::DGelu) continue;  // pre_act is DGelu's input
          Case c;
          c.ta = tr & 1;
          c.tb = tr & 2;
          c.m = g.m;
          c.n = g.n;
          c.k = g.k;
          c.pad_c = g.pad_c;
          c.alpha = 0.5f;
          c.epi = epi;
          c.with_pre = pre;
          c.bias_offset = g.bias_offset;
          run_case(t, c, r);
        }
}

// The plan cache must not carry data or pointers from one call to the next.
TEST_P(GemmGpu, RepeatedShapesWithNewBuffers) {
  const DType t = GetParam();
  Rng r = fresh_rng();
  for (int rep = 0; rep < 3; ++rep) {
    Case c;
    c.tb = true;
    c.m = 64;
    c.n = 48;
    c.k = 40;
    c.epi = rep == 1 ? Epilogue::BiasGelu : Epilogue::Bias;
    c.with_pre = rep == 1;
    run_case(t, c, r);
  }
}

TEST_P(GemmGpu, BadArgumentsThrow) {
  const DType t = GetParam();
  DeviceBuffer buf(4096);
  GemmDesc d;
  d.m = d.n = d.k = 4;
  d.lda = d.ldb = d.ldc = 4;
  d.dtype = t;
  d.a = d.b = buf.get();
  d.c = buf.at(1024);
  Exec e = exec(false);
  Exec no_handle = e;
  no_handle.blas = nullptr;
  EXPECT_THROW(cuda::gemm(d, no_handle), std::invalid_argument);
  GemmDesc bad = d;
  bad.ldc = 3;
  EXPECT_THROW(cuda::gemm(bad, e), std::invalid_argument);
  bad = d;
  bad.epilogue = Epilogue::Bias;
  bad.bias = buf.at(2048);
  bad.beta = 1.f;
  EXPECT_THROW(cuda::gemm(bad, e), std::invalid_argument);
  bad = d;
  bad.epilogue = Epilogue::Bias;
  EXPECT_THROW(cuda::gemm(bad, e), std::invalid_argument);  // no bias
}

// Algorithm tuning changes speed, never bits: GPT-2-like shapes (each of the four plans, both transposes
// of the backward, beta = 1) give the same bytes with tuning off and on, plans built afresh each time. And
// tuning must have run: at these sizes the heuristic offers several candidates.
TEST_P(GemmGpu, TuningKeepsTheFirstChoicesBits) {
  const DType t = GetParam();
  Rng r = fresh_rng();
  struct Shape { bool ta, tb; int m, n, k; float beta; Epilogue epi; bool pre; };
  const Shape shapes[] = {{false, false, 2048, 2304, 768, 0.f, Epilogue::Bias, false},
                          {false, false, 2048, 3072, 768, 0.f, Epilogue::BiasGelu, true},
                          {false, true, 2048, 768, 3072, 0.f, Epilogue::None, false},
                          {true, false, 768, 3072, 2048, 1.f, Epilogue::None, false},
                          {false, false, 2048, 768, 768, 0.f, Epilogue::BiasRelu, true},
                          {false, true, 2048, 3072, 768, 0.f, Epilogue::DGelu, true}};
  const cuda::GemmTuningStats before = cuda::gemm_tuning_stats();
  for (const Shape& s : shapes) {
    SCOPED_TRACE("m=" + std::to_string(s.m) + " n=" + std::to_string(s.n) + " k=" + std::to_string(s.k));
    const int lda = s.ta ? s.m : s.k, ldb = s.tb ? s.k : s.n, ldc = s.n;
    const std::vector<uint8_t> a = random_buffer(r, t, size_t(s.m) * s.k), b = random_buffer(r, t, size_t(s.k) * s.n);
    const std::vector<uint8_t> c0 = random_buffer(r, t, size_t(s.m) * ldc), bias = random_buffer(r, t, size_t(s.n));
    DeviceBuffer da = to_device(a), db = to_device(b), dbias = to_device(bias);
    std::vector<uint8_t> got[2], pre[2];
    for (int tuned = 0; tuned < 2; ++tuned) {
      cuda::clear_gemm_plans();
      cuda::set_gemm_tuning(tuned == 1);
      DeviceBuffer dc = to_device(c0), dpre = to_device(c0);  // DGelu reads pre_act; the others overwrite it
      GemmDesc d;
      d.trans_a = s.ta, d.trans_b = s.tb, d.m = s.m, d.n = s.n, d.k = s.k, d.dtype = t;
      d.a = da.get(), d.lda = lda, d.b = db.get(), d.ldb = ldb, d.c = dc.get(), d.ldc = ldc, d.beta = s.beta;
      d.epilogue = s.epi;
      if (s.epi != Epilogue::None && s.epi != Epilogue::DGelu) d.bias = dbias.get();
      if (s.pre) d.pre_act = dpre.get();
      for (int rep = 0; rep < 2; ++rep) {  // the first call tunes; the second runs the tuned plan
        if (rep == 1 && s.beta != 0.f) dc.upload(c0.data(), c0.size(), stream());
        cuda::gemm(d, exec(false));
      }
      got[tuned] = to_host<uint8_t>(dc, c0.size());
      pre[tuned] = to_host<uint8_t>(dpre, c0.size());
    }
    EXPECT_TRUE(same_bits("C", got[1], got[0], t));
    EXPECT_TRUE(same_bits("pre_act", pre[1], pre[0], t));
  }
  cuda::set_gemm_tuning(true);
  const cuda::GemmTuningStats after = cuda::gemm_tuning_stats();
  EXPECT_GE(after.plans_tuned - before.plans_tuned, int(std::size(shapes)));
  EXPECT_GT(after.candidates_run, before.candidates_run);
  std::printf("[ info ] %s gemm tuning: %d plans tuned, %d changed; %d candidates run, %d bit-identical\n",
              dtype_name(t), after.plans_tuned - before.plans_tuned, after.plans_changed - before.plans_changed,
              after.candidates_run - before.candidates_run, after.candidates_identical - before.candidates_identical);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, GemmGpu, ::testing::Values(DType::F32, DType::F16, DType::BF16), dtype_param_name);

class GemmGpuTf32 : public GemmFixture {};

TEST_F(GemmGpuTf32, Fp32WithTf32WithinLooserTolerance) {
  Rng r = fresh_rng();
  for (const auto& s : kShapes)
    for (int tr = 0; tr < 4; ++tr)
      for (Epilogue epi : {Epilogue::None, Epilogue::Bias, Epilogue::BiasGelu}) {
        Case c;
        c.ta = tr & 1;
        c.tb = tr & 2;
        c.m = s[0];
        c.n = s[1];
        c.k = s[2];
        c.epi = epi;
        c.with_pre = epi == Epilogue::BiasGelu;
        c.beta = epi == Epilogue::None ? 1.f : 0.f;
        c.tf32 = true;
        run_case(DType::F32, c, r);
      }
}

}  // namespace
}  // namespace mpt::test
