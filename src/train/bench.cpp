// `mptrain bench CONFIG`: the step time of a training configuration at this world size, for the scaling
// benchmark (launch/bench.sh runs it at each GPU count and joins the rows). Warm-up steps are left out;
// over the timed steps it reports the median and spread of the step time (the slowest rank's, per step),
// tokens/s in all and per rank, the exposed communication per step (src/core/comm_exposure.h), peak memory and
// MFU. One JSON row per run (--out), one line on stdout.
#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <unistd.h>

#include <cuda_runtime_api.h>
#include <mpi.h>
#include <nccl.h>
#include <nlohmann/json.hpp>

#include "comm/comm_internal.h"  // MPT_MPI_CHECK
#include "kernels/device_info.h"
#include "src/core/buffer.h"
#include "src/core/check.h"
#include "src/train/commands.h"
#include "src/train/metrics.h"
#include "src/train/train.h"

namespace mpt {

namespace {

double quantile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double pos = q * double(v.size() - 1);
  const size_t lo = size_t(pos), hi = std::min(v.size() - 1, lo + 1);
  return v[lo] + (pos - double(lo)) * (v[hi] - v[lo]);
}

nlohmann::json versions() {
  nlohmann::json v;
  int rt = 0, drv = 0, nccl = 0;
  if (cudaRuntimeGetVersion(&rt) == cudaSuccess) v["cuda_runtime"] = std::to_string(rt / 1000) + "." + std::to_string(rt % 1000 / 10);
  if (cudaDriverGetVersion(&drv) == cudaSuccess && drv > 0) v["cuda_driver"] = std::to_string(drv / 1000) + "." + std::to_string(drv % 1000 / 10);
  if (ncclGetVersion(&nccl) == ncclSuccess) v["nccl"] = std::to_string(nccl / 10000) + "." + std::to_string(nccl / 100 % 100) + "." + std::to_string(nccl % 100);
  char mpi[MPI_MAX_LIBRARY_VERSION_STRING] = {0};
  int len = 0;
  if (MPI_Get_library_version(mpi, &len) == MPI_SUCCESS) {
    std::string s(mpi, size_t(std::max(len, 0)));
    v["mpi"] = s.substr(0, s.find_first_of(",\n"));
  }
  return v;
}

// --rendezvous DIR: independent runs (launch/bench.sh --independent) start timing together. Each run, once
// warmed up, leaves a file "ready.<host>.<pid>" in DIR; this counts them.
int rendezvous_ready(const std::string& dir) {
  std::error_code ec;
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec))
    if (e.path().filename().string().rfind("ready.", 0) == 0) ++n;
  return n;
}

}  // namespace

