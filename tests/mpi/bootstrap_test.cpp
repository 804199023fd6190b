// Bootstrap on 1..4 ranks: the world description, the fatal-error state, all_ranks_ok, the barrier and
// the GPU-count check of select_cuda_device.
#include <chrono>
#include <cstring>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include "comm/comm_internal.h"
#include "tests/mpi/collective_util.h"

namespace mpt {
namespace {

TEST(Bootstrap, MpiInitIsIdempotentAndDescribesTheWorld) {
  const WorldInfo a = mpi_init(nullptr, nullptr);
  const WorldInfo b = mpi_init(nullptr, nullptr);
  EXPECT_EQ(a.rank, test::world_rank());
  EXPECT_EQ(a.size, test::world_size());
  EXPECT_EQ(b.rank, a.rank);
  EXPECT_EQ(b.size, a.size);
  EXPECT_EQ(b.local_rank, a.local_rank);
  EXPECT_EQ(b.local_size, a.local_size);
  EXPECT_EQ(b.host, a.host);
  EXPECT_FALSE(a.host.empty());
  EXPECT_EQ(fatal_state().rank, a.rank);
  EXPECT_TRUE(static_cast<bool>(fatal_state().abort_hook));
}

// Gathers every rank's (host, local_rank, local_size) and checks that the ranks of each host are
// numbered 0..k-1 and all report local_size k.
TEST(Bootstrap, LocalRanksNumberEachNodeFromZero) {
  const WorldInfo w = mpi_init(nullptr, nullptr);
  constexpr int kHostLen = MPI_MAX_PROCESSOR_NAME;
  std::vector<char> host(kHostLen, 0), hosts(size_t(kHostLen) * size_t(w.size));
  std::memcpy(host.data(), w.host.data(), std::min<size_t>(w.host.size(), kHostLen - 1));
  int mine[2] = {w.local_rank, w.local_size};
  std::vector<int> locals(2 * size_t(w.size));
  MPT_MPI_CHECK(MPI_Allgather(host.data(), kHostLen, MPI_CHAR, hosts.data(), kHostLen, MPI_CHAR, MPI_COMM_WORLD));
  MPT_MPI_CHECK(MPI_Allgather(mine, 2, MPI_INT, locals.data(), 2, MPI_INT, MPI_COMM_WORLD));
  std::map<std::string, std::vector<int>> by_host;
  std::map<std::string, std::set<int>> sizes;
  for (int r = 0; r < w.size; ++r) {
    const std::string h(hosts.data() + size_t(r) * kHostLen);
    by_host[h].push_back(locals[2 * size_t(r)]);
    sizes[h].insert(locals[2 * size_t(r) + 1]);
  }
  for (auto& [h, ranks] : by_host) {
    std::set<int> seen(ranks.begin(), ranks.end());
    EXPECT_EQ(seen.size(), ranks.size()) << h << ": duplicate local ranks";
    EXPECT_EQ(*seen.begin(), 0) << h;
    EXPECT_EQ(*seen.rbegin(), int(ranks.size()) - 1) << h;
    EXPECT_EQ(sizes[h], std::set<int>{int(ranks.size())}) << h;
  }
}

TEST(Bootstrap, AllRanksOkIsALogicalAnd) {
  const int rank = test::world_rank(), size = test::world_size();
  EXPECT_TRUE(all_ranks_ok(true));
  EXPECT_FALSE(all_ranks_ok(false));
  // One rank says no, in turn: every rank must hear it.
  for (int bad = 0; bad < size; ++bad) EXPECT_FALSE(all_ranks_ok(rank != bad)) << "rank " << bad << " said no";
  // Only one rank says yes.
  if (size > 1) {
    EXPECT_FALSE(all_ranks_ok(rank == 0));
  }
}

// Rank 0 arrives late; every other rank must be held in the barrier until it does. The bound is loose
// (half the delay) because the ranks leave the starting barrier at slightly different times.
TEST(Bootstrap, BarrierWaitsForTheLastRank) {
  const int rank = test::world_rank(), size = test::world_size();
  if (size == 1) GTEST_SKIP() << "needs two ranks";
  auto comm = make_mpi_communicator();
  comm->barrier();
  constexpr auto kDelay = std::chrono::milliseconds(200);
  const auto t0 = std::chrono::steady_clock::now();
  if (rank == 0) std::this_thread::sleep_for(kDelay);
  comm->barrier();
  const auto waited = std::chrono::steady_clock::now() - t0;
  long early = (rank != 0 && waited < kDelay / 2) ? 1 : 0;
  EXPECT_EQ(test::global_sum(early), 0);
}

// A node with fewer GPUs than local ranks: a world that puts more ranks on the node than it has devices
// must be refused with a message naming host, local rank and count; with exactly one visible device
// (each rank given its own through CUDA_VISIBLE_DEVICES) every local rank takes device 0.
TEST(Bootstrap, SelectCudaDeviceRefusesMoreRanksThanGpus) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    count = 0;
    cudaGetLastError();
  }
  WorldInfo w = mpi_init(nullptr, nullptr);
  w.local_size = count + 1;
  w.local_rank = count;
  if (count == 1) {
    EXPECT_EQ(select_cuda_device(w), 0);
    return;
  }
  try {
    select_cuda_device(w);
    ADD_FAILURE() << "select_cuda_device accepted local rank " << count << " with " << count << " GPUs";
  } catch (const std::runtime_error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(w.host), std::string::npos) << msg;
    EXPECT_NE(msg.find("local rank " + std::to_string(count)), std::string::npos) << msg;
    EXPECT_NE(msg.find(std::to_string(count) + " CUDA device"), std::string::npos) << msg;
  }
}

}  // namespace
}  // namespace mpt
