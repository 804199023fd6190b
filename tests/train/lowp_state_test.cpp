// GPT-2 tiny (configs/gpt2-tiny.json) on CPU ranks with bf16 and int8 AdamW states against FP32 states, N
// steps (100; MPT_LOWP_STEPS): the loss of each of the first 10 steps within 1% of the FP32-state run's;
// the mean training loss of the last 20 steps and the validation loss after step N within 1% of it plus
// the difference that a control run makes: FP32 states with the learning rate raised by 2^-10 (relative),
// a change of the updates of the size of the states' rounding.
//
// The learning rate is 0.3x the config's 3e-3 (9e-4, cosine down to 3e-4). At 3e-3 gpt2-tiny leaves a loss
// plateau near 3.3 at a time that any perturbation moves, and hits isolated loss spikes: two FP32-state runs
// that differ only in a 2^-10 relative change of the learning rate ended up to 13% apart at step 100, so a
// 1% bound there tests chaos, not the optimizer. At 9e-4 the same control moves the end by < 0.05% and bf16
// and int8 states stay within ~0.3% of FP32 states (12 seeds measured, worst 0.3%). The control is still run
// and its difference added to the bound. A broken state (moments lost, a stale block scale, v collapsing
// to 0) moves the loss far more. The worst single step is printed, not asserted.
//
// Seeds: train.seed (initial weights and data order) is drawn fresh for each test run (printed with the
// test seed) and is the same for the three runs, so they start from the same weights and see the same
// batches; only the state storage differs. Data: the byte-level text shards under $MPT_SOURCE_DIR/.data/text
// when present (launch/prepare-text.sh), else shards of noisy structured tokens written here.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <mpi.h>

#include "src/data/tokens.h"
#include "src/train/train.h"
#include "tests/test_util.h"

namespace mpt {
namespace {

uint64_t shared_seed() {
  static uint64_t s = [] {
    uint64_t v = test::test_seed();
    MPI_Bcast(&v, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD);
    return v;
  }();
  return s;
}

std::string source_dir() {
  const char* d = std::getenv("MPT_SOURCE_DIR");
  return d ? d : ".";
}

// The shard glob prefix: the prepared text when present, else a job-wide temporary directory.
std::string shard_prefix() {
  static std::string prefix = [] {
    const std::string text = source_dir() + "/.data/text";
    if (std::filesystem::exists(text + "/train-00000.bin") && std::filesystem::exists(text + "/val-00000.bin"))
      return text;
    const std::string d = (std::filesystem::temp_directory_path() /
                           ("mpt-lowp-test-" + std::to_string(shared_seed() % 1000000007ull))).string();
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (rank == 0) {
      std::filesystem::create_directories(d);
      Rng r(shared_seed());
      for (const char* part : {"train", "val"}) {
        std::vector<int32_t> t(part[0] == 't' ? 200000 : 20000);
        for (size_t i = 0; i < t.size(); ++i)
          t[i] = r.uniform() < 0.7f ? int32_t(32 + (i * 7) % 60) : int32_t(r.uniform(0.f, 256.f));
        write_token_shard(d + "/" + part + "-00000.bin", t, 257);
      }
    }
    MPI_Barrier(MPI_COMM_WORLD);
    return d;
  }();
  return prefix;
}

int steps() {
  const char* s = std::getenv("MPT_LOWP_STEPS");
  return s ? std::max(30, std::atoi(s)) : 100;
}

struct LossRun {
  std::vector<double> loss;
  double val = 0;
  size_t adam_bytes = 0;
};

LossRun run(const std::string& state_dtype, int n, double lr_scale = 1.0) {
  const char* dev = std::getenv("MPT_TEST_DEVICE");
  const std::string path = source_dir() + "/configs/gpt2-tiny.json";
  const double lr = load_config(path, {}).optimizer.lr * 0.3 * lr_scale;  // below the config's spiky 3e-3
  char lr_text[64];
  std::snprintf(lr_text, sizeof lr_text, "optimizer.lr=%.17g", lr);
  const Config cfg = load_config(
      path, {"data.train_shards=[\"" + shard_prefix() + "/train-*.bin\"]", "data.val_shards=[\"" + shard_prefix() + "/val-*.bin\"]",
             "optimizer.state_dtype=\"" + state_dtype + "\"", "train.steps=" + std::to_string(n), lr_text,
             "train.seed=" + std::to_string(shared_seed() % 1000000007ull), "train.eval_every=0", "log.quiet=true",
             "log.metrics=\"\"", "device=\"" + std::string(dev ? dev : "cpu") + "\""});
  Trainer t(cfg, mpi_init(nullptr, nullptr));
  LossRun out;
  for (int s = 0; s < n; ++s) out.loss.push_back(t.train_step().loss);
  out.val = t.evaluate().loss;
  out.adam_bytes = t.optimizer().memory().adam;
  return out;
}

TEST(LowpStates, Gpt2TinyLossWithinOnePercentOfFp32States) {
  const int n = steps();
  const LossRun f = run("fp32", n);
  const LossRun c = run("fp32", n, 1.0 + 1.0 / 1024);
  auto tail_mean = [&](const std::vector<double>& l) {
    double sum = 0;
    for (int s = n - 20; s < n; ++s) sum += l[size_t(s)];
    return sum / 20;
  };
  const double tf = tail_mean(f.loss), tc = tail_mean(c.loss);
  const double noise_tail = std::fabs(tc - tf) / tf, noise_val = std::fabs(c.val - f.val) / f.val;
  for (const char* sd : {"bf16", "int8"}) {
    const LossRun q = run(sd, n);
    double worst = 0;
    for (int s = 0; s < n; ++s) {
      const double rel = std::fabs(q.loss[size_t(s)] - f.loss[size_t(s)]) / f.loss[size_t(s)];
      worst = std::max(worst, rel);
      if (s < 10) {
        EXPECT_LE(rel, 0.01) << sd << " states, step " << s + 1 << ": loss " << q.loss[size_t(s)] << " vs fp32 states "
                             << f.loss[size_t(s)];
      }
    }
    const double tq = tail_mean(q.loss);
    const double bound = 0.01;
    const double d_tail = std::fabs(tq - tf) / tf;
    EXPECT_LE(d_tail, bound + noise_tail)
        << sd << " states: mean loss of the last 20 steps " << tq << " vs " << tf << " (control " << tc << ")";
    const double val_rel = std::fabs(q.val - f.val) / f.val;
    EXPECT_LE(val_rel, bound + noise_val) << sd << " validation loss " << q.val << " vs " << f.val << " (control " << c.val << ")";
    EXPECT_LT(q.adam_bytes, f.adam_bytes / (std::string(sd) == "int8" ? 3 : 1.9));
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (rank == 0)
      std::printf("[ info     ] %d steps, %s states: loss %.4f vs %.4f (fp32 states) at the last step, worst step "
                  "%.3f%%; last 20 steps %.4f vs %.4f (control %.4f); validation %.4f vs %.4f (control %.4f); adam bytes/rank "
                  "%zu vs %zu\n",
                  n, sd, q.loss.back(), f.loss.back(), 100 * worst, tq, tf, tc, q.val, f.val, c.val, q.adam_bytes,
                  f.adam_bytes);
  }
  EXPECT_LT(f.loss.back(), f.loss.front() - 0.5) << "the fp32-state run did not learn: the comparison is empty";
}

}  // namespace
}  // namespace mpt
