#include "src/train/op_profile.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>

#include <cuda_runtime_api.h>

#include "src/core/cuda_check.h"

namespace mpt {

struct OpProfiler::Mark {
  cudaEvent_t ev = nullptr;
  std::chrono::steady_clock::time_point host;
};

OpProfiler::OpProfiler(const Exec& e) : ex_(e) {}

OpProfiler::~OpProfiler() {
  for (Mark* m : marks_) {
    if (m->ev) cudaEventDestroy(m->ev);
    delete m;
  }
}

OpProfiler::Mark* OpProfiler::mark() {
  Mark* m = new Mark;
  marks_.push_back(m);
  if (ex_.cuda()) {
    MPT_CUDA_CHECK(cudaEventCreate(&m->ev));
    MPT_CUDA_CHECK(cudaEventRecord(m->ev, static_cast<cudaStream_t>(ex_.stream)));
  } else {
    m->host = std::chrono::steady_clock::now();
  }
  return m;
}

void OpProfiler::begin(const Exec& e, OpInfo info) {
  // Ops do not nest today; if one ever calls another, the outer one is the row.
  if (depth_++ > 0) return;
  ex_.stream = e.stream;
  mark();
  ops_.emplace_back(std::move(info), marks_.size() - 1);
}

void OpProfiler::end(const Exec& e) {
  if (--depth_ > 0) return;
  ex_.stream = e.stream;
  mark();
}

void OpProfiler::start_step() {
  mark();
  step_begin_ = marks_.size() - 1;
}
void OpProfiler::stop_step() {
  mark();
  steps_.emplace_back(step_begin_, marks_.size() - 1);
}

ProfileReport OpProfiler::report() {
  auto ms_between = [&](size_t a, size_t b) {
    if (!ex_.cuda())
      return std::chrono::duration<double, std::milli>(marks_[b]->host - marks_[a]->host).count();
    MPT_CUDA_CHECK(cudaEventSynchronize(marks_[b]->ev));
    float ms = 0;
    MPT_CUDA_CHECK(cudaEventElapsedTime(&ms, marks_[a]->ev, marks_[b]->ev));
    return double(ms);
  };
  ProfileReport r;
  r.steps = std::max<int>(1, int(steps_.size()));
  for (const auto& [a, b] : steps_) r.step_ms += ms_between(a, b);
  std::map<std::string, ProfileRow> rows;
  for (const auto& [info, i] : ops_) {
    ProfileRow& row = rows[info.name];
    row.name = info.name;
    ++row.launches;
    row.ms += ms_between(i, i + 1);
    row.flops += info.flops;
    row.bytes += info.bytes;
  }
  for (auto& [name, row] : rows) {
    row.ms /= r.steps, row.flops /= r.steps, row.bytes /= r.steps;
    row.launches = (row.launches + r.steps - 1) / r.steps;
    r.ops_ms += row.ms;
    r.rows.push_back(row);
  }
  r.step_ms /= r.steps;
  std::sort(r.rows.begin(), r.rows.end(), [](const ProfileRow& a, const ProfileRow& b) { return a.ms > b.ms; });
  return r;
}

namespace {
// Achieved rate against the row's ceiling: "TFLOP/s" for compute-bound rows, "GB/s" otherwise.
struct Rate {
  double value = 0, of_ceiling = 0;
  const char* unit = "";
};
Rate rate_of(const ProfileRow& row, const Ceilings& c) {
  Rate r;
  const double s = row.ms * 1e-3;
  if (s <= 0) return r;
  const bool compute = row.bytes <= 0 || row.flops / row.bytes > c.tflops * 1e12 / (c.gbs * 1e9);
  if (compute) {
    r.value = row.flops / s * 1e-12, r.of_ceiling = r.value / c.tflops, r.unit = "TFLOP/s";
  } else {
    r.value = row.bytes / s * 1e-9, r.of_ceiling = r.value / c.gbs, r.unit = "GB/s";
  }
  return r;
}
}  // namespace

std::string format_profile(const ProfileReport& r, const Ceilings& c, double unprofiled_ms) {
  std::string out;
  char line[512];
  std::snprintf(line, sizeof line, "%-58s %8s %9s %7s %12s %8s\n", "op (shape)", "launches", "ms/step", "% step",
                "achieved", "of peak");
  out += line;
  for (const ProfileRow& row : r.rows) {
    const Rate rt = rate_of(row, c);
    char ach[48];
    std::snprintf(ach, sizeof ach, "%.1f %s", rt.value, rt.unit);
    std::snprintf(line, sizeof line, "%-58s %8d %9.3f %6.1f%% %12s %7.1f%%\n", row.name.substr(0, 58).c_str(),
                  row.launches, row.ms, r.step_ms > 0 ? 100 * row.ms / r.step_ms : 0.0, ach, 100 * rt.of_ceiling);
    out += line;
  }
  const double other = r.step_ms - r.ops_ms;
  std::snprintf(line, sizeof line, "%-58s %8s %9.3f %6.1f%%\n", "sum of the ops above", "", r.ops_ms,
                r.step_ms > 0 ? 100 * r.ops_ms / r.step_ms : 0.0);
  out += line;
  std::snprintf(line, sizeof line, "%-58s %8s %9.3f %6.1f%%\n", "not in any op (launch gaps, copies, host waits)", "",
                other, r.step_ms > 0 ? 100 * other / r.step_ms : 0.0);
  out += line;
  std::snprintf(line, sizeof line, "%-58s %8s %9.3f\n", "step, profiled (events around the step)", "", r.step_ms);
  out += line;
  if (unprofiled_ms > 0) {
    std::snprintf(line, sizeof line, "%-58s %8s %9.3f\n", "step, not profiled (median wall time)", "", unprofiled_ms);
    out += line;
  }
  std::snprintf(line, sizeof line, "ceilings: %.0f TFLOP/s (matrix), %.0f GB/s (copy, bytes read + written)\n",
                c.tflops, c.gbs);
  out += line;
  return out;
}

nlohmann::json profile_json(const ProfileReport& r, const Ceilings& c, double unprofiled_ms) {
  nlohmann::json rows = nlohmann::json::array();
  for (const ProfileRow& row : r.rows) {
    const Rate rt = rate_of(row, c);
    rows.push_back({{"op", row.name}, {"launches", row.launches}, {"ms", row.ms}, {"flops", row.flops},
                    {"bytes", row.bytes}, {"rate", rt.value}, {"unit", rt.unit}, {"of_peak", rt.of_ceiling}});
  }
  return {{"rows", rows},
          {"step_ms", r.step_ms},
          {"ops_ms", r.ops_ms},
          {"other_ms", r.step_ms - r.ops_ms},
          {"unprofiled_step_ms", unprofiled_ms},
          {"steps", r.steps},
          {"ceilings", {{"tflops", c.tflops}, {"gbs", c.gbs}}}};
}

}  // namespace mpt
