// CPU twin of kernels/embedding.h, and make_token_groups (host code shared by both backends).
//
// The backward twin ignores the caller's TokenGroups and groups the rows itself (sorting (token, row)
// pairs), so that a test of the CUDA backward against it also checks the grouping the caller uploaded.
// Each sum starts from the old gradient and adds rows in increasing row order in FP32, then rounds once:
// the same sequence of FP32 additions the CUDA kernels perform, so both give the same bits.
#include "kernels/embedding.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace mpt {

TokenGroups make_token_groups(const int32_t* tokens, int rows, int vocab) {
  if (rows < 0) throw std::invalid_argument("make_token_groups: negative row count");
  if (vocab <= 0) throw std::invalid_argument("make_token_groups: vocab must be positive");
  if (rows > 0 && !tokens) throw std::invalid_argument("make_token_groups: null tokens");
  // Counting sort by token: one pass to count (and validate), a prefix sum, and a stable scatter in row
  // order, so rows come out ascending within each token without a comparison sort.
  std::vector<int32_t> count(size_t(vocab) + 1, 0);
  for (int i = 0; i < rows; ++i) {
    const int32_t t = tokens[i];
    if (t < 0 || t >= vocab)
      throw std::invalid_argument("make_token_groups: token " + std::to_string(t) + " at row " + std::to_string(i) +
                                  " is outside [0, " + std::to_string(vocab) + ")");
    ++count[size_t(t) + 1];
  }
  TokenGroups g;
  for (int v = 0; v < vocab; ++v) {
    if (count[size_t(v) + 1] > 0) g.uniq.push_back(v);
    count[size_t(v) + 1] += count[size_t(v)];  // count[v] becomes the first slot of token v
  }
  g.order.resize(size_t(rows));
  for (int i = 0; i < rows; ++i) g.order[size_t(count[size_t(tokens[i])]++)] = i;
  // After the scatter count[v] is the end of token v's slots, i.e. the start of the next token's.
  g.starts.reserve(g.uniq.size() + 1);
  g.starts.push_back(0);
  for (int32_t v : g.uniq) g.starts.push_back(count[size_t(v)]);
  return g;
}

namespace cpu {

namespace {
void check_shape(const char* op, int rows, int T, int C) {
  if (rows < 0) kernel_arg_error(op, "negative rows");
  if (T <= 0 || C <= 0) kernel_arg_error(op, "T and C must be positive");
}
}  // namespace

void embedding_forward(const int32_t* tokens, const void* wte, const void* wpe, DType t, void* out, int rows, int T,
                       int C) {
  const char* op = "embedding_forward";
  check_shape(op, rows, T, C);
  if (rows == 0) return;
  if (!tokens || !wte || !wpe || !out) kernel_arg_error(op, "null pointer");
  const size_t nc = size_t(C), es = dtype_size(t);
  std::vector<float> e(nc), p(nc);
  for (int i = 0; i < rows; ++i) {
    // The vocabulary size is not known here; make_token_groups checks the upper bound for the caller.
    if (tokens[i] < 0) kernel_arg_error(op, "negative token at row " + std::to_string(i));
    to_float_n(static_cast<const char*>(wte) + size_t(tokens[i]) * nc * es, t, e.data(), nc);
    to_float_n(static_cast<const char*>(wpe) + size_t(i % T) * nc * es, t, p.data(), nc);
    for (size_t j = 0; j < nc; ++j) e[j] += p[j];
    from_float_n(e.data(), static_cast<char*>(out) + size_t(i) * nc * es, t, nc);
  }
}

void embedding_backward(const int32_t* tokens, const int32_t* /*order*/, const int32_t* /*starts*/,
                        const int32_t* /*uniq*/, int /*num_unique*/, const void* dout, DType t, void* dwte, void* dwpe,
                        int rows, int T, int C) {
  const char* op = "embedding_backward";
  check_shape(op, rows, T, C);
  if (rows == 0) return;
  if (!tokens || !dout || !dwte || !dwpe) kernel_arg_error(op, "null pointer");
  const size_t nc = size_t(C), es = dtype_size(t);
  const char* d = static_cast<const char*>(dout);
  std::vector<std::pair<int32_t, int32_t>> by_token(static_cast<size_t>(rows));
  for (int i = 0; i < rows; ++i) {
    if (tokens[i] < 0) kernel_arg_error(op, "negative token at row " + std::to_string(i));
    by_token[size_t(i)] = {tokens[i], i};
  }
  std::sort(by_token.begin(), by_token.end());  // (token, row): rows ascending within a token

  std::vector<float> acc(nc), row(nc);
  for (size_t k = 0; k < by_token.size();) {
    const int32_t v = by_token[k].first;
    char* dst = static_cast<char*>(dwte) + size_t(v) * nc * es;
    to_float_n(dst, t, acc.data(), nc);
    for (; k < by_token.size() && by_token[k].first == v; ++k) {
      to_float_n(d + size_t(by_token[k].second) * nc * es, t, row.data(), nc);
      for (size_t j = 0; j < nc; ++j) acc[j] += row[j];
    }
    from_float_n(acc.data(), dst, t, nc);
  }

  // Position p collects rows p, p + T, p + 2T, ... (a partial last sequence contributes its first positions).
  const int positions = std::min(T, rows);
  for (int p = 0; p < positions; ++p) {
    char* dst = static_cast<char*>(dwpe) + size_t(p) * nc * es;
    to_float_n(dst, t, acc.data(), nc);
    for (size_t i = size_t(p); i < size_t(rows); i += size_t(T)) {
      to_float_n(d + i * nc * es, t, row.data(), nc);
      for (size_t j = 0; j < nc; ++j) acc[j] += row[j];
    }
    from_float_n(acc.data(), dst, t, nc);
  }
}

}  // namespace cpu
}  // namespace mpt
