// The GradSink contract of GradReducer on CPU ranks: a parameter's gradient is completed once per
// micro-batch. A second grad_ready for it in the same micro-batch would count its bucket down twice and
// reduce the bucket before its other parameters are written, so it must throw, in every ZeRO stage, and
// leave the step intact: the next micro-batch accepts the parameter again and the reduced gradient is
// exactly what was written. Runs as part of train_tests (main in train_test.cpp).
#include <cmath>
#include <stdexcept>
#include <vector>

#include <gtest/gtest.h>
#include <mpi.h>

#include "comm/bootstrap.h"
#include "src/optim/zero.h"
#include "tests/test_util.h"

namespace mpt {
namespace {

TEST(GradSink, CompletingAGradientTwiceInOneMicroBatchThrows) {
  uint64_t seed = test::test_seed();
  MPI_Bcast(&seed, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
  Rng rng(seed);
  for (int stage = 0; stage <= 2; ++stage) {
    Exec ex;
    auto comm = make_mpi_communicator(MPI_COMM_WORLD);
    // One bucket holding both parameters (2 x 2000 bytes), so that a double count would reduce it early.
    const std::vector<ParamSpec> two = {{"q0", "a", {500}, DType::F32, false, Init::Zeros, 0.f},
                                        {"q1", "b", {500}, DType::F32, false, Init::Zeros, 0.f}};
    ShardedOptimizer opt(ex, *comm, two, stage, 4000, seed);
    ASSERT_EQ(opt.num_buckets(), 1);
    GradSink& sink = opt.grads();
    // Small integers, the same on every rank: every sum is exact in FP32.
    const float a = float(1 + rng.below(8)), b = float(1 + rng.below(8));
    auto write = [&](int i, float v) {
      float* g = static_cast<float*>(sink.grad(i));
      for (int e = 0; e < 500; ++e) g[e] += v;
    };
    opt.zero_grads();
    opt.begin_micro_batch(false);
    write(0, a);
    sink.grad_ready(0);
    EXPECT_THROW(sink.grad_ready(0), std::logic_error) << "stage " << stage;
    write(1, a);
    sink.grad_ready(1);
    opt.begin_micro_batch(true);
    write(0, b);
    EXPECT_NO_THROW(sink.grad_ready(0)) << "stage " << stage << ": a new micro-batch completes it again";
    write(1, b);
    sink.grad_ready(1);
    opt.finish_reduction();
    // Every rank wrote a + b per element of both parameters; the unscale pass divides by the world size.
    const double want = std::sqrt(1000.0 * double(a + b) * double(a + b));
    EXPECT_DOUBLE_EQ(opt.step(1.f, AdamWHyper{}, 0.0).grad_norm, want) << "stage " << stage << ", seed " << seed;
  }
}

}  // namespace
}  // namespace mpt
