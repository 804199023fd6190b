// Shared test helpers. Random inputs are fresh every run: test_seed() draws a new seed unless
// MPT_TEST_SEED is set, and prints it so a failure can be replayed.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "src/core/dtype.h"
#include "src/core/rng.h"

namespace mpt::test {

inline uint64_t test_seed() {
  static uint64_t seed = [] {
    const char* env = std::getenv("MPT_TEST_SEED");
    uint64_t s = env ? std::strtoull(env, nullptr, 10) : (uint64_t(std::random_device{}()) << 32) ^ std::random_device{}();
    std::printf("[ seed     ] MPT_TEST_SEED=%llu\n", static_cast<unsigned long long>(s));
    return s;
  }();
  return seed;
}

// A new RNG per call site, all derived from the run's seed.
inline Rng fresh_rng() {
  static uint64_t counter = 0;
  return Rng(test_seed() * 0x9E3779B97F4A7C15ull + (++counter));
}

// Fills a buffer of dtype t with values uniform in [lo, hi), already representable in t.
inline std::vector<uint8_t> random_buffer(Rng& r, DType t, size_t n, float lo = -1.f, float hi = 1.f) {
  std::vector<uint8_t> b(n * dtype_size(t));
  for (size_t i = 0; i < n; ++i) store_elem(b.data(), t, i, r.uniform(lo, hi));
  return b;
}

// Tolerances for comparing a result stored in dtype t against a more precise reference:
// |got - ref| <= atol + rtol * |ref|. Half dtypes are dominated by the final rounding (2^-11, 2^-8).
struct Tol { double atol, rtol; };
inline Tol storage_tol(DType t) {
  switch (t) {
    case DType::F16: return {1e-3, 2e-3};
    case DType::BF16: return {8e-3, 1.6e-2};
    default: return {1e-5, 1e-5};
  }
}
inline bool close(double got, double ref, Tol tol) {
  if (std::isnan(ref)) return std::isnan(got);
  if (std::isinf(ref)) return got == ref;
  return std::fabs(got - ref) <= tol.atol + tol.rtol * std::fabs(ref);
}

}  // namespace mpt::test
