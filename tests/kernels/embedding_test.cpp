// mpt::cpu::embedding_forward / embedding_backward against float64 references, and make_token_groups.
//
// Forward is one FP32 add of two stored values rounded once. The sum of two values of the same storage
// dtype (in the ranges used here) is exact in float64, so the reference rounded once to the dtype is what
// a correct kernel must produce bit for bit: the comparison is exact.
// Backward sums run in FP32; against the float64 sum the error is bounded by u * (sum of |partial sums|)
// (recursive summation, u = 2^-24), plus the final rounding to the dtype (storage_tol). embedding.h also
// fixes the order of the FP32 additions (old gradient first, then rows ascending), which is what lets the
// CUDA kernels match the CPU twin bit for bit; the tests replay that sequence and compare exactly as well.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/embedding.h"
#include "tests/test_util.h"

namespace mpt {
namespace {

constexpr double kU = 0x1p-24;

struct Shape {
  int rows, T, C, vocab;
};
std::string shape_tag(const Shape& s) {
  return "rows=" + std::to_string(s.rows) + " T=" + std::to_string(s.T) + " C=" + std::to_string(s.C) +
         " vocab=" + std::to_string(s.vocab);
}
// Includes a partial last sequence (100 = 3 * 32 + 4), a vocabulary smaller than the batch (every token
// repeats many times), and single elements.
const Shape kShapes[] = {{64, 16, 37, 50}, {100, 32, 24, 7}, {1, 1, 1, 1}, {96, 8, 129, 300}};

// Tokens with heavy repetition: a third of the rows share one token, the rest are uniform over the vocab.
std::vector<int32_t> skewed_tokens(Rng& r, int rows, int vocab) {
  const int32_t hot = int32_t(r.below(uint64_t(vocab)));
  std::vector<int32_t> t(static_cast<size_t>(rows));
  for (auto& v : t) v = r.below(3) == 0 ? hot : int32_t(r.below(uint64_t(vocab)));
  return t;
}

// dtype t's values of the form k / 256 with |k| <= 255: exact in fp16 and bf16 (8 significant bits), and
// any sum of up to 2^15 of them is exact in FP32.
std::vector<uint8_t> multiples_of_2m8(Rng& r, DType t, size_t n) {
  std::vector<uint8_t> b(n * dtype_size(t));
  for (size_t i = 0; i < n; ++i) store_elem(b.data(), t, i, float(int(r.below(511)) - 255) / 256.f);
  return b;
}

class EmbeddingTest : public ::testing::TestWithParam<DType> {};

TEST_P(EmbeddingTest, ForwardMatchesReference) {
  const DType t = GetParam();
  Rng rng = test::fresh_rng();
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(shape_tag(s));
    const size_t nc = size_t(s.C);
    const std::vector<int32_t> tok = skewed_tokens(rng, s.rows, s.vocab);
    const auto wte = test::random_buffer(rng, t, size_t(s.vocab) * nc);
    const auto wpe = test::random_buffer(rng, t, size_t(s.T) * nc);
    std::vector<uint8_t> out(size_t(s.rows) * nc * dtype_size(t));
    cpu::embedding_forward(tok.data(), wte.data(), wpe.data(), t, out.data(), s.rows, s.T, s.C);
    size_t bad = 0;
    for (int i = 0; i < s.rows; ++i) {
      for (size_t j = 0; j < nc; ++j) {
        const double e = load_elem(wte.data(), t, size_t(tok[size_t(i)]) * nc + j);
        const double p = load_elem(wpe.data(), t, size_t(i % s.T) * nc + j);
        const float ref = round_to(t, float(e + p));  // e + p is exact in double; float() rounds once for fp32
        const float got = load_elem(out.data(), t, size_t(i) * nc + j);
        if (got != ref && ++bad <= 5) ADD_FAILURE() << "row " << i << " col " << j << ": got " << got << " ref " << ref;
      }
    }
    EXPECT_EQ(bad, 0u);
  }
}

// float64 sums with their error bound, and the exact FP32 replay of the order embedding.h prescribes.
struct GradRef {
  std::vector<double> sum, bound;
  std::vector<float> replay;
};
GradRef grad_reference(const std::vector<uint8_t>& old, const std::vector<uint8_t>& dout, DType t,
                       const std::vector<std::vector<int>>& rows_of, size_t nc) {
  GradRef g;
  const size_t n = rows_of.size() * nc;
  g.sum.resize(n);
  g.bound.resize(n);
  g.replay.resize(n);
  for (size_t r = 0; r < rows_of.size(); ++r) {
    for (size_t j = 0; j < nc; ++j) {
      const size_t o = r * nc + j;
      double s = load_elem(old.data(), t, o), ps = 0;
      float f = float(s);
      for (int i : rows_of[r]) {  // ascending
        const float d = load_elem(dout.data(), t, size_t(i) * nc + j);
        s += d;
        ps += std::fabs(s);
        f += d;
      }
      g.sum[o] = s;
      g.bound[o] = kU * ps;
      g.replay[o] = round_to(t, f);
    }
  }
  return g;
}

size_t count_bad(const std::string& what, const std::vector<uint8_t>& got, DType t, const GradRef& ref) {
  const test::Tol tol = test::storage_tol(t);
  size_t bad = 0;
  for (size_t o = 0; o < ref.sum.size(); ++o) {
    const float g = load_elem(got.data(), t, o);
    const double lim = tol.atol + tol.rtol * std::fabs(ref.sum[o]) + ref.bound[o];
    const bool ok = g == ref.replay[o] && std::fabs(g - ref.sum[o]) <= lim;
    if (!ok && ++bad <= 5)
      ADD_FAILURE() << what << " [" << o << "] got " << g << " float64 " << ref.sum[o] << " limit " << lim
                    << " fp32 replay " << ref.replay[o];
  }
  return bad;
}

TEST_P(EmbeddingTest, BackwardAccumulatesIntoOldGradients) {
  const DType t = GetParam();
  Rng rng = test::fresh_rng();
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(shape_tag(s));
    const size_t nc = size_t(s.C);
    const std::vector<int32_t> tok = skewed_tokens(rng, s.rows, s.vocab);
    const auto dout = test::random_buffer(rng, t, size_t(s.rows) * nc);
    // Old gradients are nonzero (the kernel must add, not overwrite), including rows no token touches.
    const auto dwte0 = test::random_buffer(rng, t, size_t(s.vocab) * nc);
    const auto dwpe0 = test::random_buffer(rng, t, size_t(s.T) * nc);
    auto dwte = dwte0, dwpe = dwpe0;
    const TokenGroups g = make_token_groups(tok.data(), s.rows, s.vocab);
    cpu::embedding_backward(tok.data(), g.order.data(), g.starts.data(), g.uniq.data(), g.num_unique(), dout.data(), t,
                            dwte.data(), dwpe.data(), s.rows, s.T, s.C);

    std::vector<std::vector<int>> by_token(size_t(s.vocab)), by_pos(size_t(s.T));
    for (int i = 0; i < s.rows; ++i) {
      by_token[size_t(tok[size_t(i)])].push_back(i);
      by_pos[size_t(i % s.T)].push_back(i);
    }
    EXPECT_EQ(count_bad("dwte", dwte, t, grad_reference(dwte0, dout, t, by_token, nc)), 0u);
    EXPECT_EQ(count_bad("dwpe", dwpe, t, grad_reference(dwpe0, dout, t, by_pos, nc)), 0u);
  }
}

