// A small portable RNG (SplitMix64): the same seed gives the same stream on every platform and
// standard library, which std::shuffle and std::*_distribution do not promise.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace mpt {

class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed) {}
  uint64_t next() {
    uint64_t z = (s_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, 1) with 24 random bits.
  float uniform() { return float(next() >> 40) * (1.0f / 16777216.0f); }
  float uniform(float lo, float hi) { return lo + (hi - lo) * uniform(); }
  // Standard normal (Box-Muller).
  float normal() {
    double u1 = (double(next() >> 11) + 1.0) * (1.0 / 9007199254740992.0);
    double u2 = double(next() >> 11) * (1.0 / 9007199254740992.0);
    return float(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
  }
  // Moves the stream on by n draws of next() (SplitMix64's state only counts): uniform() takes one draw,
  // normal() two, so element e of a stream of normals can be drawn from a copy skipped by 2e.
  void skip(uint64_t n) { s_ += n * 0x9e3779b97f4a7c15ull; }
  // Uniform integer in [0, n).
  uint64_t below(uint64_t n) { return n ? next() % n : 0; }

 private:
  uint64_t s_;
};

// Fisher-Yates permutation of [0, n) from seed.
inline std::vector<int64_t> permutation(int64_t n, uint64_t seed) {
  std::vector<int64_t> p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) p[size_t(i)] = i;
  Rng r(seed);
  for (int64_t i = n - 1; i > 0; --i) std::swap(p[size_t(i)], p[size_t(r.below(uint64_t(i) + 1))]);
  return p;
}

}  // namespace mpt
