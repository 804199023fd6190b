// CUDA version of kernels/layernorm.h. All statistics and arithmetic in FP32.
//
// Forward: mean first, then the variance as the mean of (x - mean)^2, as the CPU twin does, rather than
// E[x^2] - mean^2, which cancels. Rows whose columns form whole 16-byte packs and fit in a warp's registers
// (every GPT-2 width in half precision) take one warp per row, reading the row once with vector loads; other
// rows take one block per row and re-read the row from L1/L2 for each pass. The residual variant forms
// res = a + b in the same kernel, so res is written once and never read back from memory by the warp path.
// Backward, rows that fit a warp: one kernel walks the rows (a warp per row, two passes over the row, the
// second from cache), writes dx and leaves per-block partials of dgamma and dbeta (fixed summation order),
// and a second adds the partials in a fixed order into dgamma / dbeta, rounding once. Other rows: dgamma and dbeta by a deterministic column reduction like bias_grad's
// (32-column tiles x row chunks, chunk partials in the per-stream FP32 scratch, the same finishing pass),
// then dx by one block per row. Either way every lane (thread) reads its dy and x before dx is written, so
// dx may share storage with dy or x.
#include "kernels/cuda/cuda_util.cuh"
#include "kernels/layernorm.h"

namespace mpt::cuda {

using namespace mpt::cuda_detail;

namespace {
constexpr int kTileCols = 32;
constexpr int kRowThreads = 8;
constexpr int kChunkRows = 256;
constexpr int kWarpRows = 4;      // rows (one warp each) per block of the register-resident kernels
constexpr int kMaxLanePacks = 8;  // packs per lane those kernels hold; wider rows take the block kernels
constexpr int kBwdWarps = 8;            // warps per block of the fused backward
constexpr unsigned kFusedBlocks = 528;  // its grid (4 blocks on each of 132 multiprocessors): partials per column

int row_block(int cols) { return cols <= 128 ? 32 : (cols <= 1024 ? 128 : 256); }
unsigned row_grid(int rows) { return unsigned(std::min(rows, 1 << 30)); }
unsigned warp_grid(int rows) { return ceil_div(size_t(rows), kWarpRows); }

// V consecutive elements moved as one unit; 16-byte alignment at most (a 32-byte pack of FP32 parameters
// for 8 half columns becomes two 16-byte loads).
template <class T, int V> struct alignas(sizeof(T) * V < 16 ? sizeof(T) * V : 16) Pack {
  T v[V];
};
template <class T> constexpr int kPackOf = int(16 / sizeof(T));

bool aligned(const void* p, size_t a) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % a == 0; }

// Packs per lane for the register-resident path (2, 4 or 8), or 0 when the rows must take the block kernels:
// cols not a whole number of 16-byte packs, rows too wide, or a pointer not aligned to its pack.
template <class T, class P>
int lane_packs(int cols, std::initializer_list<const void*> xs, std::initializer_list<const void*> ps) {
  constexpr int V = kPackOf<T>;
  if (cols % V != 0) return 0;
  for (const void* p : xs)
    if (!aligned(p, alignof(Pack<T, V>))) return 0;
  for (const void* p : ps)
    if (!aligned(p, alignof(Pack<P, V>))) return 0;
  const int need = (cols / V + 31) / 32;
  return need <= 2 ? 2 : need <= 4 ? 4 : need <= kMaxLanePacks ? kMaxLanePacks : 0;
}

// Calls f(std::integral_constant<int, K>) for K in {2, 4, 8}.
template <class F> void with_lane_packs(int k, F&& f) {
  if (k == 2) f(std::integral_constant<int, 2>{});
  else if (k == 4) f(std::integral_constant<int, 4>{});
  else f(std::integral_constant<int, 8>{});
}
}  // namespace

