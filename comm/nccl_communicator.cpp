// Device-buffer communicator over NCCL.
//
// Streams. Every NCCL call of this communicator is issued on its own communication stream, in program
// order, so that all ranks run the collectives of the one communicator in the same order (two NCCL
// kernels of one communicator running concurrently on different streams can deadlock across ranks).
// A collective called with stream s:
//   - s == comm stream: enqueued there, nothing else. This is the overlap path: the caller records an
//     event on its compute stream, makes the comm stream wait on it, calls the collective with the comm
//     stream, and later makes its compute stream wait on an event recorded on the comm stream.
//   - any other s (including the legacy default stream, nullptr): the comm stream waits on an event
//     recorded on s, the collective runs on the comm stream, and s waits on an event recorded after it.
//     To the caller the collective is ordered on s exactly as if it had been enqueued there: work queued
//     on s later sees the result, and no host or device-wide synchronisation is involved.
// barrier() synchronises the comm stream (which holds every collective) and then calls MPI_Barrier.
//
// Half precision. fp16/bf16 go through NCCL's native ncclFloat16 / ncclBfloat16. NCCL's reduction
// kernels add two operands of the element type and store the result in that type, so a partial sum
// passed between ranks (one ring step, one tree level) is rounded to fp16/bf16 at every hop: a sum over
// N ranks is rounded up to N-1 times, not once in FP32 as the MPI implementation does. Sums whose
// partial sums are all representable (the tests use small integers times powers of two) are exact;
// otherwise the result can differ from round(FP32 sum) by a few units in the last place, and the
// order of the hops depends on NCCL's algorithm choice. Every element is still reduced on exactly one
// path before it is gathered (see all_reduce), so all ranks hold bitwise-identical results.
//
// Symmetric memory (NcclOptions::symmetric, zero.symmetric_memory). The communicator is created with
// NCCL_CTA_POLICY_ZERO and alloc_window returns ncclMemAlloc memory registered as a symmetric window
// (every rank registers the same sizes in the same order, so a buffer sits at the same offset in every
// rank's window). NCCL then runs an all-gather whose send and receive buffers lie in windows on the copy
// engines, within a node, and a reduce-scatter on its symmetric kernels; everything else as before.
// Measured on two H200s (NVLink), 25 MiB bf16 buckets beside a bf16 GEMM loop: the ordinary all-gather
// slows the GEMMs by 17-19%, the copy-engine one by 1.6%; the reduce-scatter's slowdown drops from
// 17-19% to 10-11%. A window changes which engine moves the values, not the values: an all-gather is a
// copy, and a sum over two ranks is one addition on any path.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "comm/comm_internal.h"
#include "kernels/accumulate.h"

namespace mpt {
namespace {

ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::F16: return ncclFloat16;
    case DType::BF16: return ncclBfloat16;
    default: return ncclFloat32;
  }
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(const WorldInfo& world, Stream comm_stream, MPI_Comm mpi, NcclOptions opt)
      : mpi_(mpi), comm_stream_(comm_stream) {
    // NVLink SHARP (NVLS) multicast stays off: set before NCCL reads its environment, never overriding
    // an explicit choice.
    setenv("NCCL_NVLS_ENABLE", "0", 0);
    MPT_MPI_CHECK(MPI_Comm_rank(mpi_, &rank_));
    MPT_MPI_CHECK(MPI_Comm_size(mpi_, &size_));
    if (rank_ != world.rank || size_ != world.size)
      throw std::invalid_argument("make_nccl_communicator: WorldInfo does not describe the MPI communicator");
    // The device select_cuda_device chose: the local rank's GPU, or 0 when each rank sees one.
    MPT_COMM_CUDA_CHECK(cudaGetDevice(&device_));

    ncclUniqueId id{};
    if (rank_ == 0) MPT_NCCL_CHECK(ncclGetUniqueId(&id));
    MPT_MPI_CHECK(MPI_Bcast(&id, int(sizeof id), MPI_BYTE, 0, mpi_));
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 28, 0)
    symmetric_ = opt.symmetric && size_ > 1;
    ce_reduce_ = symmetric_ && opt.copy_engine_reduce;
    if (symmetric_) cfg.CTAPolicy = NCCL_CTA_POLICY_ZERO;
#else
    (void)opt;  // symmetric windows and the zero-CTA policy need NCCL 2.28: alloc_window returns nullptr
#endif
    MPT_NCCL_CHECK(ncclCommInitRankConfig(&comm_, size_, id, rank_, &cfg));
    detail::register_nccl_comm(comm_);
    detail::install_abort_hook();

