// CUDA version of kernels/attention.h. Half and bf16 storage run on tensor cores (attention_flash.cu,
// FlashAttention-2 structure) wherever that path can (sm_80+, head dim 16/32/64/128, 16-byte aligned
// tensors). This file holds the public launchers and the FP32 CUDA-core kernels: the path for FP32
// storage, for devices or layouts the tensor-core path does not take, and under MPT_ATTENTION=simt.
//
// CUDA-core kernels: fused causal attention, FP32 arithmetic.
//
// Tiles. Queries and keys are cut into tiles of kTile = 64 rows; a block of 256 threads (a 16 x 16 grid,
// tx fastest) owns one (batch, head, tile). In every tile product a thread holds a 4 x 4 block of the
// 64 x 64 score tile (query rows ty + 16 i, key columns tx + 16 j) or a 4 x D/16 block of a 64 x D output
// (rows ty + 16 i, columns tx + 16 j). The 16 threads that share a row are 16 consecutive lanes of one warp,
// so row maxima and sums are half-warp shuffles. Operand tiles are converted to FP32 in shared memory with
// a row stride of D + 1 floats (column-wise reads by 16 threads hit 16 banks); score-sized tiles use a row
// stride of 80 floats so the two halves of a warp (ty even / odd) land 16 banks apart.
//
// Forward (one block per query tile): key tiles 0 .. the diagonal are loaded in turn, scores masked to
// key <= query, and a running maximum, sum and output accumulator per row are kept in registers (online
// softmax: on a new maximum the old sum and accumulator are scaled by exp(old max - new max)). Nothing of
// size T x T is stored. Every tile up to and including the diagonal has an unmasked key in every row (key
// tile start <= query row), so the running maximum is finite after the first tile and no 0 * inf or
// inf - inf appears, also in the padding rows of the last tile (which are computed and not stored).
//
// Backward, three launches, no atomics, so the bits are the same run after run:
//   delta[b, h, t] = dout_t . out_t (a warp per row);
//   dK, dV: one block per key tile, looping over query tiles from the diagonal on; P = exp(s - lse) and
//           dS = P (dP - delta) are rebuilt per tile and reduced into register accumulators;
//   dQ:     one block per query tile, looping over key tiles up to the diagonal.
// Scores are rebuilt from q, k and lse in both passes, so the kernels need O(T) memory beyond their inputs.
//
// Shared memory is dynamic and above 48 KiB for D >= 64 (e.g. dK/dV at D = 128: 170 KiB); the launcher
// raises the per-kernel limit and refuses, with the sizes in the message, a device that cannot give it.
// lse may be null in the forward (evaluation). dqkv must not alias qkv, out or dout.
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>
#include <type_traits>

#include "kernels/attention.h"
#include "kernels/cuda/attention_flash.cuh"
#include "kernels/cuda/cuda_util.cuh"

