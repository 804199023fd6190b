// CUDA version of kernels/gemm.h through cuBLASLt.
//
// Layout: cuBLASLt is column-major. A row-major [r, c] matrix with row stride ld is the column-major
// [c, r] matrix with the same ld, so the row-major C = op(A) op(B) is computed as the column-major
// C^T = op(B)^T op(A)^T: cuBLASLt's "A" is our B, its "B" is our A, its M is n and its N is m, and a
// bias over our columns j is cuBLASLt's bias over the rows of D.
//
// Precision: CUBLAS_COMPUTE_32F (FP32 accumulation, FP32 alpha/beta) for every dtype, or
// CUBLAS_COMPUTE_32F_FAST_TF32 for fp32 when Exec::allow_tf32. The epilogue runs on the FP32 accumulator
// and the result is rounded once to C's dtype, as in the CPU twin.
//
// Epilogues, and when each falls back (all from cublasLt.h / the cuBLAS documentation):
//  - Bias     -> CUBLASLT_EPILOGUE_BIAS.
//  - BiasGelu -> CUBLASLT_EPILOGUE_GELU_AUX_BIAS with pre_act as the aux matrix (aux type = C's type,
//                aux ld = ldc), or CUBLASLT_EPILOGUE_GELU_BIAS when pre_act is null. The documentation
//                calls the epilogue "GELU" without giving the formula; PyTorch, when it cannot use this
//                epilogue, applies gelu(approximate="tanh") instead, i.e. the epilogue is the tanh form of
//                kernels/activation.h. Its tanh may be a hardware approximation, which the test allows for.
//                The aux leading dimension must be a multiple of 8 (and >= rows of D, which ldc >= n gives).
//  - BiasRelu -> NOT the RELU_AUX_BIAS epilogue: its aux output is a bit mask (aux ld in bits, multiple of
//                128), not the pre-activation that the header promises. Instead a BIAS gemm writes
//                z = acc + bias into pre_act (or into C when pre_act is null), then a small kernel writes
//                C = relu(z). round(relu(z)) == relu(round(z)), so this is still one rounding.
//  - The heuristic reads the bias and aux pointers to learn their alignment; we use the fused epilogues
//    only when both are 16-byte aligned (a misaligned bias is a known failure mode), and otherwise, or
//    when no algorithm is found or the call reports NOT_SUPPORTED, fall back to a plain gemm into an FP32
//    scratch [m, n] (a lazily grown per-stream buffer, see stream_scratch) followed by one kernel that adds
//    the bias, stores pre_act, applies the activation and rounds once. The fallback therefore keeps the
//    single-rounding contract exactly.
//
// Plans (descriptor, layouts, heuristic result) are cached per shape, dtype, plan, TF32 flag, workspace
// size and pointer alignment class, so a steady-state call is a map lookup, two attribute writes and the
// matmul. The cache is shared by all threads under a mutex.
#include "kernels/gemm.h"

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>

#include "kernels/cuda/cuda_util.cuh"

