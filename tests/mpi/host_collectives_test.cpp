// The host-value collectives of the Communicator (host_all_reduce, host_all_gather, host_broadcast) on
// 1..4 ranks: exact answers from inputs every rank can recompute, wrong elements summed over all ranks so
// that every rank reaches the same verdict.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <vector>

#include <gtest/gtest.h>

#include "comm/comm_internal.h"
#include "tests/mpi/collective_util.h"

namespace mpt {
namespace {

using test::global_sum;
using test::shared_rng;

// Element i of every rank is m * 2^e_i with |m| < 2^40 and one exponent e_i per element: every partial sum
// of up to 4 ranks is an integer below 2^42 times 2^e_i, exact in double in any order.
std::vector<double> rows_of(Rng& rng, int ranks, size_t n) {
  std::vector<int> e(n);
  for (int& x : e) x = int(rng.below(41)) - 20;
  std::vector<double> v(size_t(ranks) * n);
  for (int r = 0; r < ranks; ++r)
    for (size_t i = 0; i < n; ++i)
      v[size_t(r) * n + i] = std::ldexp(double(int64_t(rng.below(uint64_t(1) << 41)) - (int64_t(1) << 40)), e[i]);
  return v;
}

TEST(HostCollectives, AllReduceSumAndMaxAreExact) {
  auto comm = make_mpi_communicator();
  const int rank = comm->rank(), size = comm->size();
  Rng rng = shared_rng();
  long bad = 0;
  for (size_t n : {size_t(1), size_t(3), size_t(257)}) {
    const std::vector<double> rows = rows_of(rng, size, n);
    std::vector<double> sum(n, 0.0), max(n, -1e300);
    for (int r = 0; r < size; ++r)
      for (size_t i = 0; i < n; ++i) {
        sum[i] += rows[size_t(r) * n + i];
        max[i] = std::max(max[i], rows[size_t(r) * n + i]);
      }
    const double* mine = rows.data() + size_t(rank) * n;
    std::vector<double> got(n, std::nan(""));
    comm->host_all_reduce(mine, got.data(), int(n), ReduceOp::Sum);
    for (size_t i = 0; i < n; ++i) bad += got[i] != sum[i];
    std::vector<double> in_place(mine, mine + n);
    comm->host_all_reduce(in_place.data(), in_place.data(), int(n), ReduceOp::Max);
    for (size_t i = 0; i < n; ++i) bad += in_place[i] != max[i];
  }
  EXPECT_EQ(global_sum(bad), 0) << "elements differing from the exact sum or max, over all ranks";
}

TEST(HostCollectives, AllGatherPlacesEveryRanksBytes) {
  auto comm = make_mpi_communicator();
  const int rank = comm->rank(), size = comm->size();
  Rng rng = shared_rng();
  long bad = 0;
  for (size_t bytes : {size_t(1), size_t(8), size_t(1001)}) {
    std::vector<uint8_t> all(size_t(size) * bytes);
    for (uint8_t& b : all) b = uint8_t(rng.below(256));
    std::vector<uint8_t> got(all.size());
    for (size_t i = 0; i < got.size(); ++i) got[i] = uint8_t(~all[i]);  // differs from the answer everywhere
    comm->host_all_gather(all.data() + size_t(rank) * bytes, got.data(), bytes);
    for (size_t i = 0; i < got.size(); ++i) bad += got[i] != all[i];
  }
  EXPECT_EQ(global_sum(bad), 0) << "bytes differing from the ranks' inputs, over all ranks";
}

TEST(HostCollectives, BroadcastFromEveryRootAndRejectsABadRoot) {
  auto comm = make_mpi_communicator();
  const int rank = comm->rank(), size = comm->size();
  Rng rng = shared_rng();
  long bad = 0;
  for (int root = 0; root < size; ++root) {
    std::vector<uint8_t> want(777);
    for (uint8_t& b : want) b = uint8_t(rng.below(256));
    std::vector<uint8_t> buf(want.size());
    if (rank == root) buf = want;
    else for (size_t i = 0; i < buf.size(); ++i) buf[i] = uint8_t(~want[i]);
    comm->host_broadcast(buf.data(), buf.size(), root);
    for (size_t i = 0; i < buf.size(); ++i) bad += buf[i] != want[i];
  }
  EXPECT_EQ(global_sum(bad), 0) << "bytes differing from the root's, over all ranks";
  uint8_t x = 0;
  EXPECT_THROW(comm->host_broadcast(&x, 1, size), std::invalid_argument);
  EXPECT_THROW(comm->host_broadcast(&x, 1, -1), std::invalid_argument);
}

}  // namespace
}  // namespace mpt
