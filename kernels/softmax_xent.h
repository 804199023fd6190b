// Fused softmax + cross-entropy + its backward over row-major logits [rows, cols] (dtype lt), all in FP32.
// Only the first valid_cols columns are classes; padded columns are masked out (no probability, zero
// gradient). For each row i with label y = labels[i] (0 <= y < valid_cols; y < 0 ignores the row):
//   loss[i]  = logsumexp(logits[i, :valid_cols]) - logits[i, y]             (FP32; 0 for ignored rows)
//   dlogits  = grad_scale * (softmax(logits[i]) - onehot(y))  (dtype lt; 0 for ignored rows and padding)
//   pred[i]  = argmax over valid columns (lowest index wins ties)
// dlogits and pred may be null (evaluation); dlogits may alias logits.
#pragma once
#include <cstdint>

#include "kernels/exec.h"

namespace mpt {
namespace cpu {
void softmax_xent(const void* logits, DType lt, const int32_t* labels, int rows, int cols, int valid_cols,
                  float grad_scale, float* loss, void* dlogits, int32_t* pred);
}
namespace cuda {
void softmax_xent(const void* logits, DType lt, const int32_t* labels, int rows, int cols, int valid_cols,
                  float grad_scale, float* loss, void* dlogits, int32_t* pred, Stream s);
}
namespace ops {
inline void softmax_xent(const Exec& e, const void* logits, DType lt, const int32_t* labels, int rows, int cols,
                         int valid_cols, float grad_scale, float* loss, void* dlogits, int32_t* pred) {
  OpScope scope(e, [&] {
    return OpInfo{"softmax_xent " + dims_str({rows, cols}), 4.0 * rows * cols,
                  double(rows) * cols * double(dtype_size(lt)) * (dlogits ? 2 : 1) + 8.0 * rows};
  });
  e.cuda() ? cuda::softmax_xent(logits, lt, labels, rows, cols, valid_cols, grad_scale, loss, dlogits, pred, e.stream)
           : cpu::softmax_xent(logits, lt, labels, rows, cols, valid_cols, grad_scale, loss, dlogits, pred);
}
}  // namespace ops
}  // namespace mpt
