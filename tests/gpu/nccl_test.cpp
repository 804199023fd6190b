// NcclCommunicator on device buffers, under mpirun -np 1 or -np 2 (one GPU per rank). Same method as
// the MPI tests: inputs whose sums are exact in the dtype, wrong elements counted over all ranks,
// bitwise identity of all_reduce across ranks. Each collective also runs with a caller stream other
// than the comm stream, where the input is produced late on that stream and the result read back
// through it alone, so a broken event handoff shows up as wrong data. Skipped without enough GPUs.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include "comm/comm_internal.h"
#include "kernels/accumulate.h"
#include "tests/mpi/collective_util.h"

namespace mpt {
namespace {

using test::exact_inputs;
using test::global_sum;
using test::mismatches;
using test::odd_counts;
using test::same_on_all_ranks;
using test::to_bytes;

class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) { MPT_COMM_CUDA_CHECK(cudaMalloc(&p_, std::max<size_t>(bytes, 1))); }
  ~DeviceBuffer() { cudaFree(p_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  uint8_t* get() const { return static_cast<uint8_t*>(p_); }
  size_t bytes() const { return bytes_; }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

// One communicator per test suite (creating it costs an NCCL init); the statics are shared by the
// suites below, each of which sets them up and tears them down again.
class NcclFixture : public ::testing::Test {
 public:
  static void SetUpTestSuite() {
    world_ = mpi_init(nullptr, nullptr);
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
      count = 0;
      cudaGetLastError();
    }
    // Every rank must take the same decision, or the ranks that go on would wait for the others.
    usable_ = all_ranks_ok(count >= world_.local_size);
    if (!usable_) return;
    select_cuda_device(world_);
    MPT_COMM_CUDA_CHECK(cudaStreamCreateWithFlags(&comm_stream_, cudaStreamNonBlocking));
    MPT_COMM_CUDA_CHECK(cudaStreamCreateWithFlags(&compute_stream_, cudaStreamNonBlocking));
    comm_ = make_nccl_communicator(world_, comm_stream_).release();
    delay_ = new DeviceBuffer(size_t(64) << 20);
    staging_ = new DeviceBuffer(size_t(4) << 20);
  }
  static void TearDownTestSuite() {
    if (!usable_) return;
    delete comm_;
    delete delay_;
    delete staging_;
    cudaStreamDestroy(comm_stream_);
    cudaStreamDestroy(compute_stream_);
    comm_ = nullptr;
    delay_ = staging_ = nullptr;
  }

 protected:
  void SetUp() override {
    if (!usable_) GTEST_SKIP() << "needs one CUDA device per rank on every node";
    rank = comm_->rank();
    size = comm_->size();
  }

  // The two ways a caller hands a stream in: the comm stream itself, or another stream.
  static std::vector<Stream> streams() { return {comm_stream_, compute_stream_}; }

  // Puts host bytes into dst so that they become visible on stream s only late: the buffer is first
  // poisoned and a chain of large device copies (about a millisecond) is queued ahead of the real
  // upload. A collective that does not wait for s reads the poison. The staging buffer is persistent
  // because freeing device memory here would synchronise the device and hide the delay; reusing it is
  // safe because every test reads its result back through s before the next upload.
  static void late_upload(uint8_t* dst, const std::vector<uint8_t>& src, Stream s) {
    ASSERT_LE(src.size(), staging_->bytes());
    MPT_COMM_CUDA_CHECK(cudaMemcpy(staging_->get(), src.data(), src.size(), cudaMemcpyHostToDevice));
    MPT_COMM_CUDA_CHECK(cudaMemsetAsync(dst, 0xff, src.size(), s));
    const size_t half = delay_->bytes() / 2;
    for (int i = 0; i < 16; ++i)
      MPT_COMM_CUDA_CHECK(cudaMemcpyAsync(delay_->get(), delay_->get() + half, half, cudaMemcpyDeviceToDevice, s));
    MPT_COMM_CUDA_CHECK(cudaMemcpyAsync(dst, staging_->get(), src.size(), cudaMemcpyDeviceToDevice, s));
  }

  // Reads back through stream s only: correct only if the collective's completion is ordered on s.
  static std::vector<uint8_t> download(const uint8_t* src, size_t bytes, Stream s) {
    std::vector<uint8_t> h(bytes);
    MPT_COMM_CUDA_CHECK(cudaMemcpyAsync(h.data(), src, bytes, cudaMemcpyDeviceToHost, s));
    MPT_COMM_CUDA_CHECK(cudaStreamSynchronize(s));
    return h;
  }

  static void poison(uint8_t* p, size_t bytes, Stream s) { MPT_COMM_CUDA_CHECK(cudaMemsetAsync(p, 0xff, bytes, s)); }

  inline static WorldInfo world_;
  inline static bool usable_ = false;
  inline static Communicator* comm_ = nullptr;
  inline static Stream comm_stream_ = nullptr, compute_stream_ = nullptr;
  inline static DeviceBuffer *delay_ = nullptr, *staging_ = nullptr;
  int rank = 0, size = 1;
};

class NcclCollectives : public NcclFixture, public ::testing::WithParamInterface<DType> {};

std::string dtype_param_name(const ::testing::TestParamInfo<DType>& p) { return dtype_name(p.param); }

struct Tally {
  long bad = 0, differ = 0, send_changed = 0;
};

TEST_P(NcclCollectives, AllReduceSumAndMaxAreExact) {
  const DType t = GetParam();
  const size_t es = dtype_size(t);
  Tally tally;
  for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Max})
    for (size_t n : odd_counts())
      for (bool in_place : {false, true})
        for (Stream s : streams()) {
          Rng rng = test::shared_rng();
          const auto rows = exact_inputs(rng, t, size, n);
          const auto want = op == ReduceOp::Sum ? test::column_sums(rows, size, n) : test::column_max(rows, size, n);
          const auto host_in = to_bytes(rows.data() + size_t(rank) * n, t, n);
          DeviceBuffer send(n * es), recv(n * es);
          late_upload(send.get(), host_in, s);
          poison(recv.get(), n * es, s);
          uint8_t* out = in_place ? send.get() : recv.get();
          comm_->all_reduce(send.get(), out, n, t, op, s);
          const auto got = download(out, n * es, s);
          tally.bad += mismatches(got.data(), t, want.data(), n);
          tally.differ += same_on_all_ranks(got.data(), got.size()) ? 0 : 1;
          if (!in_place) tally.send_changed += download(send.get(), n * es, s) != host_in;
        }
  EXPECT_EQ(global_sum(tally.bad), 0) << "wrong elements summed over ranks";
  EXPECT_EQ(global_sum(tally.differ), 0) << "results differ between ranks";
  EXPECT_EQ(global_sum(tally.send_changed), 0) << "out-of-place all_reduce modified its input";
}