// One warp per row with the row in registers: one read of the input, one write of the output, and warp
// shuffles in place of block reductions. GPT-2 rows (768..1600 columns) fit. With RESID the input is
// res = round(a + b), stored as it is formed; the statistics use the rounded values. res may alias a: each
// lane reads its packs before writing them, and no other lane touches them.
template <class T, class P, int V, int K, bool RESID>
static __global__ void __launch_bounds__(kWarpRows * 32)
    layernorm_forward_warp_kernel(const T* a, const T* b, const P* __restrict__ gamma, const P* __restrict__ beta,
                                  T* res, T* __restrict__ y, float* __restrict__ mean, float* __restrict__ rstd,
                                  int rows, int cols, float eps) {
  using XP = Pack<T, V>;
  using PP = Pack<P, V>;
  const int lane = threadIdx.x & 31, packs = cols / V;
  const float inv_cols = 1.f / float(cols);
  for (int row = blockIdx.x * kWarpRows + int(threadIdx.x >> 5); row < rows; row += gridDim.x * kWarpRows) {
    const size_t off = size_t(row) * size_t(cols);
    XP xv[K];
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int q = k * 32 + lane;
      if (q < packs) {
        xv[k] = reinterpret_cast<const XP*>(a + off)[q];
        if constexpr (RESID) {
          const XP bv = reinterpret_cast<const XP*>(b + off)[q];
#pragma unroll
          for (int e = 0; e < V; ++e) xv[k].v[e] = from_f32<T>(to_f32(xv[k].v[e]) + to_f32(bv.v[e]));
          reinterpret_cast<XP*>(res + off)[q] = xv[k];
        }
#pragma unroll
        for (int e = 0; e < V; ++e) s += to_f32(xv[k].v[e]);
      }
    }
    const float mu = warp_sum(s) * inv_cols;
    float ss = 0.f;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      if (k * 32 + lane < packs) {
#pragma unroll
        for (int e = 0; e < V; ++e) {
          const float d = to_f32(xv[k].v[e]) - mu;
          ss += d * d;
        }
      }
    }
    const float r = 1.f / sqrtf(warp_sum(ss) * inv_cols + eps);
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int q = k * 32 + lane;
      if (q < packs) {
        const PP g = reinterpret_cast<const PP*>(gamma)[q], bb = reinterpret_cast<const PP*>(beta)[q];
        XP o;
#pragma unroll
        for (int e = 0; e < V; ++e)
          o.v[e] = from_f32<T>((to_f32(xv[k].v[e]) - mu) * r * to_f32(g.v[e]) + to_f32(bb.v[e]));
        reinterpret_cast<XP*>(y + off)[q] = o;
      }
    }
    if (lane == 0) {
      if (mean) mean[row] = mu;
      if (rstd) rstd[row] = r;
    }
  }
}