// With multiples of 2^-8 every FP32 partial sum is exact, so the only rounding is the final one: the result
// must be the exact sum rounded once to the dtype. Rounding after every add, or dropping the old gradient,
// breaks this for the half dtypes (sums of many rows need more than bf16's 8 bits).
TEST_P(EmbeddingTest, BackwardRoundsOnceOnExactSums) {
  const DType t = GetParam();
  Rng rng = test::fresh_rng();
  const Shape s{512, 64, 40, 9};
  const size_t nc = size_t(s.C);
  const std::vector<int32_t> tok = skewed_tokens(rng, s.rows, s.vocab);
  const auto dout = multiples_of_2m8(rng, t, size_t(s.rows) * nc);
  const auto dwte0 = multiples_of_2m8(rng, t, size_t(s.vocab) * nc);
  const auto dwpe0 = multiples_of_2m8(rng, t, size_t(s.T) * nc);
  auto dwte = dwte0, dwpe = dwpe0;
  const TokenGroups g = make_token_groups(tok.data(), s.rows, s.vocab);
  cpu::embedding_backward(tok.data(), g.order.data(), g.starts.data(), g.uniq.data(), g.num_unique(), dout.data(), t,
                          dwte.data(), dwpe.data(), s.rows, s.T, s.C);
  std::vector<std::vector<int>> by_token(size_t(s.vocab)), by_pos(size_t(s.T));
  for (int i = 0; i < s.rows; ++i) {
    by_token[size_t(tok[size_t(i)])].push_back(i);
    by_pos[size_t(i % s.T)].push_back(i);
  }
  for (auto [name, got, old, groups] : {std::tuple{"dwte", &dwte, &dwte0, &by_token}, {"dwpe", &dwpe, &dwpe0, &by_pos}}) {
    const GradRef ref = grad_reference(*old, dout, t, *groups, nc);
    size_t bad = 0;
    for (size_t o = 0; o < ref.sum.size(); ++o) {
      const float exp = round_to(t, float(ref.sum[o]));  // ref.sum is exact and fits FP32
      const float gv = load_elem(got->data(), t, o);
      if (gv != exp && ++bad <= 5) ADD_FAILURE() << name << " [" << o << "] got " << gv << " expected " << exp;
    }
    EXPECT_EQ(bad, 0u) << name;
  }
}

