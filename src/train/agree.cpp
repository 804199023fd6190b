// settle_input_errors (src/train/train.h): which rank reports a bad-input error that several ranks found.
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "comm/comm_internal.h"  // MPT_MPI_CHECK
#include "src/train/train.h"

namespace mpt {

void settle_input_errors(MPI_Comm comm, const std::exception_ptr& err, const std::string& message) {
  if (all_ranks_ok(err == nullptr, comm)) return;
  int rank = 0, size = 1;
  MPT_MPI_CHECK(MPI_Comm_rank(comm, &rank));
  MPT_MPI_CHECK(MPI_Comm_size(comm, &size));
  // Every rank learns every failing rank's message (ranks that did not fail contribute ""), so each
  // failing rank can tell whether a lower rank will print the same line.
  const int len = err ? int(message.size()) : 0;
  std::vector<int> lens(static_cast<size_t>(size)), offs(static_cast<size_t>(size));
  MPT_MPI_CHECK(MPI_Allgather(&len, 1, MPI_INT, lens.data(), 1, MPI_INT, comm));
  int64_t total = 0;
  for (int r = 0; r < size; ++r) {
    offs[size_t(r)] = int(total);
    total += lens[size_t(r)];
  }
  if (total > int64_t(1) << 30) {  // messages are one line each; this would be a corrupted length
    if (err) std::rethrow_exception(err);
    throw PeerInputError();
  }
  std::string all(static_cast<size_t>(total), '\0');
  MPT_MPI_CHECK(MPI_Allgatherv(message.data(), len, MPI_CHAR, all.data(), lens.data(), offs.data(), MPI_CHAR, comm));
  if (!err) throw PeerInputError();
  for (int r = 0; r < rank; ++r)
    if (lens[size_t(r)] == len && all.compare(size_t(offs[size_t(r)]), size_t(len), message) == 0)
      throw PeerInputError();  // rank r prints the same line
  std::rethrow_exception(err);
}

void settle_input_errors(Communicator& comm, const std::exception_ptr& err, const std::string& message) {
  double failed = err ? 1 : 0, any = 0;
  comm.host_all_reduce(&failed, &any, 1, ReduceOp::Max);
  if (any == 0) return;
  const int rank = comm.rank(), size = comm.size();
  // Every rank learns every failing rank's message (ranks that did not fail contribute ""), each padded to
  // the longest, so each failing rank can tell whether a lower rank will print the same line.
  const int64_t len = err ? int64_t(message.size()) : 0;
  std::vector<int64_t> lens(static_cast<size_t>(size));
  comm.host_all_gather(&len, lens.data(), sizeof len);
  int64_t longest = 0;
  for (int64_t l : lens) longest = std::max(longest, l);
  if (longest < 0 || int64_t(size) * longest > int64_t(1) << 30) {  // one line each; a corrupted length
    if (err) std::rethrow_exception(err);
    throw PeerInputError();
  }
  std::string mine = err ? message : std::string();
  mine.resize(size_t(longest), '\0');
  std::string all(size_t(size) * size_t(longest), '\0');
  comm.host_all_gather(mine.data(), all.data(), size_t(longest));
  if (!err) throw PeerInputError();
  for (int r = 0; r < rank; ++r)
    if (lens[size_t(r)] == len && all.compare(size_t(r) * size_t(longest), size_t(len), message) == 0)
      throw PeerInputError();  // rank r prints the same line
  std::rethrow_exception(err);
}

}  // namespace mpt
