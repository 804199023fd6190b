// CUDA version of kernels/layernorm.h. All statistics and arithmetic in FP32.
//
// Forward: one block per row. Mean first, then the variance as the mean of (x - mean)^2 (two passes over
// the row, which stays in L1/L2), as the CPU twin does, rather than E[x^2] - mean^2, which cancels.
// Backward: dx by one block per row; dgamma and dbeta by a deterministic column reduction like bias_grad's
// (32-column tiles x row chunks, fixed summation order, chunk partials in the per-stream FP32 scratch,
// then a fixed-order pass that adds them into dgamma / dbeta and rounds once). The column reduction runs
// before dx is written, so dx may share storage with dy or x.
#include "kernels/cuda/cuda_util.cuh"
#include "kernels/layernorm.h"

namespace mpt::cuda {

using namespace mpt::cuda_detail;

namespace {
constexpr int kTileCols = 32;
constexpr int kRowThreads = 8;
constexpr int kChunkRows = 256;

int row_block(int cols) { return cols <= 128 ? 32 : (cols <= 1024 ? 128 : 256); }
unsigned row_grid(int rows) { return unsigned(std::min(rows, 1 << 30)); }
}  // namespace

template <class T, class P>
static __global__ void layernorm_forward_kernel(const T* __restrict__ x, const P* __restrict__ gamma,
                                                const P* __restrict__ beta, T* __restrict__ y, float* __restrict__ mean,
                                                float* __restrict__ rstd, int rows, int cols, float eps) {
  __shared__ float shm[33];
  const float inv_cols = 1.f / float(cols);
  for (int row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* xr = x + size_t(row) * size_t(cols);
    T* yr = y + size_t(row) * size_t(cols);
    float s = 0.f;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) s += to_f32(xr[j]);
    const float mu = block_sum(s, shm) * inv_cols;
    float v = 0.f;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
      const float d = to_f32(xr[j]) - mu;
      v += d * d;
    }
    const float var = block_sum(v, shm) * inv_cols;
    const float r = 1.f / sqrtf(var + eps);
    for (int j = threadIdx.x; j < cols; j += blockDim.x)
      store_f32(yr, j, (to_f32(xr[j]) - mu) * r * to_f32(gamma[j]) + to_f32(beta[j]));
    if (threadIdx.x == 0) {
      if (mean) mean[row] = mu;
      if (rstd) rstd[row] = r;
    }
  }
}

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * gamma, xhat = (x - mean) * rstd.
template <class T, class P>
static __global__ void layernorm_dx_kernel(const T* dy, const T* x, const P* __restrict__ gamma,
                                           const float* __restrict__ mean, const float* __restrict__ rstd, T* dx,
                                           int rows, int cols) {
  __shared__ float shm[33];
  const float inv_cols = 1.f / float(cols);
  for (int row = blockIdx.x; row < rows; row += gridDim.x) {
    const size_t off = size_t(row) * size_t(cols);
    const float mu = mean[row], r = rstd[row];
    float s1 = 0.f, s2 = 0.f;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
      const float g = to_f32(dy[off + j]) * to_f32(gamma[j]);
      s1 += g;
      s2 += g * ((to_f32(x[off + j]) - mu) * r);
    }
    const float mg = block_sum(s1, shm) * inv_cols;
    const float mgx = block_sum(s2, shm) * inv_cols;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
      const float g = to_f32(dy[off + j]) * to_f32(gamma[j]);
      const float xhat = (to_f32(x[off + j]) - mu) * r;
      store_f32(dx, off + j, r * (g - mg - xhat * mgx));
    }
  }
}

// Column sums of dy * xhat (-> dgamma) and dy (-> dbeta) over one chunk of rows, for a tile of 32 columns.
// With partial == null the block adds straight into dgamma / dbeta (single chunk).
template <class T, class P>
static __global__ void layernorm_param_chunk_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                                                    const float* __restrict__ mean, const float* __restrict__ rstd,
                                                    int rows, int cols, int chunk_rows, float* __restrict__ partial,
                                                    P* __restrict__ dgamma, P* __restrict__ dbeta) {
  __shared__ float sg[kRowThreads][kTileCols + 1];
  __shared__ float sb[kRowThreads][kTileCols + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int j = blockIdx.x * kTileCols + tx;
  const int r0 = blockIdx.y * chunk_rows;
  const int r1 = min(rows, r0 + chunk_rows);
  float ag = 0.f, ab = 0.f;
  if (j < cols) {
    for (int r = r0 + ty; r < r1; r += kRowThreads) {
      const size_t o = size_t(r) * size_t(cols) + j;
      const float g = to_f32(dy[o]);
      ag += g * ((to_f32(x[o]) - mean[r]) * rstd[r]);
      ab += g;
    }
  }
  sg[ty][tx] = ag;
  sb[ty][tx] = ab;
  __syncthreads();
  if (ty == 0 && j < cols) {
    float tg = sg[0][tx], tb = sb[0][tx];
#pragma unroll
    for (int q = 1; q < kRowThreads; ++q) {
      tg += sg[q][tx];
      tb += sb[q][tx];
    }
    if (partial) {
      const size_t chunks = gridDim.y;
      partial[size_t(blockIdx.y) * size_t(cols) + j] = tg;
      partial[(chunks + blockIdx.y) * size_t(cols) + j] = tb;
    } else {
      if (dgamma) store_f32(dgamma, j, load_f32(dgamma, j) + tg);
      if (dbeta) store_f32(dbeta, j, load_f32(dbeta, j) + tb);
    }
  }
}

template <class P>
static __global__ void layernorm_param_finish_kernel(const float* __restrict__ partial, int chunks, int cols,
                                                     P* __restrict__ dgamma, P* __restrict__ dbeta) {
  const float* pg = partial;
  const float* pb = partial + size_t(chunks) * size_t(cols);
  for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < cols; j += gridDim.x * blockDim.x) {
    float tg = 0.f, tb = 0.f;
    for (int c = 0; c < chunks; ++c) {
      tg += pg[size_t(c) * size_t(cols) + j];
      tb += pb[size_t(c) * size_t(cols) + j];
    }
    if (dgamma) store_f32(dgamma, j, load_f32(dgamma, j) + tg);
    if (dbeta) store_f32(dbeta, j, load_f32(dbeta, j) + tb);
  }
}