namespace mpt::cuda {

using namespace mpt::cuda_detail;

namespace {
constexpr int kTile = 64;                // query rows (and keys) per tile
constexpr int kSide = 16;                // threads per block = kSide x kSide
constexpr int kThreads = kSide * kSide;
constexpr int kPer = kTile / kSide;      // rows (and keys) per thread in a score tile
constexpr int kPld = kTile + 16;         // row stride of score-sized tiles (P, dS)

template <int D>
struct Geo {
  static_assert(D % kSide == 0, "head dim must be a multiple of 16");
  static constexpr int ld = D + 1;          // row stride of an FP32 operand tile
  static constexpr int tile = kTile * ld;   // floats in one operand tile
  static constexpr int cols = D / kSide;    // output columns per thread
};
template <int D> constexpr size_t forward_smem() { return size_t(3 * Geo<D>::tile + kTile * kPld) * sizeof(float); }
template <int D> constexpr size_t dkdv_smem() {
  return size_t(4 * Geo<D>::tile + 2 * kTile * kPld + 2 * kTile) * sizeof(float);
}
template <int D> constexpr size_t dq_smem() { return size_t(4 * Geo<D>::tile + kTile * kPld + 2 * kTile) * sizeof(float); }

// Rows [row0, row0 + kTile) of one head's [T, D] slice (element row stride ld) into an FP32 tile; rows at or
// past T read as zero.
template <class T, int D>
__device__ __forceinline__ void load_tile(float* dst, const T* __restrict__ src, size_t ld, int row0, int T_) {
  for (int idx = threadIdx.x; idx < kTile * D; idx += kThreads) {
    const int r = idx / D, c = idx % D;
    const int row = row0 + r;
    dst[r * Geo<D>::ld + c] = row < T_ ? to_f32(src[size_t(row) * ld + c]) : 0.f;
  }
}

// acc[i][j] = sum_d a[ty + 16 i][d] * b[tx + 16 j][d]: this thread's 4 x 4 block of A B^T over two tiles.
template <int D>
__device__ __forceinline__ void tile_abt(const float* a, const float* b, int ty, int tx, float (&acc)[kPer][kPer]) {
#pragma unroll
  for (int i = 0; i < kPer; ++i)
#pragma unroll
    for (int j = 0; j < kPer; ++j) acc[i][j] = 0.f;
#pragma unroll 8
  for (int d = 0; d < D; ++d) {
    float av[kPer], bv[kPer];
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      av[i] = a[(ty + kSide * i) * Geo<D>::ld + d];
      bv[i] = b[(tx + kSide * i) * Geo<D>::ld + d];
    }
#pragma unroll
    for (int i = 0; i < kPer; ++i)
#pragma unroll
      for (int j = 0; j < kPer; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
  }
}

// Max and sum over the 16 lanes that share a row (xor offsets below 16 stay inside the half-warp).
__device__ __forceinline__ float row_max(float v) {
#pragma unroll
  for (int o = kSide / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float row_sum(float v) {
#pragma unroll
  for (int o = kSide / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
}  // namespace

template <class T, int D>
static __global__ void __launch_bounds__(kThreads)
    attention_forward_kernel(const T* __restrict__ qkv, T* __restrict__ out, float* __restrict__ lse, int T_, int H,
                             float scale) {
  using G = Geo<D>;
  extern __shared__ float smem[];
  float* qs = smem;
  float* ks = qs + G::tile;
  float* vs = ks + G::tile;
  float* ps = vs + G::tile;
  const int h = int(blockIdx.x % unsigned(H)), b = int(blockIdx.x / unsigned(H));
  const int qt = int(gridDim.y - 1 - blockIdx.y);  // longest rows first
  const int q0 = qt * kTile;
  const int tx = int(threadIdx.x) % kSide, ty = int(threadIdx.x) / kSide;
  const size_t C = size_t(H) * D, ld = 3 * C;
  const T* xq = qkv + size_t(b) * size_t(T_) * ld + size_t(h) * D;
  load_tile<T, D>(qs, xq, ld, q0, T_);

  float m[kPer], l[kPer], acc[kPer][G::cols];
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.f;
#pragma unroll
    for (int j = 0; j < G::cols; ++j) acc[i][j] = 0.f;
  }
  for (int kt = 0; kt <= qt; ++kt) {
    const int k0 = kt * kTile;
    __syncthreads();  // the previous tile's readers of ks / vs / ps are done (and qs is visible)
    load_tile<T, D>(ks, xq + C, ld, k0, T_);
    load_tile<T, D>(vs, xq + 2 * C, ld, k0, T_);
    __syncthreads();
    float s[kPer][kPer];
    tile_abt<D>(qs, ks, ty, tx, s);
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int r = ty + kSide * i, row = q0 + r;
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < kPer; ++j) {
        const int col = k0 + tx + kSide * j;
        s[i][j] = col <= row ? s[i][j] * scale : -INFINITY;
        mx = fmaxf(mx, s[i][j]);
      }
      const float mnew = fmaxf(m[i], row_max(mx));
      const float alpha = expf(m[i] - mnew);  // 0 on the first tile (m = -inf, mnew finite)
      float rs = 0.f;
#pragma unroll
      for (int j = 0; j < kPer; ++j) {
        const float p = expf(s[i][j] - mnew);
        ps[r * kPld + tx + kSide * j] = p;
        rs += p;
      }
      l[i] = l[i] * alpha + row_sum(rs);
      m[i] = mnew;
#pragma unroll
      for (int j = 0; j < G::cols; ++j) acc[i][j] *= alpha;
    }
    __syncthreads();
#pragma unroll 4
    for (int c = 0; c < kTile; ++c) {
      float pv[kPer], vv[G::cols];
#pragma unroll
      for (int i = 0; i < kPer; ++i) pv[i] = ps[(ty + kSide * i) * kPld + c];
#pragma unroll
      for (int j = 0; j < G::cols; ++j) vv[j] = vs[c * G::ld + tx + kSide * j];
#pragma unroll
      for (int i = 0; i < kPer; ++i)
#pragma unroll
        for (int j = 0; j < G::cols; ++j) acc[i][j] = fmaf(pv[i], vv[j], acc[i][j]);
    }
  }
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int row = q0 + ty + kSide * i;
    if (row >= T_) continue;
    T* orow = out + (size_t(b) * size_t(T_) + size_t(row)) * C + size_t(h) * D;
#pragma unroll
    for (int j = 0; j < G::cols; ++j) store_f32(orow, size_t(tx + kSide * j), acc[i][j] / l[i]);
    if (lse && tx == 0) lse[(size_t(b) * size_t(H) + size_t(h)) * size_t(T_) + size_t(row)] = m[i] + logf(l[i]);
  }
}

// delta[b, h, t] = dout_t . out_t for the head's D columns; one warp per (b, h, t), lanes over D.
template <class T>
static __global__ void attention_delta_kernel(const T* __restrict__ dout, const T* __restrict__ out,
                                              float* __restrict__ delta, size_t rows, int T_, int H, int D) {
  const int lane = int(threadIdx.x) & 31;
  const size_t warps = blockDim.x / 32;
  for (size_t g = size_t(blockIdx.x) * warps + threadIdx.x / 32; g < rows; g += size_t(gridDim.x) * warps) {
    const size_t t = g % size_t(T_), bh = g / size_t(T_);
    const size_t h = bh % size_t(H), b = bh / size_t(H);
    const size_t off = (b * size_t(T_) + t) * size_t(H) * size_t(D) + h * size_t(D);
    float s = 0.f;
    for (int i = lane; i < D; i += 32) s += to_f32(dout[off + i]) * to_f32(out[off + i]);
    s = warp_sum(s);
    if (lane == 0) delta[g] = s;
  }
}

// P and dS for this thread's 4 x 4 block of one (query tile, key tile) pair:
//   P = exp(scale * q.k - lse) for key <= query < T, else 0;  dS = P * (dout.v - delta).
template <int D>
__device__ __forceinline__ void probs_and_dscores(const float* qs, const float* ks, const float* gs, const float* vs,
                                                  const float* lse_s, const float* delta_s, int q0, int k0, int T_,
                                                  float scale, int ty, int tx, float (&p)[kPer][kPer],
                                                  float (&ds)[kPer][kPer]) {
  float dp[kPer][kPer];
  tile_abt<D>(qs, ks, ty, tx, p);
  tile_abt<D>(gs, vs, ty, tx, dp);
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int r = ty + kSide * i, row = q0 + r;
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int col = k0 + tx + kSide * j;
      p[i][j] = (row < T_ && col <= row) ? expf(p[i][j] * scale - lse_s[r]) : 0.f;
      ds[i][j] = p[i][j] * (dp[i][j] - delta_s[r]);
    }
  }
}

