// src/core/rng.h: skip(n) lands where n draws land (what the chunked, parallel parameter init relies on).
#include <gtest/gtest.h>

#include "src/core/rng.h"
#include "tests/test_util.h"

namespace mpt {
namespace {

TEST(Rng, SkipEqualsDrawing) {
  Rng seeds(test::test_seed());
  for (int trial = 0; trial < 20; ++trial) {
    const uint64_t seed = seeds.next();
    const uint64_t n = seeds.below(5000);
    Rng drawn(seed), skipped(seed);
    for (uint64_t i = 0; i < n; ++i) drawn.next();
    skipped.skip(n);
    for (int k = 0; k < 4; ++k) ASSERT_EQ(skipped.next(), drawn.next()) << "seed " << seed << ", skip " << n;
    // Normals take two draws each: element e of a stream of normals starts 2e draws in.
    Rng a(seed), b(seed);
    for (uint64_t i = 0; i < n; ++i) a.normal();
    b.skip(2 * n);
    EXPECT_EQ(a.normal(), b.normal());
  }
}

}  // namespace
}  // namespace mpt
