// settle_input_errors (src/train/train.h): which rank reports a bad-input error that several ranks found.
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

}  // namespace mpt
