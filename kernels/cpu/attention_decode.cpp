// CPU twin of kernels/attention_decode.h. The loops are those of cpu::attention_forward for one query row:
// the head's keys converted to FP32 and transposed ([D, L], L = pos + 1), each score summed over the head
// dim in increasing index order and then scaled, the maximum, exp and sum over keys in increasing order,
// and the output accumulated key by key and divided by the sum. The same operations in the same order give
// the same bits as attention_forward's row pos, which ties the decode path to the trained one.
#include "kernels/attention_decode.h"

#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace mpt::cpu {

void attention_decode(const void* cache, void* out, DType t, int B, int S, int pos, int H, int D) {
  const char* op = "attention_decode";
  if (B < 0 || H < 0 || D <= 0 || S < 1 || pos < 0 || pos >= S)
    kernel_arg_error(op, "bad shape B=" + std::to_string(B) + " S=" + std::to_string(S) + " pos=" +
                             std::to_string(pos) + " H=" + std::to_string(H) + " D=" + std::to_string(D));
  if (B == 0 || H == 0) return;
  if (!cache || !out) kernel_arg_error(op, "null pointer");
  const size_t C = size_t(H) * size_t(D), ld = 3 * C, es = dtype_size(t), nD = size_t(D), L = size_t(pos) + 1;
  const float scale = 1.f / std::sqrt(float(D));
  std::vector<float> q(nD), row(nD), kt(L * nD), v(L * nD), s(L), acc(nD);
  for (int b = 0; b < B; ++b) {
    const char* xb = static_cast<const char*>(cache) + size_t(b) * size_t(S) * ld * es;
    char* ob = static_cast<char*>(out) + size_t(b) * C * es;
    for (int h = 0; h < H; ++h) {
      const size_t hc = size_t(h) * nD;
      to_float_n(xb + (size_t(pos) * ld + hc) * es, t, q.data(), nD);
      for (size_t j = 0; j < L; ++j) {
        to_float_n(xb + (j * ld + C + hc) * es, t, row.data(), nD);
        for (size_t i = 0; i < nD; ++i) kt[i * L + j] = row[i];
        to_float_n(xb + (j * ld + 2 * C + hc) * es, t, v.data() + j * nD, nD);
      }
      for (size_t j = 0; j < L; ++j) s[j] = 0.f;
      for (size_t i = 0; i < nD; ++i) {
        const float qi = q[i];
        const float* col = kt.data() + i * L;
        for (size_t j = 0; j < L; ++j) s[j] += qi * col[j];
      }
      for (size_t j = 0; j < L; ++j) s[j] *= scale;
      float m = -std::numeric_limits<float>::infinity();
      for (size_t j = 0; j < L; ++j) m = std::fmax(m, s[j]);
      float l = 0.f;
      for (size_t j = 0; j < L; ++j) {
        s[j] = std::exp(s[j] - m);
        l += s[j];
      }
      for (size_t i = 0; i < nD; ++i) acc[i] = 0.f;
      for (size_t j = 0; j < L; ++j) {
        const float p = s[j];
        const float* vj = v.data() + j * nD;
        for (size_t i = 0; i < nD; ++i) acc[i] += p * vj[i];
      }
      for (size_t i = 0; i < nD; ++i) acc[i] /= l;
      from_float_n(acc.data(), ob + hc * es, t, nD);
    }
  }
}

}  // namespace mpt::cpu
