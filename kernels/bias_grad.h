// bias_grad: db[j] += sum_i dy[i, j] over a row-major [rows, cols] dy. The column sums accumulate in
// FP32 in a fixed order (deterministic: no float atomics); db (dtype dbt) is read, added to and
// rounded once. Callers zero db at the start of a step; micro-batches then accumulate.
#pragma once
#include "kernels/exec.h"

namespace mpt {
namespace cpu {
void bias_grad(const void* dy, DType dyt, int rows, int cols, void* db, DType dbt);
}
namespace cuda {
void bias_grad(const void* dy, DType dyt, int rows, int cols, void* db, DType dbt, Stream s);
}
namespace ops {
inline void bias_grad(const Exec& e, const void* dy, DType dyt, int rows, int cols, void* db, DType dbt) {
  OpScope scope(e, [&] {
    return OpInfo{"bias_grad " + dims_str({rows, cols}), double(rows) * cols,
                  double(rows) * cols * double(dtype_size(dyt)) + 2.0 * cols * double(dtype_size(dbt))};
  });
  e.cuda() ? cuda::bias_grad(dy, dyt, rows, cols, db, dbt, e.stream) : cpu::bias_grad(dy, dyt, rows, cols, db, dbt);
}
}  // namespace ops
}  // namespace mpt