// One block per row, for rows the warp kernel does not take. With RESID the first pass forms and stores res
// and the later passes read it back; a thread reads back only the elements it wrote itself.
template <class T, class P, bool RESID>
static __global__ void layernorm_forward_kernel(const T* a, const T* b, const P* __restrict__ gamma,
                                                const P* __restrict__ beta, T* res, T* __restrict__ y,
                                                float* __restrict__ mean, float* __restrict__ rstd, int rows, int cols,
                                                float eps) {
  __shared__ float shm[33];
  const float inv_cols = 1.f / float(cols);
  for (int row = blockIdx.x; row < rows; row += gridDim.x) {
    const size_t off = size_t(row) * size_t(cols);
    const T* xr = (RESID ? res : a) + off;
    T* yr = y + off;
    float s = 0.f;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) {
      if constexpr (RESID) {
        const T v = from_f32<T>(to_f32(a[off + j]) + to_f32(b[off + j]));
        res[off + j] = v;
        s += to_f32(v);
      } else {
        s += to_f32(xr[j]);
      }
    }
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

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * gamma, xhat = (x - mean) * rstd; with
// `accumulate` the old dx is added in FP32 before the one rounding.
// Warp-per-row version with dgamma and dbeta fused in: a warp walks its rows, each in two passes over dy
// and x (the second from cache), and each lane also adds dy * xhat and dy for its own columns into its
// warp's slice of shared memory (each element owned by one lane: no atomics, no barrier).
// At the end the block's warps are added in warp order into one partial per block ([2][gridDim.x][cols]
// in `partial`), which layernorm_param_finish_wide_kernel adds in a fixed order. dy and x come from memory once
// (the second pass finds them in cache). The grid depends only on the row count, so the summation order, and the bits, are the same on
// every run and device.
template <class T, class P, int V, int K>
static __global__ void __launch_bounds__(kBwdWarps * 32, 4)
    layernorm_backward_warp_kernel(const T* dy, const T* x, const P* __restrict__ gamma,
                                   const float* __restrict__ mean, const float* __restrict__ rstd, T* dx, int rows,
                                   int cols, bool accumulate, float* __restrict__ partial) {
  using XP = Pack<T, V>;
  using PP = Pack<P, V>;
  // red[warp][sum][e][q]: column q * V + e of a warp's two sums. Lanes own consecutive q, so a warp's 32
  // accesses to one (sum, e) plane hit 32 different banks.
  extern __shared__ float red[];
  const int lane = threadIdx.x & 31, warp = int(threadIdx.x >> 5), packs = cols / V;
  const float inv_cols = 1.f / float(cols);
  float* wg = red + (warp * 2) * cols;
  float* wb = wg + cols;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const int q = k * 32 + lane;
    if (q < packs) {
#pragma unroll
      for (int e = 0; e < V; ++e) wg[e * packs + q] = wb[e * packs + q] = 0.f;
    }
  }
  for (int row = int(blockIdx.x) * kBwdWarps + warp; row < rows; row += int(gridDim.x) * kBwdWarps) {
    const size_t off = size_t(row) * size_t(cols);
    const float mu = mean[row], r = rstd[row];
    const XP* dyr = reinterpret_cast<const XP*>(dy + off);
    const XP* xr = reinterpret_cast<const XP*>(x + off);
    float s1 = 0.f, s2 = 0.f;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int q = k * 32 + lane;
      if (q < packs) {
        const XP dv = dyr[q], xv = xr[q];
        const PP g = reinterpret_cast<const PP*>(gamma)[q];
#pragma unroll
        for (int e = 0; e < V; ++e) {
          const float d = to_f32(dv.v[e]), xhat = (to_f32(xv.v[e]) - mu) * r;
          const float gy = d * to_f32(g.v[e]);
          s1 += gy;
          s2 += gy * xhat;
          wg[e * packs + q] += d * xhat;
          wb[e * packs + q] += d;
        }
      }
    }
    const float mg = warp_sum(s1) * inv_cols;
    const float mgx = warp_sum(s2) * inv_cols;
    // Second pass over the row: dy and x again (cache hits: the warp read them just now), which keeps the
    // registers few and the multiprocessor full of warps.
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const int q = k * 32 + lane;
      if (q < packs) {
        const XP dv = dyr[q], xv = xr[q];
        const PP g = reinterpret_cast<const PP*>(gamma)[q];
        XP* dst = reinterpret_cast<XP*>(dx + off) + q;
        XP old{};
        if (accumulate) old = *dst;
        XP o;
#pragma unroll
        for (int e = 0; e < V; ++e) {
          const float gy = to_f32(dv.v[e]) * to_f32(g.v[e]);
          const float xhat = (to_f32(xv.v[e]) - mu) * r;
          float v = r * (gy - mg - xhat * mgx);
          if (accumulate) v += to_f32(old.v[e]);
          o.v[e] = from_f32<T>(v);
        }
        *dst = o;
      }
    }
  }
  __syncthreads();
  for (int j = int(threadIdx.x); j < cols; j += int(blockDim.x)) {
    float tg = 0.f, tb = 0.f;
    const int at = (j % V) * packs + j / V;
#pragma unroll
    for (int w = 0; w < kBwdWarps; ++w) tg += red[(w * 2) * cols + at], tb += red[(w * 2 + 1) * cols + at];
    partial[size_t(blockIdx.x) * size_t(cols) + j] = tg;
    partial[(size_t(gridDim.x) + blockIdx.x) * size_t(cols) + j] = tb;
  }
}