    MPT_COMM_CUDA_CHECK(cudaEventCreateWithFlags(&before_, cudaEventDisableTiming));
    MPT_COMM_CUDA_CHECK(cudaEventCreateWithFlags(&after_, cudaEventDisableTiming));
    // One padded slot per rank for the count % size tail of all_reduce (4 bytes: the widest dtype).
    MPT_COMM_CUDA_CHECK(cudaMalloc(&tail_, size_t(size_) * 4));
    MPT_COMM_CUDA_CHECK(cudaMemset(tail_, 0, size_t(size_) * 4));
  }

  ~NcclCommunicator() override {
    int prev = 0;
    MPT_COMM_CUDA_CHECK(cudaGetDevice(&prev));
    MPT_COMM_CUDA_CHECK(cudaSetDevice(device_));
    MPT_COMM_CUDA_CHECK(cudaStreamSynchronize(comm_stream_));
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 28, 0)
    // Windows whose owners outlived the communicator (a contract breach, but not a reason to leak).
    for (const Window& w : windows_) MPT_NCCL_CHECK(ncclCommWindowDeregister(comm_, w.win));
#endif
    detail::unregister_nccl_comm(comm_);
    MPT_NCCL_CHECK(ncclCommDestroy(comm_));
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 28, 0)
    for (const Window& w : windows_) MPT_NCCL_CHECK(ncclMemFree(w.base));
#endif
    MPT_COMM_CUDA_CHECK(cudaFree(tail_));
    MPT_COMM_CUDA_CHECK(cudaEventDestroy(before_));
    MPT_COMM_CUDA_CHECK(cudaEventDestroy(after_));
    MPT_COMM_CUDA_CHECK(cudaSetDevice(prev));
  }

  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  Device device() const override { return Device::CUDA; }
  const char* name() const override { return "nccl"; }

  // Reduce-scatter then all-gather, as the interface promises. NCCL's reduce-scatter needs equal
  // blocks, so the first count - count % size elements go through in place (block b reduced into
  // recv + b * chunk, then gathered from there), and the tail of at most size - 1 elements is padded
  // to one element per rank in a small scratch buffer; the padding slots hold junk that is reduced and
  // discarded.
  void all_reduce(const void* send, void* recv, size_t count, DType t, ReduceOp op, Stream s) override {
    if (count == 0) return;
    const size_t es = dtype_size(t);
    const ncclDataType_t nt = nccl_type(t);
    const ncclRedOp_t nop = op == ReduceOp::Max ? ncclMax : ncclSum;
    const size_t chunk = count / size_t(size_);
    const size_t body = chunk * size_t(size_), tail = count - body;
    const auto* src = static_cast<const uint8_t*>(send);
    auto* dst = static_cast<uint8_t*>(recv);
    auto* tl = static_cast<uint8_t*>(tail_);
    const size_t mine = size_t(rank_) * es;
    check_window("all_reduce", send, count * es, chunk * es);
    check_window("all_reduce", recv, count * es, chunk * es);

    begin(s);
    if (tail) MPT_COMM_CUDA_CHECK(cudaMemcpyAsync(tl, src + body * es, tail * es, cudaMemcpyDeviceToDevice, comm_stream_));
    MPT_NCCL_CHECK(ncclGroupStart());
    if (chunk) MPT_NCCL_CHECK(ncclReduceScatter(src, dst + mine * chunk, chunk, nt, nop, comm_, comm_stream_));
    if (tail) MPT_NCCL_CHECK(ncclReduceScatter(tl, tl + mine, 1, nt, nop, comm_, comm_stream_));
    MPT_NCCL_CHECK(ncclGroupEnd());
    MPT_NCCL_CHECK(ncclGroupStart());
    if (chunk) MPT_NCCL_CHECK(ncclAllGather(dst + mine * chunk, dst, chunk, nt, comm_, comm_stream_));
    if (tail) MPT_NCCL_CHECK(ncclAllGather(tl + mine, tl, 1, nt, comm_, comm_stream_));
    MPT_NCCL_CHECK(ncclGroupEnd());
    if (tail) MPT_COMM_CUDA_CHECK(cudaMemcpyAsync(dst + body * es, tl, tail * es, cudaMemcpyDeviceToDevice, comm_stream_));
    end(s);
  }

  void reduce_scatter(const void* send, void* recv, size_t recv_count, DType t, Stream s) override {
    if (recv_count == 0) return;
    check_window("reduce_scatter", send, recv_count * size_t(size_) * dtype_size(t), recv_count * dtype_size(t));
    check_window("reduce_scatter", recv, recv_count * dtype_size(t), recv_count * dtype_size(t));
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 28, 0)
    if (ce_reduce_ && in_window(send)) {
      // Every rank makes the same calls with the same counts, so the staging window (a collective
      // allocation) grows at the same call everywhere.
      const size_t bytes = recv_count * size_t(size_) * dtype_size(t);
      if (stage_bytes_ < bytes) {
        MPT_COMM_CUDA_CHECK(cudaStreamSynchronize(comm_stream_));  // the old one may still be read
        if (stage_) free_window(stage_);
        stage_ = alloc_window(bytes);
        stage_bytes_ = bytes;
      }
      begin(s);
      MPT_NCCL_CHECK(ncclAlltoAll(send, stage_, recv_count, nccl_type(t), comm_, comm_stream_));
      cuda::sum_parts(stage_, recv, t, recv_count, size_, comm_stream_);
      end(s);
      return;
    }
