#include "src/train/metrics.h"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <random>

#include <unistd.h>

#include "src/core/check.h"

#ifndef MPT_GIT_COMMIT
#define MPT_GIT_COMMIT "unknown"
#endif

namespace mpt {

namespace fs = std::filesystem;

double unix_time_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string iso8601_utc(double unix_s) {
  const std::time_t whole = std::time_t(std::floor(unix_s));
  const unsigned ms = unsigned(std::min(999L, std::max(0L, std::lround((unix_s - double(whole)) * 1000))));
  std::tm tm{};
  gmtime_r(&whole, &tm);
  char buf[80];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03uZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                tm.tm_hour, tm.tm_min, tm.tm_sec, ms);
  return buf;
}

std::string git_commit() { return MPT_GIT_COMMIT; }

std::string new_run_id() {
  std::random_device rd;
  const uint64_t t = uint64_t(std::chrono::high_resolution_clock::now().time_since_epoch().count());
  uint64_t x = (uint64_t(rd()) << 32 | rd()) ^ t ^ (uint64_t(getpid()) << 17);
  // splitmix64 finaliser: the time and pid bits spread over every digit.
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(x));
  return buf;
}

std::string metrics_rotation_path(const std::string& path) {
  const fs::path p(path);
  const std::string stem = (p.parent_path() / p.stem()).string(), ext = p.extension().string();
  std::error_code ec;
  for (int n = 1;; ++n) {
    const std::string cand = stem + "." + std::to_string(n) + ext;
    if (!fs::exists(cand, ec) && !ec) return cand;
    if (ec) throw InputError(path, "log.metrics", "cannot look at " + cand + ": " + ec.message());
  }
}

void MetricsLog::open(const std::string& path, bool resuming) {
  close();
  path_ = path;
  rotated_to_.clear();
  std::error_code ec;
  const fs::path parent = fs::path(path).parent_path();
  if (!parent.empty()) fs::create_directories(parent, ec);
  if (ec)
    throw InputError(path, "log.metrics", "cannot create the folder " + parent.string() + ": " + ec.message());
  if (fs::is_directory(path, ec)) throw InputError(path, "log.metrics", "is a folder; give a file path");
  const bool nonempty = fs::exists(path, ec) && fs::file_size(path, ec) > 0 && !ec;
  bool cut = false;
  if (resuming && nonempty) {
    std::FILE* old = std::fopen(path.c_str(), "rb");
    if (old) {
      cut = std::fseek(old, -1, SEEK_END) == 0 && std::fgetc(old) != '\n';
      std::fclose(old);
    }
  } else if (nonempty) {
    // A fresh run never truncates an earlier run's records: they move aside to the next numbered file.
    const std::string to = metrics_rotation_path(path);
    fs::rename(path, to, ec);
    if (ec)
      throw InputError(path, "log.metrics", "exists and cannot be moved aside to " + to + " (" + ec.message() +
                                                "); give another path in log.metrics");
    rotated_to_ = to;
  }
  f_ = std::fopen(path.c_str(), resuming ? "a" : "w");
  if (!f_) throw InputError(path, "log.metrics", std::string("cannot open for writing: ") + std::strerror(errno));
  if (cut) std::fputc('\n', f_);
}

void MetricsLog::write(MetricsRecord record) {
  if (!f_) return;
  if (!record.contains("time")) record["time"] = std::round(unix_time_now() * 1000) / 1000;
  const std::string line = record.dump(-1, ' ', false, MetricsRecord::error_handler_t::replace);
  std::fprintf(f_, "%s\n", line.c_str());
  std::fflush(f_);
}

void MetricsLog::close() {
  if (f_) std::fclose(f_);
  f_ = nullptr;
}

double train_flops_per_unit(const ModelConfig& m, int64_t params) {
  const double n6 = 6.0 * double(params);
  if (m.type != "gpt2") return n6;
  return n6 + 12.0 * double(m.n_layer) * double(m.n_embd) * double(m.seq_len);
}

double peak_tflops(const std::string& name, DType dt, bool tf32) {
  struct Peak {
    const char* match;   // substring of the CUDA device name
    const char* unless;  // ... unless it also holds this ("" : none)
    double half, tf32, fp32;
  };
  // Dense (no sparsity) data-sheet figures, TFLOP/s per GPU. The first matching row wins.
  static const Peak kTable[] = {
      {"H200", "", 989.4, 494.7, 66.9},      // H200 SXM
      {"H100", "PCIe", 989.4, 494.7, 66.9},  // H100 SXM (and GH200)
      {"H100", "", 756.5, 378.0, 51.2},      // H100 PCIe
      {"A100", "", 312.0, 156.0, 19.5},
  };
  for (const Peak& p : kTable) {
    if (name.find(p.match) == std::string::npos) continue;
    if (*p.unless && name.find(p.unless) != std::string::npos) continue;
    if (dt == DType::F16 || dt == DType::BF16) return p.half;
    return tf32 ? p.tf32 : p.fp32;
  }
  return 0;
}

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "-";
  const long long t = std::llround(s);
  char buf[48];
  std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", t / 3600, (t / 60) % 60, t % 60);
  return buf;
}

std::string format_progress(const ProgressLine& p) {
  char buf[512];
  std::string out;
  std::snprintf(buf, sizeof buf, "step %6lld/%lld | epoch %d | loss %.4f | lr %.2e | scale %g | ",
                static_cast<long long>(p.step), static_cast<long long>(p.total), p.epoch, p.loss, p.lr, p.scale);
  out += buf;
  if (p.overflow) std::snprintf(buf, sizeof buf, "gnorm - | ");
  else std::snprintf(buf, sizeof buf, "gnorm %.3f | ", p.grad_norm);
  out += buf;
  std::snprintf(buf, sizeof buf, "skipped %lld | %.0f %s/s", static_cast<long long>(p.skipped), p.rate, p.unit.c_str());
  out += buf;
  if (p.mfu >= 0) {
    std::snprintf(buf, sizeof buf, " | MFU %.1f%%", 100 * p.mfu);
    out += buf;
  }
  if (p.mem_bytes >= 0) {
    std::snprintf(buf, sizeof buf, " | mem %.2f GiB", p.mem_bytes / double(1 << 30));
    out += buf;
  }
  out += " | elapsed " + format_duration(p.elapsed) + " | ETA " + format_duration(p.eta);
  return out;
}

}  // namespace mpt
