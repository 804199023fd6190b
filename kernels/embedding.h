// Token + position embedding of a batch of rows = B * T tokens (row i is position i % T of its sequence).
// forward:  out[i, :] = wte[tokens[i], :] + wpe[i % T, :]      (FP32 add, rounded once to dtype t)
// backward: dwte[v, :] += sum over rows i with tokens[i] == v of dout[i, :]
//           dwpe[p, :] += sum over rows i with i % T == p of dout[i, :]
// The sums run in FP32 in increasing row order and are rounded once (with the old gradient added first),
// so the result is the same bits on every run and on every device: no float atomics. The CUDA backward
// needs the rows grouped by token; make_token_groups() builds that grouping on the host, where the
// tokens come from anyway, and the caller uploads it with the batch.
// All of wte, wpe, out, dout, dwte, dwpe share dtype t.
#pragma once
#include <cstdint>
#include <vector>
#include "kernels/exec.h"
namespace mpt {
// Rows grouped by token: rows of uniq[g] are order[starts[g]] .. order[starts[g+1]-1], ascending.
struct TokenGroups {
  std::vector<int32_t> order;   // rows, a permutation of 0..rows-1 sorted by (token, row)
  std::vector<int32_t> starts;  // num_unique + 1 offsets into order
  std::vector<int32_t> uniq;    // distinct tokens, ascending
  int num_unique() const { return int(uniq.size()); }
};
// Throws std::invalid_argument naming the row if a token is outside [0, vocab).
TokenGroups make_token_groups(const int32_t* tokens, int rows, int vocab);

namespace cpu {
void embedding_forward(const int32_t* tokens, const void* wte, const void* wpe, DType t, void* out, int rows,
                       int T, int C);
// order/starts/uniq: the TokenGroups arrays (host pointers; the CPU twin may ignore them).
void embedding_backward(const int32_t* tokens, const int32_t* order, const int32_t* starts, const int32_t* uniq,
                        int num_unique, const void* dout, DType t, void* dwte, void* dwpe, int rows, int T, int C);
}
namespace cuda {
// tokens, order, starts, uniq: device copies.
void embedding_forward(const int32_t* tokens, const void* wte, const void* wpe, DType t, void* out, int rows,
                       int T, int C, Stream s);
void embedding_backward(const int32_t* tokens, const int32_t* order, const int32_t* starts, const int32_t* uniq,
                        int num_unique, const void* dout, DType t, void* dwte, void* dwpe, int rows, int T, int C,
                        Stream s);
}
namespace ops {
inline void embedding_forward(const Exec& e, const int32_t* tokens, const void* wte, const void* wpe, DType t,
                              void* out, int rows, int T, int C) {
  OpScope scope(e, [&] { return OpInfo{"embedding_forward", 0, 3.0 * rows * C * double(dtype_size(t)) + 4.0 * rows}; });
  e.cuda() ? cuda::embedding_forward(tokens, wte, wpe, t, out, rows, T, C, e.stream)
           : cpu::embedding_forward(tokens, wte, wpe, t, out, rows, T, C);
}
inline void embedding_backward(const Exec& e, const int32_t* tokens, const int32_t* order, const int32_t* starts,
                               const int32_t* uniq, int num_unique, const void* dout, DType t, void* dwte,
                               void* dwpe, int rows, int T, int C) {
  OpScope scope(e, [&] {
    return OpInfo{"embedding_backward", 0, double(rows) * C * double(dtype_size(t)) + 16.0 * rows +
                                               2.0 * (num_unique + T) * C * double(dtype_size(t))};
  });
  e.cuda() ? cuda::embedding_backward(tokens, order, starts, uniq, num_unique, dout, t, dwte, dwpe, rows, T, C, e.stream)
           : cpu::embedding_backward(tokens, order, starts, uniq, num_unique, dout, t, dwte, dwpe, rows, T, C);
}
}  // namespace ops
}  // namespace mpt