// Sums that are not exact: identical bits on every rank, and within the error NCCL's per-hop rounding
// allows: each of the at most `size` additions rounds to the dtype, at most 2^-p of the partial sum,
// which is bounded by sum|v| (p = 24, 11, 8); fp16 adds its subnormal half-step 2^-25 per addition.
TEST_P(NcclCollectives, AllReduceIsBitwiseIdenticalAcrossRanks) {
  const DType t = GetParam();
  const size_t es = dtype_size(t), n = 4099;
  long far = 0, differ = 0;
  for (Stream s : streams()) {
    Rng rng = test::shared_rng();
    std::vector<float> rows(size_t(size) * n);
    for (auto& v : rows) v = round_to(t, rng.uniform(-1.f, 1.f));
    DeviceBuffer buf(n * es);
    late_upload(buf.get(), to_bytes(rows.data() + size_t(rank) * n, t, n), s);
    comm_->all_reduce(buf.get(), buf.get(), n, t, ReduceOp::Sum, s);
    const auto got = download(buf.get(), n * es, s);
    differ += same_on_all_ranks(got.data(), got.size()) ? 0 : 1;
    for (size_t i = 0; i < n; ++i) {
      double exact = 0, mag = 0;
      for (int r = 0; r < size; ++r) {
        exact += rows[size_t(r) * n + i];
        mag += std::fabs(rows[size_t(r) * n + i]);
      }
      const double bound =
          size * std::ldexp(1.0, -test::significand_bits(t)) * mag + (t == DType::F16 ? size * std::ldexp(1.0, -25) : 0);
      far += !(std::fabs(load_elem(got.data(), t, i) - exact) <= bound);
    }
  }
  EXPECT_EQ(global_sum(far), 0);
  EXPECT_EQ(global_sum(differ), 0);
}

