// cuda::layernorm_forward / layernorm_backward / residual_layernorm_forward against the CPU twins.
//
// Tolerances. Both sides compute the same FP32 formulas; they differ in the order of the row sums (mean,
// variance, and the two sums of the dx formula) and of the column sums (dgamma, dbeta). The rounding error
// of an FP32 sum of n terms behaves like a random walk, ~2^-24 sqrt(n) times the terms' size; the bounds
// below use 2^-20 sqrt(n) (16x) with a generous measure of the terms' size (mean |term| for a row mean,
// the column's 2-norm times sqrt(n) for a column sum), plus 2^-21 relative for the handful of roundings
// in the elementwise formulas. Mistakes (a wrong mean, variance without the mean, a missing term of the
// dx formula, a lost row in dgamma) are orders of magnitude larger. A half output adds one ulp of its
// dtype (one final rounding on each side). dbeta is checked exactly: dy is made of multiples of 2^-8, so
// its column sums are exact in FP32 in any order.
#include <cmath>
#include <iterator>
#include <tuple>

#include "kernels/layernorm.h"
#include "tests/gpu/gpu_test_util.h"

namespace mpt::test {
namespace {

struct Shape { int rows, cols; };
// Rows of 1 column (zero variance), of fewer columns than a warp, and of more than the largest block;
// 4097 and 20000 rows make the dgamma/dbeta reduction use many row chunks. Widths that are whole 16-byte
// packs take the warp-per-row kernels with 2 (64, 384 in half), 4 (384 in fp32; 768, 1000 in half) or 8
// (768, 1000 in fp32; 1600 in half) packs per lane; 1600 in fp32 is too wide for them and takes the block
// kernels, as do 1, 9, 37 and 4097.
const Shape kShapes[] = {{1, 1}, {1, 37}, {37, 1000}, {4097, 64}, {300, 4097}, {20000, 9}, {5, 1},
                         {2048, 768}, {33, 384}, {64, 1600}};
// The residual and accumulate tests add GPT-2's widest activation batch: 16 x 1024 tokens of width 768.
const Shape kGpt2 = {16384, 768};
constexpr float kEps = 1e-5f;

// Rows with their own offset and spread, so that the mean matters and rstd varies from row to row.
std::vector<uint8_t> ln_input(Rng& r, DType t, Shape s) {
  std::vector<uint8_t> b(size_t(s.rows) * size_t(s.cols) * dtype_size(t));
  for (int i = 0; i < s.rows; ++i) {
    const float off = r.uniform(-3.f, 3.f), scale = r.uniform(0.1f, 2.f);
    for (int j = 0; j < s.cols; ++j)
      store_elem(b.data(), t, size_t(i) * size_t(s.cols) + size_t(j), off + scale * r.uniform(-1.f, 1.f));
  }
  return b;
}

std::vector<uint8_t> multiples_of_2m8(Rng& r, DType t, size_t n) {
  std::vector<uint8_t> b(n * dtype_size(t));
  for (size_t i = 0; i < n; ++i) store_elem(b.data(), t, i, float(int(r.below(511)) - 255) / 256.f);
  return b;
}

// GPU forward outputs (y as floats, mean, rstd) against the CPU twin's, over input x (the rounded res for the
// residual variant): the tolerances described at the top of the file.
void expect_forward_close(const std::vector<uint8_t>& x, DType xt, const std::vector<uint8_t>& gamma,
                          const std::vector<uint8_t>& beta, DType pt, Shape s, const std::vector<uint8_t>& ref_y,
                          const std::vector<float>& ref_mean, const std::vector<float>& ref_rstd,
                          const std::vector<float>& got_y, const std::vector<float>& got_mean,
                          const std::vector<float>& got_rstd) {
  const size_t nr = size_t(s.rows), nc = size_t(s.cols);
  const std::vector<float> xf = to_floats(x, xt), gf = to_floats(gamma, pt), bf = to_floats(beta, pt);
  const std::vector<float> ry = to_floats(ref_y, xt);
  std::vector<double> mean_abs(nr, 0.0);
  for (size_t i = 0; i < nr; ++i) {
    for (size_t j = 0; j < nc; ++j) mean_abs[i] += std::fabs(xf[i * nc + j]);
    mean_abs[i] /= double(nc);
  }
  const double walk = std::ldexp(std::sqrt(double(nc)), -20);
  const auto tol_mean = [&](size_t i) { return walk * mean_abs[i]; };
  const auto tol_rstd = [&](size_t i) { return (walk + std::ldexp(1.0, -21)) * ref_rstd[i]; };
  EXPECT_TRUE(all_close("mean", got_mean, ref_mean, tol_mean));
  EXPECT_TRUE(all_close("rstd", got_rstd, ref_rstd, tol_rstd));
  EXPECT_TRUE(all_close("y", got_y, ry, [&](size_t o) {
    const size_t i = o / nc, j = o % nc;
    const double xhat = (double(xf[o]) - ref_mean[i]) * ref_rstd[i];
    const double g = std::fabs(gf[j]);
    const double stats = tol_mean(i) * ref_rstd[i] + std::fabs(xhat) * (walk + std::ldexp(1.0, -21));
    return (is_half(xt) ? ulp(xt, ry[o]) : 0.0) + g * stats + std::ldexp(std::fabs(xhat) * g + std::fabs(bf[j]), -21);
  }));
}

// Sizes of the sums in the backward formulas, for the tolerances described at the top of the file. Per row:
// mean |g| and mean |g xhat| (the dx sums, g = dy * gamma); per column: the squared 2-norm of dy * xhat.
struct BackwardSizes {
  size_t nc;
  std::vector<double> mg, mgx, sgx, col2, xhat_abs, g_abs;
  std::vector<float> rstd;
  BackwardSizes(const std::vector<float>& xf, const std::vector<float>& dyf, const std::vector<float>& gf,
                const std::vector<float>& mean, const std::vector<float>& rs, Shape s)
      : nc(size_t(s.cols)), mg(size_t(s.rows), 0.0), mgx(mg), sgx(mg), col2(nc, 0.0), xhat_abs(xf.size()),
        g_abs(xf.size()), rstd(rs) {
    for (size_t i = 0; i < size_t(s.rows); ++i) {
      for (size_t j = 0; j < nc; ++j) {
        const size_t o = i * nc + j;
        const double xhat = (double(xf[o]) - mean[i]) * rstd[i], g = double(dyf[o]) * gf[j];
        mg[i] += std::fabs(g);
        mgx[i] += std::fabs(g * xhat);
        sgx[i] += g * xhat;
        col2[j] += (dyf[o] * xhat) * (dyf[o] * xhat);
        xhat_abs[o] = std::fabs(xhat);
        g_abs[o] = std::fabs(g);
      }
      mg[i] /= double(nc);
      mgx[i] /= double(nc);
      sgx[i] /= double(nc);
    }
  }
  // How far two FP32 evaluations of dx[o] (before its rounding to storage) may differ.
  double dx_tol(size_t o) const {
    const size_t i = o / nc;
    const double row_walk = std::ldexp(std::sqrt(double(nc)), -20), rel = std::ldexp(1.0, -21);
    return rstd[i] * (row_walk * (mg[i] + xhat_abs[o] * mgx[i]) + rel * (g_abs[o] + mg[i] + xhat_abs[o] * std::fabs(sgx[i])));
  }
};

class LayerNormGpu : public GpuTest, public ::testing::WithParamInterface<std::tuple<DType, DType>> {};

TEST_P(LayerNormGpu, ForwardMatchesCpu) {
  const auto [xt, pt] = GetParam();
  Rng r = fresh_rng();
  for (Shape s : kShapes) {
    SCOPED_TRACE("rows=" + std::to_string(s.rows) + " cols=" + std::to_string(s.cols));
    const size_t nr = size_t(s.rows), nc = size_t(s.cols);
    const std::vector<uint8_t> x = ln_input(r, xt, s);
    const std::vector<uint8_t> gamma = random_buffer(r, pt, nc, 0.5f, 1.5f);
    const std::vector<uint8_t> beta = random_buffer(r, pt, nc, -0.5f, 0.5f);
    std::vector<uint8_t> ref_y(x.size());
    std::vector<float> ref_mean(nr), ref_rstd(nr);
    cpu::layernorm_forward(x.data(), xt, gamma.data(), beta.data(), pt, ref_y.data(), ref_mean.data(),
                           ref_rstd.data(), s.rows, s.cols, kEps);

    DeviceBuffer dx = to_device(x), dg = to_device(gamma), db = to_device(beta), dy(x.size());
    DeviceBuffer dmean(nr * sizeof(float)), drstd(nr * sizeof(float));
    dy.fill(0xFF, stream());
    cuda::layernorm_forward(dx.get(), xt, dg.get(), db.get(), pt, dy.get(), dmean.as<float>(), drstd.as<float>(),
                            s.rows, s.cols, kEps, stream());
    const std::vector<float> got_y = to_floats(to_host<uint8_t>(dy, x.size()), xt);
    const std::vector<float> got_mean = to_host<float>(dmean, nr), got_rstd = to_host<float>(drstd, nr);

    expect_forward_close(x, xt, gamma, beta, pt, s, ref_y, ref_mean, ref_rstd, got_y, got_mean, got_rstd);
  }
}

TEST_P(LayerNormGpu, BackwardMatchesCpu) {
  const auto [xt, pt] = GetParam();
  Rng r = fresh_rng();
  for (Shape s : kShapes) {
    SCOPED_TRACE("rows=" + std::to_string(s.rows) + " cols=" + std::to_string(s.cols));
    const size_t nr = size_t(s.rows), nc = size_t(s.cols);
    const std::vector<uint8_t> x = ln_input(r, xt, s);
    const std::vector<uint8_t> gamma = random_buffer(r, pt, nc, 0.5f, 1.5f);
    const std::vector<uint8_t> beta = random_buffer(r, pt, nc, -0.5f, 0.5f);
    const std::vector<uint8_t> dy = multiples_of_2m8(r, xt, nr * nc);
    const std::vector<uint8_t> dgamma0 = random_buffer(r, pt, nc), dbeta0 = multiples_of_2m8(r, pt, nc);
    // Statistics from the CPU forward feed both backwards, so the backward is tested on its own.
    std::vector<uint8_t> y(x.size());
    std::vector<float> mean(nr), rstd(nr);
    cpu::layernorm_forward(x.data(), xt, gamma.data(), beta.data(), pt, y.data(), mean.data(), rstd.data(), s.rows,
                           s.cols, kEps);
    std::vector<uint8_t> ref_dx(x.size()), ref_dg = dgamma0, ref_db = dbeta0;
    cpu::layernorm_backward(dy.data(), x.data(), xt, gamma.data(), pt, mean.data(), rstd.data(), ref_dx.data(),
                            ref_dg.data(), ref_db.data(), s.rows, s.cols);

    DeviceBuffer ddy = to_device(dy), dx = to_device(x), dgm = to_device(gamma), dmean = to_device(mean),
                 drstd = to_device(rstd), ddx(x.size()), ddg = to_device(dgamma0), ddb = to_device(dbeta0);
    ddx.fill(0xFF, stream());
    cuda::layernorm_backward(ddy.get(), dx.get(), xt, dgm.get(), pt, dmean.as<float>(), drstd.as<float>(), ddx.get(),
                             ddg.get(), ddb.get(), s.rows, s.cols, stream());
    const std::vector<uint8_t> got_dx = to_host<uint8_t>(ddx, x.size());
    const std::vector<uint8_t> got_dg = to_host<uint8_t>(ddg, dgamma0.size());
    const std::vector<uint8_t> got_db = to_host<uint8_t>(ddb, dbeta0.size());

    EXPECT_TRUE(same_bits("dbeta", got_db, ref_db, pt));

    const std::vector<float> xf = to_floats(x, xt), dyf = to_floats(dy, xt), gf = to_floats(gamma, pt);
    const std::vector<float> rdx = to_floats(ref_dx, xt), rdg = to_floats(ref_dg, pt), dg0 = to_floats(dgamma0, pt);
    const BackwardSizes sz(xf, dyf, gf, mean, rstd, s);
    EXPECT_TRUE(all_close("dx", to_floats(got_dx, xt), rdx,
                          [&](size_t o) { return (is_half(xt) ? ulp(xt, rdx[o]) : 0.0) + sz.dx_tol(o); }));
    EXPECT_TRUE(all_close("dgamma", to_floats(got_dg, pt), rdg, [&](size_t j) {
      return (is_half(pt) ? ulp(pt, rdg[j]) : 0.0) + std::ldexp(std::sqrt(double(nr) * sz.col2[j]), -20) +
             std::ldexp(std::fabs(dg0[j]), -23);
    }));
  }
}

TEST_P(LayerNormGpu, BackwardDeterministicAndInPlace) {
  const auto [xt, pt] = GetParam();
  Rng r = fresh_rng();
  const Shape s{4097, 200};
  const size_t nr = size_t(s.rows), nc = size_t(s.cols);
  const std::vector<uint8_t> x = ln_input(r, xt, s), dy = random_buffer(r, xt, nr * nc);
  const std::vector<uint8_t> gamma = random_buffer(r, pt, nc, 0.5f, 1.5f), beta = random_buffer(r, pt, nc);
  const std::vector<uint8_t> p0 = random_buffer(r, pt, nc);
  std::vector<uint8_t> y(x.size());
  std::vector<float> mean(nr), rstd(nr);
  cpu::layernorm_forward(x.data(), xt, gamma.data(), beta.data(), pt, y.data(), mean.data(), rstd.data(), s.rows,
                         s.cols, kEps);
  DeviceBuffer dx = to_device(x), dgm = to_device(gamma), dmean = to_device(mean), drstd = to_device(rstd);
  std::vector<uint8_t> first_dx, first_dg, first_db;
  for (int rep = 0; rep < 3; ++rep) {
    DeviceBuffer ddy = to_device(dy), ddg = to_device(p0), ddb = to_device(p0), out(x.size());
    // rep 2 writes dx over dy, as a caller short of memory may.
    void* dxp = rep == 2 ? ddy.get() : out.get();
    cuda::layernorm_backward(ddy.get(), dx.get(), xt, dgm.get(), pt, dmean.as<float>(), drstd.as<float>(), dxp,
                             ddg.get(), ddb.get(), s.rows, s.cols, stream());
    const std::vector<uint8_t> gdx = to_host<uint8_t>(rep == 2 ? ddy : out, x.size());
    const std::vector<uint8_t> gdg = to_host<uint8_t>(ddg, p0.size()), gdb = to_host<uint8_t>(ddb, p0.size());
    if (rep == 0) {
      first_dx = gdx;
      first_dg = gdg;
      first_db = gdb;
      continue;
    }
    EXPECT_EQ(gdx, first_dx) << "dx, run " << rep;
    EXPECT_EQ(gdg, first_dg) << "dgamma, run " << rep;
    EXPECT_EQ(gdb, first_db) << "dbeta, run " << rep;
  }
}

std::vector<Shape> shapes_with_gpt2() {
  std::vector<Shape> v(std::begin(kShapes), std::end(kShapes));
  v.push_back(kGpt2);
  return v;
}

// res = a + b is one FP32 add rounded once on both sides, so it must match bit for bit; y, mean and rstd
// get the forward tolerances over the rounded res. The in-place call (res aliasing a, the residual stream
// updated where it lies) runs the same kernel on the same values and must give the same bits as the
// out-of-place one.
TEST_P(LayerNormGpu, ResidualForwardMatchesCpu) {
  const auto [xt, pt] = GetParam();
  Rng r = fresh_rng();
  for (Shape s : shapes_with_gpt2()) {
    SCOPED_TRACE("rows=" + std::to_string(s.rows) + " cols=" + std::to_string(s.cols));
    const size_t nr = size_t(s.rows), nc = size_t(s.cols);
    const std::vector<uint8_t> a = ln_input(r, xt, s), b = random_buffer(r, xt, nr * nc);
    const std::vector<uint8_t> gamma = random_buffer(r, pt, nc, 0.5f, 1.5f);
    const std::vector<uint8_t> beta = random_buffer(r, pt, nc, -0.5f, 0.5f);
    std::vector<uint8_t> ref_res(a.size()), ref_y(a.size());
    std::vector<float> ref_mean(nr), ref_rstd(nr);
    cpu::residual_layernorm_forward(a.data(), b.data(), xt, gamma.data(), beta.data(), pt, ref_res.data(),
                                    ref_y.data(), ref_mean.data(), ref_rstd.data(), s.rows, s.cols, kEps);

    DeviceBuffer da = to_device(a), dbb = to_device(b), dg = to_device(gamma), dbt = to_device(beta);
    DeviceBuffer dres(a.size()), dy(a.size()), dmean(nr * sizeof(float)), drstd(nr * sizeof(float));
    dres.fill(0xFF, stream());
    dy.fill(0xFF, stream());
    cuda::residual_layernorm_forward(da.get(), dbb.get(), xt, dg.get(), dbt.get(), pt, dres.get(), dy.get(),
                                     dmean.as<float>(), drstd.as<float>(), s.rows, s.cols, kEps, stream());
    const std::vector<uint8_t> got_res = to_host<uint8_t>(dres, a.size()), got_y = to_host<uint8_t>(dy, a.size());
    const std::vector<float> got_mean = to_host<float>(dmean, nr), got_rstd = to_host<float>(drstd, nr);
    EXPECT_TRUE(same_bits("res", got_res, ref_res, xt));
    expect_forward_close(ref_res, xt, gamma, beta, pt, s, ref_y, ref_mean, ref_rstd, to_floats(got_y, xt), got_mean,
                         got_rstd);

    DeviceBuffer dy2(a.size()), dmean2(nr * sizeof(float)), drstd2(nr * sizeof(float));
    dy2.fill(0xFF, stream());
    cuda::residual_layernorm_forward(da.get(), dbb.get(), xt, dg.get(), dbt.get(), pt, da.get(), dy2.get(),
                                     dmean2.as<float>(), drstd2.as<float>(), s.rows, s.cols, kEps, stream());
    EXPECT_TRUE(same_bits("in-place res", to_host<uint8_t>(da, a.size()), got_res, xt));
    EXPECT_TRUE(same_bits("in-place y", to_host<uint8_t>(dy2, a.size()), got_y, xt));
    EXPECT_TRUE(to_host<float>(dmean2, nr) == got_mean) << "in-place mean";
    EXPECT_TRUE(to_host<float>(drstd2, nr) == got_rstd) << "in-place rstd";
  }
}

// With accumulate_dx both sides round old dx + new term once; the new terms differ by at most dx_tol, and
// the two roundings of the sums add one ulp of the result (in every dtype: |old| may exceed |new|, so the
// FP32 rounding of the sum is not covered by dx_tol). A kernel that overwrites, or drops the new term, is
// off by ~0.5. dgamma and dbeta are accumulated exactly as without the flag.
TEST_P(LayerNormGpu, BackwardAccumulateDxMatchesCpu) {
  const auto [xt, pt] = GetParam();
  Rng r = fresh_rng();
  for (Shape s : shapes_with_gpt2()) {
    SCOPED_TRACE("rows=" + std::to_string(s.rows) + " cols=" + std::to_string(s.cols));
    const size_t nr = size_t(s.rows), nc = size_t(s.cols);
    const std::vector<uint8_t> x = ln_input(r, xt, s);
    const std::vector<uint8_t> gamma = random_buffer(r, pt, nc, 0.5f, 1.5f);
    const std::vector<uint8_t> beta = random_buffer(r, pt, nc, -0.5f, 0.5f);
    const std::vector<uint8_t> dy = multiples_of_2m8(r, xt, nr * nc), dx0 = random_buffer(r, xt, nr * nc);
    const std::vector<uint8_t> dgamma0 = random_buffer(r, pt, nc), dbeta0 = multiples_of_2m8(r, pt, nc);
    std::vector<uint8_t> y(x.size());
    std::vector<float> mean(nr), rstd(nr);
    cpu::layernorm_forward(x.data(), xt, gamma.data(), beta.data(), pt, y.data(), mean.data(), rstd.data(), s.rows,
                           s.cols, kEps);
    std::vector<uint8_t> ref_dx = dx0, ref_dg = dgamma0, ref_db = dbeta0;
    cpu::layernorm_backward(dy.data(), x.data(), xt, gamma.data(), pt, mean.data(), rstd.data(), ref_dx.data(),
                            ref_dg.data(), ref_db.data(), s.rows, s.cols, /*accumulate_dx=*/true);

    DeviceBuffer ddy = to_device(dy), dx = to_device(x), dgm = to_device(gamma), dmean = to_device(mean),
                 drstd = to_device(rstd), ddx = to_device(dx0), ddg = to_device(dgamma0), ddb = to_device(dbeta0);
    cuda::layernorm_backward(ddy.get(), dx.get(), xt, dgm.get(), pt, dmean.as<float>(), drstd.as<float>(), ddx.get(),
                             ddg.get(), ddb.get(), s.rows, s.cols, stream(), /*accumulate_dx=*/true);
    const std::vector<uint8_t> got_dx = to_host<uint8_t>(ddx, x.size());
    const std::vector<uint8_t> got_dg = to_host<uint8_t>(ddg, dgamma0.size());
    const std::vector<uint8_t> got_db = to_host<uint8_t>(ddb, dbeta0.size());

    EXPECT_TRUE(same_bits("dbeta", got_db, ref_db, pt));
    const std::vector<float> xf = to_floats(x, xt), dyf = to_floats(dy, xt), gf = to_floats(gamma, pt);
    const std::vector<float> rdx = to_floats(ref_dx, xt), rdg = to_floats(ref_dg, pt), dg0 = to_floats(dgamma0, pt);
    const BackwardSizes sz(xf, dyf, gf, mean, rstd, s);
    EXPECT_TRUE(all_close("dx", to_floats(got_dx, xt), rdx, [&](size_t o) { return ulp(xt, rdx[o]) + sz.dx_tol(o); }));
    EXPECT_TRUE(all_close("dgamma", to_floats(got_dg, pt), rdg, [&](size_t j) {
      return (is_half(pt) ? ulp(pt, rdg[j]) : 0.0) + std::ldexp(std::sqrt(double(nr) * sz.col2[j]), -20) +
             std::ldexp(std::fabs(dg0[j]), -23);
    }));
  }
}

TEST_P(LayerNormGpu, BadArgumentsThrow) {
  const auto [xt, pt] = GetParam();
  DeviceBuffer b(1024);
  float* f = b.as<float>();
  EXPECT_THROW(cuda::layernorm_forward(nullptr, xt, b.get(), b.get(), pt, b.get(), f, f, 2, 2, kEps, stream()),
               std::invalid_argument);
  EXPECT_THROW(cuda::layernorm_forward(b.get(), xt, b.get(), b.get(), pt, b.get(), f, f, 2, 0, kEps, stream()),
               std::invalid_argument);
  EXPECT_THROW(cuda::layernorm_backward(b.get(), b.get(), xt, b.get(), pt, f, f, b.get(), nullptr, b.get(), 2, 2,
                                        stream()),
               std::invalid_argument);
  EXPECT_THROW(cuda::residual_layernorm_forward(b.get(), nullptr, xt, b.get(), b.get(), pt, b.get(), b.get(), f, f, 2, 2,
                                                kEps, stream()),
               std::invalid_argument);
  EXPECT_THROW(cuda::residual_layernorm_forward(b.get(), b.get(), xt, b.get(), b.get(), pt, nullptr, b.get(), f, f, 2, 2,
                                                kEps, stream()),
               std::invalid_argument);
}

INSTANTIATE_TEST_SUITE_P(DtypePairs, LayerNormGpu,
                         ::testing::Combine(::testing::Values(DType::F32, DType::F16, DType::BF16),
                                            ::testing::Values(DType::F32, DType::F16, DType::BF16)),
                         [](const ::testing::TestParamInfo<std::tuple<DType, DType>>& info) {
                           return std::string("x_") + dtype_name(std::get<0>(info.param)) + "_p_" +
                                  dtype_name(std::get<1>(info.param));
                         });

}  // namespace
}  // namespace mpt::test
