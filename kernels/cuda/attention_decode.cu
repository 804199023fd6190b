// CUDA version of kernels/attention_decode.h. Decode reads the whole cached K and V of a head once per
// generated token and does two multiply-adds per element read, so it is bound by memory bandwidth; the
// kernel aims at keeping many loads in flight rather than at arithmetic.
//
// One block of kWarps warps per (batch, head). Warp w takes the cached positions in groups of kGroup:
// w * kGroup, then kWarps * kGroup further on, and so on. Each lane holds head-dim elements lane + 32 j
// (j < DJ = ceil(D / 32)) of q, of the running output and of the kGroup keys and values it loads before
// using any of them (kGroup x 2 independent loads per lane in flight). A score is the butterfly sum of the
// lanes' partial dot products, so every lane holds the same score bits; the warp keeps an FP32 online
// softmax (running maximum m, sum l, output acc, rescaled by exp(m_old - m_new) when the maximum grows).
// At the end the warps' (m, l, acc) are merged in warp order through shared memory: the result depends
// only on the inputs and the fixed launch shape, never on timing (no atomics).
//
// A warp that owns no position (pos + 1 < kWarps * kGroup) leaves m = -inf and is skipped in the merge.
// Every other warp's first group holds a real position, so its m is finite for finite inputs and no
// inf - inf arises; masked slots of a group get score -inf, weight exp(-inf) = 0.
#include <cmath>
#include <string>
#include <type_traits>

#include "kernels/attention_decode.h"
#include "kernels/cuda/cuda_util.cuh"

namespace mpt::cuda {

using namespace mpt::cuda_detail;

namespace {

constexpr int kWarps = 8;
constexpr int kGroup = 4;
constexpr int kMaxDJ = 8;  // head dim up to 256

template <class E, int DJ>
__global__ void __launch_bounds__(kWarps * 32)
    attention_decode_kernel(const E* __restrict__ cache, E* __restrict__ out, int S, int pos, int H, int D,
                            float scale) {
  const int b = int(blockIdx.x) / H, h = int(blockIdx.x) % H;
  const int lane = int(threadIdx.x) & 31, w = int(threadIdx.x) >> 5;
  const size_t C = size_t(H) * size_t(D), ld = 3 * C;
  const E* base = cache + size_t(b) * size_t(S) * ld + size_t(h) * size_t(D);
  float q[DJ], acc[DJ];
#pragma unroll
  for (int j = 0; j < DJ; ++j) {
    const int d = lane + 32 * j;
    q[j] = d < D ? to_f32(base[size_t(pos) * ld + size_t(d)]) : 0.f;
    acc[j] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  for (int s0 = w * kGroup; s0 <= pos; s0 += kWarps * kGroup) {
    float kk[kGroup][DJ], vv[kGroup][DJ], sc[kGroup];
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      const bool valid = s0 + g <= pos;
      const E* row = base + size_t(s0 + g) * ld;
#pragma unroll
      for (int j = 0; j < DJ; ++j) {
        const int d = lane + 32 * j;
        const bool in = valid && d < D;
        kk[g][j] = in ? to_f32(row[C + size_t(d)]) : 0.f;
        vv[g][j] = in ? to_f32(row[2 * C + size_t(d)]) : 0.f;
      }
    }
    float mx = m;
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      float dot = 0.f;
#pragma unroll
      for (int j = 0; j < DJ; ++j) dot += q[j] * kk[g][j];
      dot = warp_sum(dot);
      sc[g] = s0 + g <= pos ? dot * scale : -INFINITY;
      mx = fmaxf(mx, sc[g]);
    }
    const float corr = expf(m - mx);  // 0 on the first group (m = -inf)
    l *= corr;
#pragma unroll
    for (int j = 0; j < DJ; ++j) acc[j] *= corr;
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      const float p = expf(sc[g] - mx);
      l += p;
#pragma unroll
      for (int j = 0; j < DJ; ++j) acc[j] += p * vv[g][j];
    }
    m = mx;
  }
  __shared__ float sm_m[kWarps], sm_l[kWarps];
  __shared__ float sm_acc[kWarps][DJ * 32];
  if (lane == 0) sm_m[w] = m, sm_l[w] = l;
#pragma unroll
  for (int j = 0; j < DJ; ++j) sm_acc[w][lane + 32 * j] = acc[j];
  __syncthreads();
  float M = -INFINITY;
#pragma unroll
  for (int i = 0; i < kWarps; ++i) M = fmaxf(M, sm_m[i]);
  for (int d = int(threadIdx.x); d < D; d += int(blockDim.x)) {
    float sum = 0.f, o = 0.f;
#pragma unroll
    for (int i = 0; i < kWarps; ++i) {
      if (sm_m[i] == -INFINITY) continue;
      const float e = expf(sm_m[i] - M);
      sum += sm_l[i] * e;
      o += sm_acc[i][d] * e;
    }
    out[size_t(b) * C + size_t(h) * size_t(D) + size_t(d)] = from_f32<E>(o / sum);
  }
}

template <class F> void dispatch_dj(int D, F&& f) {
  if (D <= 32) f(std::integral_constant<int, 1>{});
  else if (D <= 64) f(std::integral_constant<int, 2>{});
  else if (D <= 128) f(std::integral_constant<int, 4>{});
  else f(std::integral_constant<int, kMaxDJ>{});
}

}  // namespace

void attention_decode(const void* cache, void* out, DType t, int B, int S, int pos, int H, int D, Stream s) {
  const char* op = "attention_decode";
  if (B < 0 || H < 0 || D <= 0 || D > 32 * kMaxDJ || S < 1 || pos < 0 || pos >= S)
    kernel_arg_error(op, "bad shape B=" + std::to_string(B) + " S=" + std::to_string(S) + " pos=" +
                             std::to_string(pos) + " H=" + std::to_string(H) + " D=" + std::to_string(D) +
                             " (CUDA: head dim at most " + std::to_string(32 * kMaxDJ) + ")");
  if (B == 0 || H == 0) return;
  if (!cache || !out) kernel_arg_error(op, "null pointer");
  if (size_t(B) * size_t(H) > 0x7fffffffu) kernel_arg_error(op, "B * H too large for one grid");
  const float scale = 1.f / std::sqrt(float(D));
  dispatch_dtype(t, op, [&](auto tag) {
    using E = typename decltype(tag)::type;
    dispatch_dj(D, [&](auto dj) {
      constexpr int DJ = decltype(dj)::value;
      attention_decode_kernel<E, DJ><<<unsigned(B) * unsigned(H), kWarps * 32, 0, to_cuda(s)>>>(
          static_cast<const E*>(cache), static_cast<E*>(out), S, pos, H, D, scale);
      MPT_LAUNCH_CHECK("attention_decode_kernel");
    });
  });
}

}  // namespace mpt::cuda
