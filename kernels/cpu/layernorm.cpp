// CPU twin of kernels/layernorm.h. Every row is converted to FP32 once; statistics use two passes (mean,
// then the mean of squared deviations) so that rows with a large mean do not lose the variance to
// cancellation. Parameter gradients are summed over rows in increasing order into FP32 column sums and
// added to dgamma/dbeta with one rounding, which makes them deterministic.
#include "kernels/layernorm.h"

#include <cmath>
#include <vector>

namespace mpt::cpu {

namespace {
void check_forward(const char* op, const void* x, const void* gamma, const void* beta, const void* y, int rows,
                   int cols, float eps) {
  if (rows < 0 || cols < 0) kernel_arg_error(op, "negative shape");
  if (rows == 0) return;
  if (cols == 0) kernel_arg_error(op, "cols must be positive");
  // mean and rstd may be null: evaluation needs no statistics for a backward pass.
  if (!x || !gamma || !beta || !y) kernel_arg_error(op, "null pointer");
  if (!(eps >= 0.f)) kernel_arg_error(op, "eps must be >= 0");
}

// Normalises one FP32 row in place and records its statistics (either may be null).
void normalize_row(float* row, size_t nc, const float* g, const float* b, float eps, float* mean, float* rstd) {
  const float inv_n = 1.f / float(nc);
  float s = 0.f;
  for (size_t j = 0; j < nc; ++j) s += row[j];
  const float mu = s * inv_n;
  float ss = 0.f;
  for (size_t j = 0; j < nc; ++j) {
    const float dv = row[j] - mu;
    ss += dv * dv;
  }
  const float rs = 1.f / std::sqrt(ss * inv_n + eps);
  if (mean) *mean = mu;
  if (rstd) *rstd = rs;
  for (size_t j = 0; j < nc; ++j) row[j] = (row[j] - mu) * rs * g[j] + b[j];
}
}  // namespace

void layernorm_forward(const void* x, DType xt, const void* gamma, const void* beta, DType pt, void* y,
                       float* mean, float* rstd, int rows, int cols, float eps) {
  check_forward("layernorm_forward", x, gamma, beta, y, rows, cols, eps);
  if (rows == 0) return;
  const size_t nc = size_t(cols), es = dtype_size(xt);
  std::vector<float> g(nc), b(nc), row(nc);
  to_float_n(gamma, pt, g.data(), nc);
  to_float_n(beta, pt, b.data(), nc);
  for (int i = 0; i < rows; ++i) {
    to_float_n(static_cast<const char*>(x) + size_t(i) * nc * es, xt, row.data(), nc);
    normalize_row(row.data(), nc, g.data(), b.data(), eps, mean ? mean + i : nullptr, rstd ? rstd + i : nullptr);
    from_float_n(row.data(), static_cast<char*>(y) + size_t(i) * nc * es, xt, nc);
  }
}

void residual_layernorm_forward(const void* a, const void* b, DType xt, const void* gamma, const void* beta, DType pt,
                                void* res, void* y, float* mean, float* rstd, int rows, int cols, float eps) {
  const char* op = "residual_layernorm_forward";
  check_forward(op, a, gamma, beta, y, rows, cols, eps);
  if (rows == 0) return;
  if (!b || !res) kernel_arg_error(op, "null pointer");
  const size_t nc = size_t(cols), es = dtype_size(xt);
  std::vector<float> g(nc), bt(nc), row(nc), other(nc);
  to_float_n(gamma, pt, g.data(), nc);
  to_float_n(beta, pt, bt.data(), nc);
  for (int i = 0; i < rows; ++i) {
    const size_t off = size_t(i) * nc * es;
    // Row i of a and b is read in full before row i of res is written, so res may alias a (or b).
    to_float_n(static_cast<const char*>(a) + off, xt, row.data(), nc);
    to_float_n(static_cast<const char*>(b) + off, xt, other.data(), nc);
    for (size_t j = 0; j < nc; ++j) row[j] += other[j];
    from_float_n(row.data(), static_cast<char*>(res) + off, xt, nc);
    // The statistics must be those of the stored res, which the backward pass will be given as x.
    to_float_n(static_cast<const char*>(res) + off, xt, row.data(), nc);
    normalize_row(row.data(), nc, g.data(), bt.data(), eps, mean ? mean + i : nullptr, rstd ? rstd + i : nullptr);
    from_float_n(row.data(), static_cast<char*>(y) + off, xt, nc);
  }
}

void layernorm_backward(const void* dy, const void* x, DType xt, const void* gamma, DType pt,
                        const float* mean, const float* rstd, void* dx, void* dgamma, void* dbeta,
                        int rows, int cols, bool accumulate_dx) {
  const char* op = "layernorm_backward";
  if (rows < 0 || cols < 0) kernel_arg_error(op, "negative shape");
  if (rows == 0 || cols == 0) return;
  if (!dy || !x || !gamma || !mean || !rstd || !dx || !dgamma || !dbeta) kernel_arg_error(op, "null pointer");
  const size_t nc = size_t(cols), es = dtype_size(xt);
  std::vector<float> g(nc), xr(nc), dyr(nc), dg(nc, 0.f), dbt(nc, 0.f);
  to_float_n(gamma, pt, g.data(), nc);
  const float inv_n = 1.f / float(cols);
  for (int i = 0; i < rows; ++i) {
    to_float_n(static_cast<const char*>(x) + size_t(i) * nc * es, xt, xr.data(), nc);
    to_float_n(static_cast<const char*>(dy) + size_t(i) * nc * es, xt, dyr.data(), nc);
    const float mu = mean[i], rs = rstd[i];
    // With xhat = (x - mean) * rstd and gy = dy * gamma:
    //   dx = rstd * (gy - mean(gy) - xhat * mean(gy * xhat)).
    float sg = 0.f, sgx = 0.f;
    for (size_t j = 0; j < nc; ++j) {
      const float xh = (xr[j] - mu) * rs;
      const float gy = dyr[j] * g[j];
      sg += gy;
      sgx += gy * xh;
      dg[j] += dyr[j] * xh;
      dbt[j] += dyr[j];
      xr[j] = xh;  // keep xhat for the dx pass
    }
    const float mg = sg * inv_n, mgx = sgx * inv_n;
    for (size_t j = 0; j < nc; ++j) xr[j] = rs * (dyr[j] * g[j] - mg - xr[j] * mgx);
    char* dxr = static_cast<char*>(dx) + size_t(i) * nc * es;
    if (accumulate_dx) {
      // dy's row is no longer needed, so its buffer takes the old dx (dx may alias dy).
      to_float_n(dxr, xt, dyr.data(), nc);
      for (size_t j = 0; j < nc; ++j) xr[j] += dyr[j];
    }
    from_float_n(xr.data(), dxr, xt, nc);
  }
  // Read, add, round once: dgamma and dbeta accumulate over micro-batches.
  to_float_n(dgamma, pt, xr.data(), nc);
  for (size_t j = 0; j < nc; ++j) xr[j] += dg[j];
  from_float_n(xr.data(), dgamma, pt, nc);
  to_float_n(dbeta, pt, xr.data(), nc);
  for (size_t j = 0; j < nc; ++j) xr[j] += dbt[j];
  from_float_n(xr.data(), dbeta, pt, nc);
}

}  // namespace mpt::cpu
