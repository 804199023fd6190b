#include "src/train/op_profile.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <set>

#include <cuda_runtime_api.h>

#include "src/core/check.h"
#include "src/core/cuda_check.h"

namespace mpt {

struct OpProfiler::Mark {
  cudaEvent_t ev = nullptr;
  std::chrono::steady_clock::time_point host;
  Stream stream = nullptr;
};

OpProfiler::OpProfiler(const Exec& e) : ex_(e), compute_(e.stream) {}

OpProfiler::~OpProfiler() {
  for (Mark* m : marks_) {
    if (m->ev) cudaEventDestroy(m->ev);
    delete m;
  }
}

OpProfiler::Mark* OpProfiler::mark() {
  Mark* m = new Mark;
  m->stream = ex_.stream;
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
  ex_.stream = compute_;
  mark();
  step_begin_ = marks_.size() - 1;
}
void OpProfiler::stop_step() {
  ex_.stream = compute_;
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
  // The compute stream's gaps, position by position; only when every step ran the same op sequence there.
  std::vector<std::vector<size_t>> seq;  // per step: its compute-stream ops (indices into ops_)
  size_t o = 0;
  for (const auto& [a, b] : steps_) {
    seq.emplace_back();
    while (o < ops_.size() && ops_[o].second < a) ++o;
    for (; o < ops_.size() && ops_[o].second < b; ++o)
      if (marks_[ops_[o].second]->stream == compute_) seq.back().push_back(o);
  }
  bool same = !seq.empty();
  for (const auto& q : seq) {
    same = same && q.size() == seq[0].size();
    for (size_t k = 0; same && k < q.size(); ++k) same = ops_[q[k]].first.name == ops_[seq[0][k]].first.name;
  }
  if (same) {
    const size_t n = seq[0].size();
    r.gaps.resize(n + 1);
    for (size_t k = 0; k <= n; ++k) {
      ProfileGap& g = r.gaps[k];
      g.position = int(k);
      g.after = k == 0 ? "(step begins)" : ops_[seq[0][k - 1]].first.name;
      g.before = k == n ? "(step ends)" : ops_[seq[0][k]].first.name;
    }
    for (size_t st = 0; st < seq.size(); ++st) {
      const auto& q = seq[st];
      for (size_t k = 0; k <= n; ++k) {
        const size_t from = k == 0 ? steps_[st].first : ops_[q[k - 1]].second + 1;
        const size_t to = k == n ? steps_[st].second : ops_[q[k]].second;
        r.gaps[k].ms += ms_between(from, to) / r.steps;
      }
    }
    for (const ProfileGap& g : r.gaps) r.gaps_ms += g.ms;
  }
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

std::string format_gaps(const ProfileReport& r, int max_rows) {
  if (r.gaps.empty()) return "compute stream gaps: not listed (the profiled steps ran different op sequences)\n";
  std::vector<ProfileGap> g = r.gaps;
  std::stable_sort(g.begin(), g.end(), [](const ProfileGap& a, const ProfileGap& b) { return a.ms > b.ms; });
  if (max_rows >= 0 && g.size() > size_t(max_rows)) g.resize(size_t(max_rows));
  std::string out;
  char line[512];
  std::snprintf(line, sizeof line,
                "compute stream idle between its ops: %.3f ms per step over %zu gaps; the largest (ms per step, "
                "position in the step):\n",
                r.gaps_ms, r.gaps.size());
  out += line;
  for (const ProfileGap& x : g) {
    std::snprintf(line, sizeof line, "  %8.3f  %4d  %s -> %s\n", x.ms, x.position, x.after.substr(0, 50).c_str(),
                  x.before.substr(0, 50).c_str());
    out += line;
  }
  return out;
}

namespace {
nlohmann::json gaps_json(const std::vector<ProfileGap>& gaps) {
  nlohmann::json out = nlohmann::json::array();
  for (const ProfileGap& g : gaps)
    out.push_back({{"position", g.position}, {"after", g.after}, {"before", g.before}, {"ms", g.ms}});
  return out;
}
}  // namespace

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
          {"gaps", gaps_json(r.gaps)},
          {"gaps_ms", r.gaps_ms},
          {"ceilings", {{"tflops", c.tflops}, {"gbs", c.gbs}}}};
}

