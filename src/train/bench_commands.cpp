// `mptrain profile` (a per-op table of one steady-state training step) and `mptrain bench-attention` (the
// attention kernels alone on one device, for the comparison with PyTorch's scaled_dot_product_attention in
// tests/reference/attention_peer.py).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <cuda_runtime_api.h>
#include <nlohmann/json.hpp>

#include "kernels/attention.h"
#include "kernels/device_info.h"
#include "kernels/gemm.h"
#include "src/core/buffer.h"
#include "src/core/check.h"
#include "src/train/commands.h"
#include "src/core/cuda_check.h"
#include "src/train/op_profile.h"
#include "src/core/rng.h"
#include "src/io/hf_export.h"  // write_json_file
#include "src/train/train.h"

namespace mpt {

namespace {

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

// The GPU's SM clock and board power, sampled every 10 ms on a thread of its own (never on the training
// thread: an NVML query can hold its caller for milliseconds, and a rank held between steps makes the others
// wait), credited to the side (0: with the collectives, 1: without) whose steps the host is running.
class SideSampler {
 public:
  explicit SideSampler(int device) {
    if (device >= 0 && sample_power(device).ok) th_ = std::thread([this, device] { loop(device); });
  }
  ~SideSampler() { stop(); }
  SideSampler(const SideSampler&) = delete;
  SideSampler& operator=(const SideSampler&) = delete;
  void side(int s) { side_.store(s); }  // -1: not counted (transition steps)
  void stop() {
    run_.store(false);
    if (th_.joinable()) th_.join();
  }
  ClockStat stat(int s) const {  // after stop()
    if (n_[s] == 0) return {};
    return {mhz_[s] / n_[s], watts_[s] / n_[s], n_[s]};
  }

