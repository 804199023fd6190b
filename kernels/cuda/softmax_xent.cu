// CUDA version of kernels/softmax_xent.h: one block per row, everything in FP32.
//
// Half and bf16 rows whose width is a multiple of 8 (16-byte vectors) and at most 112 KiB take the staged
// path: a block reads its row from memory once into shared memory, and the max, the sum of exponentials
// and the gradient all come from there, so the logits are read once and the gradient written once (the
// bandwidth floor). Other rows take the general path below.
//
// General path. Pass 1 finds the row maximum and its lowest index, pass 2 sums exp(x - max) over the valid columns,
// pass 3 writes dlogits (padding and ignored rows get exact zeros). The block reductions are fixed-order,
// so the loss bits are the same run after run. The logit of the label is read before the first barrier and
// every dlogits element is written by the thread that read it in the same pass, so dlogits may alias logits.
// A label >= valid_cols is a caller bug that a kernel cannot throw for: that row's loss is NaN (so the step
// is flagged non-finite) and its gradient is zero.
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "kernels/cuda/cuda_util.cuh"
#include "kernels/softmax_xent.h"

namespace mpt::cuda {

using namespace mpt::cuda_detail;

namespace {
int row_block(int cols) { return cols <= 128 ? 32 : (cols <= 2048 ? 128 : 512); }

// Argmax merge: `none` marks an empty candidate; a larger value wins, equal values go to the lower index.
__device__ __forceinline__ void merge_max(float& best, int& bi, float ov, int oi, int none) {
  if (oi != none && (bi == none || ov > best || (ov == best && oi < bi))) {
    best = ov;
    bi = oi;
  }
}
__device__ __forceinline__ void warp_argmax(float& best, int& bi, int none) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    merge_max(best, bi, ov, oi, none);
  }
}
}  // namespace

template <class T>
static __global__ void softmax_xent_kernel(const T* logits, const int32_t* __restrict__ labels, int rows, int cols,
                                           int valid_cols, float grad_scale, float* __restrict__ loss, T* dlogits,
                                           int32_t* __restrict__ pred) {
  __shared__ float shm[33];
  __shared__ float smax[32];
  __shared__ int sidx[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  for (int row = blockIdx.x; row < rows; row += gridDim.x) {
    const size_t off = size_t(row) * size_t(cols);
    const T* x = logits + off;
    const int y = labels[row];
    const bool ignored = y < 0;
    const bool bad = y >= valid_cols;
    const float xy = (!ignored && !bad) ? to_f32(x[y]) : 0.f;

    // Pass 1: max and the lowest index holding it (each thread scans its columns in increasing order).
    float best = -INFINITY;
    int bi = valid_cols;
    for (int j = threadIdx.x; j < valid_cols; j += blockDim.x) merge_max(best, bi, to_f32(x[j]), j, valid_cols);
    warp_argmax(best, bi, valid_cols);
    if (lane == 0) {
      smax[warp] = best;
      sidx[warp] = bi;
    }
    __syncthreads();
    if (warp == 0) {
      best = lane < nwarps ? smax[lane] : -INFINITY;
      bi = lane < nwarps ? sidx[lane] : valid_cols;
      warp_argmax(best, bi, valid_cols);
      if (lane == 0) {
        smax[0] = best;
        sidx[0] = bi;
      }
    }
    __syncthreads();
    const float mx = smax[0];
    const int arg = sidx[0];

    // Pass 2: sum of exp(x - max) over the valid columns.
    float se = 0.f;
    for (int j = threadIdx.x; j < valid_cols; j += blockDim.x) se += expf(to_f32(x[j]) - mx);
    const float sum = block_sum(se, shm);  // its barriers also retire smax / sidx before the next row
    const float inv_sum = 1.f / sum;

    if (threadIdx.x == 0) {
      loss[row] = ignored ? 0.f : (bad ? NAN : (mx - xy) + logf(sum));
      if (pred) pred[row] = arg < valid_cols ? arg : 0;
    }
    if (dlogits) {
      T* d = dlogits + off;
      for (int j = threadIdx.x; j < cols; j += blockDim.x) {
        float g = 0.f;
        if (!ignored && !bad && j < valid_cols) {
          const float p = __fmul_rn(expf(to_f32(x[j]) - mx), inv_sum);  // no FMA with the - 1 below
          g = grad_scale * (p - (j == y ? 1.f : 0.f));
        }
        store_f32(d, j, g);
      }
    }
  }
}

// ---- staged path: one row per block, read from memory once into shared memory (16-byte vectors of 8
// half / bf16 values) while the max and the sum of exponentials are formed (online); the gradient pass runs
// over the staged copy.
namespace {
constexpr int kStagedThreads = 512;
constexpr float kLog2e = 1.4426950408889634f;
// exp(x - m) as 2^(x log2 e - m log2 e): one FMA and the hardware exp2 (relative error ~2^-22, plus the
// FMA's rounding of the argument), instead of expf's longer sequence. The staged path is for half and bf16
// logits, whose gradient is rounded to 8 or 11 bits anyway.
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
constexpr size_t kStagedMaxBytes = 112 * 1024;  // two rows per multiprocessor in flight on sm_80+ / sm_90

__device__ __forceinline__ void unpack8(const uint4& v, const __half*, float (&f)[8]) {
  const __half2* h = reinterpret_cast<const __half2*>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 t = __half22float2(h[i]);
    f[2 * i] = t.x, f[2 * i + 1] = t.y;
  }
}
__device__ __forceinline__ void unpack8(const uint4& v, const __nv_bfloat16*, float (&f)[8]) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 t = __bfloat1622float2(h[i]);
    f[2 * i] = t.x, f[2 * i + 1] = t.y;
  }
}
template <class T> __device__ __forceinline__ uint4 pack8(const float (&f)[8]) {
  uint4 v;
  T* h = reinterpret_cast<T*>(&v);
#pragma unroll
  for (int i = 0; i < 8; ++i) h[i] = from_f32<T>(f[i]);
  return v;
}
}  // namespace

