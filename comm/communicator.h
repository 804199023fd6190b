// The Communicator interface. Buffers live where the implementation says: MpiCommunicator works on
// host buffers, NcclCommunicator on device buffers. Every collective is enqueued on the given stream
// (NCCL) or completes before returning (MPI, stream ignored). In-place use (send == recv for
// all_reduce; send == recv + rank * count for all_gather; recv == send + rank * count for
// reduce_scatter) is allowed.
// all_reduce is a reduce-scatter followed by an all-gather in both implementations, so every element is
// reduced along one path and all ranks end with bitwise-identical results. Half-precision sums: the MPI
// implementation accumulates in FP32 and rounds once; NCCL rounds to the half type at every hop, so a sum
// of N ranks may be rounded up to N-1 times (exact only where the partial sums are representable).
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "kernels/exec.h"

namespace mpt {

enum class ReduceOp { Sum, Max };

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual Device device() const = 0;
  virtual const char* name() const = 0;

  virtual void all_reduce(const void* send, void* recv, size_t count, DType t, ReduceOp op, Stream s) = 0;
  // recv (recv_count elements) = sum over ranks of send[rank * recv_count, (rank + 1) * recv_count).
  virtual void reduce_scatter(const void* send, void* recv, size_t recv_count, DType t, Stream s) = 0;
  // recv[r * send_count, (r + 1) * send_count) = send of rank r.
  virtual void all_gather(const void* send, void* recv, size_t send_count, DType t, Stream s) = 0;
  virtual void broadcast(void* buf, size_t count, DType t, int root, Stream s) = 0;
  // Host-side barrier over all ranks (waits for the rank's enqueued collectives first).
  virtual void barrier() = 0;

  // Small host values that every rank must agree on (losses, evaluation sums, stop flags, hashes, config
  // checks): plain MPI on the host in both implementations, blocking, independent of the device streams.
  // recv may equal send for host_all_reduce.
  virtual void host_all_reduce(const double* send, double* recv, int count, ReduceOp op) = 0;
  // recv[r * bytes, (r + 1) * bytes) = send of rank r.
  virtual void host_all_gather(const void* send, void* recv, size_t bytes) = 0;
  virtual void host_broadcast(void* buf, size_t bytes, int root) = 0;

  // Device memory that this communicator's collectives move without taking SMs where the library can
  // (NCCL: ncclMemAlloc memory registered as a symmetric window; all-gathers then run on the copy engines,
  // reductions on NCCL's symmetric kernels). A collective call: every rank allocates the same sizes in the
  // same order. nullptr where the communicator offers none (MPI, NCCL without `symmetric`, one rank): the
  // caller allocates ordinary memory. free_window is also collective, and must come before the
  // communicator is destroyed.
  virtual void* alloc_window(size_t bytes) { (void)bytes; return nullptr; }
  virtual void free_window(void* p) { (void)p; }
};

}  // namespace mpt
