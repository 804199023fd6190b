// Checkpoint files: round trip, atomic replacement, and clear errors for bad files.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include <gtest/gtest.h>

#include "src/core/check.h"
#include "src/io/checkpoint.h"
#include "tests/test_util.h"

namespace mpt {
namespace {

struct TempDir {
  std::string path;
  TempDir() {
    char t[] = "/tmp/mpt-ckpt-unit-XXXXXX";
    path = mkdtemp(t);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
};

std::vector<ParamSpec> specs() {
  return {{"fc1.weight", "fc1", {3, 5}, DType::F16, true, Init::Zeros, 0.f},
          {"fc1.bias", "fc1", {3}, DType::F16, false, Init::Zeros, 0.f}};
}

OptimizerState random_state(size_t n) {
  Rng r = test::fresh_rng();
  OptimizerState s;
  for (auto* v : {&s.master, &s.m, &s.v})
    for (size_t i = 0; i < n; ++i) v->push_back(r.normal());
  return s;
}

CheckpointMeta meta_for(int64_t step) {
  CheckpointMeta m;
  m.step = step;
  m.epoch = 2;
  m.step_in_epoch = 7;
  m.adam_step = step - 1;
  m.scale = 8192;
  m.growth_tracker = 11;
  m.hysteresis_left = 1;
  m.skipped = 1;
  for (const auto& s : specs()) m.params.emplace_back(s.name, s.shape);
  return m;
}

TEST(Checkpoint, RoundTripAndLatest) {
  TempDir d;
  EXPECT_EQ(latest_checkpoint(d.path), "");
  const auto s1 = random_state(18), s2 = random_state(18);
  save_checkpoint(d.path, meta_for(10), s1);
  const std::string p2 = save_checkpoint(d.path, meta_for(20), s2);
  EXPECT_EQ(latest_checkpoint(d.path), p2);
  CheckpointMeta m;
  OptimizerState back;
  load_checkpoint(p2, specs(), &m, &back);
  EXPECT_EQ(m.step, 20);
  EXPECT_EQ(m.epoch, 2);
  EXPECT_EQ(m.step_in_epoch, 7);
  EXPECT_EQ(m.adam_step, 19);
  EXPECT_EQ(m.scale, 8192);
  EXPECT_EQ(m.growth_tracker, 11);
  EXPECT_EQ(back.master, s2.master);
  EXPECT_EQ(back.m, s2.m);
  EXPECT_EQ(back.v, s2.v);
  // No temporary files are left behind.
  for (const auto& e : std::filesystem::directory_iterator(d.path))
    EXPECT_EQ(e.path().string().find(".tmp"), std::string::npos) << e.path();
}

void expect_input_error(const std::function<void()>& f, const std::string& file, const std::string& field) {
  try {
    f();
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    EXPECT_EQ(e.file(), file);
    EXPECT_EQ(e.field(), field) << e.what();
  }
}

TEST(Checkpoint, BadFilesGiveClearErrors) {
  TempDir d;
  const std::string p = save_checkpoint(d.path, meta_for(5), random_state(18));
  CheckpointMeta m;
  OptimizerState s;
  // Truncated data.
  const auto size = std::filesystem::file_size(p);
  std::filesystem::resize_file(p, size - 4);
  expect_input_error([&] { load_checkpoint(p, specs(), &m, &s); }, p, "data");
  // Wrong magic.
  { std::ofstream(p, std::ios::binary) << "NOTACKPT and more bytes"; }
  expect_input_error([&] { load_checkpoint(p, specs(), &m, &s); }, p, "magic");
  // Missing file.
  expect_input_error([&] { load_checkpoint(d.path + "/nope.bin", specs(), &m, &s); }, d.path + "/nope.bin", "");
  // Parameters that do not match the model.
  const std::string q = save_checkpoint(d.path, meta_for(6), random_state(18));
  auto other = specs();
  other[1].shape = {4};
  expect_input_error([&] { load_checkpoint(q, other, &m, &s); }, q, "params[1]");
}

// One flipped bit anywhere in the saved state is refused, naming the array; a header counter out of range is
// refused, naming the field.
TEST(Checkpoint, DamagedStateOrHeaderIsRefused) {
  TempDir d;
  const auto s = random_state(18);
  const std::string path = save_checkpoint(d.path, meta_for(5), s);
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  const size_t state_bytes = 3 * 18 * 4, start = bytes.size() - state_bytes;
  Rng r = test::fresh_rng();
  const char* names[] = {"data.master", "data.m", "data.v"};
  for (int array = 0; array < 3; ++array) {
    std::string bad = bytes;
    const size_t at = start + size_t(array) * 18 * 4 + size_t(r.below(18 * 4));
    bad[at] = char(bad[at] ^ (1 << r.below(8)));
    const std::string p = d.path + "/bad.bin";
    std::ofstream(p, std::ios::binary) << bad;
    CheckpointMeta m;
    OptimizerState back;
    try {
      load_checkpoint(p, specs(), &m, &back);
      ADD_FAILURE() << "a flipped bit in " << names[array] << " was accepted";
    } catch (const InputError& e) {
      EXPECT_EQ(e.field(), names[array]) << e.what();
    }
  }
  for (const char* field : {"adam_step", "step", "step_in_epoch"}) {
    CheckpointMeta m = meta_for(5);
    if (std::string(field) == "adam_step") m.adam_step = -1;
    if (std::string(field) == "step") m.step = -3;
    if (std::string(field) == "step_in_epoch") m.step_in_epoch = -5;
    const std::string p = save_checkpoint(d.path, m, s);
    CheckpointMeta back_meta;
    OptimizerState back;
    try {
      load_checkpoint(p, specs(), &back_meta, &back);
      ADD_FAILURE() << field << " < 0 was accepted";
    } catch (const InputError& e) {
      EXPECT_EQ(e.field(), field) << e.what();
    }
  }
}

}  // namespace
}  // namespace mpt