TEST_P(NcclCollectives, ReduceScatterSumIsExact) {
  const DType t = GetParam();
  const size_t es = dtype_size(t);
  long bad = 0;
  for (size_t rc : odd_counts())
    for (bool in_place : {false, true})
      for (Stream s : streams()) {
        const size_t total = rc * size_t(size);
        Rng rng = test::shared_rng();
        const auto rows = exact_inputs(rng, t, size, total);
        const auto sums = test::column_sums(rows, size, total);
        DeviceBuffer send(total * es), recv(rc * es);
        late_upload(send.get(), to_bytes(rows.data() + size_t(rank) * total, t, total), s);
        poison(recv.get(), rc * es, s);
        uint8_t* out = in_place ? send.get() + size_t(rank) * rc * es : recv.get();
        comm_->reduce_scatter(send.get(), out, rc, t, s);
        const auto got = download(out, rc * es, s);
        bad += mismatches(got.data(), t, sums.data() + size_t(rank) * rc, rc);
      }
  EXPECT_EQ(global_sum(bad), 0);
}

TEST_P(NcclCollectives, AllGatherIsExact) {
  const DType t = GetParam();
  const size_t es = dtype_size(t);
  long bad = 0;
  for (size_t sc : odd_counts())
    for (bool in_place : {false, true})
      for (Stream s : streams()) {
        const size_t total = sc * size_t(size);
        Rng rng = test::shared_rng();
        const auto rows = test::movement_inputs(rng, t, size, sc);
        DeviceBuffer send(sc * es), recv(total * es);
        poison(recv.get(), total * es, s);
        uint8_t* in = in_place ? recv.get() + size_t(rank) * sc * es : send.get();
        late_upload(in, to_bytes(rows.data() + size_t(rank) * sc, t, sc), s);
        comm_->all_gather(in, recv.get(), sc, t, s);
        const auto got = download(recv.get(), total * es, s);
        bad += mismatches(got.data(), t, rows.data(), total);
      }
  EXPECT_EQ(global_sum(bad), 0);
}

TEST_P(NcclCollectives, BroadcastFromEveryRootIsExact) {
  const DType t = GetParam();
  const size_t es = dtype_size(t);
  long bad = 0;
  for (size_t n : odd_counts())
    for (int root = 0; root < size; ++root)
      for (Stream s : streams()) {
        Rng rng = test::shared_rng();
        const auto v = test::movement_inputs(rng, t, 1, n);
        DeviceBuffer buf(n * es);
        if (rank == root)
          late_upload(buf.get(), to_bytes(v.data(), t, n), s);
        else
          poison(buf.get(), n * es, s);
        comm_->broadcast(buf.get(), n, t, root, s);
        const auto got = download(buf.get(), n * es, s);
        bad += mismatches(got.data(), t, v.data(), n);
      }
  EXPECT_EQ(global_sum(bad), 0);
}

INSTANTIATE_TEST_SUITE_P(AllDTypes, NcclCollectives, ::testing::Values(DType::F32, DType::F16, DType::BF16),
                         dtype_param_name);

