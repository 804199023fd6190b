// CPU twin of kernels/softmax_xent.h. Each row is read into FP32 before anything is written, which is
// what lets dlogits alias logits.
#include "kernels/softmax_xent.h"

#include <cmath>
#include <string>
#include <vector>

namespace mpt::cpu {

void softmax_xent(const void* logits, DType lt, const int32_t* labels, int rows, int cols, int valid_cols,
                  float grad_scale, float* loss, void* dlogits, int32_t* pred) {
  const char* op = "softmax_xent";
  if (rows < 0 || cols <= 0 || valid_cols <= 0 || valid_cols > cols)
    kernel_arg_error(op, "bad shape: rows " + std::to_string(rows) + ", cols " + std::to_string(cols) +
                             ", valid_cols " + std::to_string(valid_cols));
  if (rows == 0) return;
  if (!logits || !labels || !loss) kernel_arg_error(op, "null pointer");
  const size_t nc = size_t(cols), nv = size_t(valid_cols), es = dtype_size(lt);
  std::vector<float> row(nc);
  for (int i = 0; i < rows; ++i) {
    const int32_t y = labels[i];
    if (y >= valid_cols)
      kernel_arg_error(op, "label " + std::to_string(y) + " of row " + std::to_string(i) + " >= valid_cols " +
                               std::to_string(valid_cols));
    to_float_n(static_cast<const char*>(logits) + size_t(i) * nc * es, lt, row.data(), nc);
    // The argmax does not depend on the label, so ignored rows get a prediction too.
    size_t best = 0;
    for (size_t j = 1; j < nv; ++j)
      if (row[j] > row[best]) best = j;
    if (pred) pred[i] = int32_t(best);
    char* drow = dlogits ? static_cast<char*>(dlogits) + size_t(i) * nc * es : nullptr;
    if (y < 0) {
      loss[i] = 0.f;
      if (drow) {
        for (size_t j = 0; j < nc; ++j) row[j] = 0.f;
        from_float_n(row.data(), drow, lt, nc);
      }
      continue;
    }
    const float mx = row[best];
    float s = 0.f;
    for (size_t j = 0; j < nv; ++j) s += std::exp(row[j] - mx);
    loss[i] = (mx - row[size_t(y)]) + std::log(s);
    if (drow) {
      const float inv_s = 1.f / s;
      for (size_t j = 0; j < nv; ++j) row[j] = grad_scale * (std::exp(row[j] - mx) * inv_s - (j == size_t(y) ? 1.f : 0.f));
      for (size_t j = nv; j < nc; ++j) row[j] = 0.f;
      from_float_n(row.data(), drow, lt, nc);
    }
  }
}

}  // namespace mpt::cpu