void layernorm_forward(const void* x, DType xt, const void* gamma, const void* beta, DType pt, void* y, float* mean,
                       float* rstd, int rows, int cols, float eps, Stream s) {
  if (rows < 0 || cols < 0) kernel_arg_error("layernorm_forward", "negative shape");
  if (rows == 0) return;
  if (cols == 0) kernel_arg_error("layernorm_forward", "cols must be positive");
  if (!x || !gamma || !beta || !y) kernel_arg_error("layernorm_forward", "null pointer");
  if (!(eps >= 0.f)) kernel_arg_error("layernorm_forward", "eps must be >= 0");
  dispatch_dtype(xt, "layernorm_forward", [&](auto xtag) {
    using T = typename decltype(xtag)::type;
    dispatch_dtype(pt, "layernorm_forward", [&](auto ptag) {
      using P = typename decltype(ptag)::type;
      layernorm_forward_kernel<T, P><<<row_grid(rows), row_block(cols), 0, to_cuda(s)>>>(
          static_cast<const T*>(x), static_cast<const P*>(gamma), static_cast<const P*>(beta), static_cast<T*>(y),
          mean, rstd, rows, cols, eps);
    });
  });
  MPT_LAUNCH_CHECK("layernorm_forward_kernel");
}

void layernorm_backward(const void* dy, const void* x, DType xt, const void* gamma, DType pt, const float* mean,
                        const float* rstd, void* dx, void* dgamma, void* dbeta, int rows, int cols, Stream s) {
  if (rows < 0 || cols < 0) kernel_arg_error("layernorm_backward", "negative shape");
  if (rows == 0 || cols == 0) return;
  if (!dy || !x || !gamma || !mean || !rstd || !dx || !dgamma || !dbeta)
    kernel_arg_error("layernorm_backward", "null pointer");
  const int chunk_rows = std::max(kChunkRows, int((int64_t(rows) + 65534) / 65535));
  const int chunks = int((int64_t(rows) + chunk_rows - 1) / chunk_rows);
  float* partial =
      chunks > 1 ? static_cast<float*>(stream_scratch(s, 2 * size_t(chunks) * size_t(cols) * sizeof(float))) : nullptr;
  const cudaStream_t st = to_cuda(s);
  dispatch_dtype(xt, "layernorm_backward", [&](auto xtag) {
    using T = typename decltype(xtag)::type;
    dispatch_dtype(pt, "layernorm_backward", [&](auto ptag) {
      using P = typename decltype(ptag)::type;
      const T* dyp = static_cast<const T*>(dy);
      const T* xp = static_cast<const T*>(x);
      P* dg = static_cast<P*>(dgamma);
      P* db = static_cast<P*>(dbeta);
      const dim3 block(kTileCols, kRowThreads);
      const dim3 grid(ceil_div(size_t(cols), kTileCols), unsigned(chunks));
      layernorm_param_chunk_kernel<T, P><<<grid, block, 0, st>>>(dyp, xp, mean, rstd, rows, cols, chunk_rows, partial,
                                                                 dg, db);
      MPT_LAUNCH_CHECK("layernorm_param_chunk_kernel");
      if (chunks > 1) {
        layernorm_param_finish_kernel<P><<<grid_for(size_t(cols)), kBlock, 0, st>>>(partial, chunks, cols, dg, db);
        MPT_LAUNCH_CHECK("layernorm_param_finish_kernel");
      }
      layernorm_dx_kernel<T, P><<<row_grid(rows), row_block(cols), 0, st>>>(
          dyp, xp, static_cast<const P*>(gamma), mean, rstd, static_cast<T*>(dx), rows, cols);
      MPT_LAUNCH_CHECK("layernorm_dx_kernel");
    });
  });
}

}  // namespace mpt::cuda