// lse and delta of rows [q0, q0 + kTile) into shared memory (0 past T; those rows get P = 0 anyway).
__device__ __forceinline__ void load_row_stats(float* lse_s, float* delta_s, const float* __restrict__ lse,
                                               const float* __restrict__ delta, int q0, int T_) {
  for (int r = int(threadIdx.x); r < kTile; r += kThreads) {
    const int row = q0 + r;
    lse_s[r] = row < T_ ? lse[row] : 0.f;
    delta_s[r] = row < T_ ? delta[row] : 0.f;
  }
}

template <class T, int D>
static __global__ void __launch_bounds__(kThreads)
    attention_dkdv_kernel(const T* __restrict__ dout, const T* __restrict__ qkv, const float* __restrict__ lse,
                          const float* __restrict__ delta, T* __restrict__ dqkv, int T_, int H, float scale) {
  using G = Geo<D>;
  extern __shared__ float smem[];
  float* ks = smem;
  float* vs = ks + G::tile;
  float* qs = vs + G::tile;
  float* gs = qs + G::tile;
  float* ps = gs + G::tile;
  float* dss = ps + kTile * kPld;
  float* lse_s = dss + kTile * kPld;
  float* delta_s = lse_s + kTile;
  const int h = int(blockIdx.x % unsigned(H)), b = int(blockIdx.x / unsigned(H));
  const int kt = int(blockIdx.y);  // the first key tiles see the most query tiles: launched first
  const int k0 = kt * kTile, nt = int(gridDim.y);
  const int tx = int(threadIdx.x) % kSide, ty = int(threadIdx.x) / kSide;
  const size_t C = size_t(H) * D, ld = 3 * C, bh = size_t(b) * size_t(H) + size_t(h);
  const T* xq = qkv + size_t(b) * size_t(T_) * ld + size_t(h) * D;
  const T* xg = dout + size_t(b) * size_t(T_) * C + size_t(h) * D;
  const float* lse_bh = lse + bh * size_t(T_);
  const float* delta_bh = delta + bh * size_t(T_);
  load_tile<T, D>(ks, xq + C, ld, k0, T_);
  load_tile<T, D>(vs, xq + 2 * C, ld, k0, T_);

  float dk[kPer][G::cols], dv[kPer][G::cols];  // key rows ty + 16 i, columns tx + 16 j
#pragma unroll
  for (int i = 0; i < kPer; ++i)
#pragma unroll
    for (int j = 0; j < G::cols; ++j) dk[i][j] = dv[i][j] = 0.f;
  for (int qt = kt; qt < nt; ++qt) {
    const int q0 = qt * kTile;
    __syncthreads();  // the previous tile's readers of qs / gs / ps / dss are done
    load_tile<T, D>(qs, xq, ld, q0, T_);
    load_tile<T, D>(gs, xg, C, q0, T_);
    load_row_stats(lse_s, delta_s, lse_bh, delta_bh, q0, T_);
    __syncthreads();
    float p[kPer][kPer], ds[kPer][kPer];
    probs_and_dscores<D>(qs, ks, gs, vs, lse_s, delta_s, q0, k0, T_, scale, ty, tx, p, ds);
#pragma unroll
    for (int i = 0; i < kPer; ++i)
#pragma unroll
      for (int j = 0; j < kPer; ++j) {
        ps[(ty + kSide * i) * kPld + tx + kSide * j] = p[i][j];
        dss[(ty + kSide * i) * kPld + tx + kSide * j] = ds[i][j];
      }
    __syncthreads();
    // dV += P^T dO and dK += dS^T Q over this tile's 64 query rows.
#pragma unroll 4
    for (int r = 0; r < kTile; ++r) {
      float pr[kPer], dr[kPer], gv[G::cols], qv[G::cols];
#pragma unroll
      for (int i = 0; i < kPer; ++i) {
        pr[i] = ps[r * kPld + ty + kSide * i];
        dr[i] = dss[r * kPld + ty + kSide * i];
      }
#pragma unroll
      for (int j = 0; j < G::cols; ++j) {
        gv[j] = gs[r * G::ld + tx + kSide * j];
        qv[j] = qs[r * G::ld + tx + kSide * j];
      }
#pragma unroll
      for (int i = 0; i < kPer; ++i)
#pragma unroll
        for (int j = 0; j < G::cols; ++j) {
          dv[i][j] = fmaf(pr[i], gv[j], dv[i][j]);
          dk[i][j] = fmaf(dr[i], qv[j], dk[i][j]);
        }
    }
  }
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int key = k0 + ty + kSide * i;
    if (key >= T_) continue;
    T* drow = dqkv + (size_t(b) * size_t(T_) + size_t(key)) * ld + size_t(h) * D;
#pragma unroll
    for (int j = 0; j < G::cols; ++j) {
      store_f32(drow, C + size_t(tx + kSide * j), dk[i][j] * scale);
      store_f32(drow, 2 * C + size_t(tx + kSide * j), dv[i][j]);
    }
  }
}

