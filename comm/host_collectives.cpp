// The host-value collectives of both communicators (comm/communicator.h): plain MPI calls on the
// communicator's MPI_Comm.
#include <climits>
#include <stdexcept>
#include <string>

#include "comm/comm_internal.h"

namespace mpt::detail {

void mpi_host_all_reduce(MPI_Comm comm, const double* send, double* recv, int count, ReduceOp op) {
  if (count <= 0) return;
  const MPI_Op mop = op == ReduceOp::Max ? MPI_MAX : MPI_SUM;
  MPT_MPI_CHECK(MPI_Allreduce(send == recv ? MPI_IN_PLACE : send, recv, count, MPI_DOUBLE, mop, comm));
}

void mpi_host_all_gather(MPI_Comm comm, const void* send, void* recv, size_t bytes) {
  if (bytes > size_t(INT_MAX)) throw std::invalid_argument("host_all_gather: more than INT_MAX bytes per rank");
  if (bytes == 0) return;
  MPT_MPI_CHECK(MPI_Allgather(send, int(bytes), MPI_BYTE, recv, int(bytes), MPI_BYTE, comm));
}

void mpi_host_broadcast(MPI_Comm comm, void* buf, size_t bytes, int root) {
  int size = 1;
  MPT_MPI_CHECK(MPI_Comm_size(comm, &size));
  if (root < 0 || root >= size)
    throw std::invalid_argument("host_broadcast: root " + std::to_string(root) + " outside [0, " +
                                std::to_string(size) + ")");
  if (bytes > size_t(INT_MAX)) throw std::invalid_argument("host_broadcast: more than INT_MAX bytes");
  if (bytes == 0) return;
  MPT_MPI_CHECK(MPI_Bcast(buf, int(bytes), MPI_BYTE, root, comm));
}

}  // namespace mpt::detail
