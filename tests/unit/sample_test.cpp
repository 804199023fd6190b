// sample_token: greedy, top-k and temperature against the distribution they define, on fresh random logits.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <vector>

#include "src/train/sample.h"
#include "tests/test_util.h"

namespace mpt {
namespace {
using test::fresh_rng;

std::vector<float> random_logits(Rng& r, size_t n, float spread) {
  std::vector<float> l(n);
  for (float& x : l) x = r.uniform(-spread, spread);
  return l;
}

size_t argmax(const std::vector<float>& l) { return size_t(std::max_element(l.begin(), l.end()) - l.begin()); }

TEST(Sample, GreedyAndTopOneTakeTheArgmax) {
  Rng r = fresh_rng();
  for (int rep = 0; rep < 50; ++rep) {
    const std::vector<float> l = random_logits(r, 1 + r.next() % 300, 5.f);
    Rng draw = fresh_rng();
    EXPECT_EQ(size_t(sample_token(l, 0.0, 0, draw)), argmax(l));
    EXPECT_EQ(size_t(sample_token(l, 1.7, 1, draw)), argmax(l));
  }
  // Ties: the lowest index.
  Rng draw = fresh_rng();
  EXPECT_EQ(sample_token({1.f, 3.f, 0.f, 3.f}, 0.0, 0, draw), 1);
}

// Frequencies over many draws against softmax(l / T) restricted to the top k, each within 5 binomial
// standard deviations (plus one count). With these logits a sampler that ignored the temperature, the
// top-k cut or its renormalisation would miss by tens of deviations.
void check_distribution(double temperature, int top_k) {
  Rng r = fresh_rng();
  const size_t V = 12;
  std::vector<float> l = random_logits(r, V, 2.f);
  std::vector<size_t> order(V);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return l[a] > l[b]; });
  const size_t k = top_k > 0 ? size_t(top_k) : V;
  std::vector<double> p(V, 0.0);
  double sum = 0;
  for (size_t i = 0; i < k; ++i) sum += p[order[i]] = std::exp(double(l[order[i]]) / temperature);
  for (double& x : p) x /= sum;
  const int draws = 200000;
  std::vector<int> count(V, 0);
  Rng draw = fresh_rng();
  for (int i = 0; i < draws; ++i) ++count[size_t(sample_token(l, temperature, top_k, draw))];
  for (size_t v = 0; v < V; ++v) {
    const double expect = p[v] * draws, sd = std::sqrt(draws * p[v] * (1 - p[v]));
    EXPECT_LE(std::fabs(count[v] - expect), 5 * sd + 1) << "token " << v << " T " << temperature << " k " << top_k;
  }
}

TEST(Sample, FrequenciesFollowTheTemperedSoftmax) {
  check_distribution(1.0, 0);
  check_distribution(0.5, 0);
  check_distribution(2.5, 0);
}

TEST(Sample, TopKDrawsOnlyFromTheKLargestRenormalised) {
  check_distribution(1.0, 3);
  check_distribution(0.7, 5);
}

TEST(Sample, NonFiniteLogitsNeverWin) {
  Rng draw = fresh_rng();
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> l = {nan, 0.5f, inf, -inf, 0.25f};
  for (int i = 0; i < 2000; ++i) {
    const int32_t t = sample_token(l, 1.0, 0, draw);
    EXPECT_TRUE(t == 1 || t == 4) << t;
  }
  EXPECT_EQ(sample_token(l, 0.0, 0, draw), 1);
  EXPECT_THROW(sample_token({nan, inf}, 1.0, 0, draw), std::invalid_argument);
  EXPECT_THROW(sample_token({}, 1.0, 0, draw), std::invalid_argument);
}

}  // namespace
}  // namespace mpt
