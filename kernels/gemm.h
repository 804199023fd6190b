// gemm: row-major C[m,n] = epilogue(alpha * op(A)[m,k] * op(B)[k,n] + beta * C + bias).
// op(A) = A (stored m x k, row stride lda) or, with trans_a, A^T (A stored k x m). Same for B.
// A, B and C share one dtype; products accumulate in FP32 and the result is rounded once to C's dtype.
// Epilogues: Bias adds bias[j] (C's dtype) to every row; BiasGelu / BiasRelu also apply the activation
// and store the pre-activation z = acc + bias into pre_act (C's dtype, leading dimension ldc).
// DGelu is the GELU backward fused into the product that forms the activation's gradient: C = act'(z) *
// (alpha * acc) with z read from pre_act (an input here: the forward's saved pre-activation, C's dtype and
// ldc), no bias; one rounding, where a product followed by act_backward rounds twice.
// beta != 0 reads C (used to accumulate weight gradients over micro-batches); only Epilogue::None
// may be combined with beta != 0.
#pragma once
#include "kernels/exec.h"

namespace mpt {

enum class Epilogue { None, Bias, BiasGelu, BiasRelu, DGelu };

struct GemmDesc {
  bool trans_a = false, trans_b = false;
  int m = 0, n = 0, k = 0;
  DType dtype = DType::F32;
  const void* a = nullptr; int lda = 0;
  const void* b = nullptr; int ldb = 0;
  void* c = nullptr; int ldc = 0;
  float alpha = 1.f, beta = 0.f;
  Epilogue epilogue = Epilogue::None;
  const void* bias = nullptr;
  void* pre_act = nullptr;
};

// Throws std::invalid_argument on inconsistent shapes, strides or epilogue arguments.
void check_gemm_desc(const GemmDesc& d);

namespace cpu {
// The CPU GEMM has two backends. Own (the default) is the deterministic reference: products summed in
// increasing k, whatever the blocking or the machine, so results are bitwise reproducible and the tests
// compare against it. Blas (builds with MPT_HAVE_BLAS: OpenBLAS's cblas_sgemm) is much faster and sums in
// FP32 too, but its order depends on the CPU's kernel and the thread count. Both convert fp16/bf16 inputs
// to FP32 exactly, run the same FP32 epilogue and round once to C's dtype. The backend is process-wide.
enum class GemmBackend { Own, Blas };
void gemm(const GemmDesc& d);
bool gemm_has_blas();  // this build was linked against a BLAS
// Throws std::invalid_argument for Blas in a build without one. threads > 0 sets the BLAS thread count.
void set_gemm_backend(GemmBackend b, int threads = 0);
GemmBackend gemm_backend();
std::string gemm_backends();  // for --version: "own (deterministic), blas (OpenBLAS 0.3.21 ...)"
}
namespace cuda {
// e supplies the stream, the cuBLASLt handle and workspace, and allow_tf32.
void gemm(const GemmDesc& d, const Exec& e);
// Algorithm tuning (kernels/cuda/gemm.cu): at a plan's first use the heuristic's candidates are timed on
// random operands of the same shape and the fastest whose output is bit for bit the first choice's is kept,
// so results never depend on it. Process-wide; on unless MPT_GEMM_TUNE=0; applies to plans built afterwards.
struct GemmTuningStats {
  int plans_tuned = 0;           // plans whose candidates were compared
  int plans_changed = 0;         // ... where a candidate other than the first choice won
  int candidates_run = 0;        // candidates beyond the first choice that were run
  int candidates_identical = 0;  // ... whose output matched the first choice's bit for bit
  int skipped = 0;               // plans too large to tune, or whose temporaries could not be allocated
};
void set_gemm_tuning(bool on);
GemmTuningStats gemm_tuning_stats();
void clear_gemm_plans();  // drop every cached plan (tests: the next calls build and tune afresh)
}
namespace ops {
inline void gemm(const Exec& e, const GemmDesc& d) {
  OpScope scope(e, [&] {
    const double es = double(dtype_size(d.dtype)), m = d.m, n = d.n, k = d.k;
    const char* epi[] = {"", " bias", " bias+gelu", " bias+relu", " dgelu"};
    std::string name = "gemm " + dims_str({d.m, d.n, d.k}) + " " + (d.trans_a ? "T" : "N") + (d.trans_b ? "T" : "N") +
                       epi[int(d.epilogue)] + (d.beta != 0.f ? " +=C" : "");
    const double out = m * n * es * (d.beta != 0.f ? 2 : 1) * (d.pre_act ? 2 : 1);  // DGelu: pre_act read
    return OpInfo{std::move(name), 2 * m * n * k, (m * k + k * n) * es + out};
  });
  e.cuda() ? cuda::gemm(d, e) : cpu::gemm(d);
}
}  // namespace ops
}  // namespace mpt
