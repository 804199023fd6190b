// src/core/worker_pool.h: every index runs exactly once, whatever the thread and task counts; the pool is
// reused call after call; a task's exception reaches the caller and leaves the pool usable.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "src/core/worker_pool.h"
#include "tests/test_util.h"

namespace mpt {
namespace {

TEST(WorkerPool, RunsEveryTaskExactlyOnce) {
  Rng r(test::test_seed());
  for (int threads : {1, 2, 3, 8}) {
    WorkerPool pool(threads);
    EXPECT_EQ(pool.threads(), threads);
    for (int call = 0; call < 50; ++call) {
      const int64_t n = int64_t(r.uniform(0.f, 300.f));
      std::vector<std::atomic<int>> hits(size_t(n) + 1);
      pool.run(n, [&](int64_t i) { hits[size_t(i)].fetch_add(1); });
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[size_t(i)].load(), 1) << threads << " threads, task " << i << " of " << n;
      EXPECT_EQ(hits[size_t(n)].load(), 0);
    }
  }
}

TEST(WorkerPool, SpreadsTasksOverThreads) {
  WorkerPool pool(4);
  std::mutex mu;
  std::vector<std::thread::id> seen;
  pool.run(64, [&](int64_t) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    std::lock_guard<std::mutex> lock(mu);
    if (std::find(seen.begin(), seen.end(), std::this_thread::get_id()) == seen.end())
      seen.push_back(std::this_thread::get_id());
  });
  EXPECT_GE(seen.size(), 2u) << "64 sleeping tasks all ran on one thread";
}

TEST(WorkerPool, ATaskExceptionReachesTheCallerAndThePoolStaysUsable) {
  WorkerPool pool(3);
  std::atomic<int> ran{0};
  EXPECT_THROW(pool.run(100,
                        [&](int64_t i) {
                          ran.fetch_add(1);
                          if (i == 7) throw std::runtime_error("task 7");
                        }),
               std::runtime_error);
  EXPECT_GE(ran.load(), 8);
  std::atomic<int64_t> sum{0};
  pool.run(10, [&](int64_t i) { sum.fetch_add(i); });
  EXPECT_EQ(sum.load(), 45);
  EXPECT_THROW(WorkerPool(0), std::invalid_argument);
}

}  // namespace
}  // namespace mpt