int bench_command(int argc, char** argv) {
  CommandArgs a;
  if (!parse_command_args(argc, argv, {"warmup", "warmup-seconds", "steps", "out", "label", "peak-tflops", "steps-out",
                                       "rendezvous", "rendezvous-count", "rendezvous-timeout"}, {}, &a))
    return kExitBadInput;
  int warmup = 0, timed = 0, rv_count = 0;
  double peak_opt = 0, warmup_s_opt = -1, rv_timeout = 0;
  if (!int_option(a, "warmup", 5, 1, &warmup) || !int_option(a, "steps", 20, 2, &timed) ||
      !double_option(a, "peak-tflops", 0, &peak_opt) || !double_option(a, "warmup-seconds", -1, &warmup_s_opt, true) ||
      !int_option(a, "rendezvous-count", 1, 1, &rv_count) || !double_option(a, "rendezvous-timeout", 120, &rv_timeout))
    return kExitBadInput;
  const std::string rv_dir = a.opts.count("rendezvous") ? a.opts.at("rendezvous") : "";
  if (rv_dir.empty() != !a.opts.count("rendezvous-count")) {
    std::fprintf(stderr, "mptrain bench: --rendezvous DIR and --rendezvous-count N go together\n");
    return kExitBadInput;
  }
  if (!rv_dir.empty() && !std::filesystem::is_directory(rv_dir)) {
    std::fprintf(stderr, "mptrain bench: --rendezvous %s: not a directory\n", rv_dir.c_str());
    return kExitBadInput;
  }
  return run_config_command(a, [&](Config& cfg, const WorldInfo& world) {
    cfg.log.quiet = true;
    cfg.log.metrics = "";
    cfg.checkpoint.dir = "";
    cfg.train.eval_every = 0;
    cfg.train.steps = warmup + timed;
    Trainer t(cfg, world);
    t.optimizer().exposure().enable(t.exec());
    // Warm-up: --warmup steps, then more for --warmup-seconds (default 5 s on GPUs, none on CPU ranks). A GPU
    // at its power limit runs its first second or so of load at boost clocks, then its power controller pulls
    // the clocks down (with an overshoot) and settles after a few seconds: steps timed before that are faster
    // than training's.
    const double warmup_s = warmup_s_opt >= 0 ? warmup_s_opt : (t.exec().cuda() ? 5.0 : 0.0);
    const auto wall0 = std::chrono::steady_clock::now();
    for (int i = 0; i < warmup; ++i) t.train_step();
    const auto w0 = std::chrono::steady_clock::now();
    auto since_w0 = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count(); };
    // Rank 0's clock decides, so that every rank runs the same number of steps.
    while (warmup_s > 0) {
      int more = world.rank == 0 && since_w0() < warmup_s ? 1 : 0;
      MPT_MPI_CHECK(MPI_Bcast(&more, 1, MPI_INT, 0, MPI_COMM_WORLD));
      if (!more) break;
      t.train_step();
      ++warmup;
    }
    // --rendezvous: keep warming up until all --rendezvous-count runs are warmed up (each leaves its file),
    // so that their timed steps run at the same time; after --rendezvous-timeout seconds time alone, and say so.
    double rv_wait = 0;
    bool rv_met = true;
    if (!rv_dir.empty()) {
      agree(MPI_COMM_WORLD, [&] {  // a failure on rank 0 ends every rank with it
        if (world.rank != 0) return;
        char host[256] = {0};
        gethostname(host, sizeof host - 1);
        const std::string mine = rv_dir + "/ready." + host + "." + std::to_string(getpid());
        if (!std::ofstream(mine)) throw InputError(rv_dir, "--rendezvous", "cannot be written");
      });
      const auto r0 = std::chrono::steady_clock::now();
      auto since_r0 = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - r0).count(); };
      for (;;) {
        int state = 0;  // 0: all ready, 1: wait on, 2: timed out
        if (world.rank == 0) state = rendezvous_ready(rv_dir) >= rv_count ? 0 : since_r0() < rv_timeout ? 1 : 2;
        MPT_MPI_CHECK(MPI_Bcast(&state, 1, MPI_INT, 0, MPI_COMM_WORLD));
        if (state != 1) {
          rv_met = state == 0;
          break;
        }
        t.train_step();
        ++warmup;
      }
      rv_wait = since_r0();
      if (!rv_met && world.rank == 0)
        std::fprintf(stderr, "mptrain bench: --rendezvous %s: %d of %d runs ready after %.1f s; timing without the rest\n",
                     rv_dir.c_str(), rendezvous_ready(rv_dir), rv_count, rv_timeout);
    }
    const double warmup_took = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
    t.optimizer().exposure().take_ms();
    // Exposure is read once after the timed steps: reading it per step would synchronize the device between
    // steps, which a training step no longer does (the update overlaps the next step's host work).
    std::vector<double> step_s(static_cast<size_t>(timed)), wait_s(static_cast<size_t>(timed)), end_s(static_cast<size_t>(timed));
    int skipped = 0;
    // The GPU's SM clock during each step and its energy counter around the timed steps (NVML; none on CPU).
    // The clock is sampled every 10 ms by a thread of its own, never between steps: an NVML query can hold
    // its caller for milliseconds, and a rank held between steps makes every other rank wait for it at the
    // next collective, which would show up as lockstep loss that training does not have.
    const int dev_index = t.exec().cuda() ? world.local_rank : -1;
    unsigned long long reasons = 0;
    const PowerSample p0 = sample_power(dev_index);
    auto unix_now = [] {
      return 1e-6 * double(std::chrono::duration_cast<std::chrono::microseconds>(
                               std::chrono::system_clock::now().time_since_epoch()).count());
    };
    std::vector<std::pair<double, double>> clock_log;  // (unix time, SM MHz), written by the sampler alone
    std::atomic<bool> sampling{p0.ok};
    std::thread sampler;
    if (p0.ok)
      sampler = std::thread([&] {
        while (sampling.load()) {
          const PowerSample p = sample_power(dev_index);
          if (p.ok) {
            clock_log.emplace_back(unix_now(), double(p.sm_mhz));
            reasons |= p.reasons;
          }
          std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
      });
    const auto timed0 = std::chrono::steady_clock::now();
    const double timed0_unix = unix_now();
    try {
      for (int i = 0; i < timed; ++i) {
        const StepRecord r = t.train_step();
        t.optimizer().exposure().end_step();
        end_s[size_t(i)] = unix_now();
        step_s[size_t(i)] = r.seconds;
        wait_s[size_t(i)] = r.stats_seconds;
        skipped += r.skipped ? 1 : 0;
      }
    } catch (...) {
      sampling = false;
      if (sampler.joinable()) sampler.join();
      throw;
    }
    const double timed_took = std::chrono::duration<double>(std::chrono::steady_clock::now() - timed0).count();
    sampling = false;
    if (sampler.joinable()) sampler.join();
    // Each step's clock: the mean of the samples taken during it, else the sample nearest its end.
    std::vector<double> mhz;
    if (p0.ok && !clock_log.empty()) {
      size_t k = 0;
      for (int i = 0; i < timed; ++i) {
        const double lo = i == 0 ? timed0_unix : end_s[size_t(i) - 1], hi = end_s[size_t(i)];
        while (k < clock_log.size() && clock_log[k].first <= lo) ++k;
        double sum = 0;
        int n = 0;
        size_t j = k;
        for (; j < clock_log.size() && clock_log[j].first <= hi; ++j, ++n) sum += clock_log[j].second;
        if (n == 0) {
          const size_t near = std::min(j, clock_log.size() - 1);
          sum = clock_log[near].second;
          n = 1;
        }
        mhz.push_back(sum / n);
      }
    }
    // Per rank: median SM clock, mean board power over the timed steps (energy counter; else the last
    // reading), the power limit and the clock ceiling; -1 where NVML has nothing.
    std::array<double, 4> power_mine{-1, -1, -1, -1};
    if (p0.ok) {
      const PowerSample p1 = sample_power(dev_index);
      power_mine[0] = quantile(mhz, 0.5);
      power_mine[1] = p1.energy_joules > p0.energy_joules && timed_took > 0
                          ? (p1.energy_joules - p0.energy_joules) / timed_took : p1.watts;
      power_mine[2] = p1.limit_watts;
      power_mine[3] = p1.sm_max_mhz;
    }
    std::vector<double> power_all(4 * size_t(world.size));
    MPT_MPI_CHECK(MPI_Gather(power_mine.data(), 4, MPI_DOUBLE, power_all.data(), 4, MPI_DOUBLE, 0, MPI_COMM_WORLD));
    unsigned long long reasons_all = 0;
    MPT_MPI_CHECK(MPI_Reduce(&reasons, &reasons_all, 1, MPI_UNSIGNED_LONG_LONG, MPI_BOR, 0, MPI_COMM_WORLD));
    // Per step, the slowest rank: a step ends for the job when its last rank is done.
    std::array<double, kExposureSites> by_site{}, site_max{};
    std::vector<double> exposed_step;
    const double exposed_mean = t.optimizer().exposure().take_ms(&by_site, &exposed_step) / timed;
    // Per step, every rank's exposure: at a collective the rank that arrives last waits only for the
    // collective itself, the others also for it. The smallest rank's exposure in a step is communication
    // that no rank hid; the largest minus the smallest is time spent waiting for a slower rank (jitter
    // between GPUs, not communication).
    std::vector<double> exposed_all(size_t(world.size) * size_t(timed));
    exposed_step.resize(size_t(timed));
    MPT_MPI_CHECK(MPI_Gather(exposed_step.data(), timed, MPI_DOUBLE, exposed_all.data(), timed, MPI_DOUBLE, 0, MPI_COMM_WORLD));
    double exposed_min_rank = 0, peer_wait = 0;
    for (int i = 0; i < timed; ++i) {
      double lo = exposed_all[size_t(i)], hi = lo;
      for (int r = 1; r < world.size; ++r) {
        lo = std::min(lo, exposed_all[size_t(r) * size_t(timed) + size_t(i)]);
        hi = std::max(hi, exposed_all[size_t(r) * size_t(timed) + size_t(i)]);
      }
      exposed_min_rank += lo / timed;
      peer_wait += (hi - lo) / timed;
    }
    for (double& x : by_site) x /= timed;
    std::vector<double> step_max(step_s.size());
    double exp_max = 0;
    MPT_MPI_CHECK(MPI_Allreduce(step_s.data(), step_max.data(), timed, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
    MPT_MPI_CHECK(MPI_Allreduce(&exposed_mean, &exp_max, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
    MPT_MPI_CHECK(MPI_Allreduce(by_site.data(), site_max.data(), kExposureSites, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
    // Each rank's own median: the slowest rank per step is above every rank's median when the ranks'
    // step times jitter independently (what waiting for each other at the statistics all-reduce costs).
    const double own_median = quantile(step_s, 0.5);
    // The host's wait in the statistics readback, the smallest rank's median: how far the host runs ahead.
    const double own_wait = quantile(wait_s, 0.5);
    double wait_min = 0;
    MPT_MPI_CHECK(MPI_Allreduce(&own_wait, &wait_min, 1, MPI_DOUBLE, MPI_MIN, MPI_COMM_WORLD));
    // --steps-out: every rank's host time per step, its wait in the statistics readback, its exposure and its
    // GPU's mean SM clock during the step (0 without NVML), for the spread's causes.
    std::vector<double> all_step, all_wait, all_mhz;
    if (a.opts.count("steps-out")) {
      all_step.resize(size_t(world.size) * size_t(timed));
      all_wait.resize(all_step.size());
      all_mhz.resize(all_step.size());
      std::vector<double> mine = mhz;
      mine.resize(size_t(timed), 0.0);  // 0: no NVML
      MPT_MPI_CHECK(MPI_Gather(mine.data(), timed, MPI_DOUBLE, all_mhz.data(), timed, MPI_DOUBLE, 0, MPI_COMM_WORLD));
      MPT_MPI_CHECK(MPI_Gather(step_s.data(), timed, MPI_DOUBLE, all_step.data(), timed, MPI_DOUBLE, 0, MPI_COMM_WORLD));
      MPT_MPI_CHECK(MPI_Gather(wait_s.data(), timed, MPI_DOUBLE, all_wait.data(), timed, MPI_DOUBLE, 0, MPI_COMM_WORLD));
    }
    std::vector<double> rank_median(size_t(world.size));
    MPT_MPI_CHECK(MPI_Allgather(&own_median, 1, MPI_DOUBLE, rank_median.data(), 1, MPI_DOUBLE, MPI_COMM_WORLD));
    unsigned long long peak_local = peak_allocated_bytes(t.exec().device) + t.exec().workspace_bytes, peak_max = 0;
    unsigned long long used_local = t.exec().cuda() ? peak_device_memory() : 0, used_max = 0;
    MPT_MPI_CHECK(MPI_Allreduce(&peak_local, &peak_max, 1, MPI_UNSIGNED_LONG_LONG, MPI_MAX, MPI_COMM_WORLD));
    MPT_MPI_CHECK(MPI_Allreduce(&used_local, &used_max, 1, MPI_UNSIGNED_LONG_LONG, MPI_MAX, MPI_COMM_WORLD));
    if (world.rank != 0) return;

    const bool lm = t.language_model();
    const int64_t per_rank = int64_t(cfg.train.batch_size) * cfg.train.grad_accum * (lm ? t.model().targets_per_example() : 1);
    const double ms = 1e3 * quantile(step_max, 0.5);
    const double units_s = double(per_rank) * world.size / (ms * 1e-3);
    // Model FLOPs per token or sample and the device's data-sheet peak: the figures of the progress line's MFU.
    const double n_params = double(t.optimizer().num_elements());
    const double flops_per_unit = train_flops_per_unit(cfg.model, int64_t(n_params));
    DeviceInfo dev;
    if (t.exec().cuda()) dev = query_device(world.local_rank);
    const double peak = peak_opt > 0 ? peak_opt : (t.exec().cuda() ? peak_tflops(dev.name, t.model_dtype(), t.exec().allow_tf32) : 0);
    const double achieved_tflops = flops_per_unit * units_s / world.size * 1e-12;
    const double exp_ms = exp_max;  // mean per step over the timed steps, the largest rank's
    char date[32];
    const std::time_t now = std::time(nullptr);
    std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));

    nlohmann::json by_site_json = nlohmann::json::object(), rank_ms = nlohmann::json::array();
    for (int k = 0; k < kExposureSites; ++k) by_site_json[kExposureSiteNames[k]] = site_max[size_t(k)];
    for (double x : rank_median) rank_ms.push_back(1e3 * x);
    // The GPUs' clocks and power: a power-capped GPU's step time follows its SM clock.
    nlohmann::json mhz_by_rank = nlohmann::json::array(), watts_by_rank = nlohmann::json::array();
    bool have_power = true;
    for (int r = 0; r < world.size; ++r) {
      const double* q = &power_all[4 * size_t(r)];
      have_power = have_power && q[0] >= 0;
      mhz_by_rank.push_back(q[0] >= 0 ? nlohmann::json(q[0]) : nlohmann::json(nullptr));
      watts_by_rank.push_back(q[1] >= 0 ? nlohmann::json(q[1]) : nlohmann::json(nullptr));
    }
    const nlohmann::json none(nullptr);
    nlohmann::json row = {
        {"system", "mptrain"},
        {"label", a.opts.count("label") ? a.opts.at("label")
                                        : std::string(dtype_name(t.model_dtype())) + " ZeRO-" + std::to_string(cfg.zero.stage)},
        {"gpus", t.exec().cuda() ? world.size : 0},
        {"ranks", world.size},
        {"device", t.exec().cuda() ? dev.name : std::string("cpu")},
        {"model", t.model().describe()},
        {"precision", dtype_name(t.model_dtype())},
        {"zero_stage", cfg.zero.stage},
        {"zero_offload", cfg.zero.offload},
        {"zero_overlap", cfg.zero.overlap},
        {"zero_symmetric_memory", cfg.zero.symmetric_memory},
        {"zero_reorder_backward", cfg.zero.reorder_backward},
        {"zero_copy_engine_reduce", cfg.zero.copy_engine_reduce},
        {"batch_per_rank", cfg.train.batch_size},
        {"grad_accum", cfg.train.grad_accum},
        {"unit", lm ? "tokens" : "samples"},
        {"warmup_steps", warmup},
        {"timed_steps", timed},
        {"skipped_steps", skipped},
        {"ms_per_step", ms},
        {"ms_p10", 1e3 * quantile(step_max, 0.1)},
        {"ms_p90", 1e3 * quantile(step_max, 0.9)},
        {"ms_min", 1e3 * quantile(step_max, 0.0)},
        {"ms_max", 1e3 * quantile(step_max, 1.0)},
        {"tokens_per_s", units_s},
        {"tokens_per_s_per_gpu", units_s / world.size},
        {"exposed_comm_ms", exp_ms},
        {"exposed_comm_pct", 100.0 * exp_ms / ms},
        {"exposed_comm_ms_by_site", by_site_json},   // each site's mean per step, the largest rank's
        {"exposed_comm_ms_min_rank", exposed_min_rank},  // mean over steps of the step's smallest rank's exposure
        {"peer_wait_ms", peer_wait},                  // mean over steps of largest minus smallest rank's
        {"ms_per_step_by_rank", rank_ms},            // each rank's own median step time
        {"host_wait_ms", 1e3 * wait_min},            // median host wait in the statistics readback (smallest rank)
        {"skip_bucket_comm", cfg.debug.skip_bucket_comm},
        {"rendezvous_wait_s", rv_dir.empty() ? nlohmann::json(nullptr) : nlohmann::json(rv_wait)},
        {"rendezvous_met", rv_dir.empty() ? nlohmann::json(nullptr) : nlohmann::json(rv_met)},
        {"warmup_seconds", warmup_took},              // the warm-up as run (all --warmup steps and any added)
        {"sm_clock_mhz_by_rank", mhz_by_rank},        // median SM clock over the timed steps (NVML)
        {"power_w_by_rank", watts_by_rank},           // mean board power over the timed steps
        {"power_limit_w", have_power ? nlohmann::json(power_all[2]) : none},
        {"sm_clock_max_mhz", have_power ? nlohmann::json(power_all[3]) : none},
        {"clock_limited_by", have_power ? nlohmann::json(clock_reason_names(reasons_all)) : none},
        {"peak_mem_gib", double(peak_max) / double(1ull << 30)},
        {"device_used_gib", double(used_max) / double(1ull << 30)},
        {"params", int64_t(n_params)},
        {"model_flops_per_unit", flops_per_unit},
        {"achieved_tflops_per_gpu", achieved_tflops},
        {"peak_tflops", peak > 0 ? nlohmann::json(peak) : nlohmann::json(nullptr)},
        {"mfu", peak > 0 ? nlohmann::json(achieved_tflops / peak) : nlohmann::json(nullptr)},
        {"date", date},
        {"versions", versions()},
        {"config", cfg.resolved},
    };
    std::printf("bench: %s | %s | %d rank(s)%s | %.2f ms/step (p10 %.2f, p90 %.2f) | %.0f %s/s (%.0f per rank) | "
                "exposed comm %.3f ms (%.1f%%) | peak %.2f GiB | MFU %s\n",
                row["model"].get<std::string>().c_str(), row["label"].get<std::string>().c_str(), world.size,
                t.exec().cuda() ? (" on " + dev.name).c_str() : " on CPU", ms, row["ms_p10"].get<double>(),
                row["ms_p90"].get<double>(), units_s, lm ? "tokens" : "samples", units_s / world.size, exp_ms,
                100.0 * exp_ms / ms, double(peak_max) / double(1ull << 30),
                peak > 0 ? (std::to_string(int(std::lround(1000 * achieved_tflops / peak)) / 10.0).substr(0, 4) + "%").c_str() : "n/a");
    std::printf("bench: exposed by site (ms/step):");
    for (int k = 0; k < kExposureSites; ++k) std::printf(" %s %.3f", kExposureSiteNames[k], site_max[size_t(k)]);
    std::printf(" | each rank's median ms/step:");
    for (double x : rank_median) std::printf(" %.2f", 1e3 * x);
    std::printf(" | host wait in the readback %.2f ms", 1e3 * wait_min);
    if (world.size > 1)
      std::printf(" | per step, the least exposed rank %.3f ms, the most exposed rank's extra %.3f ms (waiting for a "
                  "slower rank)", exposed_min_rank, peer_wait);
    std::printf(" | warm-up %d steps, %.1f s", warmup, warmup_took);
    if (have_power) {
      std::printf(" | SM clock (MHz of %.0f) and power (W of %.0f) by rank:", power_all[3], power_all[2]);
      for (int r = 0; r < world.size; ++r) std::printf(" %.0f/%.0f", power_all[4 * size_t(r)], power_all[4 * size_t(r) + 1]);
      const std::string why = clock_reason_names(reasons_all);
      std::printf("; clocks limited by: %s", why.empty() ? "nothing" : why.c_str());
    }
    std::printf("\n");
    std::fflush(stdout);
    if (a.opts.count("out")) {
      const std::string path = a.opts.at("out");
      std::ofstream f(path);
      f << row.dump(2) << "\n";
      if (!f) throw InputError(path, "--out", "cannot be written");
    }
    if (a.opts.count("steps-out")) {
      nlohmann::json steps = nlohmann::json::array(), waits = nlohmann::json::array();
      nlohmann::json exposed = nlohmann::json::array(), clocks = nlohmann::json::array();
      for (int r = 0; r < world.size; ++r) {
        nlohmann::json s1 = nlohmann::json::array(), w1 = nlohmann::json::array(), e1 = nlohmann::json::array(),
                       c1 = nlohmann::json::array();
        for (int i = 0; i < timed; ++i) {
          const size_t k = size_t(r) * size_t(timed) + size_t(i);
          s1.push_back(1e3 * all_step[k]);
          w1.push_back(1e3 * all_wait[k]);
          e1.push_back(exposed_all[k]);
          c1.push_back(all_mhz[k]);
        }
        steps.push_back(s1);
        waits.push_back(w1);
        exposed.push_back(e1);
        clocks.push_back(c1);
      }
      const std::string path = a.opts.at("steps-out");
      std::ofstream f(path);
      // Rank 0's wall-clock end of each step (Unix seconds), to line the steps up with outside samples.
      f << nlohmann::json{{"step_ms", steps}, {"stats_wait_ms", waits}, {"exposed_ms", exposed}, {"sm_mhz", clocks}, {"end_unix_s", end_s}}.dump() << "\n";
      if (!f) throw InputError(path, "--steps-out", "cannot be written");
    }
  });
}

}  // namespace mpt