namespace mpt::cuda {

using namespace mpt::cuda_detail;

namespace {

enum class Plan : uint8_t { Plain, FusedBias, FusedGelu, FusedGeluAux, BiasThenRelu, Fp32Scratch };
enum class EpiAct : uint8_t { None, Gelu, Relu };

// Largest power of two (<= 256, cuBLASLt's default assumption) dividing the address.
uint32_t align_of(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  uint32_t al = 256;
  while (al > 1 && (a % al) != 0) al >>= 1;
  return al;
}

struct Key {
  int device;
  uintptr_t handle;
  bool ta, tb;
  int m, n, k;
  DType dtype;
  int lda, ldb, ldc;
  Plan plan;
  bool tf32;
  uint32_t al_a, al_b, al_d, al_bias, al_aux;
  size_t workspace;
  auto tie() const {
    return std::tie(device, handle, ta, tb, m, n, k, dtype, lda, ldb, ldc, plan, tf32, al_a, al_b, al_d, al_bias,
                    al_aux, workspace);
  }
  bool operator<(const Key& o) const { return tie() < o.tie(); }
};

struct Entry {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, ld = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool ok = false;
  ~Entry() {
    if (ld) cublasLtMatrixLayoutDestroy(ld);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

constexpr size_t kMaxCachedPlans = 1024;

std::mutex& cache_mutex() {
  static std::mutex mu;
  return mu;
}
// Leaked on purpose: destroying descriptors after the CUDA context is gone at exit is not safe.
std::map<Key, std::unique_ptr<Entry>>& cache() {
  static auto* m = new std::map<Key, std::unique_ptr<Entry>>();
  return *m;
}

template <class T> void set_attr(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t a, const T& v) {
  MPT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, a, &v, sizeof v));
}

// Pointers of one call, in cuBLASLt's naming (A = our B, B = our A, D = what the gemm writes).
struct Operands {
  const void* a;
  const void* b;
  void* d;
  const void* bias;
  void* aux;
};

void bind_pointers(const Entry& en, const Operands& o, Plan plan) {
  if (plan == Plan::Plain || plan == Plan::Fp32Scratch) return;
  set_attr(en.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, o.bias);
  if (plan == Plan::FusedGeluAux) set_attr(en.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, o.aux);
}

std::unique_ptr<Entry> build(const Key& key, const GemmDesc& d, const Exec& e, const Operands& o) {
  auto en = std::make_unique<Entry>();
  const cublasComputeType_t compute = key.tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  const cudaDataType_t t = cuda_dtype(d.dtype);
  const cudaDataType_t dt = key.plan == Plan::Fp32Scratch ? CUDA_R_32F : t;
  MPT_CUBLAS_CHECK(cublasLtMatmulDescCreate(&en->desc, compute, CUDA_R_32F));
  const int32_t opa = d.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int32_t opb = d.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  set_attr(en->desc, CUBLASLT_MATMUL_DESC_TRANSA, opa);
  set_attr(en->desc, CUBLASLT_MATMUL_DESC_TRANSB, opb);
  uint32_t epi = CUBLASLT_EPILOGUE_DEFAULT;
  switch (key.plan) {
    case Plan::FusedBias:
    case Plan::BiasThenRelu: epi = CUBLASLT_EPILOGUE_BIAS; break;
    case Plan::FusedGelu: epi = CUBLASLT_EPILOGUE_GELU_BIAS; break;
    case Plan::FusedGeluAux: epi = CUBLASLT_EPILOGUE_GELU_AUX_BIAS; break;
    default: break;
  }
  set_attr(en->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, epi);
  if (epi != CUBLASLT_EPILOGUE_DEFAULT) {
    const int32_t bias_type = t;
    set_attr(en->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, bias_type);
  }
  if (key.plan == Plan::FusedGeluAux) {
    const int64_t aux_ld = d.ldc;
    set_attr(en->desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, aux_ld);
  }
  bind_pointers(*en, o, key.plan);

  const uint64_t n = uint64_t(d.n), m = uint64_t(d.m), k = uint64_t(d.k);
  MPT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&en->la, t, d.trans_b ? k : n, d.trans_b ? n : k, d.ldb));
  MPT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&en->lb, t, d.trans_a ? m : k, d.trans_a ? k : m, d.lda));
  const int64_t ldd = key.plan == Plan::Fp32Scratch ? int64_t(d.n) : int64_t(d.ldc);
  MPT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&en->ld, dt, n, m, ldd));

  cublasLtMatmulPreference_t pref = nullptr;
  MPT_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = e.workspace_bytes;
  MPT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
  const uint32_t al[4] = {key.al_a, key.al_b, key.al_d, key.al_d};
  const cublasLtMatmulPreferenceAttributes_t al_attr[4] = {
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
  for (int i = 0; i < 4; ++i)
    MPT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, al_attr[i], &al[i], sizeof al[i]));
  // Split-K partial sums must be reduced in the compute type (FP32): the heuristic may otherwise pick a
  // scheme that reduces partials in the output type (bf16/fp16) or in place with atomics, which rounds the
  // accumulator several times and is not deterministic.
  const uint32_t reduction = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
  MPT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &reduction,
                                                        sizeof reduction));

  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(static_cast<cublasLtHandle_t>(e.blas), en->desc, en->la,
                                                           en->lb, en->ld, en->ld, pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st == CUBLAS_STATUS_SUCCESS && found > 0 && result.state == CUBLAS_STATUS_SUCCESS) {
    en->algo = result.algo;
    en->ok = true;
  } else if (st != CUBLAS_STATUS_SUCCESS && st != CUBLAS_STATUS_NOT_SUPPORTED) {
    MPT_FATAL("cublasLtMatmulAlgoGetHeuristic", std::string(cublasLtGetStatusName(st)) + ": " + cublasLtGetStatusString(st));
  }
  return en;
}

