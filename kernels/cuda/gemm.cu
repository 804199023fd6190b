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
//  - DGelu    -> CUBLASLT_EPILOGUE_DGELU with pre_act as the aux input (aux ld = ldc, a multiple of 8,
//                16-byte aligned; else the FP32 scratch and a kernel computing act'(z) acc, rounded once).
//                As with GELU, the documentation gives no formula; the test allows a hardware tanh.
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
//
// Tuning without changing results. The heuristic ranks up to kCandidates algorithms, and its first choice
// is often not the fastest for these shapes. At a plan's first use every candidate runs on random operands
// of the plan's exact shape, strides, dtype and epilogue (device temporaries, never the caller's buffers),
// and a candidate is eligible only if its output (and the GELU epilogue's aux) is bit for bit that of the
// heuristic's first choice: a different split of k or order of accumulation would show on millions of
// random products. The fastest eligible candidate (best of kTimedRuns) replaces the first choice, so tuning
// changes the speed and never a result: runs stay reproducible across processes whichever candidate wins a
// timing. Not tuned (first choice kept): MPT_GEMM_TUNE=0 or set_gemm_tuning(false), a stream being
// captured into a graph, temporaries over kTuneMaxBytes (the LM head's logits), a failed allocation.
#include "kernels/gemm.h"

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/cuda/cuda_util.cuh"

