// `mptrain bench CONFIG`: the step time of a training configuration at this world size, for the scaling
// benchmark (launch/bench.sh runs it at each GPU count and joins the rows). Warm-up steps are left out;
// over the timed steps it reports the median and spread of the step time (the slowest rank's, per step),
// tokens/s in all and per rank, the exposed communication per step (src/core/comm_exposure.h), peak memory and
// MFU. One JSON row per run (--out), one line on stdout.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <string>
#include <vector>

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

}  // namespace

int bench_command(int argc, char** argv) {
  CommandArgs a;
  if (!parse_command_args(argc, argv, {"warmup", "steps", "out", "label", "peak-tflops"}, {}, &a)) return kExitBadInput;
  int warmup = 0, timed = 0;
  double peak_opt = 0;
  if (!int_option(a, "warmup", 5, 1, &warmup) || !int_option(a, "steps", 20, 2, &timed) ||
      !double_option(a, "peak-tflops", 0, &peak_opt))
    return kExitBadInput;
  return run_config_command(a, [&](Config& cfg, const WorldInfo& world) {
    cfg.log.quiet = true;
    cfg.log.metrics = "";
    cfg.checkpoint.dir = "";
    cfg.train.eval_every = 0;
    cfg.train.steps = warmup + timed;
    Trainer t(cfg, world);
    t.optimizer().exposure().enable(t.exec());
    for (int i = 0; i < warmup; ++i) t.train_step();
    t.optimizer().exposure().take_ms();
    // Exposure is read once after the timed steps: reading it per step would synchronize the device between
    // steps, which a training step no longer does (the update overlaps the next step's host work).
    std::vector<double> step_s(static_cast<size_t>(timed)), wait_s(static_cast<size_t>(timed));
    int skipped = 0;
    for (int i = 0; i < timed; ++i) {
      const StepRecord r = t.train_step();
      step_s[size_t(i)] = r.seconds;
      wait_s[size_t(i)] = r.stats_seconds;
      skipped += r.skipped ? 1 : 0;
    }
    // Per step, the slowest rank: a step ends for the job when its last rank is done.
    std::array<double, kExposureSites> by_site{}, site_max{};
    const double exposed_mean = t.optimizer().exposure().take_ms(&by_site) / timed;
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
        {"ms_per_step_by_rank", rank_ms},            // each rank's own median step time
        {"host_wait_ms", 1e3 * wait_min},            // median host wait in the statistics readback (smallest rank)
        {"skip_bucket_comm", cfg.debug.skip_bucket_comm},
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
    std::printf("\n");
    std::fflush(stdout);
    if (a.opts.count("out")) {
      const std::string path = a.opts.at("out");
      std::ofstream f(path);
      f << row.dump(2) << "\n";
      if (!f) throw InputError(path, "--out", "cannot be written");
    }
  });
}

}  // namespace mpt