// Backward is the transpose of forward: for the linear L(wte, wpe) = sum_i <dout_i, out_i>,
// sum_i <dout_i, out_i> = sum_v <dwte_v, wte_v> + sum_p <dwpe_p, wpe_p>, with dwte, dwpe the increments the
// backward adds. This ties the two kernels together (a position or token mix-up in either breaks it).
// In FP32 the increments carry errors of ~1e-7 * (rows in the group) relative to their size, which adds up to
// ~1e-7 of the sum of |terms| here; 1e-5 of it (~0.01) is loose for rounding, yet one row sent to the wrong
// token or position shifts the right side by ~sqrt(C) * 0.5 ~ 2.
TEST(EmbeddingAdjoint, BackwardIsTransposeOfForward) {
  Rng rng = test::fresh_rng();
  const DType t = DType::F32;
  const Shape s{200, 20, 16, 13};
  const size_t nc = size_t(s.C);
  const std::vector<int32_t> tok = skewed_tokens(rng, s.rows, s.vocab);
  const auto wte = test::random_buffer(rng, t, size_t(s.vocab) * nc), wpe = test::random_buffer(rng, t, size_t(s.T) * nc);
  const auto dout = test::random_buffer(rng, t, size_t(s.rows) * nc);
  const auto dwte0 = test::random_buffer(rng, t, wte.size() / 4, -1e-3f, 1e-3f);
  const auto dwpe0 = test::random_buffer(rng, t, wpe.size() / 4, -1e-3f, 1e-3f);
  auto dwte = dwte0, dwpe = dwpe0;
  std::vector<uint8_t> out(dout.size());
  cpu::embedding_forward(tok.data(), wte.data(), wpe.data(), t, out.data(), s.rows, s.T, s.C);
  const TokenGroups g = make_token_groups(tok.data(), s.rows, s.vocab);
  cpu::embedding_backward(tok.data(), g.order.data(), g.starts.data(), g.uniq.data(), g.num_unique(), dout.data(), t,
                          dwte.data(), dwpe.data(), s.rows, s.T, s.C);
  double lhs = 0, rhs = 0, mag = 0;
  for (size_t o = 0; o < dout.size() / 4; ++o) {
    const double term = double(load_elem(dout.data(), t, o)) * load_elem(out.data(), t, o);
    lhs += term;
    mag += std::fabs(term);
  }
  for (size_t o = 0; o < wte.size() / 4; ++o)
    rhs += (double(load_elem(dwte.data(), t, o)) - load_elem(dwte0.data(), t, o)) * load_elem(wte.data(), t, o);
  for (size_t o = 0; o < wpe.size() / 4; ++o)
    rhs += (double(load_elem(dwpe.data(), t, o)) - load_elem(dwpe0.data(), t, o)) * load_elem(wpe.data(), t, o);
  EXPECT_NEAR(lhs, rhs, 1e-5 * mag);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, EmbeddingTest, ::testing::Values(DType::F32, DType::F16, DType::BF16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

TEST(EmbeddingArgs, BadArgumentsThrow) {
  const std::vector<int32_t> tok = {0, -1};
  std::vector<float> w(8, 0.5f), out(8);
  EXPECT_THROW(cpu::embedding_forward(tok.data(), w.data(), w.data(), DType::F32, out.data(), 2, 1, 2),
               std::invalid_argument);  // negative token
  EXPECT_THROW(cpu::embedding_forward(tok.data(), w.data(), w.data(), DType::F32, out.data(), 1, 0, 2),
               std::invalid_argument);  // T = 0
  EXPECT_THROW(cpu::embedding_forward(tok.data(), nullptr, w.data(), DType::F32, out.data(), 1, 1, 2),
               std::invalid_argument);
  EXPECT_THROW(cpu::embedding_backward(tok.data(), nullptr, nullptr, nullptr, 0, w.data(), DType::F32, w.data(),
                                       nullptr, 1, 1, 2),
               std::invalid_argument);
}

// ---- make_token_groups

// Checks every promise of TokenGroups against the tokens, independently of how the groups were built.
void expect_valid_groups(const std::vector<int32_t>& tok, const TokenGroups& g) {
  const int rows = int(tok.size());
  ASSERT_EQ(g.order.size(), tok.size());
  ASSERT_EQ(g.starts.size(), g.uniq.size() + 1);
  EXPECT_EQ(g.starts.front(), 0);
  EXPECT_EQ(g.starts.back(), rows);
  std::vector<int> seen(tok.size(), 0);
  for (int32_t r : g.order) {
    ASSERT_TRUE(r >= 0 && r < rows) << r;
    ++seen[size_t(r)];
  }
  EXPECT_TRUE(std::all_of(seen.begin(), seen.end(), [](int c) { return c == 1; })) << "order is not a permutation";
  for (int k = 0; k < g.num_unique(); ++k) {
    if (k > 0) {
      EXPECT_LT(g.uniq[size_t(k - 1)], g.uniq[size_t(k)]) << "uniq not strictly ascending at " << k;
    }
    EXPECT_LT(g.starts[size_t(k)], g.starts[size_t(k) + 1]) << "empty group " << k;
    for (int q = g.starts[size_t(k)]; q < g.starts[size_t(k) + 1]; ++q) {
      EXPECT_EQ(tok[size_t(g.order[size_t(q)])], g.uniq[size_t(k)]) << "group " << k << " slot " << q;
      if (q > g.starts[size_t(k)]) {
        EXPECT_LT(g.order[size_t(q) - 1], g.order[size_t(q)]) << "rows not ascending";
      }
    }
  }
  // Every token that occurs has a group (the groups cover all rows, so none is missing or extra).
  std::vector<int32_t> distinct = tok;
  std::sort(distinct.begin(), distinct.end());
  distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
  EXPECT_EQ(g.uniq, distinct);
}

TEST(TokenGroups, GroupRowsByTokenStably) {
  Rng rng = test::fresh_rng();
  const int cases[][2] = {{1, 1}, {300, 5}, {1000, 50304}, {64, 3}};
  for (const auto& c : cases) {
    SCOPED_TRACE("rows=" + std::to_string(c[0]) + " vocab=" + std::to_string(c[1]));
    const std::vector<int32_t> tok = skewed_tokens(rng, c[0], c[1]);
    const TokenGroups g = make_token_groups(tok.data(), c[0], c[1]);
    expect_valid_groups(tok, g);
    // And exactly the sorted (token, row) order.
    std::vector<std::pair<int32_t, int32_t>> pairs;
    for (int i = 0; i < c[0]; ++i) pairs.push_back({tok[size_t(i)], i});
    std::sort(pairs.begin(), pairs.end());
    for (size_t q = 0; q < pairs.size(); ++q) EXPECT_EQ(g.order[q], pairs[q].second) << q;
  }
  const TokenGroups empty = make_token_groups(nullptr, 0, 10);
  EXPECT_TRUE(empty.order.empty());
  EXPECT_EQ(empty.starts, std::vector<int32_t>{0});
  EXPECT_EQ(empty.num_unique(), 0);
}

TEST(TokenGroups, TokenOutsideVocabNamesTheRow) {
  Rng rng = test::fresh_rng();
  const int rows = 40, vocab = 17;
  for (int32_t badv : {-1, vocab, vocab + 1000}) {
    std::vector<int32_t> tok = skewed_tokens(rng, rows, vocab);
    const int row = int(rng.below(rows));
    tok[size_t(row)] = badv;
    try {
      make_token_groups(tok.data(), rows, vocab);
      ADD_FAILURE() << "token " << badv << " at row " << row << " accepted";
    } catch (const std::invalid_argument& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("row " + std::to_string(row)), std::string::npos) << msg;
      EXPECT_NE(msg.find(std::to_string(badv)), std::string::npos) << msg;
    }
  }
  const int32_t one = 0;
  EXPECT_THROW(make_token_groups(&one, 1, 0), std::invalid_argument);
  EXPECT_THROW(make_token_groups(&one, -1, 5), std::invalid_argument);
}

}  // namespace
}  // namespace mpt