namespace mpt::cuda {

using namespace mpt::cuda_detail;

namespace {

enum class Plan : uint8_t { Plain, FusedBias, FusedGelu, FusedGeluAux, BiasThenRelu, FusedDGelu, Fp32Scratch };
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
  std::vector<cublasLtMatmulAlgo_t> candidates;  // the heuristic's ranking; [0] is its first choice
  bool ok = false, tuned = false;
  ~Entry() {
    if (ld) cublasLtMatrixLayoutDestroy(ld);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

constexpr size_t kMaxCachedPlans = 1024;
constexpr int kCandidates = 8;
constexpr int kTimedRuns = 5;
constexpr size_t kTuneMaxBytes = size_t(768) << 20;

std::atomic<int>& tuning_flag() {  // -1: not yet read from MPT_GEMM_TUNE
  static std::atomic<int> f{-1};
  return f;
}
bool tuning_on() {
  int f = tuning_flag().load();
  if (f < 0) {
    const char* v = std::getenv("MPT_GEMM_TUNE");
    f = (v && std::string(v) == "0") ? 0 : 1;
    tuning_flag().store(f);
  }
  return f == 1;
}
GemmTuningStats& stats() {  // under cache_mutex
  static GemmTuningStats s;
  return s;
}

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
  if (plan == Plan::FusedDGelu) {
    set_attr(en.desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, o.aux);
    return;
  }
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
    case Plan::FusedDGelu: epi = CUBLASLT_EPILOGUE_DGELU; break;
    default: break;
  }
  set_attr(en->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, epi);
  if (epi != CUBLASLT_EPILOGUE_DEFAULT && key.plan != Plan::FusedDGelu) {
    const int32_t bias_type = t;
    set_attr(en->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, bias_type);
  }
  if (key.plan == Plan::FusedGeluAux || key.plan == Plan::FusedDGelu) {
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

  cublasLtMatmulHeuristicResult_t results[kCandidates]{};
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(static_cast<cublasLtHandle_t>(e.blas), en->desc, en->la,
                                                           en->lb, en->ld, en->ld, pref, kCandidates, results, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st == CUBLAS_STATUS_SUCCESS)
    for (int i = 0; i < found; ++i)
      if (results[i].state == CUBLAS_STATUS_SUCCESS) en->candidates.push_back(results[i].algo);
  if (!en->candidates.empty()) {
    en->algo = en->candidates[0];
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

// c[i, j] = round(act'(z[i, j]) acc[i, j]) (acc: FP32, row stride n; z and c: row stride ldc).
template <class T>
static __global__ void dgelu_kernel(const float* __restrict__ acc, const T* __restrict__ z, T* __restrict__ c, int m,
                                    int n, int ldc) {
  const size_t total = size_t(m) * size_t(n);
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  for (size_t idx = size_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    const size_t i = idx / size_t(n), j = idx - i * size_t(n);
    const size_t o = i * size_t(ldc) + j;
    store_f32(c, o, acc[idx] * gelu_tanh_grad(load_f32(z, o)));
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

// ---- tuning (see the header comment)

__device__ __forceinline__ uint32_t mix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return h;
}

// Uniform values in [-1, 1) from a hash of the index.
template <class T> static __global__ void tune_fill_kernel(T* p, size_t n, uint32_t seed) {
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const uint32_t h = mix32(uint32_t(i) * 0x9E3779B1u ^ mix32(uint32_t(i >> 32) + seed));
    store_f32(p, i, float(h >> 8) * (1.f / 8388608.f) - 1.f);
  }
}

// *count += the number of 16-bit words in which a and b differ.
static __global__ void count_diff_kernel(const uint16_t* a, const uint16_t* b, size_t n, unsigned int* count) {
  const size_t stride = size_t(gridDim.x) * blockDim.x;
  unsigned int c = 0;
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) c += a[i] != b[i];
  if (c) atomicAdd(count, c);
}

void tune(Entry& en, const Key& key, const GemmDesc& d, const Exec& e, cublasLtHandle_t handle, cudaStream_t stream) {
  en.tuned = true;
  if (en.candidates.size() < 2 || !tuning_on()) return;
  cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
  MPT_CUDA_CHECK(cudaStreamIsCapturing(stream, &capturing));
  if (capturing != cudaStreamCaptureStatusNone) return;
  GemmTuningStats& st = stats();
  // Temporaries in cuBLASLt's naming: A = our B (ldb), B = our A (lda), C (when beta != 0), D twice (the first
  // choice's and a candidate's), aux twice, bias, and a counter.
  const Plan plan = key.plan;
  const size_t es = dtype_size(d.dtype), es_d = plan == Plan::Fp32Scratch ? 4 : es;
  const bool has_bias = plan == Plan::FusedBias || plan == Plan::FusedGelu || plan == Plan::FusedGeluAux ||
                        plan == Plan::BiasThenRelu;
  const bool has_aux = plan == Plan::FusedGeluAux, aux_in = plan == Plan::FusedDGelu;  // aux written / read
  const bool has_c = plan == Plan::Plain && d.beta != 0.f;
  const size_t ldd = plan == Plan::Fp32Scratch ? size_t(d.n) : size_t(d.ldc);
  const size_t n_a = size_t(d.ldb) * size_t(d.trans_b ? d.n : d.k), n_b = size_t(d.lda) * size_t(d.trans_a ? d.k : d.m);
  const size_t n_d = ldd * size_t(d.m), n_aux = has_aux || aux_in ? size_t(d.ldc) * size_t(d.m) : 0;
  auto up = [](size_t bytes) { return (bytes + 255) & ~size_t(255); };
  const size_t o_b = up(n_a * es), o_c = o_b + up(n_b * es), o_d0 = o_c + (has_c ? up(n_d * es_d) : 0);
  const size_t o_d1 = o_d0 + up(n_d * es_d), o_x0 = o_d1 + up(n_d * es_d), o_x1 = o_x0 + up(n_aux * es);
  const size_t o_bias = o_x1 + up(n_aux * es), o_cnt = o_bias + up(has_bias ? size_t(d.n) * es : 0);
  const size_t total = o_cnt + 256;
  if (total > kTuneMaxBytes) {
    ++st.skipped;
    return;
  }
  char* base = nullptr;
  if (cudaMallocAsync(reinterpret_cast<void**>(&base), total, stream) != cudaSuccess) {
    (void)cudaGetLastError();
    ++st.skipped;
    return;
  }
  auto fill = [&](size_t off, size_t n, uint32_t seed, DType t) {
    if (n == 0) return;
    dispatch_dtype(t, "gemm tuning", [&](auto tag) {
      using T = typename decltype(tag)::type;
      tune_fill_kernel<T><<<grid_for(n), kBlock, 0, stream>>>(reinterpret_cast<T*>(base + off), n, seed);
    });
    MPT_LAUNCH_CHECK("tune_fill_kernel");
  };
  fill(0, n_a, 1, d.dtype);
  fill(o_b, n_b, 2, d.dtype);
  if (has_c) fill(o_c, n_d, 3, plan == Plan::Fp32Scratch ? DType::F32 : d.dtype);
  if (has_bias) fill(o_bias, size_t(d.n), 4, d.dtype);
  if (aux_in) fill(o_x0, n_aux, 5, d.dtype);  // the pre-activation, the same for every candidate
  const float alpha = d.alpha, beta = plan == Plan::Plain ? d.beta : 0.f;
  auto run = [&](const cublasLtMatmulAlgo_t& algo, size_t o_d, size_t o_x) {
    Operands o{base, base + o_b, base + o_d, has_bias ? base + o_bias : nullptr,
               has_aux ? base + o_x : aux_in ? base + o_x0 : nullptr};
    bind_pointers(en, o, plan);
    return cublasLtMatmul(handle, en.desc, &alpha, o.a, en.la, o.b, en.lb, &beta, has_c ? base + o_c : o.d, en.ld,
                          o.d, en.ld, &algo, e.workspace, e.workspace_bytes, stream);
  };
  auto clear = [&](size_t o_d, size_t o_x) {
    MPT_CUDA_CHECK(cudaMemsetAsync(base + o_d, 0, n_d * es_d, stream));
    if (has_aux) MPT_CUDA_CHECK(cudaMemsetAsync(base + o_x, 0, n_aux * es, stream));
  };
  unsigned int* cnt = reinterpret_cast<unsigned int*>(base + o_cnt);
  auto differs = [&]() {
    MPT_CUDA_CHECK(cudaMemsetAsync(cnt, 0, sizeof(unsigned int), stream));
    const size_t w_d = n_d * es_d / 2, w_x = has_aux ? n_aux * es / 2 : 0;
    count_diff_kernel<<<grid_for(w_d), kBlock, 0, stream>>>(reinterpret_cast<uint16_t*>(base + o_d0),
                                                            reinterpret_cast<uint16_t*>(base + o_d1), w_d, cnt);
    if (w_x)
      count_diff_kernel<<<grid_for(w_x), kBlock, 0, stream>>>(reinterpret_cast<uint16_t*>(base + o_x0),
                                                              reinterpret_cast<uint16_t*>(base + o_x1), w_x, cnt);
    MPT_LAUNCH_CHECK("count_diff_kernel");
    unsigned int h = 0;
    MPT_CUDA_CHECK(cudaMemcpyAsync(&h, cnt, sizeof h, cudaMemcpyDeviceToHost, stream));
    MPT_CUDA_CHECK(cudaStreamSynchronize(stream));
    return h != 0;
  };

  std::vector<size_t> eligible;
  clear(o_d0, o_x0);
  if (run(en.candidates[0], o_d0, o_x0) == CUBLAS_STATUS_SUCCESS) {
    eligible.push_back(0);
    for (size_t i = 1; i < en.candidates.size(); ++i) {
      ++st.candidates_run;
      clear(o_d1, o_x1);
      if (run(en.candidates[i], o_d1, o_x1) != CUBLAS_STATUS_SUCCESS) continue;
      if (differs()) continue;
      ++st.candidates_identical;
      eligible.push_back(i);
    }
  }
  size_t best = 0;
  if (eligible.size() > 1) {
    cudaEvent_t ev[2];
    MPT_CUDA_CHECK(cudaEventCreate(&ev[0]));
    MPT_CUDA_CHECK(cudaEventCreate(&ev[1]));
    float best_ms = 0;
    for (size_t i : eligible) {
      float ms_min = 0;
      for (int rep = 0; rep <= kTimedRuns; ++rep) {  // the first run warms up
        MPT_CUDA_CHECK(cudaEventRecord(ev[0], stream));
        (void)run(en.candidates[i], o_d1, o_x1);
        MPT_CUDA_CHECK(cudaEventRecord(ev[1], stream));
        MPT_CUDA_CHECK(cudaEventSynchronize(ev[1]));
        float ms = 0;
        MPT_CUDA_CHECK(cudaEventElapsedTime(&ms, ev[0], ev[1]));
        if (rep == 1 || (rep > 1 && ms < ms_min)) ms_min = ms;
      }
      if (i == eligible.front() || ms_min < best_ms) best = i, best_ms = ms_min;
    }
    cudaEventDestroy(ev[0]);
    cudaEventDestroy(ev[1]);
  }
  MPT_CUDA_CHECK(cudaFreeAsync(base, stream));
  MPT_CUDA_CHECK(cudaStreamSynchronize(stream));
  en.algo = en.candidates[best];
  ++st.plans_tuned;
  if (best != 0) ++st.plans_changed;
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
    case Epilogue::DGelu:
      return (align_of(d.pre_act) >= 16 && d.ldc % 8 == 0) ? Plan::FusedDGelu : Plan::Fp32Scratch;
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
    Operands o{d.b, d.a, d.c, d.bias, d.pre_act};  // DGelu: aux is the pre-activation, an input
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
      key.al_aux = plan == Plan::FusedGeluAux || plan == Plan::FusedDGelu ? align_of(o.aux) : 0u;
      key.workspace = e.workspace_bytes;
      // Shapes that churn (a sweep) restart the cache rather than grow it without bound.
      if (cache().size() >= kMaxCachedPlans && cache().find(key) == cache().end()) cache().clear();
      auto& slot = cache()[key];
      if (!slot) slot = build(key, d, e, o);
      Entry& en = *slot;
      if (en.ok && !en.tuned) tune(en, key, d, e, handle, stream);
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
        case Epilogue::DGelu:
          dgelu_kernel<T><<<grid, kBlock, 0, stream>>>(scratch, pre, c, d.m, d.n, d.ldc);
          break;
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

void set_gemm_tuning(bool on) { tuning_flag().store(on ? 1 : 0); }

GemmTuningStats gemm_tuning_stats() {
  std::lock_guard<std::mutex> lock(cache_mutex());
  return stats();
}

void clear_gemm_plans() {
  std::lock_guard<std::mutex> lock(cache_mutex());
  cache().clear();
}

}  // namespace mpt::cuda
