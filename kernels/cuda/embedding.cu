// CUDA version of kernels/embedding.h.
//
// Forward: one thread per pack of V consecutive columns of one row (16-byte loads and stores when C and the
// pointers allow it, single elements otherwise), grid-stride over rows * C / V packs.
// Backward, dwte: one block per group of rows sharing a token (from make_token_groups); its threads own
// column packs and walk the group's rows in ascending row order, starting from the old gradient and adding
// in FP32, then round once. No two blocks touch the same dwte row, so there are no atomics and the bits are
// fixed. Groups of very frequent tokens take longer than the rest, but a block's work is bounded by
// rows * C, which is small next to the GEMMs around it.
// Backward, dwpe: one thread per (position, column pack), adding rows p, p + T, ... in ascending order.
// Both backward sums perform exactly the CPU twin's FP32 additions in the same order, so the two agree
// bit for bit.
#include "kernels/cuda/cuda_util.cuh"
#include "kernels/embedding.h"

namespace mpt::cuda {

using namespace mpt::cuda_detail;

namespace {
// V elements of T moved as one aligned unit (16 bytes for the widest packs).
template <class T, int V> struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <class T> constexpr int kWide = int(16 / sizeof(T));

bool aligned(const void* p, size_t a) { return (reinterpret_cast<uintptr_t>(p) % a) == 0; }

// Threads per dwte block: enough to cover the row's packs once, rounded to whole warps, at most 256.
int group_block(int packs) { return std::min(256, std::max(32, (packs + 31) / 32 * 32)); }
}  // namespace

template <class T, int V>
static __global__ void embedding_forward_kernel(const int32_t* __restrict__ tokens, const T* __restrict__ wte,
                                                const T* __restrict__ wpe, T* __restrict__ out, int rows, int T_,
                                                int C) {
  using P = Pack<T, V>;
  const size_t packs_per_row = size_t(C / V);
  const size_t n = size_t(rows) * packs_per_row;
  for (size_t u = blockIdx.x * size_t(blockDim.x) + threadIdx.x; u < n; u += size_t(gridDim.x) * blockDim.x) {
    const size_t row = u / packs_per_row, q = u - row * packs_per_row;
    const P e = reinterpret_cast<const P*>(wte + size_t(tokens[row]) * size_t(C))[q];
    const P p = reinterpret_cast<const P*>(wpe + (row % size_t(T_)) * size_t(C))[q];
    P o;
#pragma unroll
    for (int k = 0; k < V; ++k) o.v[k] = from_f32<T>(to_f32(e.v[k]) + to_f32(p.v[k]));
    reinterpret_cast<P*>(out + row * size_t(C))[q] = o;
  }
}

template <class T, int V>
static __global__ void embedding_dwte_kernel(const int32_t* __restrict__ order, const int32_t* __restrict__ starts,
                                             const int32_t* __restrict__ uniq, int num_unique,
                                             const T* __restrict__ dout, T* __restrict__ dwte, int C) {
  using P = Pack<T, V>;
  const int packs = C / V;
  for (int g = blockIdx.x; g < num_unique; g += gridDim.x) {
    const int k0 = starts[g], k1 = starts[g + 1];
    P* dst = reinterpret_cast<P*>(dwte + size_t(uniq[g]) * size_t(C));
    for (int q = threadIdx.x; q < packs; q += blockDim.x) {
      float acc[V];
      const P old = dst[q];
#pragma unroll
      for (int k = 0; k < V; ++k) acc[k] = to_f32(old.v[k]);
      // Ascending row order within the group: the adds are sequential, but the loads are independent and
      // unrolling lets several be in flight.
#pragma unroll 4
      for (int r = k0; r < k1; ++r) {
        const P d = reinterpret_cast<const P*>(dout + size_t(order[r]) * size_t(C))[q];
#pragma unroll
        for (int k = 0; k < V; ++k) acc[k] += to_f32(d.v[k]);
      }
      P o;
#pragma unroll
      for (int k = 0; k < V; ++k) o.v[k] = from_f32<T>(acc[k]);
      dst[q] = o;
    }
  }
}

template <class T, int V>
static __global__ void embedding_dwpe_kernel(const T* __restrict__ dout, T* __restrict__ dwpe, int rows, int T_,
                                             int C) {
  using P = Pack<T, V>;
  const size_t packs_per_row = size_t(C / V);
  const size_t positions = size_t(min(T_, rows));
  const size_t n = positions * packs_per_row;
  const size_t stride = size_t(T_) * packs_per_row;  // from row i to row i + T, in packs
  const size_t total = size_t(rows) * packs_per_row;
  const P* d = reinterpret_cast<const P*>(dout);
  for (size_t u = blockIdx.x * size_t(blockDim.x) + threadIdx.x; u < n; u += size_t(gridDim.x) * blockDim.x) {
    P* dst = reinterpret_cast<P*>(dwpe) + u;
    float acc[V];
    const P old = *dst;
#pragma unroll
    for (int k = 0; k < V; ++k) acc[k] = to_f32(old.v[k]);
    // Pack u of position p is pack u of row p; rows p + T, p + 2T, ... are `stride` packs apart.
#pragma unroll 4
    for (size_t w = u; w < total; w += stride) {
      const P x = d[w];
#pragma unroll
      for (int k = 0; k < V; ++k) acc[k] += to_f32(x.v[k]);
    }
    P o;
#pragma unroll
    for (int k = 0; k < V; ++k) o.v[k] = from_f32<T>(acc[k]);
    *dst = o;
  }
}

namespace {
void check_shape(const char* op, int rows, int T, int C) {
  if (rows < 0) kernel_arg_error(op, "negative rows");
  if (T <= 0 || C <= 0) kernel_arg_error(op, "T and C must be positive");
}

// Calls f(TypeTag<T>, std::integral_constant<int, V>) with the widest pack all pointers and C allow.
template <class T, class F> void with_pack(int C, std::initializer_list<const void*> ptrs, F&& f) {
  constexpr int W = kWide<T>;
  bool wide = C % W == 0;
  for (const void* p : ptrs) wide = wide && aligned(p, sizeof(T) * W);
  if (wide)
    f(std::integral_constant<int, W>{});
  else
    f(std::integral_constant<int, 1>{});
}
}  // namespace

void embedding_forward(const int32_t* tokens, const void* wte, const void* wpe, DType t, void* out, int rows, int T,
                       int C, Stream s) {
  const char* op = "embedding_forward";
  check_shape(op, rows, T, C);
  if (rows == 0) return;
  if (!tokens || !wte || !wpe || !out) kernel_arg_error(op, "null pointer");
  dispatch_dtype(t, op, [&](auto tag) {
    using E = typename decltype(tag)::type;
    with_pack<E>(C, {wte, wpe, out}, [&](auto vc) {
      constexpr int V = decltype(vc)::value;
      embedding_forward_kernel<E, V><<<grid_for(size_t(rows) * size_t(C / V)), kBlock, 0, to_cuda(s)>>>(
          tokens, static_cast<const E*>(wte), static_cast<const E*>(wpe), static_cast<E*>(out), rows, T, C);
    });
  });
  MPT_LAUNCH_CHECK("embedding_forward_kernel");
}

void embedding_backward(const int32_t* tokens, const int32_t* order, const int32_t* starts, const int32_t* uniq,
                        int num_unique, const void* dout, DType t, void* dwte, void* dwpe, int rows, int T, int C,
                        Stream s) {
  const char* op = "embedding_backward";
  check_shape(op, rows, T, C);
  if (rows == 0) return;
  (void)tokens;  // the groups carry everything the kernels need; tokens stay in the signature for the CPU twin
  if (!order || !starts || !uniq || !dout || !dwte || !dwpe) kernel_arg_error(op, "null pointer");
  // Every row is in some group, so a non-empty batch has between 1 and rows distinct tokens.
  if (num_unique < 1 || num_unique > rows) kernel_arg_error(op, "num_unique must be in [1, rows]");
  const cudaStream_t st = to_cuda(s);
  dispatch_dtype(t, op, [&](auto tag) {
    using E = typename decltype(tag)::type;
    with_pack<E>(C, {dout, dwte, dwpe}, [&](auto vc) {
      constexpr int V = decltype(vc)::value;
      const int packs = C / V;
      // Up to 2^31 - 1 blocks in x; num_unique <= rows fits.
      embedding_dwte_kernel<E, V><<<unsigned(num_unique), group_block(packs), 0, st>>>(
          order, starts, uniq, num_unique, static_cast<const E*>(dout), static_cast<E*>(dwte), C);
      MPT_LAUNCH_CHECK("embedding_dwte_kernel");
      const size_t n = size_t(std::min(T, rows)) * size_t(packs);
      embedding_dwpe_kernel<E, V><<<grid_for(n), kBlock, 0, st>>>(static_cast<const E*>(dout), static_cast<E*>(dwpe),
                                                                  rows, T, C);
      MPT_LAUNCH_CHECK("embedding_dwpe_kernel");
    });
  });
}

}  // namespace mpt::cuda