// A communicator made with NcclOptions::symmetric (zero.symmetric_memory): windows from alloc_window on two
// or more ranks, and the bucket collectives of ZeRO (reduce-scatter into the rank's part in place,
// all-gather from it in place, at an offset that is the same on every rank) on window memory, where NCCL
// runs its copy-engine all-gather, and the reduce-scatter runs as the copy-engine all-to-all plus
// sum_parts (copy_engine_reduce, the default) or, on a second communicator, on NCCL's symmetric kernels. Same exactness standard as above, with
// pieces of whole 64-element units as ZeRO's buckets have (from one unit to a count large enough for the
// copy engines); pieces that are not (1001 or 4099 elements came back wrong from NCCL here) are refused.
// Ordinary buffers keep working on the same communicator.
class NcclWindows : public NcclFixture, public ::testing::WithParamInterface<DType> {
 public:
  static void SetUpTestSuite() {
    NcclFixture::SetUpTestSuite();
    if (usable_) {
      sym_ = make_nccl_communicator(world_, comm_stream_, MPI_COMM_WORLD, NcclOptions{.symmetric = true}).release();
      sym_nccl_rs_ = make_nccl_communicator(world_, comm_stream_, MPI_COMM_WORLD,
                                            NcclOptions{.symmetric = true, .copy_engine_reduce = false})
                         .release();
    }
  }
  static void TearDownTestSuite() {
    delete sym_nccl_rs_;
    delete sym_;
    sym_ = sym_nccl_rs_ = nullptr;
    NcclFixture::TearDownTestSuite();
  }

 protected:
  inline static Communicator* sym_ = nullptr;
  inline static Communicator* sym_nccl_rs_ = nullptr;  // windows, but NCCL's reduce-scatter kernels
};

TEST_F(NcclWindows, OfferedWithTwoOrMoreRanksOnly) {
  void* p = sym_->alloc_window(size_t(3) << 20);
  EXPECT_EQ(p != nullptr, size > 1);
  if (p) {
    MPT_COMM_CUDA_CHECK(cudaMemset(p, 0, size_t(3) << 20));  // the whole requested size is usable
    sym_->free_window(p);
  }
  EXPECT_EQ(comm_->alloc_window(4096), nullptr) << "a communicator made without `symmetric` offers no windows";
}

TEST_P(NcclWindows, BucketCollectivesOnWindowsAreExact) {
  for (Communicator* c : {sym_, sym_nccl_rs_}) {
    SCOPED_TRACE(c == sym_ ? "copy-engine reduce-scatter" : "NCCL's reduce-scatter");
    const DType t = GetParam();
    const size_t es = dtype_size(t);
    const size_t most = 400000, off = 4096 + 64;  // elements; the offset is the same on every rank
    const size_t bytes = (off + most * size_t(size)) * es;
    void* w = c->alloc_window(bytes);
    DeviceBuffer plain(size > 1 ? 0 : bytes);  // one rank: no windows, the same calls on ordinary memory
    uint8_t* base = (w ? static_cast<uint8_t*>(w) : plain.get()) + off * es;
    long bad = 0;
    std::string where;  // which collective, count and stream went wrong (this rank)
    const std::vector<size_t> counts = {64, 448, 4160, most};  // whole 64-element units (ZeRO's kAlign)
    for (size_t n : counts)
      for (Stream s : streams()) {
        const std::string at = " n=" + std::to_string(n) + (s == comm_stream_ ? " comm-stream" : " other-stream");
        const size_t total = n * size_t(size);
        Rng rng = test::shared_rng();
        const auto rows = exact_inputs(rng, t, size, total);
        const auto sums = test::column_sums(rows, size, total);
        late_upload(base, to_bytes(rows.data() + size_t(rank) * total, t, total), s);
        uint8_t* mine = base + size_t(rank) * n * es;
        c->reduce_scatter(base, mine, n, t, s);
        const long rs_bad = mismatches(download(mine, n * es, s).data(), t, sums.data() + size_t(rank) * n, n);
        if (rs_bad) where += " reduce_scatter" + at + ": " + std::to_string(rs_bad) + ";";
        bad += rs_bad;
        // The reduced parts, gathered back in place: every rank ends with all the sums.
        poison(base, size_t(rank) * n * es, s);
        poison(mine + n * es, (total - size_t(rank + 1) * n) * es, s);
        c->all_gather(mine, base, n, t, s);
        const long ag_bad = mismatches(download(base, total * es, s).data(), t, sums.data(), total);
        if (ag_bad) where += " all_gather" + at + ": " + std::to_string(ag_bad) + ";";
        bad += ag_bad;
      }
    // An ordinary buffer on the same communicator.
    DeviceBuffer buf(size_t(4099) * es);
    Rng rng = test::shared_rng();
    const auto rows = exact_inputs(rng, t, size, 4099);
    const auto sums = test::column_sums(rows, size, 4099);
    late_upload(buf.get(), to_bytes(rows.data() + size_t(rank) * 4099, t, 4099), compute_stream_);
    c->all_reduce(buf.get(), buf.get(), 4099, t, ReduceOp::Sum, compute_stream_);
    bad += mismatches(download(buf.get(), 4099 * es, compute_stream_).data(), t, sums.data(), 4099);
    if (w) c->free_window(w);
    EXPECT_EQ(global_sum(bad), 0) << "rank " << rank << ":" << where;
  }
}

