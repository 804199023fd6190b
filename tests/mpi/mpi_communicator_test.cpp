// MpiCommunicator on 1..4 ranks: every collective, every dtype, counts that do not split evenly,
// in-place and out-of-place, exact answers. Wrong elements are counted on each rank and summed over
// all ranks, so every rank reaches the same verdict and no rank leaves a test early while its peers
// wait in a collective.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "comm/comm_internal.h"
#include "tests/mpi/collective_util.h"

namespace mpt {
namespace {

using test::exact_inputs;
using test::global_sum;
using test::mismatches;
using test::odd_counts;
using test::poison_bytes;
using test::same_on_all_ranks;
using test::to_bytes;

class MpiCollectives : public ::testing::TestWithParam<DType> {
 protected:
  void SetUp() override {
    comm = make_mpi_communicator();
    rank = comm->rank();
    size = comm->size();
  }
  std::unique_ptr<Communicator> comm;
  int rank = 0, size = 1;
};

std::string dtype_param_name(const ::testing::TestParamInfo<DType>& p) { return dtype_name(p.param); }

// Checks that the expectation itself is representable: a generator bug must not pass as a comm bug.
long unrepresentable(DType t, const std::vector<float>& want) {
  long bad = 0;
  for (float w : want) bad += round_to(t, w) != w;
  return bad;
}

void run_all_reduce(Communicator& comm, DType t, ReduceOp op, bool in_place, size_t n,
                    const std::vector<float>& rows, const std::vector<float>& want, long* bad, long* differ,
                    long* send_changed) {
  const int rank = comm.rank();
  auto send = to_bytes(rows.data() + size_t(rank) * n, t, n);
  const auto send_copy = send;
  auto recv = poison_bytes(t, n);
  void* out = in_place ? send.data() : recv.data();
  comm.all_reduce(send.data(), out, n, t, op, nullptr);
  *bad += mismatches(out, t, want.data(), n);
  *differ += same_on_all_ranks(out, n * dtype_size(t)) ? 0 : 1;
  if (!in_place) *send_changed += send != send_copy;
}

TEST_P(MpiCollectives, AllReduceSumIsExact) {
  const DType t = GetParam();
  long bad = 0, differ = 0, send_changed = 0, gen = 0;
  for (size_t n : odd_counts())
    for (bool in_place : {false, true}) {
      Rng rng = test::shared_rng();
      const auto rows = exact_inputs(rng, t, size, n);
      const auto want = test::column_sums(rows, size, n);
      gen += unrepresentable(t, want);
      run_all_reduce(*comm, t, ReduceOp::Sum, in_place, n, rows, want, &bad, &differ, &send_changed);
    }
  EXPECT_EQ(gen, 0);
  EXPECT_EQ(global_sum(bad), 0) << "wrong elements summed over ranks";
  EXPECT_EQ(global_sum(differ), 0) << "results differ between ranks";
  EXPECT_EQ(global_sum(send_changed), 0) << "out-of-place all_reduce modified its input";
}

TEST_P(MpiCollectives, AllReduceMaxIsExact) {
  const DType t = GetParam();
  long bad = 0, differ = 0, send_changed = 0;
  for (size_t n : odd_counts())
    for (bool in_place : {false, true}) {
      Rng rng = test::shared_rng();
      const auto rows = exact_inputs(rng, t, size, n);
      const auto want = test::column_max(rows, size, n);
      run_all_reduce(*comm, t, ReduceOp::Max, in_place, n, rows, want, &bad, &differ, &send_changed);
    }
  EXPECT_EQ(global_sum(bad), 0);
  EXPECT_EQ(global_sum(differ), 0);
  EXPECT_EQ(global_sum(send_changed), 0);
}

// Inputs whose sums are not exact: the answer must still be the same bits on every rank, and close to
// the float64 sum. The bound: FP32 accumulation of `size` terms loses at most size * 2^-24 * sum|v|,
// and the final rounding to the dtype at most half an ulp, 2^-p * |sum|; fp16 adds half its subnormal
// step (2^-25) near zero.
TEST_P(MpiCollectives, AllReduceIsBitwiseIdenticalAcrossRanks) {
  const DType t = GetParam();
  const size_t n = 4099;
  long far = 0, differ = 0;
  for (bool in_place : {false, true}) {
    Rng rng = test::shared_rng();
    std::vector<float> rows(size_t(size) * n);
    for (auto& v : rows) v = round_to(t, rng.uniform(-1.f, 1.f));
    auto send = to_bytes(rows.data() + size_t(rank) * n, t, n);
    auto recv = poison_bytes(t, n);
    void* out = in_place ? send.data() : recv.data();
    comm->all_reduce(send.data(), out, n, t, ReduceOp::Sum, nullptr);
    differ += same_on_all_ranks(out, n * dtype_size(t)) ? 0 : 1;
    const double half_ulp_rel = std::ldexp(1.0, -test::significand_bits(t));
    for (size_t i = 0; i < n; ++i) {
      double exact = 0, mag = 0;
      for (int r = 0; r < size; ++r) {
        exact += rows[size_t(r) * n + i];
        mag += std::fabs(rows[size_t(r) * n + i]);
      }
      const double bound = size * std::ldexp(1.0, -24) * mag + (t == DType::F32 ? 0 : half_ulp_rel * std::fabs(exact)) +
                           (t == DType::F16 ? std::ldexp(1.0, -25) : 0);
      const double got = load_elem(out, t, i);
      far += !(std::fabs(got - exact) <= bound);
    }
  }
  EXPECT_EQ(global_sum(far), 0);
  EXPECT_EQ(global_sum(differ), 0);
}

TEST_P(MpiCollectives, ReduceScatterSumIsExact) {
  const DType t = GetParam();
  const size_t es = dtype_size(t);
  long bad = 0, gen = 0, send_changed = 0;
  for (size_t rc : odd_counts())
    for (bool in_place : {false, true}) {
      const size_t total = rc * size_t(size);
      Rng rng = test::shared_rng();
      const auto rows = exact_inputs(rng, t, size, total);
      const auto sums = test::column_sums(rows, size, total);
      const std::vector<float> want(sums.begin() + long(size_t(rank) * rc), sums.begin() + long(size_t(rank + 1) * rc));
      gen += unrepresentable(t, want);
      auto send = to_bytes(rows.data() + size_t(rank) * total, t, total);
      const auto send_copy = send;
      auto recv = poison_bytes(t, rc);
      void* out = in_place ? send.data() + size_t(rank) * rc * es : recv.data();
      comm->reduce_scatter(send.data(), out, rc, t, nullptr);
      bad += mismatches(out, t, want.data(), rc);
      if (!in_place) send_changed += send != send_copy;
    }
  EXPECT_EQ(gen, 0);
  EXPECT_EQ(global_sum(bad), 0);
  EXPECT_EQ(global_sum(send_changed), 0);
}

TEST_P(MpiCollectives, AllGatherIsExact) {
  const DType t = GetParam();
  const size_t es = dtype_size(t);
  long bad = 0;
  for (size_t sc : odd_counts())
    for (bool in_place : {false, true}) {
      const size_t total = sc * size_t(size);
      Rng rng = test::shared_rng();
      const auto rows = test::movement_inputs(rng, t, size, sc);  // row r is rank r's block
      auto recv = poison_bytes(t, total);
      std::vector<uint8_t> own = to_bytes(rows.data() + size_t(rank) * sc, t, sc);
      const void* send = own.data();
      if (in_place) {
        std::memcpy(recv.data() + size_t(rank) * sc * es, own.data(), sc * es);
        send = recv.data() + size_t(rank) * sc * es;
      }
      comm->all_gather(send, recv.data(), sc, t, nullptr);
      bad += mismatches(recv.data(), t, rows.data(), total);
    }
  EXPECT_EQ(global_sum(bad), 0);
}

TEST_P(MpiCollectives, BroadcastFromEveryRootIsExact) {
  const DType t = GetParam();
  long bad = 0;
  for (size_t n : odd_counts())
    for (int root = 0; root < size; ++root) {
      Rng rng = test::shared_rng();
      const auto v = test::movement_inputs(rng, t, 1, n);
      auto buf = rank == root ? to_bytes(v.data(), t, n) : poison_bytes(t, n);
      comm->broadcast(buf.data(), n, t, root, nullptr);
      bad += mismatches(buf.data(), t, v.data(), n);
    }
  EXPECT_EQ(global_sum(bad), 0);
}

// Large buffers go through in pieces (MPI counts are int). A piece limit of 1000 makes 4099 elements
// take five pieces, the last one uneven, on every collective.
TEST_P(MpiCollectives, PiecewiseCollectivesAreExact) {
  const DType t = GetParam();
  const size_t es = dtype_size(t);
  auto small = detail::new_mpi_communicator(1000);
  const size_t n = 4099;
  long bad = 0, differ = 0;
  for (bool in_place : {false, true}) {
    {
      Rng rng = test::shared_rng();
      const auto rows = exact_inputs(rng, t, size, n);
      const auto want = test::column_sums(rows, size, n);
      long unused = 0;
      run_all_reduce(*small, t, ReduceOp::Sum, in_place, n, rows, want, &bad, &differ, &unused);
    }
    {
      const size_t total = n * size_t(size);
      Rng rng = test::shared_rng();
      const auto rows = exact_inputs(rng, t, size, total);
      const auto sums = test::column_sums(rows, size, total);
      auto send = to_bytes(rows.data() + size_t(rank) * total, t, total);
      auto recv = poison_bytes(t, n);
      void* out = in_place ? send.data() + size_t(rank) * n * es : recv.data();
      small->reduce_scatter(send.data(), out, n, t, nullptr);
      bad += mismatches(out, t, sums.data() + size_t(rank) * n, n);
    }
    {
      Rng rng = test::shared_rng();
      const auto rows = test::movement_inputs(rng, t, size, n);
      auto recv = poison_bytes(t, n * size_t(size));
      auto own = to_bytes(rows.data() + size_t(rank) * n, t, n);
      const void* send = own.data();
      if (in_place) {
        std::memcpy(recv.data() + size_t(rank) * n * es, own.data(), n * es);
        send = recv.data() + size_t(rank) * n * es;
      }
      small->all_gather(send, recv.data(), n, t, nullptr);
      bad += mismatches(recv.data(), t, rows.data(), n * size_t(size));
    }
  }
  {
    Rng rng = test::shared_rng();
    const auto v = test::movement_inputs(rng, t, 1, n);
    const int root = size - 1;
    auto buf = rank == root ? to_bytes(v.data(), t, n) : poison_bytes(t, n);
    small->broadcast(buf.data(), n, t, root, nullptr);
    bad += mismatches(buf.data(), t, v.data(), n);
  }
  EXPECT_EQ(global_sum(bad), 0);
  EXPECT_EQ(global_sum(differ), 0);
}

TEST_P(MpiCollectives, ZeroCountsLeaveBuffersAlone) {
  const DType t = GetParam();
  auto buf = poison_bytes(t, 4);
  buf[0] = 0x12;
  const auto copy = buf;
  comm->all_reduce(buf.data(), buf.data(), 0, t, ReduceOp::Sum, nullptr);
  comm->reduce_scatter(buf.data(), buf.data(), 0, t, nullptr);
  comm->all_gather(buf.data(), buf.data(), 0, t, nullptr);
  comm->broadcast(buf.data(), 0, t, 0, nullptr);
  EXPECT_EQ(global_sum(buf != copy), 0);
}

INSTANTIATE_TEST_SUITE_P(AllDTypes, MpiCollectives, ::testing::Values(DType::F32, DType::F16, DType::BF16),
                         dtype_param_name);

class MpiHalfCollectives : public MpiCollectives {};

// Half sums accumulate in FP32 and round once. Inputs with |v| in [1/4, 1) have their last bit at
// 2^-12 (fp16) or 2^-9 (bf16) and sum to below 4, so the FP32 sum is exact in any order and the answer
// is round(exact sum). Rounding after every addition in half precision disagrees with this on a large
// fraction of elements from 3 ranks on (with 1 or 2 ranks both give the same single rounding).
TEST_P(MpiHalfCollectives, AllReduceRoundsHalfSumsOnce) {
  const DType t = GetParam();
  const size_t n = 4099;
  Rng rng = test::shared_rng();
  std::vector<float> rows(size_t(size) * n);
  for (auto& v : rows) {
    const float mag = round_to(t, rng.uniform(0.25f, 1.f));
    v = (rng.next() & 1) ? -mag : mag;
  }
  std::vector<float> want = test::column_sums(rows, size, n);
  for (auto& w : want) w = round_to(t, w);
  long bad = 0, differ = 0, send_changed = 0;
  run_all_reduce(*comm, t, ReduceOp::Sum, false, n, rows, want, &bad, &differ, &send_changed);
  EXPECT_EQ(global_sum(bad), 0);
  EXPECT_EQ(global_sum(differ), 0);
}

INSTANTIATE_TEST_SUITE_P(HalfDTypes, MpiHalfCollectives, ::testing::Values(DType::F16, DType::BF16), dtype_param_name);

TEST(MpiCommunicator, DescribesTheWorld) {
  auto comm = make_mpi_communicator();
  EXPECT_EQ(comm->rank(), test::world_rank());
  EXPECT_EQ(comm->size(), test::world_size());
  EXPECT_EQ(comm->device(), Device::CPU);
  EXPECT_STREQ(comm->name(), "mpi");
}

TEST(MpiCommunicator, RejectsABadRootOnEveryRank) {
  auto comm = make_mpi_communicator();
  float x = 1.f;
  EXPECT_THROW(comm->broadcast(&x, 1, DType::F32, comm->size(), nullptr), std::invalid_argument);
  EXPECT_THROW(comm->broadcast(&x, 1, DType::F32, -1, nullptr), std::invalid_argument);
}

}  // namespace
}  // namespace mpt
