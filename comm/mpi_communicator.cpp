// Host-buffer communicator over an MPI communicator (MPI_COMM_WORLD unless a caller passes another). Every call completes before it returns; the stream
// argument is ignored.
//
// Reductions always run on FP32 copies of the data (MPI has no half types, and the design asks for
// FP32 accumulation with one final rounding), so fp16/bf16 results equal round(sum in FP32) whatever
// the reduction tree MPI picks, as long as that FP32 sum is itself exact. all_reduce is a
// reduce-scatter followed by an all-gather: each element is reduced on exactly one path and every rank
// receives that one value, so the results are bitwise identical across ranks even when the FP32 sum is
// not exact. (MPI_Allreduce gives no such promise: Open MPI may reduce the same element on every rank
// in a different order.) The reduce-scatter itself is an all-to-all that brings every rank's slice to
// its owner, which then adds the slices in rank order 0, 1, ..., W-1. MPI's own reduce-scatter picks
// its algorithm (and so its summation order) by message size and rank count, so all_reduce and
// reduce_scatter of the same data could differ in the last bit at 3 ranks; with the fixed order they
// cannot, which is what makes ZeRO stages 0, 1 and 2 bitwise equal at any world size.
//
// MPI counts and displacements are int, so large buffers go through in pieces of at most max_piece
// elements; a piece is a contiguous slice of every rank's block, which keeps each piece an ordinary
// collective on its own.
#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "comm/comm_internal.h"