#endif
    begin(s);
    MPT_NCCL_CHECK(ncclReduceScatter(send, recv, recv_count, nccl_type(t), ncclSum, comm_, comm_stream_));
    end(s);
  }

  void all_gather(const void* send, void* recv, size_t send_count, DType t, Stream s) override {
    if (send_count == 0) return;
    check_window("all_gather", send, send_count * dtype_size(t), send_count * dtype_size(t));
    check_window("all_gather", recv, send_count * size_t(size_) * dtype_size(t), send_count * dtype_size(t));
    begin(s);
    MPT_NCCL_CHECK(ncclAllGather(send, recv, send_count, nccl_type(t), comm_, comm_stream_));
    end(s);
  }

  void broadcast(void* buf, size_t count, DType t, int root, Stream s) override {
    if (root < 0 || root >= size_)
      throw std::invalid_argument("broadcast: root " + std::to_string(root) + " outside [0, " + std::to_string(size_) + ")");
    if (count == 0) return;
    begin(s);
    MPT_NCCL_CHECK(ncclBroadcast(buf, buf, count, nccl_type(t), root, comm_, comm_stream_));
    end(s);
  }

  void barrier() override {
    MPT_COMM_CUDA_CHECK(cudaStreamSynchronize(comm_stream_));
    // A failure inside an NCCL kernel (e.g. a peer's network error) is only visible asynchronously.
    ncclResult_t async = ncclSuccess;
    MPT_NCCL_CHECK(ncclCommGetAsyncError(comm_, &async));
    MPT_NCCL_CHECK(async);
    MPT_MPI_CHECK(MPI_Barrier(mpi_));
  }

  void host_all_reduce(const double* send, double* recv, int count, ReduceOp op) override {
    detail::mpi_host_all_reduce(mpi_, send, recv, count, op);
  }
  void host_all_gather(const void* send, void* recv, size_t bytes) override {
    detail::mpi_host_all_gather(mpi_, send, recv, bytes);
  }
  void host_broadcast(void* buf, size_t bytes, int root) override { detail::mpi_host_broadcast(mpi_, buf, bytes, root); }

  void* alloc_window(size_t bytes) override {
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 28, 0)
    if (!symmetric_ || bytes == 0) return nullptr;
    const size_t n = (bytes + NCCL_WIN_REQUIRED_ALIGNMENT - 1) / NCCL_WIN_REQUIRED_ALIGNMENT * NCCL_WIN_REQUIRED_ALIGNMENT;
    void* p = nullptr;
    MPT_NCCL_CHECK(ncclMemAlloc(&p, n));
    ncclWindow_t w{};
    MPT_NCCL_CHECK(ncclCommWindowRegister(comm_, p, n, &w, NCCL_WIN_COLL_SYMMETRIC));
    windows_.push_back(Window{p, n, w});
    return p;
#else
    (void)bytes;
    return nullptr;
