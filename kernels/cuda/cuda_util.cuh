// Shared pieces of the CUDA launchers: error checks in the MPT_FATAL idiom, launch geometry, storage
// dtype loads/stores, deterministic block reductions and a per-stream scratch buffer.
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "kernels/exec.h"
#include "src/core/check.h"
#include "src/core/cuda_check.h"  // MPT_CUDA_CHECK

#define MPT_CUBLAS_CHECK(call)                                                                            \
  do {                                                                                                    \
    const cublasStatus_t mpt_st_ = (call);                                                                \
    if (mpt_st_ != CUBLAS_STATUS_SUCCESS)                                                                 \
      MPT_FATAL(#call, std::string(cublasLtGetStatusName(mpt_st_)) + ": " + cublasLtGetStatusString(mpt_st_)); \
  } while (0)

// After every <<<...>>>: a bad configuration shows up here; an asynchronous fault of an earlier kernel
// is sticky and shows up here too, which is still the right place to stop.
#define MPT_LAUNCH_CHECK(kernel_name)                                                                    \
  do {                                                                                                   \
    const cudaError_t mpt_err_ = cudaGetLastError();                                                     \
    if (mpt_err_ != cudaSuccess)                                                                         \
      MPT_FATAL("launch of " kernel_name,                                                                \
                std::string(cudaGetErrorName(mpt_err_)) + ": " + cudaGetErrorString(mpt_err_));          \
  } while (0)

namespace mpt::cuda_detail {

inline cudaStream_t to_cuda(Stream s) { return static_cast<cudaStream_t>(s); }

inline int current_device() {
  int dev = 0;
  MPT_CUDA_CHECK(cudaGetDevice(&dev));
  return dev;
}

// Multiprocessor count of the current device, looked up once per device.
inline int sm_count() {
  static std::atomic<int> cache[64] = {};
  const int dev = current_device();
  if (dev >= 64) {
    int v = 0;
    MPT_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev));
    return v;
  }
  int v = cache[dev].load(std::memory_order_relaxed);
  if (v == 0) {
    MPT_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev));
    cache[dev].store(v, std::memory_order_relaxed);
  }
  return v;
}

constexpr int kBlock = 256;

// Grid for a grid-stride loop over n items with `block` threads: enough blocks to fill the device a few
// times over, never more than the items need. n > 0.
inline unsigned grid_for(size_t n, int block = kBlock, int blocks_per_sm = 8) {
  const size_t need = (n + size_t(block) - 1) / size_t(block);
  const size_t cap = size_t(std::max(1, sm_count() * blocks_per_sm));
  return unsigned(std::max<size_t>(1, std::min(need, cap)));
}

inline unsigned ceil_div(size_t a, size_t b) { return unsigned((a + b - 1) / b); }

// ---- storage dtypes on the device: FP32 arithmetic, one rounding on store.
__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <class T> __device__ __forceinline__ float load_f32(const T* p, size_t i) { return to_f32(p[i]); }
template <class T> __device__ __forceinline__ void store_f32(T* p, size_t i, float v) { p[i] = from_f32<T>(v); }

// Host-side dispatch from DType to the device storage type: f(TypeTag<T>{}).
template <class T> struct TypeTag { using type = T; };
template <class F> void dispatch_dtype(DType t, const char* op, F&& f) {
  switch (t) {
    case DType::F32: f(TypeTag<float>{}); break;
    case DType::F16: f(TypeTag<__half>{}); break;
    case DType::BF16: f(TypeTag<__nv_bfloat16>{}); break;
    default: kernel_arg_error(op, "unknown dtype");
  }
}

inline cudaDataType_t cuda_dtype(DType t) {
  switch (t) {
    case DType::F16: return CUDA_R_16F;
    case DType::BF16: return CUDA_R_16BF;
    default: return CUDA_R_32F;
  }
}

// ---- activations shared by the activation kernels and the GEMM epilogue fallback (the formulas of
// kernels/activation.h, written as the CPU twin writes them).
constexpr float kGeluC = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kGeluA = 0.044715f;
__device__ __forceinline__ float gelu_tanh(float z) {
  const float t = tanhf(kGeluC * (z + kGeluA * z * z * z));
  return 0.5f * z * (1.f + t);
}
__device__ __forceinline__ float gelu_tanh_grad(float z) {
  const float t = tanhf(kGeluC * (z + kGeluA * z * z * z));
  const float dinner = kGeluC * (1.f + 3.f * kGeluA * z * z);
  return 0.5f * (1.f + t) + 0.5f * z * (1.f - t * t) * dinner;
}
// NaN passes through (an overflowed forward must stay visible as non-finite); the backward gates on z > 0.
__device__ __forceinline__ float relu_nan(float z) { return z < 0.f ? 0.f : z; }

// ---- deterministic reductions. The butterfly leaves the same bits in every lane (each step adds the same
// two values, and float addition is commutative), and the cross-warp step adds warp results in warp order,
// so a block sum depends only on the inputs and the block size.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ unsigned warp_sum(unsigned v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ unsigned long long warp_sum(unsigned long long v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `shm` holds at least 33 values of T; the call contains __syncthreads, so all threads must reach it.
template <class T> __device__ __forceinline__ T block_sum(T v, T* shm) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_sum(v);
  if (lane == 0) shm[warp] = v;
  __syncthreads();
  if (warp == 0) {
    T w = lane < nwarps ? shm[lane] : T(0);
    w = warp_sum(w);
    if (lane == 0) shm[32] = w;
  }
  __syncthreads();
  const T r = shm[32];
  __syncthreads();  // shm may be reused right after
  return r;
}

// ---- scratch: one growable device buffer per (device, stream). Growing frees the old buffer in stream
// order (cudaFreeAsync on the same stream), so work already queued on the stream that still reads it is
// safe, and no device-wide synchronisation happens. Buffers of different streams never alias, so kernels
// on different streams may use scratch at the same time. Steady-state calls allocate nothing.
inline void* stream_scratch(Stream s, size_t bytes) {
  struct Entry { void* p = nullptr; size_t cap = 0; };
  static std::mutex mu;
  static std::map<std::pair<int, Stream>, Entry>* table = new std::map<std::pair<int, Stream>, Entry>();
  const int dev = current_device();
  std::lock_guard<std::mutex> lock(mu);
  Entry& e = (*table)[{dev, s}];
  if (e.cap < bytes) {
    const size_t cap = (std::max(bytes, e.cap * 2) + 255) & ~size_t(255);
    if (e.p) MPT_CUDA_CHECK(cudaFreeAsync(e.p, to_cuda(s)));
    e.p = nullptr;
    e.cap = 0;
    MPT_CUDA_CHECK(cudaMallocAsync(&e.p, cap, to_cuda(s)));
    e.cap = cap;
  }
  return e.p;
}

}  // namespace mpt::cuda_detail