namespace mpt {
namespace {

MPI_Datatype elem_type(DType t) {
  // Non-reducing collectives move the 16-bit patterns untouched.
  return t == DType::F32 ? MPI_FLOAT : MPI_UINT16_T;
}

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(size_t max_piece, MPI_Comm comm) : comm_(comm) {
    MPT_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
    MPT_MPI_CHECK(MPI_Comm_size(comm_, &size_));
    piece_ = std::clamp<size_t>(max_piece, 1, size_t(INT_MAX));
    // reduce_scatter and all_gather hand MPI size * piece elements in one buffer; keep that an int too.
    block_piece_ = std::clamp<size_t>(size_t(INT_MAX) / size_t(size_), 1, piece_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  Device device() const override { return Device::CPU; }
  const char* name() const override { return "mpi"; }

  void all_reduce(const void* send, void* recv, size_t count, DType t, ReduceOp op, Stream) override {
    if (count == 0) return;
    check_ptr("all_reduce", send);
    check_ptr("all_reduce", recv);
    const size_t es = dtype_size(t);
    const MPI_Op mop = op == ReduceOp::Max ? MPI_MAX : MPI_SUM;
    std::vector<int> counts(static_cast<size_t>(size_)), displs(static_cast<size_t>(size_));
    for (size_t off = 0; off < count; off += piece_) {
      const size_t n = std::min(piece_, count - off);
      // Uneven split: the first n % size ranks own one element more.
      const size_t base = n / size_t(size_), extra = n % size_t(size_);
      int d = 0;
      for (int r = 0; r < size_; ++r) {
        counts[size_t(r)] = int(base + (size_t(r) < extra ? 1 : 0));
        displs[size_t(r)] = d;
        d += counts[size_t(r)];
      }
      const size_t mine = size_t(counts[size_t(rank_)]);
      const size_t my_off = off + size_t(displs[size_t(rank_)]);
      // The input is copied to FP32 before anything is written to recv, which makes send == recv safe.
      const float* in = nullptr;
      if (t == DType::F32) {
        in = static_cast<const float*>(send) + off;
      } else {
        f_in_.resize(n);
        to_float_n(static_cast<const uint8_t*>(send) + off * es, t, f_in_.data(), n);
        in = f_in_.data();
      }
      f_mine_.resize(std::max<size_t>(mine, 1));
      // Every rank sends slice r of the piece to rank r and receives its own slice from every rank.
      std::vector<int> rcounts(static_cast<size_t>(size_), static_cast<int>(mine));
      std::vector<int> rdispls(static_cast<size_t>(size_));
      for (int r = 0; r < size_; ++r) rdispls[size_t(r)] = r * int(mine);
      f_all_.resize(std::max<size_t>(mine * size_t(size_), 1));
      MPT_MPI_CHECK(MPI_Alltoallv(in, counts.data(), displs.data(), MPI_FLOAT, f_all_.data(), rcounts.data(),
                                  rdispls.data(), MPI_FLOAT, comm_));
      reduce_in_rank_order(mine, mop == MPI_MAX);
      // The one rounding of a half-precision sum happens here, on the owning rank only.
      from_float_n(f_mine_.data(), static_cast<uint8_t*>(recv) + my_off * es, t, mine);
      MPT_MPI_CHECK(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, static_cast<uint8_t*>(recv) + off * es,
                                   counts.data(), displs.data(), elem_type(t), comm_));
    }
  }

  void reduce_scatter(const void* send, void* recv, size_t recv_count, DType t, Stream) override {
    if (recv_count == 0) return;
    check_ptr("reduce_scatter", send);
    check_ptr("reduce_scatter", recv);
    const size_t es = dtype_size(t);
    const auto* src = static_cast<const uint8_t*>(send);
    for (size_t off = 0; off < recv_count; off += block_piece_) {
      const size_t n = std::min(block_piece_, recv_count - off);
      // Gather slice [off, off + n) of every rank's block; with recv == send + rank * recv_count this
      // reads this rank's slice before the same slice of recv is overwritten below, and later slices
      // are still untouched.
      f_in_.resize(n * size_t(size_));
      for (int r = 0; r < size_; ++r)
        to_float_n(src + (size_t(r) * recv_count + off) * es, t, f_in_.data() + size_t(r) * n, n);
      f_mine_.resize(n);
      f_all_.resize(n * size_t(size_));
      MPT_MPI_CHECK(MPI_Alltoall(f_in_.data(), int(n), MPI_FLOAT, f_all_.data(), int(n), MPI_FLOAT, comm_));
      reduce_in_rank_order(n, false);
      from_float_n(f_mine_.data(), static_cast<uint8_t*>(recv) + off * es, t, n);
    }
  }

  void all_gather(const void* send, void* recv, size_t send_count, DType t, Stream) override {
    if (send_count == 0) return;
    check_ptr("all_gather", send);
    check_ptr("all_gather", recv);
    const size_t es = dtype_size(t);
    auto* dst = static_cast<uint8_t*>(recv);
    const bool in_place = send == dst + size_t(rank_) * send_count * es;
    if (send_count <= block_piece_) {
      MPT_MPI_CHECK(MPI_Allgather(in_place ? MPI_IN_PLACE : send, in_place ? 0 : int(send_count), elem_type(t), dst,
                                  int(send_count), elem_type(t), comm_));
      return;
    }
    // Piecewise: stage each slice so that MPI sees one contiguous receive buffer. In place, the slice
    // read from this rank's block is written back with the same values, so later slices stay intact.
    const auto* src = static_cast<const uint8_t*>(send);
    for (size_t off = 0; off < send_count; off += block_piece_) {
      const size_t n = std::min(block_piece_, send_count - off);
      staging_.resize(n * es * size_t(size_));
      MPT_MPI_CHECK(MPI_Allgather(src + off * es, int(n), elem_type(t), staging_.data(), int(n), elem_type(t),
                                  comm_));
      for (int r = 0; r < size_; ++r)
        std::memcpy(dst + (size_t(r) * send_count + off) * es, staging_.data() + size_t(r) * n * es, n * es);
    }
  }

  void broadcast(void* buf, size_t count, DType t, int root, Stream) override {
    if (root < 0 || root >= size_)
      throw std::invalid_argument("broadcast: root " + std::to_string(root) + " outside [0, " + std::to_string(size_) + ")");
    if (count == 0) return;
    check_ptr("broadcast", buf);
    const size_t es = dtype_size(t);
    for (size_t off = 0; off < count; off += piece_) {
      const size_t n = std::min(piece_, count - off);
      MPT_MPI_CHECK(MPI_Bcast(static_cast<uint8_t*>(buf) + off * es, int(n), elem_type(t), root, comm_));
    }
  }

  void barrier() override { MPT_MPI_CHECK(MPI_Barrier(comm_)); }

  void host_all_reduce(const double* send, double* recv, int count, ReduceOp op) override {
    detail::mpi_host_all_reduce(comm_, send, recv, count, op);
  }
  void host_all_gather(const void* send, void* recv, size_t bytes) override {
    detail::mpi_host_all_gather(comm_, send, recv, bytes);
  }
  void host_broadcast(void* buf, size_t bytes, int root) override { detail::mpi_host_broadcast(comm_, buf, bytes, root); }

 private:
  static void check_ptr(const char* op, const void* p) {
    if (!p) throw std::invalid_argument(std::string(op) + ": null buffer with a non-zero count");
  }

  MPI_Comm comm_;
  int rank_ = 0, size_ = 1;
  size_t piece_ = 1, block_piece_ = 1;
  // Scratch kept between calls so that a training loop does not allocate per collective.
  std::vector<float> f_in_, f_mine_, f_all_;

  // f_mine_[i] = f_all_[0*n + i] (+ or max) f_all_[1*n + i] ... in rank order, in FP32.
  void reduce_in_rank_order(size_t n, bool max) {
    for (size_t i = 0; i < n; ++i) {
      float acc = f_all_[i];
      for (int r = 1; r < size_; ++r) {
        const float v = f_all_[size_t(r) * n + i];
        acc = max ? ((v > acc || v != v) ? v : acc) : acc + v;  // a NaN wins a max
      }
      f_mine_[i] = acc;
    }
  }
  std::vector<uint8_t> staging_;
};

}  // namespace

namespace detail {
std::unique_ptr<Communicator> new_mpi_communicator(size_t max_piece, MPI_Comm comm) {
  return std::make_unique<MpiCommunicator>(max_piece, comm);
}
}  // namespace detail

}  // namespace mpt