template <class T, int D>
static __global__ void __launch_bounds__(kThreads)
    attention_dq_kernel(const T* __restrict__ dout, const T* __restrict__ qkv, const float* __restrict__ lse,
                        const float* __restrict__ delta, T* __restrict__ dqkv, int T_, int H, float scale) {
  using G = Geo<D>;
  extern __shared__ float smem[];
  float* qs = smem;
  float* gs = qs + G::tile;
  float* ks = gs + G::tile;
  float* vs = ks + G::tile;
  float* dss = vs + G::tile;
  float* lse_s = dss + kTile * kPld;
  float* delta_s = lse_s + kTile;
  const int h = int(blockIdx.x % unsigned(H)), b = int(blockIdx.x / unsigned(H));
  const int qt = int(gridDim.y - 1 - blockIdx.y);  // longest rows first
  const int q0 = qt * kTile;
  const int tx = int(threadIdx.x) % kSide, ty = int(threadIdx.x) / kSide;
  const size_t C = size_t(H) * D, ld = 3 * C, bh = size_t(b) * size_t(H) + size_t(h);
  const T* xq = qkv + size_t(b) * size_t(T_) * ld + size_t(h) * D;
  load_tile<T, D>(qs, xq, ld, q0, T_);
  load_tile<T, D>(gs, dout + size_t(b) * size_t(T_) * C + size_t(h) * D, C, q0, T_);
  load_row_stats(lse_s, delta_s, lse + bh * size_t(T_), delta + bh * size_t(T_), q0, T_);

  float dq[kPer][G::cols];
#pragma unroll
  for (int i = 0; i < kPer; ++i)
#pragma unroll
    for (int j = 0; j < G::cols; ++j) dq[i][j] = 0.f;
  for (int kt = 0; kt <= qt; ++kt) {
    const int k0 = kt * kTile;
    __syncthreads();  // the previous tile's readers of ks / dss are done (and qs, gs, row stats visible)
    load_tile<T, D>(ks, xq + C, ld, k0, T_);
    load_tile<T, D>(vs, xq + 2 * C, ld, k0, T_);
    __syncthreads();
    float p[kPer][kPer], ds[kPer][kPer];
    probs_and_dscores<D>(qs, ks, gs, vs, lse_s, delta_s, q0, k0, T_, scale, ty, tx, p, ds);
#pragma unroll
    for (int i = 0; i < kPer; ++i)
#pragma unroll
      for (int j = 0; j < kPer; ++j) dss[(ty + kSide * i) * kPld + tx + kSide * j] = ds[i][j];
    __syncthreads();
    // dQ += dS K over this tile's 64 keys.
#pragma unroll 4
    for (int c = 0; c < kTile; ++c) {
      float dr[kPer], kv[G::cols];
#pragma unroll
      for (int i = 0; i < kPer; ++i) dr[i] = dss[(ty + kSide * i) * kPld + c];
#pragma unroll
      for (int j = 0; j < G::cols; ++j) kv[j] = ks[c * G::ld + tx + kSide * j];
#pragma unroll
      for (int i = 0; i < kPer; ++i)
#pragma unroll
        for (int j = 0; j < G::cols; ++j) dq[i][j] = fmaf(dr[i], kv[j], dq[i][j]);
    }
  }
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int row = q0 + ty + kSide * i;
    if (row >= T_) continue;
    T* drow = dqkv + (size_t(b) * size_t(T_) + size_t(row)) * ld + size_t(h) * D;
#pragma unroll
    for (int j = 0; j < G::cols; ++j) store_f32(drow, size_t(tx + kSide * j), dq[i][j] * scale);
  }
}

