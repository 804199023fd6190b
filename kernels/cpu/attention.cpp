// CPU twin of kernels/attention.h. One (batch, head) at a time: the head's q, k, v (and dout) are converted
// to FP32 once, keys and values are also kept transposed ([D, T]) so that every inner loop runs over a
// contiguous index without a reduction and vectorises without reassociating float sums. Scores are built
// row by row (a length-T buffer, never T x T); each dot product is summed in increasing index order.
// lse may be null in the forward (evaluation needs no backward). dqkv must not alias qkv, out or dout.
#include "kernels/attention.h"

#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace mpt::cpu {
namespace {

void check_shape(const char* op, int B, int T, int H, int D) {
  if (B < 0 || T < 0 || H < 0 || D <= 0)
    kernel_arg_error(op, "bad shape B=" + std::to_string(B) + " T=" + std::to_string(T) + " H=" + std::to_string(H) +
                             " D=" + std::to_string(D));
}

// The head-h slice [T, D] of a [T, ld] row-major buffer (one batch element) as FP32, row-major.
void gather_rows(const void* base, DType t, size_t ld, size_t col, int T, int D, float* dst) {
  const size_t es = dtype_size(t);
  for (int r = 0; r < T; ++r)
    to_float_n(static_cast<const char*>(base) + (size_t(r) * ld + col) * es, t, dst + size_t(r) * D, size_t(D));
}

void transpose(const float* src, int T, int D, float* dst) {
  for (int r = 0; r < T; ++r)
    for (int i = 0; i < D; ++i) dst[size_t(i) * T + r] = src[size_t(r) * D + i];
}

// s[j] = scale * (a . bt[:, j]) for j <= t, with bt the transposed [D, T] operand.
void dot_row(const float* a, const float* bt, int t, int T, int D, float scale, float* s) {
  for (int j = 0; j <= t; ++j) s[j] = 0.f;
  for (int i = 0; i < D; ++i) {
    const float ai = a[i];
    const float* col = bt + size_t(i) * T;
    for (int j = 0; j <= t; ++j) s[j] += ai * col[j];
  }
  for (int j = 0; j <= t; ++j) s[j] *= scale;
}

}  // namespace

void attention_forward(const void* qkv, void* out, float* lse, DType t, int B, int T, int H, int D) {
  const char* op = "attention_forward";
  check_shape(op, B, T, H, D);
  if (B == 0 || T == 0 || H == 0) return;
  if (!qkv || !out) kernel_arg_error(op, "null pointer");
  const size_t C = size_t(H) * D, ld = 3 * C, es = dtype_size(t), nT = size_t(T), nD = size_t(D);
  const float scale = 1.f / std::sqrt(float(D));
  std::vector<float> q(nT * nD), k(nT * nD), kt(nT * nD), v(nT * nD), s(nT), acc(nD);
  for (int b = 0; b < B; ++b) {
    const char* xb = static_cast<const char*>(qkv) + size_t(b) * nT * ld * es;
    char* ob = static_cast<char*>(out) + size_t(b) * nT * C * es;
    for (int h = 0; h < H; ++h) {
      const size_t hc = size_t(h) * nD;
      gather_rows(xb, t, ld, hc, T, D, q.data());
      gather_rows(xb, t, ld, C + hc, T, D, k.data());
      gather_rows(xb, t, ld, 2 * C + hc, T, D, v.data());
      transpose(k.data(), T, D, kt.data());
      for (int r = 0; r < T; ++r) {
        dot_row(q.data() + size_t(r) * nD, kt.data(), r, T, D, scale, s.data());
        float m = -std::numeric_limits<float>::infinity();
        for (int j = 0; j <= r; ++j) m = std::fmax(m, s[j]);
        float l = 0.f;
        for (int j = 0; j <= r; ++j) {
          s[j] = std::exp(s[j] - m);
          l += s[j];
        }
        for (size_t i = 0; i < nD; ++i) acc[i] = 0.f;
        for (int j = 0; j <= r; ++j) {
          const float p = s[j];
          const float* vj = v.data() + size_t(j) * nD;
          for (size_t i = 0; i < nD; ++i) acc[i] += p * vj[i];
        }
        for (size_t i = 0; i < nD; ++i) acc[i] /= l;
        from_float_n(acc.data(), ob + (size_t(r) * C + hc) * es, t, nD);
        if (lse) lse[(size_t(b) * H + h) * nT + r] = m + std::log(l);
      }
    }
  }
}

