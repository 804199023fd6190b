// CUDA version of kernels/bias_grad.h: deterministic column sums of a row-major [rows, cols] dy.
//
// A block owns a tile of 32 columns and a chunk of rows; its 32 x 8 threads each sum every 8th row of the
// chunk in increasing row order, and the 8 partial sums of a column are added in thread order. With one
// chunk the block adds straight into db; with several, each chunk writes its column sums to an FP32
// scratch [chunks, cols] (the per-stream buffer of cuda_util.cuh) and a second kernel adds the chunks in
// chunk order. The chunking depends only on rows, so the bits are the same run after run and on every
// device. Warps read 32 consecutive columns of one row: coalesced.
#include <cstdint>
#include <type_traits>

#include "kernels/bias_grad.h"
#include "kernels/cuda/cuda_util.cuh"

namespace mpt::cuda {

using namespace mpt::cuda_detail;

namespace {
constexpr int kTileCols = 32;
constexpr int kRowThreads = 8;
constexpr int kChunkRows = 256;  // 32 rows per thread: enough work per block, many blocks for tall dy
}  // namespace

template <class T, class D>
static __global__ void bias_grad_chunk_kernel(const T* __restrict__ dy, int rows, int cols, int chunk_rows,
                                              float* __restrict__ partial, D* __restrict__ db) {
  __shared__ float s[kRowThreads][kTileCols + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int j = blockIdx.x * kTileCols + tx;
  const int r0 = blockIdx.y * chunk_rows;
  const int r1 = min(rows, r0 + chunk_rows);
  float acc = 0.f;
  if (j < cols)
    for (int r = r0 + ty; r < r1; r += kRowThreads) acc += to_f32(dy[size_t(r) * size_t(cols) + j]);
  s[ty][tx] = acc;
  __syncthreads();
  if (ty == 0 && j < cols) {
    float t = s[0][tx];
#pragma unroll
    for (int q = 1; q < kRowThreads; ++q) t += s[q][tx];
    if (partial)
      partial[size_t(blockIdx.y) * size_t(cols) + j] = t;
    else
      store_f32(db, j, load_f32(db, j) + t);
  }
}

// The same sums for half / bf16 dy with cols a multiple of 8 and 16-byte rows: a thread owns 8 adjacent
// columns (one 16-byte load per row), a block 256 columns. Every column is summed in exactly the order of
// the kernel above (every 8th row of the chunk, then the 8 partials in thread order): the same bits.
template <class T> struct alignas(16) Pack8 {
  T v[8];
};
template <class T, class D>
static __global__ void bias_grad_chunk_vec_kernel(const T* __restrict__ dy, int rows, int cols, int chunk_rows,
                                                  float* __restrict__ partial, D* __restrict__ db) {
  __shared__ float s[kRowThreads][kTileCols * 8 + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int j0 = (blockIdx.x * kTileCols + tx) * 8;
  const int r0 = blockIdx.y * chunk_rows;
  const int r1 = min(rows, r0 + chunk_rows);
  float acc[8] = {};
  if (j0 < cols)
    for (int r = r0 + ty; r < r1; r += kRowThreads) {
      const Pack8<T> v = *reinterpret_cast<const Pack8<T>*>(dy + size_t(r) * size_t(cols) + j0);
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[e] += to_f32(v.v[e]);
    }
#pragma unroll
  for (int e = 0; e < 8; ++e) s[ty][tx * 8 + e] = acc[e];
  __syncthreads();
  if (ty == 0 && j0 < cols) {
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      float t = s[0][tx * 8 + e];
#pragma unroll
      for (int q = 1; q < kRowThreads; ++q) t += s[q][tx * 8 + e];
      if (partial)
        partial[size_t(blockIdx.y) * size_t(cols) + j0 + e] = t;
      else
        store_f32(db, size_t(j0 + e), load_f32(db, size_t(j0 + e)) + t);
    }
  }
}

template <class D>
static __global__ void bias_grad_finish_kernel(const float* __restrict__ partial, int chunks, int cols,
                                               D* __restrict__ db) {
  for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < cols; j += gridDim.x * blockDim.x) {
    float t = 0.f;
    for (int c = 0; c < chunks; ++c) t += partial[size_t(c) * size_t(cols) + j];
    store_f32(db, j, load_f32(db, j) + t);
  }
}

void bias_grad(const void* dy, DType dyt, int rows, int cols, void* db, DType dbt, Stream s) {
  if (rows < 0 || cols < 0) kernel_arg_error("bias_grad", "negative shape");
  if (rows == 0 || cols == 0) return;
  if (!dy || !db) kernel_arg_error("bias_grad", "null pointer");
  // gridDim.y is limited to 65535 chunks.
  const int chunk_rows = std::max(kChunkRows, int((int64_t(rows) + 65534) / 65535));
  const int chunks = int((int64_t(rows) + chunk_rows - 1) / chunk_rows);
  float* partial = chunks > 1 ? static_cast<float*>(stream_scratch(s, size_t(chunks) * size_t(cols) * sizeof(float)))
                              : nullptr;
  const dim3 block(kTileCols, kRowThreads);
  const dim3 grid(ceil_div(size_t(cols), kTileCols), unsigned(chunks));
  dispatch_dtype(dyt, "bias_grad", [&](auto ttag) {
    using T = typename decltype(ttag)::type;
    dispatch_dtype(dbt, "bias_grad", [&](auto dtag) {
      using D = typename decltype(dtag)::type;
      const bool vec = !std::is_same_v<T, float> && cols % 8 == 0 && reinterpret_cast<uintptr_t>(dy) % 16 == 0;
      if (vec) {
        const dim3 vgrid(ceil_div(size_t(cols), kTileCols * 8), unsigned(chunks));
        bias_grad_chunk_vec_kernel<T, D><<<vgrid, block, 0, to_cuda(s)>>>(static_cast<const T*>(dy), rows, cols,
                                                                          chunk_rows, partial, static_cast<D*>(db));
      } else {
        bias_grad_chunk_kernel<T, D><<<grid, block, 0, to_cuda(s)>>>(static_cast<const T*>(dy), rows, cols, chunk_rows,
                                                                     partial, static_cast<D*>(db));
      }
      MPT_LAUNCH_CHECK("bias_grad_chunk_kernel");
      if (chunks > 1) {
        bias_grad_finish_kernel<D><<<grid_for(size_t(cols)), kBlock, 0, to_cuda(s)>>>(partial, chunks, cols,
                                                                                     static_cast<D*>(db));
        MPT_LAUNCH_CHECK("bias_grad_finish_kernel");
      }
    });
  });
}

}  // namespace mpt::cuda
