// Process bootstrap: MPI gives rank, world size and the local rank (ranks sharing a node); rank 0's
// NCCL unique id is broadcast over MPI. Installs the fatal-error abort hook (ncclCommAbort, MPI_Abort).
#pragma once

#include <memory>
#include <string>

#include <mpi.h>

#include "comm/communicator.h"

namespace mpt {

struct WorldInfo {
  int rank = 0, size = 1;
  int local_rank = 0, local_size = 1;  // among the ranks on this node
  std::string host;
};

// MPI_Init (idempotent) and the world description. Safe to call from tests and main alike.
WorldInfo mpi_init(int* argc, char*** argv);
void mpi_finalize();

// True on every rank iff ok is true on every rank (MPI_Allreduce with logical and). Used so that a
// bad-input error found on one rank makes every rank exit instead of leaving peers in a collective.
bool all_ranks_ok(bool ok, MPI_Comm comm = MPI_COMM_WORLD);

// Host-buffer communicator over `comm` (tests train on sub-communicators).
std::unique_ptr<Communicator> make_mpi_communicator(MPI_Comm comm = MPI_COMM_WORLD);

struct NcclOptions {
  // Symmetric memory (zero.symmetric_memory): the communicator is created with NCCL's zero-CTA policy and
  // alloc_window hands out symmetric windows, so that all-gathers of window memory run on the copy
  // engines within a node and leave every SM to the compute they overlap. Off: alloc_window returns
  // nullptr and NCCL's defaults apply.
  bool symmetric = false;
  // With symmetric: a reduce-scatter whose send buffer is window memory runs as an all-to-all into a
  // window staging buffer (on the copy engines within a node, like the all-gather) followed by one
  // local kernel that sums the blocks in rank order in FP32 and rounds once (kernels/accumulate.h
  // sum_parts): no NCCL kernel sits on SMs for the exchange, and the result is the MPI communicator's,
  // bit for bit. Off: NCCL's reduce-scatter (its symmetric kernels on windows).
  bool copy_engine_reduce = true;
};

// Device-buffer communicator over NCCL among the ranks of `mpi` (world.rank / world.size describe them).
// Uses the current CUDA device (the one select_cuda_device chose). Collectives run on `comm_stream`.
std::unique_ptr<Communicator> make_nccl_communicator(const WorldInfo& world, Stream comm_stream,
                                                     MPI_Comm mpi = MPI_COMM_WORLD, NcclOptions opt = {});

// cudaSetDevice(choose_cuda_device(local rank, local size, visible devices)) and returns that device:
// the local rank's GPU, or device 0 when the rank sees exactly one (comm/device_select.h). Throws
// std::runtime_error naming the host and the local rank when there is none to use.
int select_cuda_device(const WorldInfo& world);

}  // namespace mpt
