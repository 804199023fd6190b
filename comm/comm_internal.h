// Internals of comm/: the checking macros for MPI, CUDA and NCCL calls made by the communicators and
// the bootstrap, the registry of live NCCL communicators that the fatal-error hook aborts, and the
// factories behind make_mpi_communicator / make_nccl_communicator. Not part of the public interface;
// tests include it for the piece-size factory.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include <cuda_runtime_api.h>
// The C bindings are all comm/ uses; the deprecated C++ bindings only add warnings.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>
#include <nccl.h>

#include "comm/bootstrap.h"
#include "src/core/check.h"

namespace mpt::detail {

std::string mpi_error_text(int code);
std::string cuda_error_text(cudaError_t e);
std::string nccl_error_text(ncclResult_t r);

// The fatal hook aborts every registered NCCL communicator before MPI_Abort, so that a peer blocked in
// an NCCL kernel is released instead of spinning until a timeout.
void register_nccl_comm(ncclComm_t comm);
void unregister_nccl_comm(ncclComm_t comm);
// (Re)installs the hook in fatal_state(); mpi_init does it, NCCL communicator creation repeats it.
void install_abort_hook();

// max_piece bounds the elements one MPI call moves (MPI counts are int). Tests pass a small value so
// that the piecewise code paths run on small buffers.
std::unique_ptr<Communicator> new_mpi_communicator(size_t max_piece, MPI_Comm comm = MPI_COMM_WORLD);
inline constexpr size_t kDefaultMpiPiece = size_t(1) << 24;

std::unique_ptr<Communicator> new_nccl_communicator(const WorldInfo& world, Stream comm_stream, MPI_Comm mpi,
                                                    NcclOptions opt);

// The host-value collectives of the Communicator interface, shared by both implementations.
void mpi_host_all_reduce(MPI_Comm comm, const double* send, double* recv, int count, ReduceOp op);
void mpi_host_all_gather(MPI_Comm comm, const void* send, void* recv, size_t bytes);
void mpi_host_broadcast(MPI_Comm comm, void* buf, size_t bytes, int root);

}  // namespace mpt::detail

// MPI_COMM_WORLD is switched to MPI_ERRORS_RETURN in mpi_init, so a failed MPI call returns here and is
// reported through the common idiom instead of Open MPI's own abort path.
#define MPT_MPI_CHECK(call)                                                           \
  do {                                                                                \
    const int mpt_mpi_rc_ = (call);                                                   \
    if (mpt_mpi_rc_ != MPI_SUCCESS) MPT_FATAL(#call, ::mpt::detail::mpi_error_text(mpt_mpi_rc_)); \
  } while (0)

#define MPT_COMM_CUDA_CHECK(call)                                                     \
  do {                                                                                \
    const cudaError_t mpt_cuda_rc_ = (call);                                          \
    if (mpt_cuda_rc_ != cudaSuccess) MPT_FATAL(#call, ::mpt::detail::cuda_error_text(mpt_cuda_rc_)); \
  } while (0)

#define MPT_NCCL_CHECK(call)                                                          \
  do {                                                                                \
    const ncclResult_t mpt_nccl_rc_ = (call);                                         \
    if (mpt_nccl_rc_ != ncclSuccess) MPT_FATAL(#call, ::mpt::detail::nccl_error_text(mpt_nccl_rc_)); \
  } while (0)
