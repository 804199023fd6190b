// main() of mpi_tests: starts MPI, makes every rank use rank 0's test seed, runs the tests and shuts
// MPI down. Only rank 0 prints the full GoogleTest report; the other ranks print their failures with
// a rank prefix, so that a failure seen by one rank only is not lost.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <gtest/gtest.h>

#include "comm/comm_internal.h"
#include "tests/test_util.h"

namespace {

class RankFailurePrinter : public testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: failure\n%s\n", rank_, r.file_name() ? r.file_name() : "?", r.line_number(),
                 r.message());
    std::fflush(stderr);
  }

 private:
  int rank_;
};

}  // namespace

int main(int argc, char** argv) {
  const mpt::WorldInfo world = mpt::mpi_init(&argc, &argv);

  // test_seed() draws a fresh seed per process unless MPT_TEST_SEED is set; the collective tests need
  // the same random stream on every rank, so rank 0 decides and the others adopt its seed.
  unsigned long long seed = 0;
  if (world.rank == 0) seed = mpt::test::test_seed();
  MPT_MPI_CHECK(MPI_Bcast(&seed, 1, MPI_UNSIGNED_LONG_LONG, 0, MPI_COMM_WORLD));
  if (world.rank != 0) {
    setenv("MPT_TEST_SEED", std::to_string(seed).c_str(), 1);
    std::FILE* quiet = std::freopen("/dev/null", "w", stdout);  // the seed line and the report come from rank 0
    (void)quiet;
    (void)mpt::test::test_seed();
  }

  testing::InitGoogleTest(&argc, argv);
  if (world.rank != 0) {
    auto& listeners = testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter(world.rank));
  }
  const int rc = RUN_ALL_TESTS();
  mpt::mpi_finalize();
  return rc;
}