// Block-per-row version of the same formula.
template <class T, class P>
static __global__ void layernorm_dx_kernel(const T* dy, const T* x, const P* __restrict__ gamma,
                                           const float* __restrict__ mean, const float* __restrict__ rstd, T* dx,
                                           int rows, int cols, bool accumulate) {
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
      float v = r * (g - mg - xhat * mgx);
      if (accumulate) v += to_f32(dx[off + j]);
      store_f32(dx, off + j, v);
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

// The fused backward leaves hundreds of partials per column; one thread per column adding them in turn
// would wait on memory hundreds of times. Here a block of 32 x 32 threads owns 32 columns: thread (tx, ty)
// adds partials ty, ty + 32, ... of column tx in turn, then the 32 sums are added in ty order. Fixed order.
template <class P>
static __global__ void __launch_bounds__(1024)
    layernorm_param_finish_wide_kernel(const float* __restrict__ partial, int chunks, int cols, P* __restrict__ dgamma,
                                       P* __restrict__ dbeta) {
  __shared__ float sg[32][33], sb[32][33];
  const int tx = threadIdx.x, ty = threadIdx.y, j = blockIdx.x * 32 + tx;
  const float* pg = partial;
  const float* pb = partial + size_t(chunks) * size_t(cols);
  float tg = 0.f, tb = 0.f;
  if (j < cols)
    for (int c = ty; c < chunks; c += 32) tg += pg[size_t(c) * size_t(cols) + j], tb += pb[size_t(c) * size_t(cols) + j];
  sg[ty][tx] = tg;
  sb[ty][tx] = tb;
  __syncthreads();
  if (ty == 0 && j < cols) {
    float g = sg[0][tx], b = sb[0][tx];
    for (int q = 1; q < 32; ++q) g += sg[q][tx], b += sb[q][tx];
    if (dgamma) store_f32(dgamma, j, load_f32(dgamma, j) + g);
    if (dbeta) store_f32(dbeta, j, load_f32(dbeta, j) + b);
  }
}

namespace {
void check_forward(const char* op, const void* x, const void* gamma, const void* beta, const void* y, int rows,
                   int cols, float eps) {
  if (rows < 0 || cols < 0) kernel_arg_error(op, "negative shape");
  if (rows == 0) return;
  if (cols == 0) kernel_arg_error(op, "cols must be positive");
  if (!x || !gamma || !beta || !y) kernel_arg_error(op, "null pointer");
  if (!(eps >= 0.f)) kernel_arg_error(op, "eps must be >= 0");
}

// Shared by the plain and the residual forward; b and res are null without the residual add.
template <bool RESID>
void launch_forward(const char* op, const void* a, const void* b, DType xt, const void* gamma, const void* beta,
                    DType pt, void* res, void* y, float* mean, float* rstd, int rows, int cols, float eps, Stream s) {
  dispatch_dtype(xt, op, [&](auto xtag) {
    using T = typename decltype(xtag)::type;
    dispatch_dtype(pt, op, [&](auto ptag) {
      using P = typename decltype(ptag)::type;
      const T* ap = static_cast<const T*>(a);
      const T* bp = static_cast<const T*>(b);
      const P* gp = static_cast<const P*>(gamma);
      const P* bt = static_cast<const P*>(beta);
      T* rp = static_cast<T*>(res);
      T* yp = static_cast<T*>(y);
      const int k = lane_packs<T, P>(cols, {a, b, res, y}, {gamma, beta});
      if (k) {
        with_lane_packs(k, [&](auto kc) {
          constexpr int K = decltype(kc)::value;
          layernorm_forward_warp_kernel<T, P, kPackOf<T>, K, RESID><<<warp_grid(rows), kWarpRows * 32, 0, to_cuda(s)>>>(
              ap, bp, gp, bt, rp, yp, mean, rstd, rows, cols, eps);
        });
        MPT_LAUNCH_CHECK("layernorm_forward_warp_kernel");
      } else {
        layernorm_forward_kernel<T, P, RESID><<<row_grid(rows), row_block(cols), 0, to_cuda(s)>>>(
            ap, bp, gp, bt, rp, yp, mean, rstd, rows, cols, eps);
        MPT_LAUNCH_CHECK("layernorm_forward_kernel");
      }
    });
  });
}
}  // namespace

void layernorm_forward(const void* x, DType xt, const void* gamma, const void* beta, DType pt, void* y, float* mean,
                       float* rstd, int rows, int cols, float eps, Stream s) {
  check_forward("layernorm_forward", x, gamma, beta, y, rows, cols, eps);
  if (rows == 0) return;
  launch_forward<false>("layernorm_forward", x, nullptr, xt, gamma, beta, pt, nullptr, y, mean, rstd, rows, cols, eps,
                        s);
}

void residual_layernorm_forward(const void* a, const void* b, DType xt, const void* gamma, const void* beta, DType pt,
                                void* res, void* y, float* mean, float* rstd, int rows, int cols, float eps,
                                Stream s) {
  const char* op = "residual_layernorm_forward";
  check_forward(op, a, gamma, beta, y, rows, cols, eps);
  if (rows == 0) return;
  if (!b || !res) kernel_arg_error(op, "null pointer");
  launch_forward<true>(op, a, b, xt, gamma, beta, pt, res, y, mean, rstd, rows, cols, eps, s);
}

void layernorm_backward(const void* dy, const void* x, DType xt, const void* gamma, DType pt, const float* mean,
                        const float* rstd, void* dx, void* dgamma, void* dbeta, int rows, int cols, Stream s,
                        bool accumulate_dx) {
  if (rows < 0 || cols < 0) kernel_arg_error("layernorm_backward", "negative shape");
  if (rows == 0 || cols == 0) return;
  if (!dy || !x || !gamma || !mean || !rstd || !dx || !dgamma || !dbeta)
    kernel_arg_error("layernorm_backward", "null pointer");
  const cudaStream_t st = to_cuda(s);
  // Rows in registers (the usual case): dx, dgamma and dbeta in one pass over dy and x, then the fixed-order
  // addition of the per-block partials.
  bool fused = false;
  dispatch_dtype(xt, "layernorm_backward", [&](auto xtag) {
    using T = typename decltype(xtag)::type;
    dispatch_dtype(pt, "layernorm_backward", [&](auto ptag) {
      using P = typename decltype(ptag)::type;
      const int k = lane_packs<T, P>(cols, {dy, x, dx}, {gamma});
      const size_t red_bytes = size_t(kBwdWarps) * 2 * size_t(cols) * sizeof(float);
      if (!k) return;
      fused = true;
      auto* kern = [&] {
        const void* f = nullptr;
        with_lane_packs(k, [&](auto kc) {
          f = reinterpret_cast<const void*>(layernorm_backward_warp_kernel<T, P, kPackOf<T>, decltype(kc)::value>);
        });
        return f;
      }();
      if (red_bytes > 48 * 1024)
        MPT_CUDA_CHECK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, int(red_bytes)));
      const unsigned blocks = std::min<unsigned>(kFusedBlocks, ceil_div(size_t(rows), kBwdWarps));
      float* partial = static_cast<float*>(stream_scratch(s, 2 * size_t(blocks) * size_t(cols) * sizeof(float)));
      with_lane_packs(k, [&](auto kc) {
        constexpr int K = decltype(kc)::value;
        layernorm_backward_warp_kernel<T, P, kPackOf<T>, K><<<blocks, kBwdWarps * 32, red_bytes, st>>>(
            static_cast<const T*>(dy), static_cast<const T*>(x), static_cast<const P*>(gamma), mean, rstd,
            static_cast<T*>(dx), rows, cols, accumulate_dx, partial);
      });
      MPT_LAUNCH_CHECK("layernorm_backward_warp_kernel");
      layernorm_param_finish_wide_kernel<P><<<ceil_div(size_t(cols), 32), dim3(32, 32), 0, st>>>(
          partial, int(blocks), cols, static_cast<P*>(dgamma), static_cast<P*>(dbeta));
      MPT_LAUNCH_CHECK("layernorm_param_finish_wide_kernel");
    });
  });
  if (fused) return;
  const int chunk_rows = std::max(kChunkRows, int((int64_t(rows) + 65534) / 65535));
  const int chunks = int((int64_t(rows) + chunk_rows - 1) / chunk_rows);
  float* partial =
      chunks > 1 ? static_cast<float*>(stream_scratch(s, 2 * size_t(chunks) * size_t(cols) * sizeof(float))) : nullptr;
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
      layernorm_dx_kernel<T, P><<<row_grid(rows), row_block(cols), 0, st>>>(dyp, xp, static_cast<const P*>(gamma),
                                                                           mean, rstd, static_cast<T*>(dx), rows, cols,
                                                                           accumulate_dx);
      MPT_LAUNCH_CHECK("layernorm_dx_kernel");
    });
  });
}

}  // namespace mpt::cuda