// NcclOptions::copy_engine_reduce (on by default with symmetric): a reduce-scatter from window memory is an
// all-to-all into a staging window plus kernels/accumulate.h sum_parts, i.e. the FP32 sum in rank order
// rounded once. With values that are not exact in any order (fresh normals, so partial sums round), the
// result must be the CPU twin's over every rank's block bit for bit, and the MPI communicator's
// reduce-scatter of the same host values (the CPU ranks' result) too. With two ranks NCCL's own kernels
// give the same bits (one addition); with three or more a per-hop rounding would not.
TEST_P(NcclWindows, CopyEngineReduceScatterIsTheRankOrderFp32Sum) {
  if (size < 2) GTEST_SKIP() << "no windows on one rank";
  const DType t = GetParam();
  const size_t es = dtype_size(t);
  const size_t n = 64 * (1 + size_t(test::shared_rng().below(3000)));  // per rank, whole 64-element units
  const size_t total = n * size_t(size);
  auto* w = static_cast<uint8_t*>(sym_->alloc_window(total * es));
  ASSERT_NE(w, nullptr);
  Rng rng = test::shared_rng();
  std::vector<float> rows(size_t(size) * total);
  for (float& x : rows) x = round_to(t, rng.normal() * std::ldexp(1.f, int(rng.below(8)) - 4));
  const std::vector<uint8_t> mine_in = to_bytes(rows.data() + size_t(rank) * total, t, total);
  const std::unique_ptr<Communicator> mpi = make_mpi_communicator(MPI_COMM_WORLD);
  long bad = 0;
  for (Stream s : streams()) {
    late_upload(w, mine_in, s);
    uint8_t* mine = w + size_t(rank) * n * es;
    sym_->reduce_scatter(w, mine, n, t, s);
    const std::vector<uint8_t> got = download(mine, n * es, s);
    // CPU twin: block j is rank j's slice for this rank.
    std::vector<float> parts(total);
    for (int j = 0; j < size; ++j)
      for (size_t i = 0; i < n; ++i) parts[size_t(j) * n + i] = rows[size_t(j) * total + size_t(rank) * n + i];
    const std::vector<uint8_t> pb = to_bytes(parts.data(), t, total);
    std::vector<uint8_t> want(n * es);
    cpu::sum_parts(pb.data(), want.data(), t, n, size);
    bad += long(std::memcmp(got.data(), want.data(), n * es) != 0);
    // The MPI communicator on the same host values.
    std::vector<uint8_t> host = mine_in, host_out(n * es);
    mpi->reduce_scatter(host.data(), host_out.data(), n, t, nullptr);
    bad += long(std::memcmp(got.data(), host_out.data(), n * es) != 0);
  }
  sym_->free_window(w);
  EXPECT_EQ(global_sum(bad), 0) << "rank " << rank << ", " << n << " elements per rank";
}