// z[i, j] = acc[i, j] + bias[j] in FP32 (acc: FP32, row stride n); pre_act = round(z); c = round(act(z)).
template <class T, EpiAct A>
static __global__ void bias_act_kernel(const float* __restrict__ acc, const T* __restrict__ bias, T* __restrict__ c,
                                       T* __restrict__ pre, int m, int n, int ldc) {
  const size_t total = size_t(m) * size_t(n);
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  for (size_t idx = size_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    const size_t i = idx / size_t(n), j = idx - i * size_t(n);
    const size_t o = i * size_t(ldc) + j;
    const float z = acc[idx] + to_f32(bias[j]);
    if (pre) store_f32(pre, o, z);
    store_f32(c, o, A == EpiAct::Gelu ? gelu_tanh(z) : (A == EpiAct::Relu ? relu_nan(z) : z));
  }
}

// c = relu(z) over [m, n] with row stride ldc for both (z may be c).
template <class T>
static __global__ void relu_rows_kernel(const T* z, T* c, int m, int n, int ldc) {
  const size_t total = size_t(m) * size_t(n);
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  for (size_t idx = size_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    const size_t i = idx / size_t(n), j = idx - i * size_t(n);
    const size_t o = i * size_t(ldc) + j;
    store_f32(c, o, relu_nan(load_f32(z, o)));
  }
}

Plan preferred_plan(const GemmDesc& d) {
  const bool bias_ok = d.bias && align_of(d.bias) >= 16;
  switch (d.epilogue) {
    case Epilogue::None: return Plan::Plain;
    case Epilogue::Bias: return bias_ok ? Plan::FusedBias : Plan::Fp32Scratch;
    case Epilogue::BiasGelu:
      if (!bias_ok) return Plan::Fp32Scratch;
      if (!d.pre_act) return Plan::FusedGelu;
      return (align_of(d.pre_act) >= 16 && d.ldc % 8 == 0) ? Plan::FusedGeluAux : Plan::Fp32Scratch;
    case Epilogue::BiasRelu: return bias_ok ? Plan::BiasThenRelu : Plan::Fp32Scratch;
  }
  return Plan::Fp32Scratch;
}

}  // namespace

