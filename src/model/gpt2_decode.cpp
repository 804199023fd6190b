#include "src/model/gpt2_decode.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "kernels/attention_decode.h"
#include "kernels/embedding.h"
#include "kernels/gemm.h"
#include "kernels/layernorm.h"

namespace mpt {

Gpt2Decoder::Gpt2Decoder(Gpt2& model, int capacity) : m_(model), cap_(capacity) {
  if (capacity < 1 || capacity > m_.T_)
    throw std::invalid_argument("Gpt2Decoder: capacity " + std::to_string(capacity) + " outside 1.." +
                                std::to_string(m_.T_));
  const Device d = m_.ex_.device;
  const size_t es = dtype_size(m_.md_), C = size_t(m_.C_);
  for (int l = 0; l < m_.L_; ++l) cache_.emplace_back(d, size_t(cap_) * 3 * C * es);
  tok_ = Buffer(d, 4);
  x_ = Buffer(d, C * es);
  ln_ = Buffer(d, C * es);
  mean_ = Buffer(d, 4);
  rstd_ = Buffer(d, 4);
  att_ = Buffer(d, C * es);
  proj_ = Buffer(d, C * es);
  fc_pre_ = Buffer(d, 4 * C * es);
  fc_act_ = Buffer(d, 4 * C * es);
  logits_ = Buffer(d, size_t(m_.Vp_) * es);
}

std::vector<float> Gpt2Decoder::fetch_logits(const void* row) {
  std::vector<uint8_t> raw(size_t(m_.Vp_) * dtype_size(m_.md_));
  copy_to_host(row, m_.ex_.device, raw.data(), raw.size(), m_.ex_.stream);
  std::vector<float> out(size_t(m_.Vp_));
  to_float_n(raw.data(), m_.md_, out.data(), out.size());
  out.resize(size_t(m_.V_));
  return out;
}

std::vector<float> Gpt2Decoder::prefill(const std::vector<int32_t>& tokens) {
  const int n = int(tokens.size());
  if (n < 1 || n > cap_)
    throw std::invalid_argument("Gpt2Decoder::prefill: " + std::to_string(n) + " tokens for a cache of " +
                                std::to_string(cap_));
  // One sequence of n positions (the forward's cost grows with n, not with seq_len).
  Batch b;
  b.n = 1;
  b.inputs = tokens.data();
  b.targets = tokens.data();
  m_.forward(b, n);
  const size_t es = dtype_size(m_.md_), row = 3 * size_t(m_.C_) * es;
  for (int l = 0; l < m_.L_; ++l)
    copy_device(m_.blocks_[size_t(l)].qkv.data(), cache_[size_t(l)].data(), m_.ex_.device, size_t(n) * row,
                m_.ex_.stream);
  len_ = n;
  return fetch_logits(static_cast<const char*>(m_.logits_.data()) + size_t(n - 1) * size_t(m_.Vp_) * es);
}

std::vector<float> Gpt2Decoder::begin(const std::vector<int32_t>& text) {
  if (text.empty()) throw std::invalid_argument("Gpt2Decoder::begin: no tokens");
  const size_t keep = std::min(text.size(), size_t(cap_));
  return prefill(std::vector<int32_t>(text.end() - std::ptrdiff_t(keep), text.end()));
}

std::vector<float> Gpt2Decoder::extend(const std::vector<int32_t>& text) {
  if (text.empty()) throw std::invalid_argument("Gpt2Decoder::extend: no tokens");
  if (!full()) return step(text.back());
  const size_t keep = std::min(text.size(), size_t(cap_ + 1) / 2);
  return prefill(std::vector<int32_t>(text.end() - std::ptrdiff_t(keep), text.end()));
}

std::vector<float> Gpt2Decoder::step(int32_t token) {
  if (len_ < 1) throw std::logic_error("Gpt2Decoder::step before prefill");
  if (len_ >= cap_) throw std::logic_error("Gpt2Decoder::step: the cache is full");
  if (token < 0 || token >= m_.V_) throw std::invalid_argument("Gpt2Decoder::step: token " + std::to_string(token));
  const Exec& ex = m_.ex_;
  const DType md = m_.md_;
  const int C = m_.C_, H = m_.H_, pos = len_;
  const size_t es = dtype_size(md);
  copy_from_host(&token, tok_.data(), ex.device, 4, ex.stream);
  // Row `pos` of wpe as a one-row table: the embedding op adds wpe[row % T] with T = 1.
  const void* wpe_row = static_cast<const char*>(m_.param(m_.wpe_)) + size_t(pos) * size_t(C) * es;
  ops::embedding_forward(ex, tok_.as<int32_t>(), m_.param(m_.wte_), wpe_row, md, x_.data(), 1, 1, C);
  for (int l = 0; l < m_.L_; ++l) {
    Gpt2::Block& b = m_.blocks_[size_t(l)];
    if (l == 0)
      ops::layernorm_forward(ex, x_.data(), md, m_.param(b.ln1.w), m_.param(b.ln1.b), b.ln1.dt, ln_.data(),
                             mean_.as<float>(), rstd_.as<float>(), 1, C, kGpt2LayerNormEps);
    else  // x += the previous block's MLP branch, then ln_1
      ops::residual_layernorm_forward(ex, x_.data(), proj_.data(), md, m_.param(b.ln1.w), m_.param(b.ln1.b),
                                      b.ln1.dt, x_.data(), ln_.data(), mean_.as<float>(), rstd_.as<float>(), 1, C,
                                      kGpt2LayerNormEps);
    void* qkv_row = static_cast<char*>(cache_[size_t(l)].data()) + size_t(pos) * 3 * size_t(C) * es;
    m_.linear_forward(b.c_attn, ln_.data(), qkv_row, 1, false, nullptr);
    ops::attention_decode(ex, cache_[size_t(l)].data(), att_.data(), md, 1, cap_, pos, H, C / H);
    m_.linear_forward(b.c_proj, att_.data(), proj_.data(), 1, false, nullptr);
    ops::residual_layernorm_forward(ex, x_.data(), proj_.data(), md, m_.param(b.ln2.w), m_.param(b.ln2.b), b.ln2.dt,
                                    x_.data(), ln_.data(), mean_.as<float>(), rstd_.as<float>(), 1, C,
                                    kGpt2LayerNormEps);
    m_.linear_forward(b.c_fc, ln_.data(), fc_act_.data(), 1, true, fc_pre_.data());
    m_.linear_forward(b.fc_proj, fc_act_.data(), proj_.data(), 1, false, nullptr);
  }
  ops::residual_layernorm_forward(ex, x_.data(), proj_.data(), md, m_.param(m_.ln_f_.w), m_.param(m_.ln_f_.b),
                                  m_.ln_f_.dt, x_.data(), ln_.data(), mean_.as<float>(), rstd_.as<float>(), 1, C,
                                  kGpt2LayerNormEps);
  GemmDesc g;  // logits[1, Vp] = ln_f(x) wte^T
  g.trans_b = true;
  g.m = 1;
  g.n = m_.Vp_;
  g.k = C;
  g.dtype = md;
  g.a = ln_.data();
  g.lda = C;
  g.b = m_.param(m_.wte_);
  g.ldb = C;
  g.c = logits_.data();
  g.ldc = m_.Vp_;
  ops::gemm(ex, g);
  ++len_;
  return fetch_logits(logits_.data());
}

}  // namespace mpt