#endif
  }

  void free_window(void* p) override {
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 28, 0)
    auto it = std::find_if(windows_.begin(), windows_.end(), [&](const Window& e) { return e.base == p; });
    if (it == windows_.end()) throw std::logic_error("NcclCommunicator::free_window: not one of this communicator's windows");
    // Collectives still queued may read or write it.
    MPT_COMM_CUDA_CHECK(cudaStreamSynchronize(comm_stream_));
    MPT_COMM_CUDA_CHECK(cudaDeviceSynchronize());
    MPT_NCCL_CHECK(ncclCommWindowDeregister(comm_, it->win));
    MPT_NCCL_CHECK(ncclMemFree(p));
    windows_.erase(it);
#else
    (void)p;
#endif
  }

 private:
  // Collectives on window memory: NCCL's symmetric and copy-engine paths returned wrong elements on two
  // H200s for per-rank pieces that were not multiples of 128 bytes (e.g. 1001 or 4099 bf16 elements) at
  // offsets that were not 128-byte aligned, while ZeRO's bucket parts (multiples of 64 elements, 128-byte
  // aligned) were exact. Such a call is refused here rather than risked; ordinary memory takes any size.
  static constexpr size_t kWindowAlign = 128;
  bool in_window(const void* p) const {
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 28, 0)
    const auto* q = static_cast<const uint8_t*>(p);
    for (const Window& w : windows_)
      if (q >= static_cast<const uint8_t*>(w.base) && q < static_cast<const uint8_t*>(w.base) + w.bytes) return true;
#else
    (void)p;
#endif
    return false;
  }
  void check_window(const char* op, const void* p, size_t bytes, size_t piece) const {
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 28, 0)
    const auto* q = static_cast<const uint8_t*>(p);
    for (const Window& w : windows_) {
      const auto* b = static_cast<const uint8_t*>(w.base);
      if (q < b || q >= b + w.bytes) continue;
      if (size_t(q - b) % kWindowAlign != 0 || piece % kWindowAlign != 0 || size_t(q - b) + bytes > w.bytes)
        throw std::invalid_argument(std::string("NcclCommunicator::") + op + ": on window memory the buffer must start " +
                                    std::to_string(kWindowAlign) + "-byte aligned in its window, lie inside it, and "
                                    "move per-rank pieces of a multiple of " + std::to_string(kWindowAlign) +
                                    " bytes (got offset " + std::to_string(q - b) + ", piece " + std::to_string(piece) +
                                    " bytes)");
      return;
    }
#else
    (void)op; (void)p; (void)bytes; (void)piece;
#endif
  }

  // Event handoff between the caller's stream and the comm stream (see the top of the file). One event
  // per direction suffices: cudaStreamWaitEvent captures the record that is current when it is called.
  void begin(Stream s) {
    if (s == comm_stream_) return;
    MPT_COMM_CUDA_CHECK(cudaEventRecord(before_, s));
    MPT_COMM_CUDA_CHECK(cudaStreamWaitEvent(comm_stream_, before_, 0));
  }
  void end(Stream s) {
    if (s == comm_stream_) return;
    MPT_COMM_CUDA_CHECK(cudaEventRecord(after_, comm_stream_));
    MPT_COMM_CUDA_CHECK(cudaStreamWaitEvent(s, after_, 0));
  }

  MPI_Comm mpi_;
  int rank_ = 0, size_ = 1, device_ = 0;
  Stream comm_stream_ = nullptr;
  ncclComm_t comm_ = nullptr;
  cudaEvent_t before_ = nullptr, after_ = nullptr;
  void* tail_ = nullptr;
  bool symmetric_ = false;
  bool ce_reduce_ = false;
  void* stage_ = nullptr;  // copy_engine_reduce: the all-to-all's receive window
  size_t stage_bytes_ = 0;
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 28, 0)
  struct Window {
    void* base;
    size_t bytes;
    ncclWindow_t win;
  };
  std::vector<Window> windows_;
#endif
};

}  // namespace

namespace detail {
std::unique_ptr<Communicator> new_nccl_communicator(const WorldInfo& world, Stream comm_stream, MPI_Comm mpi,
                                                    NcclOptions opt) {
  return std::make_unique<NcclCommunicator>(world, comm_stream, mpi, opt);
}
}  // namespace detail

}  // namespace mpt
