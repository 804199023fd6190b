// `mptrain bench-comm`: the latency and bandwidth of the collectives a training step runs (all-reduce,
// reduce-scatter, all-gather) at sizes from a few KiB to hundreds of MiB, on the communicator training uses
// (NCCL on GPUs, MPI on CPU ranks), and an alpha-beta fit per collective: t(S) = alpha + f * S / busbw, with
// S the full buffer in bytes and f the ring algorithm's traffic factor (all-reduce 2(N-1)/N, reduce-scatter
// and all-gather (N-1)/N). launch/project.py projects step times to large clusters from these fits.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>
#include <mpi.h>
#include <nlohmann/json.hpp>

#include "comm/bootstrap.h"
#include "comm/comm_internal.h"  // MPT_MPI_CHECK
#include "kernels/device_info.h"
#include "src/core/buffer.h"
#include "src/core/check.h"
#include "src/train/commands.h"
#include "src/core/cuda_check.h"

namespace mpt {

namespace {

double median_of(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

// Least squares of t = a + b x, each point weighted by 1 / t^2 (relative error): small sizes fix the
// latency, large ones the bandwidth.
std::pair<double, double> fit_line(const std::vector<double>& x, const std::vector<double>& t) {
  double sw = 0, sx = 0, st = 0, sxx = 0, sxt = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double w = 1.0 / (t[i] * t[i]);
    sw += w; sx += w * x[i]; st += w * t[i]; sxx += w * x[i] * x[i]; sxt += w * x[i] * t[i];
  }
  const double det = sw * sxx - sx * sx;
  if (det <= 0) return {0, 0};
  const double b = (sw * sxt - sx * st) / det;
  return {(st - b * sx) / sw, b};
}

}  // namespace

int bench_comm_command(int argc, char** argv) {
  std::string device = "auto", dtype_s = "bf16", out;
  long long min_bytes = 4096, max_bytes = 256ll << 20;
  int iters = 20;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (k == "--help" || k == "-h") {
      std::printf("usage: mpirun -np N mptrain bench-comm [--device auto|cuda|cpu] [--dtype bf16|fp16|fp32]\n"
                  "         [--min-bytes 4096] [--max-bytes 268435456] [--iters 20] [--out FILE.json]\n");
      return 0;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "mptrain: bench-comm: %s needs a value\n", k.c_str());
      return kExitBadInput;
    }
    const std::string v = argv[++i];
    char* end = nullptr;
    const long long x = std::strtoll(v.c_str(), &end, 10);
    const bool num = !v.empty() && *end == 0;
    if (k == "--device" && (v == "auto" || v == "cuda" || v == "cpu")) device = v;
    else if (k == "--dtype") dtype_s = v;
    else if (k == "--out") out = v;
    else if (k == "--min-bytes" && num && x >= 4 && x <= (1ll << 34)) min_bytes = x;
    else if (k == "--max-bytes" && num && x >= 4 && x <= (1ll << 34)) max_bytes = x;
    else if (k == "--iters" && num && x >= 1 && x <= 100000) iters = int(x);
    else {
      std::fprintf(stderr, "mptrain: bench-comm: %s %s: unknown option or bad value\n", k.c_str(), v.c_str());
      return kExitBadInput;
    }
  }
  DType t;
  if (!parse_dtype(dtype_s, &t)) {
    std::fprintf(stderr, "mptrain: bench-comm: --dtype: '%s' is not fp32, fp16 or bf16\n", dtype_s.c_str());
    return kExitBadInput;
  }
  if (min_bytes > max_bytes) {
    std::fprintf(stderr, "mptrain: bench-comm: --min-bytes is above --max-bytes\n");
    return kExitBadInput;
  }
  const WorldInfo world = mpi_init(&argc, &argv);
  const bool cuda = device == "cuda" || (device == "auto" && cuda_device_count() > 0);
  if (cuda && cuda_device_count() < 1) {
    if (world.rank == 0) std::fprintf(stderr, "mptrain: bench-comm: --device cuda, but no CUDA device\n");
    mpi_finalize();
    return kExitBadInput;
  }
  const Device dev = cuda ? Device::CUDA : Device::CPU;
  Stream stream = nullptr;
  if (cuda) {
    MPT_CUDA_CHECK(cudaSetDevice(world.local_rank % cuda_device_count()));
    cudaStream_t s;
    MPT_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    stream = reinterpret_cast<Stream>(s);
  }
  const int N = world.size;
  nlohmann::json rows = nlohmann::json::array(), fits = nlohmann::json::object();
  {
    std::unique_ptr<Communicator> comm = cuda ? make_nccl_communicator(world, stream) : make_mpi_communicator();
    const size_t es = dtype_size(t);
    // Sizes: the full buffer, a multiple of N elements, from min to max by factors of 4.
    std::vector<size_t> sizes;
    for (long long b = min_bytes; b <= max_bytes; b *= 4) {
      const size_t n = std::max<size_t>(size_t(N), size_t(b) / es / size_t(N) * size_t(N));
      sizes.push_back(n);
    }
    Buffer a(dev, sizes.back() * es), b(dev, sizes.back() * es);
    a.zero(stream);
    b.zero(stream);
    cudaEvent_t e0 = nullptr, e1 = nullptr;
    if (cuda) {
      MPT_CUDA_CHECK(cudaEventCreate(&e0));
      MPT_CUDA_CHECK(cudaEventCreate(&e1));
    }
    const char* ops[3] = {"all_reduce", "reduce_scatter", "all_gather"};
    const double factor[3] = {2.0 * (N - 1) / N, double(N - 1) / N, double(N - 1) / N};
    for (int op = 0; op < 3; ++op) {
      std::vector<double> xs, ts;
      for (size_t n : sizes) {
        auto run = [&] {
          if (op == 0) comm->all_reduce(a.data(), b.data(), n, t, ReduceOp::Sum, stream);
          else if (op == 1) comm->reduce_scatter(a.data(), b.data(), n / size_t(N), t, stream);
          else comm->all_gather(a.data(), b.data(), n / size_t(N), t, stream);
        };
        for (int w = 0; w < 3; ++w) run();
        if (cuda) MPT_CUDA_CHECK(cudaStreamSynchronize(reinterpret_cast<cudaStream_t>(stream)));
        std::vector<double> us;
        for (int i = 0; i < iters; ++i) {
          comm->barrier();
          if (cuda) {
            MPT_CUDA_CHECK(cudaEventRecord(e0, reinterpret_cast<cudaStream_t>(stream)));
            run();
            MPT_CUDA_CHECK(cudaEventRecord(e1, reinterpret_cast<cudaStream_t>(stream)));
            MPT_CUDA_CHECK(cudaEventSynchronize(e1));
            float ms = 0;
            MPT_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
            us.push_back(1e3 * ms);
          } else {
            const auto t0 = std::chrono::steady_clock::now();
            run();
            us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
          }
        }
        double mine = median_of(us), slowest = 0;
        MPT_MPI_CHECK(MPI_Allreduce(&mine, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
        const double bytes = double(n * es);
        const double busbw = N > 1 ? factor[op] * bytes / (slowest * 1e-6) / 1e9 : 0;
        rows.push_back({{"op", ops[op]}, {"bytes", bytes}, {"us", slowest}, {"busbw_gbs", busbw}});
        if (world.rank == 0)
          std::printf("bench-comm: %-14s %12.0f bytes %10.1f us  bus %7.2f GB/s\n", ops[op], bytes, slowest, busbw);
        xs.push_back(factor[op] * bytes);
        ts.push_back(slowest);
      }
      if (N > 1) {
        const auto [alpha_us, beta_us_per_byte] = fit_line(xs, ts);
        fits[ops[op]] = {{"alpha_us", alpha_us}, {"busbw_gbs", beta_us_per_byte > 0 ? 1e-3 / beta_us_per_byte : 0.0}};
        if (world.rank == 0)
          std::printf("bench-comm: fit %-14s alpha %.1f us, bus bandwidth %.1f GB/s\n", ops[op], alpha_us,
                      beta_us_per_byte > 0 ? 1e-3 / beta_us_per_byte : 0.0);
      }
    }
    if (cuda) {
      cudaEventDestroy(e0);
      cudaEventDestroy(e1);
    }
  }
  if (world.rank == 0 && !out.empty()) {
    const char* p2p = std::getenv("NCCL_P2P_DISABLE");
    const char* shm = std::getenv("NCCL_SHM_DISABLE");
    nlohmann::json j = {{"ranks", N}, {"device", cuda ? query_device(world.local_rank % cuda_device_count()).name : "cpu"},
                        {"communicator", cuda ? "nccl" : "mpi"}, {"dtype", dtype_name(t)},
                        {"nccl_p2p_disable", p2p ? p2p : ""}, {"nccl_shm_disable", shm ? shm : ""},
                        {"rows", rows}, {"fits", fits}};
    std::ofstream f(out);
    f << j.dump(2) << "\n";
    if (!f) std::fprintf(stderr, "mptrain: bench-comm: %s: cannot be written\n", out.c_str());
  }
  if (cuda) MPT_CUDA_CHECK(cudaStreamDestroy(reinterpret_cast<cudaStream_t>(stream)));
  mpi_finalize();
  return 0;
}

}  // namespace mpt