// ---- host launchers

namespace {
void check_args(const char* op, int B, int T, int H, int D) {
  if (B < 0 || T < 0 || H < 0 || D <= 0)
    kernel_arg_error(op, "bad shape B=" + std::to_string(B) + " T=" + std::to_string(T) + " H=" + std::to_string(H) +
                             " D=" + std::to_string(D));
  if (D != 16 && D != 32 && D != 64 && D != 128)
    kernel_arg_error(op, "head dim " + std::to_string(D) + " not supported (16, 32, 64 or 128)");
  if (int64_t(B) * H > std::numeric_limits<int>::max() || (int64_t(T) + kTile - 1) / kTile > 65535)
    kernel_arg_error(op, "B * H or T too large for the launch grid");
}

template <class F> void dispatch_head_dim(int D, F&& f) {
  switch (D) {
    case 16: f(std::integral_constant<int, 16>{}); break;
    case 32: f(std::integral_constant<int, 32>{}); break;
    case 64: f(std::integral_constant<int, 64>{}); break;
    default: f(std::integral_constant<int, 128>{}); break;  // check_args admits nothing else
  }
}

// Lets `kernel` take `bytes` of dynamic shared memory (beyond the default 48 KiB).
template <class K> void allow_smem(K kernel, size_t bytes, const char* op, int D) {
  if (bytes <= 48 * 1024) return;
  int optin = 0;
  MPT_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, current_device()));
  if (bytes > size_t(optin))
    kernel_arg_error(op, "head dim " + std::to_string(D) + " needs " + std::to_string(bytes) +
                             " bytes of shared memory per block; this device allows " + std::to_string(optin));
  MPT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

dim3 tile_grid(int B, int T, int H) { return dim3(unsigned(B) * unsigned(H), ceil_div(size_t(T), kTile)); }