template <class T>
static __global__ void __launch_bounds__(kStagedThreads)
    softmax_xent_staged_kernel(const T* logits, const int32_t* __restrict__ labels, int cols, int valid_cols,
                               float grad_scale, float* __restrict__ loss, T* dlogits, int32_t* __restrict__ pred) {
  extern __shared__ uint4 row_s[];
  __shared__ float shm[33];
  __shared__ float smax[32];
  __shared__ int sidx[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const int row = blockIdx.x;
  const size_t off = size_t(row) * size_t(cols);
  const uint4* xv = reinterpret_cast<const uint4*>(logits + off);
  const int nvec = cols / 8;
  const int y = labels[row];
  const bool ignored = y < 0, bad = y >= valid_cols;
  // Pass 1 (memory): stage the row; max and its lowest index (each thread walks its columns in order), and
  // the sum of exp(x - max) kept online (rescaled when the thread's max grows), so the exponentials of the
  // sum are computed while the loads are in flight and the row is walked twice in all, not three times.
  float best = -INFINITY, run = 0.f;
  int bi = valid_cols;
  // Four loads in flight per thread before the first use.
  constexpr int kUnroll = 4;
  for (int v0 = int(threadIdx.x); v0 < nvec; v0 += kUnroll * int(blockDim.x)) {
    uint4 raw[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int v = v0 + u * int(blockDim.x);
      if (v < nvec) raw[u] = xv[v];
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int v = v0 + u * int(blockDim.x);
      if (v >= nvec) break;
      row_s[v] = raw[u];
      float f[8];
      unpack8(raw[u], static_cast<const T*>(nullptr), f);
      const float before = best;
      if (v * 8 + 8 <= valid_cols) {  // every column valid: max of the eight, then the index if it is new
        float m8 = f[0];
#pragma unroll
        for (int i = 1; i < 8; ++i) m8 = fmaxf(m8, f[i]);
        if (m8 > best) {
          int idx = 7;
#pragma unroll
          for (int i = 6; i >= 0; --i) idx = f[i] == m8 ? i : idx;
          best = m8;
          bi = v * 8 + idx;
        }
        if (best == -INFINITY) continue;
        const float ml = best * kLog2e;
        float add = 0.f;
#pragma unroll
        for (int i = 0; i < 8; ++i) add += fast_exp2(fmaf(f[i], kLog2e, -ml));
        run = (before == best ? run : run * fast_exp2((before - best) * kLog2e)) + add;
      } else {
#pragma unroll
        for (int i = 0; i < 8; ++i)
          if (v * 8 + i < valid_cols) merge_max(best, bi, f[i], v * 8 + i, valid_cols);
        if (best == -INFINITY) continue;
        const float ml = best * kLog2e;
        float add = 0.f;
#pragma unroll
        for (int i = 0; i < 8; ++i)
          if (v * 8 + i < valid_cols) add += fast_exp2(fmaf(f[i], kLog2e, -ml));
        run = (before == best ? run : run * fast_exp2((before - best) * kLog2e)) + add;
      }
    }
  }
  // Block merge of (max, index, sum): a larger max rescales the other sum; fixed shuffle / warp order.
  auto merge = [&](float ob, int oi, float orun) {
    const float m = fmaxf(best, ob);
    const float a = best == m ? run : (best == -INFINITY ? 0.f : run * fast_exp2((best - m) * kLog2e));
    const float c = ob == m ? orun : (ob == -INFINITY ? 0.f : orun * fast_exp2((ob - m) * kLog2e));
    merge_max(best, bi, ob, oi, valid_cols);
    best = m == -INFINITY ? best : m;
    run = a + c;
  };
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ob = __shfl_xor_sync(0xffffffffu, best, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    const float orun = __shfl_xor_sync(0xffffffffu, run, o);
    merge(ob, oi, orun);
  }
  if (lane == 0) smax[warp] = best, sidx[warp] = bi, shm[warp] = run;
  __syncthreads();
  if (warp == 0) {
    best = lane < nwarps ? smax[lane] : -INFINITY;
    bi = lane < nwarps ? sidx[lane] : valid_cols;
    run = lane < nwarps ? shm[lane] : 0.f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float ob = __shfl_xor_sync(0xffffffffu, best, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      const float orun = __shfl_xor_sync(0xffffffffu, run, o);
      merge(ob, oi, orun);
    }
    if (lane == 0) smax[0] = best, sidx[0] = bi, shm[32] = run;
  }
  __syncthreads();
  const float mx = smax[0];
  const int arg = sidx[0];
  const float sum = shm[32];
  if (threadIdx.x == 0) {
    const float xy = (!ignored && !bad) ? to_f32(reinterpret_cast<const T*>(row_s)[y]) : 0.f;
    loss[row] = ignored ? 0.f : (bad ? NAN : (mx - xy) + logf(sum));
    if (pred) pred[row] = arg < valid_cols ? arg : 0;
  }
  if (!dlogits) return;
  // Pass 3: the gradient, written once. Padding columns and ignored rows get exact zeros.
  const float inv_sum = 1.f / sum, ml = mx * kLog2e;
  const bool zero_row = ignored || bad;
  uint4* dv = reinterpret_cast<uint4*>(dlogits + off);
  for (int v = int(threadIdx.x); v < nvec; v += int(blockDim.x)) {
    float f[8];
    unpack8(row_s[v], static_cast<const T*>(nullptr), f);
    const int c0 = v * 8;
    if (!zero_row && c0 + 8 <= valid_cols) {
#pragma unroll
      for (int i = 0; i < 8; ++i) f[i] = grad_scale * __fmul_rn(fast_exp2(fmaf(f[i], kLog2e, -ml)), inv_sum);
      if (y >= c0 && y < c0 + 8) {  // the label's column: scale * (p - 1), p without FMA into the - 1
        const float p = __fmul_rn(fast_exp2(fmaf(to_f32(reinterpret_cast<const T*>(row_s)[y]), kLog2e, -ml)), inv_sum);
        f[y - c0] = grad_scale * (p - 1.f);
      }
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const int j = c0 + i;
        float g = 0.f;
        if (!zero_row && j < valid_cols) {
          const float p = __fmul_rn(fast_exp2(fmaf(f[i], kLog2e, -ml)), inv_sum);
          g = grad_scale * (p - (j == y ? 1.f : 0.f));
        }
        f[i] = g;
      }
    }
    dv[v] = pack8<T>(f);
  }
}