 private:
  void loop(int device) {
    while (run_.load()) {
      const int s = side_.load();
      const PowerSample p = sample_power(device);
      if (p.ok && s >= 0 && s < 2 && side_.load() == s) mhz_[s] += p.sm_mhz, watts_[s] += p.watts, ++n_[s];
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  std::atomic<bool> run_{true};
  std::atomic<int> side_{-1};
  double mhz_[2] = {0, 0}, watts_[2] = {0, 0};
  int n_[2] = {0, 0};
  std::thread th_;
};

}  // namespace

// mptrain profile --without-comm: the steps of a side come in chunks of this many, alternating sides.
constexpr int kCommCostChunk = 4;

int profile_command(int argc, char** argv) {
  CommandArgs a;
  if (!parse_command_args(argc, argv, {"warmup", "steps", "profiled-steps", "out", "peak-tflops", "peak-gbs"}, {}, &a,
                          {"without-comm"}))
    return kExitBadInput;
  int warmup = 0, timed = 0, profiled = 0;
  Ceilings ceil;
  if (!int_option(a, "warmup", 3, 1, &warmup) || !int_option(a, "steps", 5, 1, &timed) ||
      !int_option(a, "profiled-steps", 1, 1, &profiled) ||
      !double_option(a, "peak-tflops", ceil.tflops, &ceil.tflops) || !double_option(a, "peak-gbs", ceil.gbs, &ceil.gbs))
    return kExitBadInput;
  const bool without_comm = a.flags.count("without-comm") > 0;
  return run_config_command(a, [&](Config& cfg, const WorldInfo& world) {
    cfg.log.quiet = true;
    cfg.log.metrics = "";
    cfg.checkpoint.dir = "";
    agree(MPI_COMM_WORLD, [&] {  // every rank finds it; one prints it
      if (without_comm && cfg.debug.skip_bucket_comm)
        throw InputError("mptrain profile", "--without-comm",
                         "the config already skips the bucket collectives (debug.skip_bucket_comm = true): nothing "
                         "to compare with");
    });
    Trainer t(cfg, world);
    // Warm-up: cuBLASLt plans, NCCL, first-touch allocations, the loss scale settling.
    for (int i = 0; i < warmup; ++i) t.train_step();
    auto unprofiled = [&](int n, std::vector<double>* secs) {
      for (int i = 0; i < n; ++i) secs->push_back(t.train_step().seconds);
    };
    StepRecord rec;
    auto profile_steps = [&](OpProfiler& p, int n) {
      installed_op_timer() = &p;
      for (int i = 0; i < n; ++i) {
        p.start_step();
        rec = t.train_step();
        p.stop_step();
      }
      installed_op_timer() = nullptr;
    };
    // Whether every rank holds the same parameters (collective).
    auto params_identical = [&] {
      const uint64_t h = t.optimizer().param_hash();
      std::vector<uint64_t> all(size_t(world.size));
      t.comm().host_all_gather(&h, all.data(), sizeof h);
      return std::all_of(all.begin(), all.end(), [&](uint64_t x) { return x == all[0]; });
    };
    std::vector<double> secs_with, secs_without;
    OpProfiler with(t.exec()), without(t.exec());
    bool diverged = false, rejoined = false;
    int device = -1;
    if (t.exec().cuda()) MPT_CUDA_CHECK(cudaGetDevice(&device));
    SideSampler clocks(device);
    if (!without_comm) {
      clocks.side(0);
      unprofiled(timed, &secs_with);
      profile_steps(with, profiled);
    } else {
      // Chunks of `chunk` steps alternate with, without, without, with, with, ... so that the clocks' drift
      // and swings (periods of ~30 steps on a power-capped GPU) fall on both sides alike. Each chunk starts
      // with one step that is not counted (after a switch, the parameter all-gather queued at the end of the
      // previous step still overlaps this step's forward), then its share of the unprofiled steps, then its
      // profiled steps.
      const int chunk = std::min(profiled, kCommCostChunk), chunks = (profiled + chunk - 1) / chunk;  // per side
      // A switch of sides and its one uncounted step; the check below switches the same way.
      auto switch_to = [&](bool off) {
        t.optimizer().set_skip_comm(off);
        clocks.side(-1);
        t.train_step();
      };
      int done[2] = {0, 0};
      for (int i = 0; i < 2 * chunks; ++i) {
        const bool off = i % 4 == 1 || i % 4 == 2;
        const int k = done[off]++;
        switch_to(off);
        clocks.side(off);
        unprofiled(timed * (k + 1) / chunks - timed * k / chunks, off ? &secs_without : &secs_with);
        profile_steps(off ? without : with, std::min(chunk, profiled - k * chunk));
      }
      // Then, after the measured steps (their host waits would stall the GPU in a chunk): one step without
      // the collectives, after which the ranks' parameters must differ, and one with them, after which they
      // must agree again.
      clocks.side(-1);
      if (world.size > 1) {
        switch_to(true);
        diverged = !params_identical();
        switch_to(false);
        rejoined = params_identical();
      }
      t.optimizer().set_skip_comm(false);
    }
    clocks.stop();
    const double unprofiled_ms = 1e3 * median(secs_with), unprofiled_without_ms = 1e3 * median(secs_without);
    const ProfileReport r = with.report();
    const std::vector<RankProfile> ranks = gather_profiles(t.comm(), r, unprofiled_ms, clocks.stat(0));
    ProfileReport r_without;
    std::vector<RankProfile> ranks_without;
    if (without_comm) {
      r_without = without.report();
      ranks_without = gather_profiles(t.comm(), r_without, unprofiled_without_ms, clocks.stat(1));
    }
    if (world.rank != 0) return;
    const int64_t tokens = int64_t(cfg.train.batch_size) * cfg.train.grad_accum * t.model().targets_per_example();
    std::printf("profile: %s | %s | %d rank(s), ZeRO-%d | batch %d x %d per rank | step %lld, loss %.4f%s\n",
                t.model().describe().c_str(), dtype_name(t.model_dtype()), world.size, cfg.zero.stage,
                cfg.train.batch_size, cfg.train.grad_accum, static_cast<long long>(rec.step), rec.loss,
                rec.skipped ? " (skipped)" : "");
    std::printf("unprofiled: median %.3f ms per step over %zu steps = %.0f %s/s per rank\n", unprofiled_ms,
                secs_with.size(), double(tokens) / (unprofiled_ms * 1e-3), t.language_model() ? "tokens" : "samples");
    if (ranks[0].clock.samples > 0) {
      std::printf("SM clock and board power (NVML every 10 ms, mean over these steps%s):",
                  without_comm ? ", with the collectives" : "");
      for (const RankProfile& p : ranks) std::printf(" rank %d %.0f MHz / %.0f W;", p.rank, p.clock.sm_mhz, p.clock.watts);
      std::printf("\n");
    }
    if (profiled > 1 || without_comm)
      std::printf("rows: ms per step, the mean of %d profiled steps on rank 0\n", int(r.steps));
    std::fputs(format_profile(r, ceil, unprofiled_ms).c_str(), stdout);
    std::fputs(format_gaps(r, 8).c_str(), stdout);
    if (world.size > 1) {
      std::printf("by rank (ms per step): profiled step / sum of the ops / not profiled:");
      for (const RankProfile& p : ranks)
        std::printf(" rank %d %.3f / %.3f / %.3f;", p.rank, p.step_ms, p.ops_ms, p.unprofiled_ms);
      std::printf("\n");
    }
    CommCost cost;
    if (without_comm) {
      cost = comm_cost(ranks, ranks_without);
      std::printf("\ncommunication's cost by op, ms per step, the mean over %d rank(s) of %d profiled steps a side "
                  "(%zu and %zu unprofiled), in chunks of %d alternating with, without, without, with, ... "
                  "('without': debug.skip_bucket_comm, no gradient reduce-scatter, no parameter all-gather)\n",
                  world.size, profiled, secs_with.size(), secs_without.size(), std::min(profiled, kCommCostChunk));
      std::fputs(format_comm_cost(cost, 25).c_str(), stdout);
      if (world.size > 1)
        std::printf("parameters across the ranks: %s after the steps without the collectives, %s after one step "
                    "with them again\n",
                    diverged ? "differ" : "identical (the collectives were not skipped?)",
                    rejoined ? "identical" : "still differ");
    }
    if (t.exec().cuda()) {
      const cuda::GemmTuningStats g = cuda::gemm_tuning_stats();
      std::printf("gemm tuning: %d plans tuned (%d took another algorithm than the heuristic's first), %d more "
                  "candidates run, %d of them bit-identical; %d plans not tuned (too large)%s\n",
                  g.plans_tuned, g.plans_changed, g.candidates_run, g.candidates_identical, g.skipped,
                  std::getenv("MPT_GEMM_TUNE") && std::string(std::getenv("MPT_GEMM_TUNE")) == "0" ? " [MPT_GEMM_TUNE=0]" : "");
    }
    std::fflush(stdout);
    if (a.opts.count("out")) {
      nlohmann::json j = profile_json(r, ceil, unprofiled_ms);
      j["model"] = t.model().describe();
      j["precision"] = dtype_name(t.model_dtype());
      j["ranks"] = world.size;
      j["by_rank"] = rank_profiles_json(ranks);
      if (without_comm) {
        nlohmann::json wo = profile_json(r_without, ceil, unprofiled_without_ms);
        wo["by_rank"] = rank_profiles_json(ranks_without);
        j["without_comm"] = wo;
        j["comm_cost"] = comm_cost_json(cost);
        if (world.size > 1) j["comm_cost"]["params"] = {{"diverged_without", diverged}, {"identical_after", rejoined}};
      }
      j["config"] = cfg.resolved;
      write_json_file(a.opts.at("out"), j);  // whole or not at all; a failure names the file
    }
  });
}

int bench_attention_command(int argc, char** argv) {
  // No config: the options are the shape. parse_command_args wants a positional CONFIG; take the options
  // by hand instead.
  int B = 16, T = 1024, H = 12, D = 64, iters = 20;
  std::string dtype = "bf16", out;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw InputError("mptrain bench-attention", k, "needs a value");
      return argv[++i];
    };
    auto as_int = [&](int lo) {
      const std::string v = value();
      char* end = nullptr;
      const long x = std::strtol(v.c_str(), &end, 10);
      if (v.empty() || *end || x < lo || x > (1 << 24)) throw InputError("mptrain bench-attention", k, "'" + v + "' is not a valid count");
      return int(x);
    };
    try {
      if (k == "--batch") B = as_int(1);
      else if (k == "--seq") T = as_int(1);
      else if (k == "--heads") H = as_int(1);
      else if (k == "--head-dim") D = as_int(1);
      else if (k == "--iters") iters = as_int(1);
      else if (k == "--dtype") dtype = value();
      else if (k == "--out") out = value();
      else throw InputError("mptrain bench-attention", k, "unknown option (--batch --seq --heads --head-dim --iters --dtype --out)");
    } catch (const InputError& e) {
      std::fprintf(stderr, "mptrain: %s\n", e.what());
      return kExitBadInput;
    }
  }
  DType t;
  if (!parse_dtype(dtype, &t)) {
    std::fprintf(stderr, "mptrain: bench-attention: --dtype: '%s' is not fp32, fp16 or bf16\n", dtype.c_str());
    return kExitBadInput;
  }
  if (cuda_device_count() < 1) {
    std::fprintf(stderr, "mptrain: bench-attention needs a CUDA device\n");
    return kExitBadInput;
  }
  MPT_CUDA_CHECK(cudaSetDevice(0));
  int code = 0;
  cudaStream_t st;
  MPT_CUDA_CHECK(cudaStreamCreate(&st));
  const size_t C = size_t(H) * D, n_qkv = size_t(B) * T * 3 * C, n_out = size_t(B) * T * C, n_bht = size_t(B) * H * T;
  const size_t es = dtype_size(t);
  // Random data (never zeros: the tensor cores run faster on them): q, k in [-2, 2), v and dout in [-1, 1).
  Rng rng(0x5EED0001u);
  std::vector<uint8_t> hq(n_qkv * es), hg(n_out * es);
  std::vector<float> tmp(3 * C);
  for (size_t r = 0; r < size_t(B) * T; ++r) {
    for (size_t i = 0; i < 3 * C; ++i) tmp[i] = i < 2 * C ? rng.uniform(-2.f, 2.f) : rng.uniform(-1.f, 1.f);
    from_float_n(tmp.data(), hq.data() + r * 3 * C * es, t, 3 * C);
    for (size_t i = 0; i < C; ++i) tmp[i] = rng.uniform(-1.f, 1.f);
    from_float_n(tmp.data(), hg.data() + r * C * es, t, C);
  }
  Buffer qkv(Device::CUDA, hq.size()), dout(Device::CUDA, hg.size()), o(Device::CUDA, n_out * es),
      lse(Device::CUDA, n_bht * 4), delta(Device::CUDA, n_bht * 4), dqkv(Device::CUDA, hq.size());
  copy_from_host(hq.data(), qkv.data(), Device::CUDA, hq.size(), reinterpret_cast<Stream>(st));
  copy_from_host(hg.data(), dout.data(), Device::CUDA, hg.size(), reinterpret_cast<Stream>(st));
  const Stream s = reinterpret_cast<Stream>(st);
  auto fwd = [&] { cuda::attention_forward(qkv.data(), o.data(), lse.as<float>(), t, B, T, H, D, s); };
  // The backward as training runs it (dS stored in a scratch buffer, dq from it), and without scratch (dq
  // recomputed).
  const size_t scratch_bytes = cuda::attention_backward_scratch_bytes(t, B, T, H, D);
  Buffer scratch(Device::CUDA, scratch_bytes);
  auto bwd = [&] {
    cuda::attention_backward(dout.data(), qkv.data(), o.data(), lse.as<float>(), delta.as<float>(), dqkv.data(), t, B,
                             T, H, D, s, scratch.data(), scratch_bytes);
  };
  auto bwd_recompute = [&] {
    cuda::attention_backward(dout.data(), qkv.data(), o.data(), lse.as<float>(), delta.as<float>(), dqkv.data(), t, B,
                             T, H, D, s);
  };
  auto time_ms = [&](auto&& f) {
    cudaEvent_t e0, e1;
    MPT_CUDA_CHECK(cudaEventCreate(&e0));
    MPT_CUDA_CHECK(cudaEventCreate(&e1));
    for (int i = 0; i < 3; ++i) f();
    std::vector<double> ms;
    for (int i = 0; i < iters; ++i) {
      MPT_CUDA_CHECK(cudaEventRecord(e0, st));
      f();
      MPT_CUDA_CHECK(cudaEventRecord(e1, st));
      MPT_CUDA_CHECK(cudaEventSynchronize(e1));
      float x = 0;
      MPT_CUDA_CHECK(cudaEventElapsedTime(&x, e0, e1));
      ms.push_back(x);
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    std::sort(ms.begin(), ms.end());
    return std::make_pair(median(ms), ms.back() - ms.front());
  };
  fwd();
  const auto [f_ms, f_spread] = time_ms(fwd);
  const auto [b_ms, b_spread] = time_ms(bwd);
  const auto [r_ms, r_spread] = scratch_bytes ? time_ms(bwd_recompute) : std::make_pair(b_ms, b_spread);
  const double flops = attention_flops(B, T, H, D);
  const char* impl = std::getenv("MPT_ATTENTION");
  const std::string kind = impl && std::string(impl) == "simt" ? "cuda-core" : (is_half(t) ? "tensor-core" : "cuda-core");
  const DeviceInfo dev = query_device(0);
  std::printf("attention %s B=%d T=%d H=%d D=%d causal, %s kernels on %s\n", dtype_name(t), B, T, H, D, kind.c_str(),
              dev.name.c_str());
  std::printf("  forward  %8.3f ms (spread %.3f) %7.1f TFLOP/s\n", f_ms, f_spread, flops / (f_ms * 1e-3) * 1e-12);
  std::printf("  backward %8.3f ms (spread %.3f) %7.1f TFLOP/s (counted as 2.5x the forward's FLOPs)\n", b_ms, b_spread,
              2.5 * flops / (b_ms * 1e-3) * 1e-12);
  if (scratch_bytes)
    std::printf("  backward %8.3f ms (spread %.3f) %7.1f TFLOP/s without the %.0f MiB dS scratch (dq recomputed)\n",
                r_ms, r_spread, 2.5 * flops / (r_ms * 1e-3) * 1e-12, double(scratch_bytes) / (1 << 20));
  if (!out.empty()) {
    nlohmann::json j = {{"impl", "mptrain " + kind}, {"dtype", dtype_name(t)}, {"B", B}, {"T", T}, {"H", H}, {"D", D},
                        {"device", dev.name}, {"forward_ms", f_ms}, {"backward_ms", b_ms},
                        {"forward_tflops", flops / (f_ms * 1e-3) * 1e-12},
                        {"backward_tflops", 2.5 * flops / (b_ms * 1e-3) * 1e-12},
                        {"backward_recompute_ms", r_ms}, {"scratch_bytes", scratch_bytes}};
    std::ofstream f(out);
    f << j.dump(2) << "\n";
    if (!f) {
      std::fprintf(stderr, "mptrain bench-attention: %s: --out: cannot be written\n", out.c_str());
      code = kExitBadInput;
    }
  }
  MPT_CUDA_CHECK(cudaStreamSynchronize(st));
  MPT_CUDA_CHECK(cudaStreamDestroy(st));
  return code;
}

}  // namespace mpt