void gemm(const GemmDesc& d, const Exec& e) {
  check_gemm_desc(d);
  if (!e.blas) kernel_arg_error("gemm", "Exec has no cuBLASLt handle");
  if (e.workspace_bytes > 0 && !e.workspace) kernel_arg_error("gemm", "workspace_bytes > 0 with a null workspace");
  const cudaStream_t stream = to_cuda(e.stream);
  const cublasLtHandle_t handle = static_cast<cublasLtHandle_t>(e.blas);
  const int device = current_device();

  Plan plan = preferred_plan(d);
  float* scratch = nullptr;
  auto operands = [&](Plan p) {
    Operands o{d.b, d.a, d.c, d.bias, d.pre_act};
    if (p == Plan::BiasThenRelu && d.pre_act) o.d = d.pre_act;
    if (p == Plan::Fp32Scratch) {
      if (!scratch) scratch = static_cast<float*>(stream_scratch(e.stream, size_t(d.m) * size_t(d.n) * sizeof(float)));
      o.d = scratch;
    }
    return o;
  };

  {
    std::lock_guard<std::mutex> lock(cache_mutex());
    for (;;) {
      const Operands o = operands(plan);
      const bool fused = plan != Plan::Plain && plan != Plan::Fp32Scratch;
      Key key{};
      key.device = device;
      key.handle = reinterpret_cast<uintptr_t>(handle);
      key.ta = d.trans_a;
      key.tb = d.trans_b;
      key.m = d.m;
      key.n = d.n;
      key.k = d.k;
      key.dtype = d.dtype;
      key.lda = d.lda;
      key.ldb = d.ldb;
      key.ldc = d.ldc;
      key.plan = plan;
      key.tf32 = d.dtype == DType::F32 && e.allow_tf32;
      key.al_a = align_of(o.a);
      key.al_b = align_of(o.b);
      key.al_d = align_of(o.d);
      key.al_bias = fused ? align_of(o.bias) : 0u;
      key.al_aux = plan == Plan::FusedGeluAux ? align_of(o.aux) : 0u;
      key.workspace = e.workspace_bytes;
      // Shapes that churn (a sweep) restart the cache rather than grow it without bound.
      if (cache().size() >= kMaxCachedPlans && cache().find(key) == cache().end()) cache().clear();
      auto& slot = cache()[key];
      if (!slot) slot = build(key, d, e, o);
      Entry& en = *slot;
      if (!en.ok) {
        if (plan == Plan::Plain || plan == Plan::Fp32Scratch)
          MPT_FATAL("cublasLtMatmulAlgoGetHeuristic",
                    "no algorithm for gemm m=" + std::to_string(d.m) + " n=" + std::to_string(d.n) +
                        " k=" + std::to_string(d.k) + " dtype=" + dtype_name(d.dtype));
        plan = Plan::Fp32Scratch;
        continue;
      }
      bind_pointers(en, o, plan);
      const float alpha = d.alpha;
      const float beta = plan == Plan::Plain ? d.beta : 0.f;
      const cublasStatus_t st = cublasLtMatmul(handle, en.desc, &alpha, o.a, en.la, o.b, en.lb, &beta, o.d, en.ld, o.d,
                                               en.ld, &en.algo, e.workspace, e.workspace_bytes, stream);
      if (st == CUBLAS_STATUS_NOT_SUPPORTED && fused) {
        en.ok = false;  // remember: this shape and alignment class takes the fallback from now on
        plan = Plan::Fp32Scratch;
        continue;
      }
      if (st != CUBLAS_STATUS_SUCCESS)
        MPT_FATAL("cublasLtMatmul", std::string(cublasLtGetStatusName(st)) + ": " + cublasLtGetStatusString(st));
      break;
    }
  }

  if (plan == Plan::BiasThenRelu) {
    const size_t total = size_t(d.m) * size_t(d.n);
    dispatch_dtype(d.dtype, "gemm", [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T* z = static_cast<const T*>(d.pre_act ? d.pre_act : d.c);
      relu_rows_kernel<T><<<grid_for(total), kBlock, 0, stream>>>(z, static_cast<T*>(d.c), d.m, d.n, d.ldc);
    });
    MPT_LAUNCH_CHECK("relu_rows_kernel");
  } else if (plan == Plan::Fp32Scratch && d.epilogue != Epilogue::None) {
    const size_t total = size_t(d.m) * size_t(d.n);
    const unsigned grid = grid_for(total);
    dispatch_dtype(d.dtype, "gemm", [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T* bias = static_cast<const T*>(d.bias);
      T* c = static_cast<T*>(d.c);
      T* pre = static_cast<T*>(d.pre_act);
      switch (d.epilogue) {
        case Epilogue::BiasGelu:
          bias_act_kernel<T, EpiAct::Gelu><<<grid, kBlock, 0, stream>>>(scratch, bias, c, pre, d.m, d.n, d.ldc);
          break;
        case Epilogue::BiasRelu:
          bias_act_kernel<T, EpiAct::Relu><<<grid, kBlock, 0, stream>>>(scratch, bias, c, pre, d.m, d.n, d.ldc);
          break;
        default:
          bias_act_kernel<T, EpiAct::None><<<grid, kBlock, 0, stream>>>(scratch, bias, c, nullptr, d.m, d.n, d.ldc);
      }
    });
    MPT_LAUNCH_CHECK("bias_act_kernel");
  }
}

}  // namespace mpt::cuda