void attention_backward(const void* dout, const void* qkv, const void* out, const float* lse, float* delta,
                        void* dqkv, DType t, int B, int T, int H, int D) {
  const char* op = "attention_backward";
  check_shape(op, B, T, H, D);
  if (B == 0 || T == 0 || H == 0) return;
  if (!dout || !qkv || !out || !lse || !delta || !dqkv) kernel_arg_error(op, "null pointer");
  const size_t C = size_t(H) * D, ld = 3 * C, es = dtype_size(t), nT = size_t(T), nD = size_t(D);
  const float scale = 1.f / std::sqrt(float(D));
  std::vector<float> q(nT * nD), k(nT * nD), kt(nT * nD), v(nT * nD), vt(nT * nD), dO(nT * nD), o(nD);
  std::vector<float> dq(nD), dk(nT * nD), dv(nT * nD), p(nT), dp(nT);
  for (int b = 0; b < B; ++b) {
    const char* xb = static_cast<const char*>(qkv) + size_t(b) * nT * ld * es;
    const char* ob = static_cast<const char*>(out) + size_t(b) * nT * C * es;
    const char* gb = static_cast<const char*>(dout) + size_t(b) * nT * C * es;
    char* db = static_cast<char*>(dqkv) + size_t(b) * nT * ld * es;
    for (int h = 0; h < H; ++h) {
      const size_t hc = size_t(h) * nD, bh = size_t(b) * H + h;
      gather_rows(xb, t, ld, hc, T, D, q.data());
      gather_rows(xb, t, ld, C + hc, T, D, k.data());
      gather_rows(xb, t, ld, 2 * C + hc, T, D, v.data());
      gather_rows(gb, t, C, hc, T, D, dO.data());
      transpose(k.data(), T, D, kt.data());
      transpose(v.data(), T, D, vt.data());
      for (size_t i = 0; i < nT * nD; ++i) dk[i] = dv[i] = 0.f;
      for (int r = 0; r < T; ++r) {
        const float* g = dO.data() + size_t(r) * nD;
        const float* qr = q.data() + size_t(r) * nD;
        // delta from the stored (rounded) out, as the CUDA version and the header define it.
        to_float_n(ob + (size_t(r) * C + hc) * es, t, o.data(), nD);
        float dl = 0.f;
        for (size_t i = 0; i < nD; ++i) dl += g[i] * o[i];
        delta[bh * nT + r] = dl;
        const float lr = lse[bh * nT + r];
        dot_row(qr, kt.data(), r, T, D, scale, p.data());
        dot_row(g, vt.data(), r, T, D, 1.f, dp.data());
        for (int j = 0; j <= r; ++j) {
          p[j] = std::exp(p[j] - lr);
          dp[j] = p[j] * (dp[j] - dl);  // dS, kept without the score scale until the end
        }
        for (size_t i = 0; i < nD; ++i) dq[i] = 0.f;
        for (int j = 0; j <= r; ++j) {
          const float ds = dp[j], pj = p[j];
          const float* kj = k.data() + size_t(j) * nD;
          float* dkj = dk.data() + size_t(j) * nD;
          float* dvj = dv.data() + size_t(j) * nD;
          for (size_t i = 0; i < nD; ++i) {
            dq[i] += ds * kj[i];
            dkj[i] += ds * qr[i];
            dvj[i] += pj * g[i];
          }
        }
        for (size_t i = 0; i < nD; ++i) dq[i] *= scale;
        from_float_n(dq.data(), db + (size_t(r) * ld + hc) * es, t, nD);
      }
      for (size_t i = 0; i < nT * nD; ++i) dk[i] *= scale;
      for (int r = 0; r < T; ++r) {
        from_float_n(dk.data() + size_t(r) * nD, db + (size_t(r) * ld + C + hc) * es, t, nD);
        from_float_n(dv.data() + size_t(r) * nD, db + (size_t(r) * ld + 2 * C + hc) * es, t, nD);
      }
    }
  }
}

}  // namespace mpt::cpu
