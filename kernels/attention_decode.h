// Decode attention: one new query per sequence against the keys and values of positions 0 .. pos held in
// a KV cache, for incremental (token by token) generation. The cache is the qkv layout of
// kernels/attention.h with room for S positions: row-major [B, S, 3C], C = H * D, row s of sequence b
// holding q | k | v of position s. The step that computes position pos writes its qkv row into row pos and
// then calls this op, so the query is row pos's q, and causality holds by construction (rows after pos are
// never read and may hold anything).
//   out[b, h*D:(h+1)*D] = sum_{s<=pos} softmax_s(q_pos . k_s / sqrt(D)) v_s                    ([B, C])
// which is row pos of attention_forward over the first pos + 1 rows of the same qkv.
// Arithmetic: scores, softmax statistics and accumulations in FP32, each output element rounded once.
// The CPU twin performs the FP32 operations of cpu::attention_forward's row pos in the same order, so its
// output is bitwise equal to that row. The CUDA version runs one block per (batch, head); its warps take
// the cached positions in turn with an FP32 online softmax each and are merged in a fixed order: no
// atomics, the same bits on every run. Head dims up to 256 on CUDA; any on CPU.
#pragma once
#include "kernels/exec.h"
namespace mpt {
namespace cpu {
void attention_decode(const void* cache, void* out, DType t, int B, int S, int pos, int H, int D);
}
namespace cuda {
void attention_decode(const void* cache, void* out, DType t, int B, int S, int pos, int H, int D, Stream s);
}
namespace ops {
inline void attention_decode(const Exec& e, const void* cache, void* out, DType t, int B, int S, int pos, int H,
                             int D) {
  OpScope scope(e, [&] {
    const double L = double(pos) + 1;
    return OpInfo{"attention_decode " + dims_str({B, pos + 1, H, D}), 4.0 * B * H * L * D,
                  (2.0 * L + 2.0) * B * H * D * double(dtype_size(t))};
  });
  e.cuda() ? cuda::attention_decode(cache, out, t, B, S, pos, H, D, e.stream)
           : cpu::attention_decode(cache, out, t, B, S, pos, H, D);
}
}  // namespace ops
}  // namespace mpt
