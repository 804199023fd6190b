// Process bootstrap: MPI start-up and shut-down, the world description, the fatal-error abort hook and
// the communicator factories.
#include "comm/bootstrap.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <mutex>
#include <thread>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <unistd.h>

#include "comm/comm_internal.h"
#include "comm/device_select.h"

namespace mpt {
namespace detail {

std::string mpi_error_text(int code) {
  char buf[MPI_MAX_ERROR_STRING] = {0};
  int len = 0;
  // MPI_Error_string may itself be unusable before MPI_Init; fall back to the raw code.
  if (MPI_Error_string(code, buf, &len) != MPI_SUCCESS || len <= 0) return "MPI error code " + std::to_string(code);
  return std::string(buf, size_t(len)) + " (code " + std::to_string(code) + ")";
}

std::string cuda_error_text(cudaError_t e) {
  return std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
}

std::string nccl_error_text(ncclResult_t r) {
  std::string s = ncclGetErrorString(r);
  const char* last = ncclGetLastError(nullptr);  // NCCL's detailed reason, when it kept one
  if (last && *last) s += std::string(" (") + last + ")";
  return s;
}

namespace {

std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}
std::vector<ncclComm_t>& registry() {
  static std::vector<ncclComm_t> v;
  return v;
}

void abort_everything() {
  std::vector<ncclComm_t> comms;
  {
    std::lock_guard<std::mutex> lock(registry_mutex());
    comms.swap(registry());
  }
  // NCCL first: MPI_Abort kills this process, and peers blocked inside an NCCL kernel only notice a
  // dead rank through the communicator being aborted (or a long network timeout).
  // Bounded: an abort that blocks (a driver stuck with a stopped peer) must not keep MPI_Abort, which
  // ends every rank through the launcher, from running.
  if (!comms.empty()) {
    auto done = std::make_shared<std::atomic<bool>>(false);
    std::thread([comms, done] {
      for (ncclComm_t c : comms) ncclCommAbort(c);
      done->store(true);
    }).detach();
    for (int i = 0; i < 100 && !done->load(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (!done->load()) std::fprintf(stderr, "mptrain: ncclCommAbort did not return within 10 s; aborting MPI\n");
  }
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Abort(MPI_COMM_WORLD, 1);
}

std::optional<WorldInfo>& cached_world() {
  static std::optional<WorldInfo> w;
  return w;
}

}  // namespace

void register_nccl_comm(ncclComm_t comm) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  registry().push_back(comm);
}

void unregister_nccl_comm(ncclComm_t comm) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  auto& v = registry();
  v.erase(std::remove(v.begin(), v.end(), comm), v.end());
}

// Asks every registered NCCL communicator for an asynchronous error (a failed peer connection, a remote
// abort). ncclCommGetAsyncError may be called from a thread other than the one issuing collectives; the
// registry lock keeps a communicator from being destroyed during the call.
std::string poll_async_errors() {
  std::lock_guard<std::mutex> lock(registry_mutex());
  for (ncclComm_t c : registry()) {
    ncclResult_t async = ncclSuccess;
    const ncclResult_t r = ncclCommGetAsyncError(c, &async);
    if (r != ncclSuccess) return "ncclCommGetAsyncError failed: " + nccl_error_text(r);
    if (async != ncclSuccess && async != ncclInProgress) return "NCCL asynchronous error: " + nccl_error_text(async);
  }
  return "";
}

void install_abort_hook() {
  fatal_state().abort_hook = abort_everything;
  fatal_state().async_error_poll = poll_async_errors;
}

}  // namespace detail

WorldInfo mpi_init(int* argc, char*** argv) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (finalized) throw std::runtime_error("mpi_init: MPI has already been finalized in this process");
  if (!initialized) {
    // Only the main thread talks to MPI; FUNNELED keeps helper threads (data loading) legal.
    int provided = 0;
    const int rc = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    if (rc != MPI_SUCCESS) MPT_FATAL("MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided)", detail::mpi_error_text(rc));
  }
  auto& cached = detail::cached_world();
  if (!cached) {
    MPT_MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    WorldInfo w;
    MPT_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &w.rank));
    MPT_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &w.size));
    MPI_Comm node = MPI_COMM_NULL;
    MPT_MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, w.rank, MPI_INFO_NULL, &node));
    MPT_MPI_CHECK(MPI_Comm_rank(node, &w.local_rank));
    MPT_MPI_CHECK(MPI_Comm_size(node, &w.local_size));
    MPT_MPI_CHECK(MPI_Comm_free(&node));
    char host[MPI_MAX_PROCESSOR_NAME] = {0};
    int len = 0;
    MPT_MPI_CHECK(MPI_Get_processor_name(host, &len));
    w.host.assign(host, size_t(std::max(len, 0)));
    cached = w;
  }
  fatal_state().rank = cached->rank;
  detail::install_abort_hook();
  return *cached;
}

void mpi_finalize() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPT_MPI_CHECK(MPI_Finalize());
  // The hook stays installed: it checks MPI_Finalized itself and still aborts live NCCL communicators.
}

bool all_ranks_ok(bool ok, MPI_Comm comm) {
  int mine = ok ? 1 : 0, all = 0;
  MPT_MPI_CHECK(MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_LAND, comm));
  return all != 0;
}

std::unique_ptr<Communicator> make_mpi_communicator(MPI_Comm comm) {
  return detail::new_mpi_communicator(detail::kDefaultMpiPiece, comm);
}

std::unique_ptr<Communicator> make_nccl_communicator(const WorldInfo& world, Stream comm_stream, MPI_Comm mpi,
                                                     NcclOptions opt) {
  return detail::new_nccl_communicator(world, comm_stream, mpi, opt);
}

int select_cuda_device(const WorldInfo& world) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  std::string why;
  if (e == cudaErrorNoDevice) {
    count = 0;
  } else if (e != cudaSuccess) {
    count = 0;
    why = " (cudaGetDeviceCount: " + detail::cuda_error_text(e) + ")";
  }
  if (e != cudaSuccess) cudaGetLastError();  // the error is reported below; do not leave it sticky
  const DeviceChoice c = choose_cuda_device(world.local_rank, world.local_size, count);
  if (c.device < 0) throw std::runtime_error("host " + world.host + ": " + c.error + why);
  MPT_COMM_CUDA_CHECK(cudaSetDevice(c.device));
  return c.device;
}

}  // namespace mpt
