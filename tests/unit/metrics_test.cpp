// The metrics file (rotation, append on resume, clear errors), timestamps, the progress line's format,
// and the MFU inputs (model FLOPs per unit, peak table).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <regex>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "src/core/check.h"
#include "src/train/metrics.h"
#include "tests/test_util.h"

namespace mpt {
namespace {

namespace fs = std::filesystem;

struct TempDir {
  std::string path;
  TempDir() {
    char t[] = "/tmp/mpt-metrics-unit-XXXXXX";
    path = mkdtemp(t);
  }
  ~TempDir() { fs::remove_all(path); }
};

std::string slurp(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

void spit(const std::string& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }

std::vector<nlohmann::json> records(const std::string& p) {
  std::vector<nlohmann::json> out;
  std::ifstream f(p);
  for (std::string line; std::getline(f, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}

TEST(Metrics, RotationPathIsTheNextFreeNumber) {
  TempDir d;
  Rng r = test::fresh_rng();
  const int taken = int(r.below(4));
  const std::string m = d.path + "/m.jsonl";
  for (int n = 1; n <= taken; ++n) spit(d.path + "/m." + std::to_string(n) + ".jsonl", "x\n");
  EXPECT_EQ(metrics_rotation_path(m), d.path + "/m." + std::to_string(taken + 1) + ".jsonl");
  EXPECT_EQ(metrics_rotation_path(d.path + "/plain"), d.path + "/plain.1");
}

TEST(Metrics, FreshRunMovesAnEarlierFileAsideAndStampsEveryRecord) {
  TempDir d;
  Rng r = test::fresh_rng();
  const std::string m = d.path + "/sub/m.jsonl";
  fs::create_directories(d.path + "/sub");
  const std::string earlier = "{\"type\":\"header\",\"schema\":1,\"seed\":" + std::to_string(r.next() >> 12) + "}\n";
  spit(m, earlier);
  const double before = unix_time_now();
  {
    MetricsLog log;
    log.open(m, /*resuming=*/false);
    ASSERT_TRUE(log.enabled());
    EXPECT_EQ(log.rotated_to(), d.path + "/sub/m.1.jsonl");
    log.write({{"type", "step"}, {"step", 1}});
    log.write({{"type", "event"}, {"time", 7.5}});
  }
  EXPECT_EQ(slurp(d.path + "/sub/m.1.jsonl"), earlier);
  const auto recs = records(m);
  ASSERT_EQ(recs.size(), 2u);
  EXPECT_EQ(recs[0]["step"], 1);
  ASSERT_TRUE(recs[0]["time"].is_number());
  EXPECT_GE(recs[0]["time"].get<double>(), before - 0.01);
  EXPECT_LE(recs[0]["time"].get<double>(), unix_time_now() + 0.01);
  EXPECT_EQ(recs[1]["time"], 7.5);  // a record's own time is kept
  // An empty file is no earlier run: nothing moves.
  spit(d.path + "/empty.jsonl", "");
  MetricsLog e;
  e.open(d.path + "/empty.jsonl", false);
  EXPECT_TRUE(e.rotated_to().empty());
}

TEST(Metrics, ResumeAppendsAndEndsACutLine) {
  TempDir d;
  const std::string m = d.path + "/m.jsonl";
  const std::string cut = "{\"type\":\"step\",\"step\":1}\n{\"type\":\"st";
  spit(m, cut);
  {
    MetricsLog log;
    log.open(m, /*resuming=*/true);
    EXPECT_TRUE(log.rotated_to().empty());
    log.write({{"type", "event"}, {"event", "resume"}});
  }
  const std::string s = slurp(m);
  EXPECT_EQ(s.compare(0, cut.size() + 1, cut + "\n"), 0) << s;
  std::ifstream f(m);
  std::string last;
  for (std::string line; std::getline(f, line);) last = line;
  EXPECT_EQ(nlohmann::json::parse(last)["event"], "resume");
  EXPECT_FALSE(fs::exists(d.path + "/m.1.jsonl"));
}

TEST(Metrics, UnusablePathNamesLogMetrics) {
  TempDir d;
  spit(d.path + "/plainfile", "x");
  for (const std::string& bad : {d.path + "/plainfile/m.jsonl", d.path}) {
    MetricsLog log;
    try {
      log.open(bad, false);
      FAIL() << bad << " opened";
    } catch (const InputError& e) {
      EXPECT_EQ(e.field(), "log.metrics") << e.what();
      EXPECT_EQ(e.file(), bad);
    }
    EXPECT_FALSE(log.enabled());
  }
}

TEST(Metrics, TimeFormats) {
  EXPECT_EQ(iso8601_utc(0), "1970-01-01T00:00:00.000Z");
  EXPECT_EQ(iso8601_utc(1700000000.25), "2023-11-14T22:13:20.250Z");
  EXPECT_EQ(format_duration(3723.4), "1:02:03");
  EXPECT_EQ(format_duration(59.6), "0:01:00");
  EXPECT_EQ(format_duration(-1), "-");
  const std::string a = new_run_id(), b = new_run_id();
  EXPECT_TRUE(std::regex_match(a, std::regex("[0-9a-f]{16}"))) << a;
  EXPECT_NE(a, b);
}

TEST(Metrics, ProgressLineCarriesEveryField) {
  Rng r = test::fresh_rng();
  ProgressLine p;
  p.total = 10 + int64_t(r.below(100000));
  p.step = 1 + int64_t(r.below(uint64_t(p.total)));
  p.loss = r.uniform(0.5f, 9.f);
  p.lr = r.uniform(1e-5f, 1e-2f);
  p.scale = double(1 << r.below(20));
  p.grad_norm = r.uniform(0.01f, 50.f);
  p.rate = r.uniform(10.f, 1e6f);
  p.unit = r.below(2) ? "tokens" : "samples";
  p.elapsed = r.uniform(0.f, 1e5f);
  p.eta = r.uniform(0.f, 1e5f);
  const std::regex base(R"(step +(\d+)/(\d+) \| epoch 1 \| loss ([0-9.]+) \| lr [0-9.e+-]+ \| scale [0-9.e+]+ \| )"
                        R"(gnorm ([0-9.]+|-) \| skipped 0 \| (\d+) (tokens|samples)/s( \| MFU [0-9.]+%)?)"
                        R"(( \| mem [0-9.]+ GiB)? \| elapsed \d+:\d\d:\d\d \| ETA \d+:\d\d:\d\d)");
  std::smatch m;
  std::string line = format_progress(p);
  ASSERT_TRUE(std::regex_match(line, m, base)) << line;
  EXPECT_EQ(std::stoll(m[1]), p.step);
  EXPECT_EQ(std::stoll(m[2]), p.total);
  EXPECT_NEAR(std::stod(m[3]), p.loss, 1e-4);
  EXPECT_EQ(m[6], p.unit);
  EXPECT_TRUE(m[7].str().empty() && m[8].str().empty()) << "MFU and memory are shown only when known: " << line;
  p.overflow = true;
  p.mfu = r.uniform(0.f, 1.f);
  p.mem_bytes = double(r.below(uint64_t(1) << 37));
  line = format_progress(p);
  ASSERT_TRUE(std::regex_match(line, m, base)) << line;
  EXPECT_EQ(m[4], "-");
  EXPECT_NE(line.find("MFU "), std::string::npos);
  EXPECT_NE(line.find(" GiB"), std::string::npos);
}

TEST(Metrics, ModelFlopsAndPeaks) {
  ModelConfig g;
  g.type = "gpt2";
  g.n_layer = 12;
  g.n_embd = 768;
  g.seq_len = 1024;
  // GPT-2 124M: 6 N plus the attention matmuls, 12 L d T.
  EXPECT_DOUBLE_EQ(train_flops_per_unit(g, 124439808), 6.0 * 124439808 + 12.0 * 12 * 768 * 1024);
  ModelConfig mlp;
  EXPECT_DOUBLE_EQ(train_flops_per_unit(mlp, 269322), 6.0 * 269322);
  EXPECT_DOUBLE_EQ(peak_tflops("NVIDIA H200", DType::BF16, false), 989.4);
  EXPECT_DOUBLE_EQ(peak_tflops("NVIDIA H100 80GB HBM3", DType::F16, false), 989.4);
  EXPECT_DOUBLE_EQ(peak_tflops("NVIDIA H100 PCIe", DType::BF16, false), 756.5);
  EXPECT_DOUBLE_EQ(peak_tflops("NVIDIA A100-SXM4-80GB", DType::F32, true), 156.0);
  EXPECT_DOUBLE_EQ(peak_tflops("NVIDIA A100-SXM4-80GB", DType::F32, false), 19.5);
  EXPECT_EQ(peak_tflops("Some Other GPU", DType::BF16, false), 0.0);
}

}  // namespace
}  // namespace mpt
