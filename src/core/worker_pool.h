// A fixed set of host threads that run the tasks of one call at a time (the offloaded AdamW of
// zero.offload = cpu). run(n, fn) calls fn(0) .. fn(n - 1), each exactly once, spread over the workers and
// the calling thread, and returns when all are done. Tasks are taken in index order from a shared counter,
// so uneven tasks balance. The first exception a task throws is rethrown by run() after the others finished
// (tasks not yet started are skipped).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace mpt {

class WorkerPool {
 public:
  // threads: total threads working on a call, the caller included (>= 1).
  explicit WorkerPool(int threads);
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  int threads() const { return int(workers_.size()) + 1; }
  void run(int64_t n, const std::function<void(int64_t)>& fn);

 private:
  void work();
  void drain();

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable wake_, done_;
  const std::function<void(int64_t)>* fn_ = nullptr;
  int64_t n_ = 0, next_ = 0;
  int busy_ = 0;                     // workers inside the current call
  uint64_t generation_ = 0;          // calls started
  bool stop_ = false;
  std::exception_ptr error_;
};

}  // namespace mpt
