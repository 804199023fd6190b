// CPU twin of kernels/bias_grad.h. Rows are added in increasing order into FP32 column sums (the inner
// loop runs along a row, so it is contiguous and vectorises); db is then read, added to and rounded once.
#include "kernels/bias_grad.h"

#include <vector>

namespace mpt::cpu {

void bias_grad(const void* dy, DType dyt, int rows, int cols, void* db, DType dbt) {
  if (rows < 0 || cols < 0) kernel_arg_error("bias_grad", "negative shape");
  if (rows == 0 || cols == 0) return;
  if (!dy || !db) kernel_arg_error("bias_grad", "null pointer");
  const size_t nc = size_t(cols), es = dtype_size(dyt);
  std::vector<float> sum(nc, 0.f), row(nc);
  for (int i = 0; i < rows; ++i) {
    to_float_n(static_cast<const char*>(dy) + size_t(i) * nc * es, dyt, row.data(), nc);
    for (size_t j = 0; j < nc; ++j) sum[j] += row[j];
  }
  to_float_n(db, dbt, row.data(), nc);
  for (size_t j = 0; j < nc; ++j) row[j] += sum[j];
  from_float_n(row.data(), db, dbt, nc);
}

}  // namespace mpt::cpu