// MPT_ATTENTION=simt sends half and bf16 to the CUDA-core kernels too (for comparisons and profiles); read
// once per process.
bool simt_forced() {
  static const bool forced = [] {
    const char* v = std::getenv("MPT_ATTENTION");
    return v && std::string(v) == "simt";
  }();
  return forced;
}
}  // namespace

void attention_forward(const void* qkv, void* out, float* lse, DType t, int B, int T, int H, int D, Stream s) {
  const char* op = "attention_forward";
  check_args(op, B, T, H, D);
  if (B == 0 || T == 0 || H == 0) return;
  if (!qkv || !out) kernel_arg_error(op, "null pointer");
  const cudaStream_t st = to_cuda(s);
  const void* ptrs[] = {qkv, out};
  if (!simt_forced() && flash::usable(t, D, ptrs, 2)) {
    flash::forward(qkv, out, lse, t, B, T, H, D, st);
    return;
  }
  const float scale = 1.f / std::sqrt(float(D));
  const dim3 grid = tile_grid(B, T, H);
  dispatch_dtype(t, op, [&](auto tag) {
    using E = typename decltype(tag)::type;
    const E* x = static_cast<const E*>(qkv);
    E* o = static_cast<E*>(out);
    dispatch_head_dim(D, [&](auto dim) {
      constexpr int HD = decltype(dim)::value;
      const size_t smem = forward_smem<HD>();
      allow_smem(attention_forward_kernel<E, HD>, smem, op, D);
      attention_forward_kernel<E, HD><<<grid, kThreads, smem, st>>>(x, o, lse, T, H, scale);
      MPT_LAUNCH_CHECK("attention_forward_kernel");
    });
  });
}

size_t attention_backward_scratch_bytes(DType t, int B, int T, int H, int D) {
  if (!is_half(t) || (D != 16 && D != 32 && D != 64 && D != 128) || B <= 0 || T <= 0 || H <= 0) return 0;
  return flash::ds_bytes(B, T, H);
}

void attention_backward(const void* dout, const void* qkv, const void* out, const float* lse, float* delta,
                        void* dqkv, DType t, int B, int T, int H, int D, Stream s, void* scratch,
                        size_t scratch_bytes) {
  const char* op = "attention_backward";
  check_args(op, B, T, H, D);
  if (B == 0 || T == 0 || H == 0) return;
  if (!dout || !qkv || !out || !lse || !delta || !dqkv) kernel_arg_error(op, "null pointer");
  const float scale = 1.f / std::sqrt(float(D));
  const cudaStream_t st = to_cuda(s);
  const size_t rows = size_t(B) * size_t(H) * size_t(T);
  const void* ptrs[] = {dout, qkv, dqkv};
  const bool flash_ok = !simt_forced() && flash::usable(t, D, ptrs, 3);
  dispatch_dtype(t, op, [&](auto tag) {
    using E = typename decltype(tag)::type;
    const E* g = static_cast<const E*>(dout);
    const E* x = static_cast<const E*>(qkv);
    E* dx = static_cast<E*>(dqkv);
    attention_delta_kernel<E><<<grid_for(rows * 32), kBlock, 0, st>>>(g, static_cast<const E*>(out), delta, rows, T,
                                                                      H, D);
    MPT_LAUNCH_CHECK("attention_delta_kernel");
    if (flash_ok) {
      flash::backward(dout, qkv, lse, delta, dqkv, scratch, scratch_bytes, t, B, T, H, D, st);
      return;
    }
    dispatch_head_dim(D, [&](auto dim) {
      constexpr int HD = decltype(dim)::value;
      const dim3 grid = tile_grid(B, T, H);
      const size_t smem_kv = dkdv_smem<HD>(), smem_q = dq_smem<HD>();
      allow_smem(attention_dkdv_kernel<E, HD>, smem_kv, op, D);
      allow_smem(attention_dq_kernel<E, HD>, smem_q, op, D);
      attention_dkdv_kernel<E, HD><<<grid, kThreads, smem_kv, st>>>(g, x, lse, delta, dx, T, H, scale);
      MPT_LAUNCH_CHECK("attention_dkdv_kernel");
      attention_dq_kernel<E, HD><<<grid, kThreads, smem_q, st>>>(g, x, lse, delta, dx, T, H, scale);
      MPT_LAUNCH_CHECK("attention_dq_kernel");
    });
  });
}

}  // namespace mpt::cuda
