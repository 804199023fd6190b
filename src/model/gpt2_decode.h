// Incremental GPT-2 forward for text generation, with a KV cache.
//
// The cache holds, per layer, the c_attn output (q | k | v, the qkv layout of kernels/attention.h) of
// every position generated so far, [capacity, 3C] in the model dtype; the q third is kept only so that a
// position's qkv row is written by one GEMM straight into the cache and read in place by
// kernels/attention_decode.h. prefill() runs the model's ordinary batched forward over the prompt's positions
// only and copies each layer's qkv rows into the cache; step() runs one position through every layer for that row only
// (embedding + position, ln_1, c_attn into the cache row, decode attention over the cached rows, c_proj,
// ln_2, MLP, ln_f, the tied LM head) and returns its logits. With the own CPU GEMM (cpu.gemm = "own") the
// logits of step() are bitwise those of the full forward's row for the same prefix, in every dtype.
// The decoder only reads the model's parameters; one decoder per model at a time (prefill uses the
// model's activation buffers).
#pragma once

#include <cstdint>
#include <vector>

#include "src/core/buffer.h"
#include "src/model/gpt2.h"

namespace mpt {

class Gpt2Decoder {
 public:
  // A cache for `capacity` positions, 1 <= capacity <= the model's seq_len (allocated here, once).
  Gpt2Decoder(Gpt2& model, int capacity);

  // Empties the cache and runs tokens (1 <= size <= capacity) through the batched forward; returns the
  // logits after the last of them (vocab floats). length() becomes tokens.size().
  std::vector<float> prefill(const std::vector<int32_t>& tokens);
  // Appends one token at position length() (< capacity) and returns the logits after it.
  std::vector<float> step(int32_t token);

  // Generation over text that may outgrow the cache. begin(text) prefills the last min(size, capacity)
  // tokens; extend(text), with text one token longer than at the previous call, steps that token, or,
  // when the cache is full, slides the window: prefills the last ceil(capacity / 2) tokens of text (so
  // one batched forward per capacity / 2 generated tokens). Either returns the logits after text.back(),
  // conditioned on its last length() tokens.
  std::vector<float> begin(const std::vector<int32_t>& text);
  std::vector<float> extend(const std::vector<int32_t>& text);

  int length() const { return len_; }
  int capacity() const { return cap_; }
  bool full() const { return len_ == cap_; }

 private:
  std::vector<float> fetch_logits(const void* row);

  Gpt2& m_;
  int cap_ = 0, len_ = 0;
  std::vector<Buffer> cache_;  // per layer [cap_, 3C]
  Buffer tok_, x_, ln_, mean_, rstd_, att_, proj_, fc_pre_, fc_act_, logits_;
};

}  // namespace mpt
