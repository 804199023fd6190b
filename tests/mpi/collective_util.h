// Helpers shared by the collective tests (MPI on host buffers, NCCL on device buffers).
//
// Every rank generates the inputs of ALL ranks from one random stream seeded identically everywhere,
// uses its own row as input and computes the expected answer from all rows. Values are m * 2^e with a
// per-element exponent e and per-rank integers m small enough that every partial sum, in any order,
// is exact in the tested dtype: a wrong answer is then a bug, not rounding.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <ostream>
#include <vector>

// The C bindings are all comm/ uses; the deprecated C++ bindings only add warnings.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include "src/core/dtype.h"
#include "src/core/rng.h"
#include "tests/test_util.h"

namespace mpt {
// Lets GoogleTest print a DType parameter by name instead of as raw bytes.
inline void PrintTo(DType t, std::ostream* os) { *os << dtype_name(t); }
}  // namespace mpt

namespace mpt::test {

inline int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
inline int world_size() {
  int s = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &s);
  return s;
}

// A random stream that is identical on every rank and fresh every run: rank 0 draws the seed from
// fresh_rng() and broadcasts it, so call-order differences between ranks cannot desynchronise it.
inline Rng shared_rng() {
  unsigned long long seed = 0;
  if (world_rank() == 0) seed = fresh_rng().next();
  MPI_Bcast(&seed, 1, MPI_UNSIGNED_LONG_LONG, 0, MPI_COMM_WORLD);
  return Rng(seed);
}

// Counts that no rank count from 2 to 4 divides evenly (except trivially 1), so uneven splits run.
inline const std::vector<size_t>& odd_counts() {
  static const std::vector<size_t> c{1, 7, 1001, 4099};
  return c;
}

inline int significand_bits(DType t) { return t == DType::F32 ? 24 : (t == DType::F16 ? 11 : 8); }

// ranks x n values, row r = rank r's input. |m| <= (2^p - 1) / ranks keeps every partial sum of up to
// `ranks` terms an integer below 2^p times 2^e, hence exact. Exponents stay inside the dtype's range
// (fp16: the smallest step 2^-20 is above the subnormal step 2^-24 and the largest sum is below 65504).
inline std::vector<float> exact_inputs(Rng& rng, DType t, int ranks, size_t n) {
  const int64_t mmax = ((int64_t(1) << significand_bits(t)) - 1) / std::max(ranks, 1);
  const int emin = t == DType::F16 ? -20 : -40;
  const int emax = t == DType::F16 ? 15 - significand_bits(t) : 40;
  std::vector<float> v(size_t(ranks) * n);
  std::vector<int> e(n);
  for (size_t i = 0; i < n; ++i) e[i] = emin + int(rng.below(uint64_t(emax - emin + 1)));
  for (int r = 0; r < ranks; ++r)
    for (size_t i = 0; i < n; ++i) {
      const int64_t m = int64_t(rng.below(uint64_t(2 * mmax + 1))) - mmax;
      v[size_t(r) * n + i] = std::ldexp(float(m), e[i]);
    }
  return v;
}

// Values of any magnitude the dtype holds exactly (for the data-movement collectives).
inline std::vector<float> movement_inputs(Rng& rng, DType t, int ranks, size_t n) {
  std::vector<float> v(size_t(ranks) * n);
  for (auto& x : v) x = round_to(t, std::ldexp(rng.uniform(-1.f, 1.f), int(rng.below(16)) - 8));
  return v;
}

inline std::vector<uint8_t> to_bytes(const float* v, DType t, size_t n) {
  std::vector<uint8_t> b(n * dtype_size(t));
  from_float_n(v, b.data(), t, n);
  return b;
}

// A buffer of NaNs (all bits set is a NaN in all three dtypes): an element a collective forgets to
// write can never compare equal to a finite expectation.
inline std::vector<uint8_t> poison_bytes(DType t, size_t n) { return std::vector<uint8_t>(n * dtype_size(t), 0xff); }

// Number of elements of got (dtype t) that differ from want (already representable in t).
inline long mismatches(const void* got, DType t, const float* want, size_t n) {
  long bad = 0;
  for (size_t i = 0; i < n; ++i)
    if (!(load_elem(got, t, i) == want[i])) ++bad;
  return bad;
}

inline long global_sum(long x) {
  long total = 0;
  MPI_Allreduce(&x, &total, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
  return total;
}

inline uint64_t fnv1a(const void* p, size_t bytes) {
  uint64_t h = 1469598103934665603ull;
  const auto* b = static_cast<const uint8_t*>(p);
  for (size_t i = 0; i < bytes; ++i) h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

// True on every rank iff all ranks hold the same bytes (compared through a 64-bit hash).
inline bool same_on_all_ranks(const void* p, size_t bytes) {
  const unsigned long long h = fnv1a(p, bytes);
  unsigned long long lo = 0, hi = 0;
  MPI_Allreduce(&h, &lo, 1, MPI_UNSIGNED_LONG_LONG, MPI_MIN, MPI_COMM_WORLD);
  MPI_Allreduce(&h, &hi, 1, MPI_UNSIGNED_LONG_LONG, MPI_MAX, MPI_COMM_WORLD);
  return lo == hi;
}

inline std::vector<float> column_sums(const std::vector<float>& rows, int ranks, size_t n) {
  std::vector<float> s(n);
  for (size_t i = 0; i < n; ++i) {
    double acc = 0;
    for (int r = 0; r < ranks; ++r) acc += rows[size_t(r) * n + i];
    s[i] = float(acc);
  }
  return s;
}

inline std::vector<float> column_max(const std::vector<float>& rows, int ranks, size_t n) {
  std::vector<float> s(n);
  for (size_t i = 0; i < n; ++i) {
    float m = rows[i];
    for (int r = 1; r < ranks; ++r) m = std::max(m, rows[size_t(r) * n + i]);
    s[i] = m;
  }
  return s;
}

}  // namespace mpt::test