void softmax_xent(const void* logits, DType lt, const int32_t* labels, int rows, int cols, int valid_cols,
                  float grad_scale, float* loss, void* dlogits, int32_t* pred, Stream s) {
  if (rows < 0 || cols < 0) kernel_arg_error("softmax_xent", "negative shape");
  if (rows == 0) return;
  if (valid_cols < 1 || valid_cols > cols) kernel_arg_error("softmax_xent", "valid_cols must be in [1, cols]");
  if (!logits || !labels || !loss) kernel_arg_error("softmax_xent", "null pointer");
  const bool aligned = reinterpret_cast<uintptr_t>(logits) % 16 == 0 && reinterpret_cast<uintptr_t>(dlogits) % 16 == 0;
  const size_t row_bytes = size_t(cols) * dtype_size(lt);
  if (is_half(lt) && aligned && cols % 8 == 0 && row_bytes <= kStagedMaxBytes) {
    dispatch_dtype(lt, "softmax_xent", [&](auto tag) {
      using T = typename decltype(tag)::type;
      if constexpr (!std::is_same_v<T, float>) {
        auto* k = softmax_xent_staged_kernel<T>;
        if (row_bytes > 48 * 1024)
          MPT_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kStagedMaxBytes)));
        const int threads = std::min(kStagedThreads, std::max(32, (cols / 8 + 31) / 32 * 32));
        k<<<unsigned(rows), unsigned(threads), row_bytes, to_cuda(s)>>>(static_cast<const T*>(logits), labels, cols,
                                                                         valid_cols, grad_scale, loss,
                                                                         static_cast<T*>(dlogits), pred);
      }
    });
    MPT_LAUNCH_CHECK("softmax_xent_staged_kernel");
    return;
  }
  dispatch_dtype(lt, "softmax_xent", [&](auto tag) {
    using T = typename decltype(tag)::type;
    softmax_xent_kernel<T><<<unsigned(std::min(rows, 1 << 30)), row_block(cols), 0, to_cuda(s)>>>(
        static_cast<const T*>(logits), labels, rows, cols, valid_cols, grad_scale, loss, static_cast<T*>(dlogits),
        pred);
  });
  MPT_LAUNCH_CHECK("softmax_xent_kernel");
}

}  // namespace mpt::cuda