std::vector<RankProfile> gather_profiles(Communicator& comm, const ProfileReport& r, double unprofiled_ms,
                                         const ClockStat& clock) {
  nlohmann::json mine = {{"step_ms", r.step_ms}, {"ops_ms", r.ops_ms}, {"unprofiled_ms", unprofiled_ms},
                         {"sm_mhz", clock.sm_mhz}, {"watts", clock.watts}, {"samples", clock.samples}};
  nlohmann::json rows = nlohmann::json::object();
  for (const ProfileRow& row : r.rows) rows[row.name] = row.ms;
  mine["rows"] = rows;
  mine["gaps"] = gaps_json(r.gaps);
  mine["gaps_ms"] = r.gaps_ms;
  std::string text = mine.dump();
  // Every rank's text padded to the longest: host_all_gather moves equal sizes.
  double len = double(text.size()), longest = 0;
  comm.host_all_reduce(&len, &longest, 1, ReduceOp::Max);
  text.resize(size_t(longest), ' ');
  const int n = comm.size();
  std::string all(size_t(n) * text.size(), ' ');
  comm.host_all_gather(text.data(), all.data(), text.size());
  std::vector<RankProfile> out;
  for (int k = 0; k < n; ++k) {
    const nlohmann::json j = nlohmann::json::parse(all.substr(size_t(k) * text.size(), text.size()));
    RankProfile p;
    p.rank = k;
    p.step_ms = j.at("step_ms").get<double>();
    p.ops_ms = j.at("ops_ms").get<double>();
    p.unprofiled_ms = j.at("unprofiled_ms").get<double>();
    for (const auto& [name, ms] : j.at("rows").items()) p.ms[name] = ms.get<double>();
    p.gaps_ms = j.at("gaps_ms").get<double>();
    p.clock = {j.at("sm_mhz").get<double>(), j.at("watts").get<double>(), j.at("samples").get<int>()};
    for (const nlohmann::json& g : j.at("gaps"))
      p.gaps.push_back({g.at("position").get<int>(), g.at("after").get<std::string>(), g.at("before").get<std::string>(),
                        g.at("ms").get<double>()});
    out.push_back(std::move(p));
  }
  return out;
}

nlohmann::json rank_profiles_json(const std::vector<RankProfile>& ranks) {
  nlohmann::json out = nlohmann::json::array();
  for (const RankProfile& p : ranks)
    out.push_back({{"rank", p.rank}, {"step_ms", p.step_ms}, {"ops_ms", p.ops_ms}, {"other_ms", p.step_ms - p.ops_ms},
                   {"unprofiled_step_ms", p.unprofiled_ms}, {"rows", p.ms}, {"gaps_ms", p.gaps_ms},
                   {"sm_mhz", p.clock.sm_mhz}, {"watts", p.clock.watts}, {"clock_samples", p.clock.samples},
                   {"gaps", gaps_json(p.gaps)}});
  return out;
}

CommCost comm_cost(const std::vector<RankProfile>& with, const std::vector<RankProfile>& without) {
  if (with.size() != without.size() || with.empty())
    MPT_FATAL("comm_cost", "needs one profile per rank on each side (" + std::to_string(with.size()) + " and " +
                               std::to_string(without.size()) + ")");
  const size_t n = with.size();
  auto row_of = [&](const std::string& name, auto&& value) {
    CommCostRow row;
    row.op = name;
    for (size_t k = 0; k < n; ++k) {
      const double w = value(with[k]), wo = value(without[k]);
      row.with_ms += w / double(n);
      row.without_ms += wo / double(n);
      row.diff_by_rank.push_back(w - wo);
    }
    return row;
  };
  std::set<std::string> names;
  for (const auto* side : {&with, &without})
    for (const RankProfile& p : *side)
      for (const auto& [name, ms] : p.ms) names.insert(name);
  CommCost c;
  for (const std::string& name : names)
    c.rows.push_back(row_of(name, [&](const RankProfile& p) {
      const auto it = p.ms.find(name);
      return it == p.ms.end() ? 0.0 : it->second;
    }));
  std::stable_sort(c.rows.begin(), c.rows.end(),
                   [](const CommCostRow& a, const CommCostRow& b) { return a.diff() > b.diff(); });
  c.ops = row_of("sum of the ops", [](const RankProfile& p) { return p.ops_ms; });
  c.other = row_of("not in any op", [](const RankProfile& p) { return p.step_ms - p.ops_ms; });
  c.step = row_of("step, profiled", [](const RankProfile& p) { return p.step_ms; });
  c.unprofiled = row_of("step, not profiled (median)", [](const RankProfile& p) { return p.unprofiled_ms; });
  c.sm_mhz = row_of("SM clock (MHz, NVML)", [](const RankProfile& p) { return p.clock.sm_mhz; });
  c.watts = row_of("board power (W, NVML)", [](const RankProfile& p) { return p.clock.watts; });
  // Gaps position by position, where every rank on both sides ran the first one's sequence.
  const std::vector<ProfileGap>& g0 = with[0].gaps;
  bool same = !g0.empty();
  for (const auto* side : {&with, &without})
    for (const RankProfile& p : *side) {
      same = same && p.gaps.size() == g0.size();
      for (size_t k = 0; same && k < g0.size(); ++k) same = p.gaps[k].after == g0[k].after && p.gaps[k].before == g0[k].before;
    }
  if (same) {
    for (size_t k = 0; k < g0.size(); ++k)
      c.gaps.push_back(row_of(g0[k].after + " -> " + g0[k].before + " (position " + std::to_string(k) + ")",
                              [&](const RankProfile& p) { return p.gaps[k].ms; }));
    std::stable_sort(c.gaps.begin(), c.gaps.end(),
                     [](const CommCostRow& a, const CommCostRow& b) { return a.diff() > b.diff(); });
  }
  return c;
}