// A piece that is not a whole number of 128-byte units, or an offset in the window that is not 128-byte
// aligned, is refused on every rank before anything is queued (so no rank is left in a collective).
TEST_F(NcclWindows, RefusesUnalignedPiecesOnWindowMemory) {
  if (size < 2) GTEST_SKIP() << "no windows on one rank";
  const size_t bytes = size_t(1) << 20;
  auto* w = static_cast<uint8_t*>(sym_->alloc_window(bytes));
  ASSERT_NE(w, nullptr);
  const size_t n = 1001;  // bf16: 2002-byte pieces
  EXPECT_THROW(sym_->reduce_scatter(w, w + size_t(rank) * n * 2, n, DType::BF16, comm_stream_), std::invalid_argument);
  EXPECT_THROW(sym_->all_gather(w + size_t(rank) * n * 2, w, n, DType::BF16, comm_stream_), std::invalid_argument);
  EXPECT_THROW(sym_->all_gather(w + 64 + size_t(rank) * 1024, w + 64, 512, DType::BF16, comm_stream_),
               std::invalid_argument);  // aligned pieces at a 64-byte offset
  EXPECT_THROW(sym_->all_reduce(w, w, 2 * n * size_t(size), DType::BF16, ReduceOp::Sum, comm_stream_),
               std::invalid_argument);
  // The same calls on ordinary memory are fine (and exact: the NcclCollectives tests).
  DeviceBuffer plain(bytes);
  EXPECT_NO_THROW(sym_->all_gather(plain.get() + size_t(rank) * n * 2, plain.get(), n, DType::BF16, comm_stream_));
  MPT_COMM_CUDA_CHECK(cudaStreamSynchronize(comm_stream_));
  sym_->free_window(w);
}

INSTANTIATE_TEST_SUITE_P(AllDTypes, NcclWindows, ::testing::Values(DType::F32, DType::F16, DType::BF16),
                         dtype_param_name);

class NcclCommunicatorBasics : public NcclFixture {};

TEST_F(NcclCommunicatorBasics, DescribesTheWorldAndKeepsNvlsOff) {
  EXPECT_EQ(comm_->rank(), world_.rank);
  EXPECT_EQ(comm_->size(), world_.size);
  EXPECT_EQ(comm_->device(), Device::CUDA);
  EXPECT_STREQ(comm_->name(), "nccl");
  const char* nvls = std::getenv("NCCL_NVLS_ENABLE");
  ASSERT_NE(nvls, nullptr);
  EXPECT_STREQ(nvls, "0");
  int dev = -1;
  MPT_COMM_CUDA_CHECK(cudaGetDevice(&dev));
  EXPECT_EQ(dev, world_.local_rank);
}

// barrier() must drain the comm stream: after it returns, the collective queued before it is done.
TEST_F(NcclCommunicatorBasics, BarrierWaitsForQueuedCollectives) {
  const size_t n = size_t(4) << 20;
  DeviceBuffer buf(n * 4);
  MPT_COMM_CUDA_CHECK(cudaMemsetAsync(buf.get(), 0x3f, n * 4, comm_stream_));
  comm_->all_reduce(buf.get(), buf.get(), n, DType::F32, ReduceOp::Sum, comm_stream_);
  comm_->barrier();
  EXPECT_EQ(cudaStreamQuery(comm_stream_), cudaSuccess);
}

}  // namespace
}  // namespace mpt
