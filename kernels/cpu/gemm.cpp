// CPU twin of kernels/gemm.h, and the argument check shared with the CUDA launcher.
//
// Speed matters here: CPU training runs every layer through this function. op(A) and op(B) are converted
// to FP32 once and packed into the layouts the micro-kernel streams through (A in MR-row panels, B in
// NR-column panels, both k-major), so the inner loop is a contiguous, branch-free multiply-add over NR
// columns that the compiler vectorises at -O3 with the baseline instruction set. Products accumulate in an
// FP32 buffer in increasing k order (K blocks are visited in order and each block resumes the running sum),
// so the result is deterministic and independent of the blocking. The epilogue then runs in FP32 and
// rounds once to C's dtype.
#include "kernels/gemm.h"

#include <algorithm>
#include <atomic>
#include <stdexcept>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/activation.h"

#ifdef MPT_HAVE_BLAS
#include <cblas.h>
#endif

namespace mpt {

void check_gemm_desc(const GemmDesc& d) {
  const char* op = "gemm";
  if (d.m <= 0 || d.n <= 0 || d.k <= 0)
    kernel_arg_error(op, "m, n, k must be positive (got " + std::to_string(d.m) + ", " + std::to_string(d.n) +
                             ", " + std::to_string(d.k) + ")");
  if (d.dtype != DType::F32 && d.dtype != DType::F16 && d.dtype != DType::BF16) kernel_arg_error(op, "unknown dtype");
  if (!d.a || !d.b || !d.c) kernel_arg_error(op, "null A, B or C");
  // Stored shapes: A is m x k (k x m with trans_a), B is k x n (n x k with trans_b), row-major.
  const int a_cols = d.trans_a ? d.m : d.k;
  const int b_cols = d.trans_b ? d.k : d.n;
  if (d.lda < a_cols) kernel_arg_error(op, "lda " + std::to_string(d.lda) + " < " + std::to_string(a_cols));
  if (d.ldb < b_cols) kernel_arg_error(op, "ldb " + std::to_string(d.ldb) + " < " + std::to_string(b_cols));
  if (d.ldc < d.n) kernel_arg_error(op, "ldc " + std::to_string(d.ldc) + " < n " + std::to_string(d.n));
  const bool has_act = d.epilogue == Epilogue::BiasGelu || d.epilogue == Epilogue::BiasRelu;
  if (d.epilogue == Epilogue::DGelu) {
    if (!d.pre_act) kernel_arg_error(op, "DGelu epilogue without pre_act (the saved pre-activation)");
    if (d.bias) kernel_arg_error(op, "DGelu epilogue takes no bias");
  } else {
    if (d.epilogue != Epilogue::None && !d.bias) kernel_arg_error(op, "bias epilogue without a bias");
    if (d.pre_act && !has_act) kernel_arg_error(op, "pre_act given without a BiasGelu/BiasRelu/DGelu epilogue");
  }
  if (d.beta != 0.f && d.epilogue != Epilogue::None) kernel_arg_error(op, "beta != 0 with an epilogue");
}

namespace cpu {
namespace {

// 4 x 8 keeps 8 four-wide accumulators plus the B row and A broadcasts inside the 16 SSE registers of
// the x86-64 baseline; wider tiles spill.
constexpr int MR = 4;
constexpr int NR = 8;
constexpr int KC = 256;  // B micro-panel KC x NR (8 KiB) stays in L1 while the A panels stream from L2
// Columns per pass: bounds the FP32 copies of B and of the accumulators (k x NC and m x NC floats)
// whatever n is, e.g. for a vocabulary-sized output layer.
constexpr int NC = 1024;

struct Workspace {
  std::vector<float> a, b, c, row;
};
Workspace& workspace() {
  thread_local Workspace w;
  return w;
}

inline size_t round_up(size_t x, size_t to) { return (x + to - 1) / to * to; }

// ct (row stride ldct) holds the running sums of an MR x NR tile; adds ap[p][r] * bp[p][c] for p < kc.
inline void micro_kernel(int kc, const float* __restrict ap, const float* __restrict bp, float* __restrict ct,
                         size_t ldct, bool first) {
  float acc[MR][NR];
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NR; ++c) acc[r][c] = first ? 0.f : ct[r * ldct + c];
  for (int p = 0; p < kc; ++p) {
    const float* b = bp + p * NR;
    const float* a = ap + p * MR;
    for (int r = 0; r < MR; ++r) {
      const float ar = a[r];
      for (int c = 0; c < NR; ++c) acc[r][c] += ar * b[c];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NR; ++c) ct[r * ldct + c] = acc[r][c];
}

// Packs op(A) (m x k) into panels of MR rows: dst[(i / MR) * k * MR + p * MR + i % MR]; pad rows are zero.
void pack_a(const GemmDesc& d, float* dst, std::vector<float>& row) {
  const size_t m = size_t(d.m), k = size_t(d.k), es = dtype_size(d.dtype);
  const char* a = static_cast<const char*>(d.a);
  const size_t mp = round_up(m, MR);
  if (!d.trans_a) {
    row.resize(k);
    for (size_t i = 0; i < m; ++i) {
      to_float_n(a + i * size_t(d.lda) * es, d.dtype, row.data(), k);
      float* panel = dst + (i / MR) * k * MR + i % MR;
      for (size_t p = 0; p < k; ++p) panel[p * MR] = row[p];
    }
  } else {
    row.resize(m);
    for (size_t p = 0; p < k; ++p) {
      to_float_n(a + p * size_t(d.lda) * es, d.dtype, row.data(), m);
      for (size_t i = 0; i < m; ++i) dst[(i / MR) * k * MR + p * MR + i % MR] = row[i];
    }
  }
  for (size_t i = m; i < mp; ++i) {
    float* panel = dst + (i / MR) * k * MR + i % MR;
    for (size_t p = 0; p < k; ++p) panel[p * MR] = 0.f;
  }
}

// Packs columns [j0, j0 + nc) of op(B) (k x n) into panels of NR columns:
// dst[(j / NR) * k * NR + p * NR + j % NR] for local column j; pad columns are zero.
void pack_b(const GemmDesc& d, size_t j0, size_t nc, float* dst, std::vector<float>& row) {
  const size_t k = size_t(d.k), es = dtype_size(d.dtype);
  const char* b = static_cast<const char*>(d.b);
  const size_t ncp = round_up(nc, NR);
  if (!d.trans_b) {
    row.resize(nc);
    for (size_t p = 0; p < k; ++p) {
      to_float_n(b + (p * size_t(d.ldb) + j0) * es, d.dtype, row.data(), nc);
      for (size_t j = 0; j < nc; ++j) dst[(j / NR) * k * NR + p * NR + j % NR] = row[j];
    }
  } else {
    row.resize(k);
    for (size_t j = 0; j < nc; ++j) {
      to_float_n(b + (j0 + j) * size_t(d.ldb) * es, d.dtype, row.data(), k);
      float* panel = dst + (j / NR) * k * NR + j % NR;
      for (size_t p = 0; p < k; ++p) panel[p * NR] = row[p];
    }
  }
  for (size_t j = nc; j < ncp; ++j) {
    float* panel = dst + (j / NR) * k * NR + j % NR;
    for (size_t p = 0; p < k; ++p) panel[p * NR] = 0.f;
  }
}

// Epilogue for columns [j0, j0 + nc), in FP32 with one rounding per output:
// v = alpha * acc + beta * C + bias, then the activation.
void epilogue(const GemmDesc& d, size_t j0, size_t nc, const float* acc, size_t ldacc, const float* bias,
              std::vector<float>& row) {
  const size_t es = dtype_size(d.dtype);
  row.resize(2 * nc);
  float* v = row.data();
  float* cold = v + nc;
  for (size_t i = 0; i < size_t(d.m); ++i) {
    const float* a = acc + i * ldacc;
    const size_t off = (i * size_t(d.ldc) + j0) * es;
    char* crow = static_cast<char*>(d.c) + off;
    for (size_t j = 0; j < nc; ++j) v[j] = d.alpha * a[j];
    // beta == 0 must not read C: like BLAS, C may hold garbage (even NaN) on entry.
    if (d.beta != 0.f) {
      to_float_n(crow, d.dtype, cold, nc);
      for (size_t j = 0; j < nc; ++j) v[j] += d.beta * cold[j];
    }
    if (d.epilogue == Epilogue::DGelu) {  // beta == 0 here, so cold is free for z
      to_float_n(static_cast<const char*>(d.pre_act) + off, d.dtype, cold, nc);
      act_backward(Act::Gelu, cold, v, v, DType::F32, nc);
    } else if (d.epilogue != Epilogue::None) {
      for (size_t j = 0; j < nc; ++j) v[j] += bias[j0 + j];
    }
    if (d.epilogue == Epilogue::BiasGelu || d.epilogue == Epilogue::BiasRelu) {
      if (d.pre_act) from_float_n(v, static_cast<char*>(d.pre_act) + off, d.dtype, nc);
      act_forward(d.epilogue == Epilogue::BiasGelu ? Act::Gelu : Act::Relu, v, v, DType::F32, nc);
    }
    from_float_n(v, crow, d.dtype, nc);
  }
}

std::atomic<GemmBackend> g_backend{GemmBackend::Own};

#ifdef MPT_HAVE_BLAS
// cblas_sgemm on the stored operands (fp16/bf16 converted to FP32 in their stored layout, so the same
// transposes apply), into an FP32 m x n buffer; then the same epilogue as the own kernel.
void gemm_blas(const GemmDesc& d) {
  Workspace& w = workspace();
  const size_t m = size_t(d.m), n = size_t(d.n), es = dtype_size(d.dtype);
  auto as_f32 = [&](const void* p, int ld, int rows, int cols, std::vector<float>& buf, int* ld_out) -> const float* {
    if (d.dtype == DType::F32) {
      *ld_out = ld;
      return static_cast<const float*>(p);
    }
    buf.resize(size_t(rows) * size_t(cols));
    for (int r = 0; r < rows; ++r)
      to_float_n(static_cast<const char*>(p) + size_t(r) * size_t(ld) * es, d.dtype, buf.data() + size_t(r) * size_t(cols),
                 size_t(cols));
    *ld_out = cols;
    return buf.data();
  };
  int lda = 0, ldb = 0;
  const float* a = as_f32(d.a, d.lda, d.trans_a ? d.k : d.m, d.trans_a ? d.m : d.k, w.a, &lda);
  const float* b = as_f32(d.b, d.ldb, d.trans_b ? d.n : d.k, d.trans_b ? d.k : d.n, w.b, &ldb);
  w.c.resize(m * n);
  cblas_sgemm(CblasRowMajor, d.trans_a ? CblasTrans : CblasNoTrans, d.trans_b ? CblasTrans : CblasNoTrans, d.m, d.n,
              d.k, 1.f, a, lda, b, ldb, 0.f, w.c.data(), d.n);
  std::vector<float> bias;
  if (d.bias) {
    bias.resize(n);
    to_float_n(d.bias, d.dtype, bias.data(), n);
  }
  epilogue(d, 0, n, w.c.data(), n, bias.data(), w.row);
}
#endif

}  // namespace

bool gemm_has_blas() {
#ifdef MPT_HAVE_BLAS
  return true;
#else
  return false;
#endif
}

void set_gemm_backend(GemmBackend b, int threads) {
  if (b == GemmBackend::Blas && !gemm_has_blas())
    throw std::invalid_argument("this build has no BLAS (install libopenblas-dev and rebuild)");
#ifdef MPT_HAVE_BLAS
  if (b == GemmBackend::Blas && threads > 0) openblas_set_num_threads(threads);
#else
  (void)threads;
#endif
  g_backend.store(b);
}

GemmBackend gemm_backend() { return g_backend.load(); }

std::string gemm_backends() {
  std::string s = "own (deterministic reference)";
#ifdef MPT_HAVE_BLAS
  std::string cfg = openblas_get_config();
  while (!cfg.empty() && cfg.back() == ' ') cfg.pop_back();
  s += ", blas (" + cfg + ")";
#else
  s += "; no BLAS in this build";
#endif
  return s;
}

void gemm(const GemmDesc& d) {
  check_gemm_desc(d);
#ifdef MPT_HAVE_BLAS
  if (g_backend.load(std::memory_order_relaxed) == GemmBackend::Blas) return gemm_blas(d);
#endif
  const size_t m = size_t(d.m), n = size_t(d.n), k = size_t(d.k);
  const size_t mp = round_up(m, MR);
  Workspace& w = workspace();
  w.a.resize(mp * k);
  pack_a(d, w.a.data(), w.row);
  std::vector<float> bias;
  if (d.bias) {
    bias.resize(n);
    to_float_n(d.bias, d.dtype, bias.data(), n);
  }

  // Equal K blocks of at most KC, visited in increasing k.
  const size_t nkb = (k + KC - 1) / KC;
  const size_t kc_max = (k + nkb - 1) / nkb;
  for (size_t jc = 0; jc < n; jc += NC) {
    const size_t nc = std::min(size_t(NC), n - jc), ncp = round_up(nc, NR);
    w.b.resize(ncp * k);
    w.c.resize(mp * ncp);
    pack_b(d, jc, nc, w.b.data(), w.row);
    for (size_t p0 = 0; p0 < k; p0 += kc_max) {
      const int kc = int(std::min(kc_max, k - p0));
      for (size_t j0 = 0; j0 < ncp; j0 += NR) {
        const float* bp = w.b.data() + j0 * k + p0 * NR;
        for (size_t i0 = 0; i0 < mp; i0 += MR) {
          const float* ap = w.a.data() + i0 * k + p0 * MR;
          micro_kernel(kc, ap, bp, w.c.data() + i0 * ncp + j0, ncp, p0 == 0);
        }
      }
    }
    epilogue(d, jc, nc, w.c.data(), ncp, bias.data(), w.row);
  }
}

}  // namespace cpu
}  // namespace mpt