std::string format_comm_cost(const CommCost& c, int max_rows) {
  std::string out;
  char line[512];
  auto put = [&](const CommCostRow& r, const char* name) {
    std::snprintf(line, sizeof line, "%-58s %9.3f %9.3f %+10.3f  ", std::string(name).substr(0, 58).c_str(), r.with_ms,
                  r.without_ms, r.diff());
    out += line;
    for (size_t k = 0; k < r.diff_by_rank.size(); ++k) {
      std::snprintf(line, sizeof line, "%s%+.3f", k ? " " : "", r.diff_by_rank[k]);
      out += line;
    }
    out += "\n";
  };
  std::snprintf(line, sizeof line, "%-58s %9s %9s %10s  %s\n", "op (shape)", "with", "without", "difference",
                "difference by rank");
  out += line;
  // The largest differences in size, shown in the order of the difference (slowed most first).
  std::vector<size_t> idx(c.rows.size());
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
  std::stable_sort(idx.begin(), idx.end(),
                   [&](size_t a, size_t b) { return std::fabs(c.rows[a].diff()) > std::fabs(c.rows[b].diff()); });
  if (max_rows >= 0 && idx.size() > size_t(max_rows)) idx.resize(size_t(max_rows));
  std::sort(idx.begin(), idx.end());
  std::vector<bool> shown(c.rows.size(), false);
  for (size_t i : idx) shown[i] = true, put(c.rows[i], c.rows[i].op.c_str());
  if (idx.size() < c.rows.size()) {
    CommCostRow rest;
    rest.diff_by_rank.assign(c.step.diff_by_rank.size(), 0.0);
    for (size_t i = 0; i < c.rows.size(); ++i) {
      if (shown[i]) continue;
      rest.with_ms += c.rows[i].with_ms, rest.without_ms += c.rows[i].without_ms;
      for (size_t k = 0; k < rest.diff_by_rank.size(); ++k) rest.diff_by_rank[k] += c.rows[i].diff_by_rank[k];
    }
    const std::string name = "the other " + std::to_string(c.rows.size() - idx.size()) + " ops";
    put(rest, name.c_str());
  }
  put(c.ops, "sum of every op");
  put(c.other, "not in any op (gaps, waits for collectives and host)");
  put(c.step, "step, profiled (events around the step)");
  put(c.unprofiled, "step, not profiled (median wall time)");
  if (c.sm_mhz.with_ms > 0 && c.sm_mhz.without_ms > 0) {
    // Board power is left out here: the driver's reading is averaged over longer than a chunk of steps.
    put(c.sm_mhz, "SM clock, MHz (NVML, every 10 ms; not ms)");
  }
  if (!c.gaps.empty()) {
    out += "the compute stream's gaps that grow most with communication (with, without, difference, by rank):\n";
    for (size_t i = 0; i < c.gaps.size() && i < 8; ++i) put(c.gaps[i], c.gaps[i].op.c_str());
  }
  return out;
}

nlohmann::json comm_cost_json(const CommCost& c) {
  auto row = [](const CommCostRow& r) {
    return nlohmann::json{{"op", r.op}, {"with_ms", r.with_ms}, {"without_ms", r.without_ms}, {"diff_ms", r.diff()},
                          {"diff_by_rank", r.diff_by_rank}};
  };
  nlohmann::json rows = nlohmann::json::array();
  for (const CommCostRow& r : c.rows) rows.push_back(row(r));
  nlohmann::json gaps = nlohmann::json::array();
  for (const CommCostRow& r : c.gaps) gaps.push_back(row(r));
  return {{"rows", rows}, {"ops", row(c.ops)}, {"other", row(c.other)}, {"step", row(c.step)},
          {"unprofiled_step", row(c.unprofiled)}, {"gaps", gaps}, {"sm_mhz", row(c.sm_mhz)}, {"watts", row(c.watts)}};
}

}  // namespace mpt
