// CPU twin of kernels/sum.h: a sequential sum in double, rounded to FP32 once when added into acc.
#include "kernels/sum.h"

namespace mpt::cpu {

void sum(const float* x, int64_t n, float* acc) {
  if (n < 0) kernel_arg_error("sum", "negative length");
  if (!acc || (n > 0 && !x)) kernel_arg_error("sum", "null pointer");
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += double(x[i]);
  acc[0] = float(double(acc[0]) + s);
}

}  // namespace mpt::cpu
