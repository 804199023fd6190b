// safetensors: round trips per dtype, the writer's layout checked against the format description, a file
// assembled byte by byte, and each kind of damaged header.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "src/core/check.h"
#include "src/io/safetensors.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;

namespace {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "mpt_st_test_XXXXXX").string();
    if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

std::vector<uint8_t> read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}
void write_bytes(const std::string& path, const std::vector<uint8_t>& b) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}
template <typename T>
void append(std::vector<uint8_t>& b, T v) {
  uint8_t raw[sizeof(T)];
  std::memcpy(raw, &v, sizeof(T));  // the test host is little-endian like the format
  b.insert(b.end(), raw, raw + sizeof(T));
}

// 8-byte little-endian length, the header text, the data: the layout the format describes.
std::vector<uint8_t> st_bytes(const std::string& header, const std::vector<uint8_t>& data) {
  std::vector<uint8_t> b;
  for (int i = 0; i < 8; ++i) b.push_back(uint8_t(uint64_t(header.size()) >> (8 * i)));
  b.insert(b.end(), header.begin(), header.end());
  b.insert(b.end(), data.begin(), data.end());
  return b;
}

std::vector<int64_t> random_shape(mpt::Rng& r) {
  std::vector<int64_t> s(r.below(4));  // scalars (rank 0) included
  for (auto& d : s) d = 1 + int64_t(r.below(9));
  return s;
}
int64_t numel(const std::vector<int64_t>& s) {
  int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

void expect_error(const std::string& path, const std::string& field, const std::string& in_message = "") {
  try {
    (void)mpt::read_safetensors(path);
    ADD_FAILURE() << "no error for " << path << " (expected field " << field << ")";
  } catch (const mpt::InputError& e) {
    EXPECT_EQ(e.file(), path);
    EXPECT_EQ(e.field(), field) << e.what();
    if (!in_message.empty()) {
      EXPECT_NE(std::string(e.what()).find(in_message), std::string::npos) << e.what();
    }
  }
}

}  // namespace

TEST(Safetensors, RoundTripEachDtypeAndLayoutFollowsTheFormat) {
  TempDir d;
  auto r = mpt::test::fresh_rng();
  mpt::StFile f;
  std::map<std::string, std::vector<float>> values;
  const std::pair<const char*, mpt::DType> floats[] = {
      {"h.0.attn.c_attn.weight", mpt::DType::F32}, {"h.0.ln_1.bias", mpt::DType::F16}, {"wte.weight", mpt::DType::BF16}};
  for (const auto& [name, dt] : floats) {
    const auto shape = random_shape(r);
    std::vector<float> v(size_t(numel(shape)));
    for (auto& x : v) x = r.normal() * 3.f;
    values[name] = v;
    f.tensors[name] = mpt::st_from_float(v, shape, dt);
  }
  const auto ishape = random_shape(r);
  std::vector<int32_t> iv(size_t(numel(ishape)));
  for (auto& x : iv) x = int32_t(r.next());
  f.tensors["position_ids"] = mpt::st_from_int32(iv, ishape);
  f.metadata["format"] = "pt";
  f.metadata["step"] = std::to_string(r.below(100000));

  const std::string path = d.file("m.safetensors");
  mpt::write_safetensors(path, f);
  for (const auto& e : fs::directory_iterator(d.path()))
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << "temporary file left: " << e.path();

  const auto g = mpt::read_safetensors(path);
  EXPECT_EQ(g.metadata, f.metadata);
  ASSERT_EQ(g.tensors.size(), f.tensors.size());
  for (const auto& [name, t] : f.tensors) {
    const auto& u = g.tensors.at(name);
    EXPECT_EQ(u.dtype, t.dtype) << name;
    EXPECT_EQ(u.shape, t.shape) << name;
    EXPECT_EQ(u.data, t.data) << name;
  }
  for (const auto& [name, dt] : floats) {
    const auto got = g.tensors.at(name).to_float();
    const auto& want = values[name];
    ASSERT_EQ(got.size(), want.size());
    // Storing then reading must give exactly the dtype's rounding of the value, nothing more.
    for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(got[i], mpt::round_to(dt, want[i])) << name << "[" << i << "]";
  }
  const auto gi = g.tensors.at("position_ids").to_float();
  for (size_t i = 0; i < iv.size(); ++i) EXPECT_EQ(gi[i], float(iv[i]));

  // The file itself, read with nothing but the format description.
  const auto raw = read_bytes(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | raw[size_t(i)];
  ASSERT_LE(8 + n, raw.size());
  EXPECT_EQ((8 + n) % 8, 0u) << "data must start 8-byte aligned";
  const std::string header(raw.begin() + 8, raw.begin() + 8 + std::ptrdiff_t(n));
  const auto h = nlohmann::json::parse(header);
  EXPECT_EQ(h.dump().size(), header.find_last_not_of(' ') + 1) << "only trailing spaces pad the header";
  EXPECT_EQ(h.at("__metadata__").at("format"), "pt");
  uint64_t covered = 0;
  for (const auto& [name, t] : f.tensors) {
    const auto& e = h.at(name);
    EXPECT_EQ(e.at("dtype"), t.dtype);
    EXPECT_EQ(e.at("shape").get<std::vector<int64_t>>(), t.shape);
    const uint64_t b = e.at("data_offsets")[0], en = e.at("data_offsets")[1];
    ASSERT_EQ(en - b, t.data.size());
    EXPECT_EQ(b % (t.dtype == "F32" || t.dtype == "I32" ? 4 : 2), 0u) << name << " is not aligned to its element";
    EXPECT_TRUE(std::equal(t.data.begin(), t.data.end(), raw.begin() + std::ptrdiff_t(8 + n + b))) << name;
    covered += en - b;
  }
  EXPECT_EQ(8 + n + covered, raw.size()) << "tensors fill the data section exactly";
}

TEST(Safetensors, DataStartsEightByteAlignedForEveryHeaderLength) {
  TempDir d;
  auto r = mpt::test::fresh_rng();
  std::vector<float> v(1 + r.below(7));
  for (auto& x : v) x = r.normal();
  // Growing a metadata value one byte at a time walks the unpadded header length through all 8 residues.
  for (int extra = 0; extra < 8; ++extra) {
    mpt::StFile f;
    f.tensors["w"] = mpt::st_from_float(v, {int64_t(v.size())});
    f.metadata["note"] = std::string(size_t(extra), 'x');
    const std::string path = d.file(std::to_string(extra) + ".safetensors");
    mpt::write_safetensors(path, f);
    const auto raw = read_bytes(path);
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | raw[size_t(i)];
    EXPECT_EQ(n % 8, 0u) << "extra " << extra;
    ASSERT_EQ(raw.size(), 8 + n + 4 * v.size());
    EXPECT_TRUE(std::equal(f.tensors["w"].data.begin(), f.tensors["w"].data.end(), raw.begin() + std::ptrdiff_t(8 + n)));
    EXPECT_EQ(mpt::read_safetensors(path).tensors.at("w").to_float(), v);
  }
}

TEST(Safetensors, ReadsAFileAssembledByteByByte) {
  TempDir d;
  auto r = mpt::test::fresh_rng();
  const float a0 = r.normal(), a1 = r.normal();
  const uint16_t bf[3] = {mpt::float_to_bf16_bits(r.normal()), mpt::float_to_bf16_bits(-r.uniform()), 0x3f80};
  const uint16_t hf = mpt::float_to_half_bits(r.uniform(-100.f, 100.f));
  const double f64 = r.normal() * 1e3;
  const int64_t i64 = -int64_t(r.below(1u << 20));
  std::vector<uint8_t> data;
  append(data, a0);
  append(data, a1);                         // a: [0, 8)
  for (uint16_t b : bf) append(data, b);    // b: [8, 14)
  append(data, hf);                         // c: [14, 16)
  append(data, f64);                        // e: [16, 24)
  append(data, i64);                        // f: [24, 32)
  data.push_back(uint8_t(r.below(256)));    // u: [32, 33)
  const std::string header =
      R"({"__metadata__":{"source":"hand"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("b":{"dtype":"BF16","shape":[1,3],"data_offsets":[8,14]},"c":{"dtype":"F16","shape":[],"data_offsets":[14,16]},)"
      R"("e":{"dtype":"F64","shape":[1],"data_offsets":[16,24]},"f":{"dtype":"I64","shape":[1,1],"data_offsets":[24,32]},)"
      R"("u":{"dtype":"U8","shape":[1],"data_offsets":[32,33]},"z":{"dtype":"F32","shape":[0,4],"data_offsets":[33,33]}})";
  const std::string path = d.file("hand.safetensors");
  write_bytes(path, st_bytes(header, data));

  const auto f = mpt::read_safetensors(path);
  EXPECT_EQ(f.metadata.at("source"), "hand");
  ASSERT_EQ(f.tensors.size(), 7u);
  EXPECT_EQ(f.tensors.at("a").to_float(), (std::vector<float>{a0, a1}));
  EXPECT_EQ(f.tensors.at("b").shape, (std::vector<int64_t>{1, 3}));
  EXPECT_EQ(f.tensors.at("b").to_float(), (std::vector<float>{mpt::bf16_bits_to_float(bf[0]),
                                                              mpt::bf16_bits_to_float(bf[1]), 1.0f}));
  EXPECT_TRUE(f.tensors.at("c").shape.empty());
  EXPECT_EQ(f.tensors.at("c").numel(), 1);
  EXPECT_EQ(f.tensors.at("c").to_float(), std::vector<float>{mpt::half_bits_to_float(hf)});
  EXPECT_EQ(f.tensors.at("e").to_float(), std::vector<float>{float(f64)});
  EXPECT_EQ(f.tensors.at("f").to_float(), std::vector<float>{float(i64)});
  EXPECT_EQ(f.tensors.at("u").data, std::vector<uint8_t>{data.back()});
  EXPECT_THROW((void)f.tensors.at("u").to_float(), std::invalid_argument);
  EXPECT_EQ(f.tensors.at("z").numel(), 0);
  EXPECT_TRUE(f.tensors.at("z").to_float().empty());
}

TEST(Safetensors, DamagedHeadersNameFileAndTensor) {
  TempDir d;
  auto r = mpt::test::fresh_rng();
  std::vector<uint8_t> data(16);
  for (auto& b : data) b = uint8_t(r.below(256));
  auto entry = [](const std::string& name, const std::string& dtype, const std::string& shape, int b, int e) {
    return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":[" +
           std::to_string(b) + "," + std::to_string(e) + "]}";
  };
  auto put = [&](const std::string& name, const std::string& header) {
    write_bytes(d.file(name), st_bytes(header, data));
    return d.file(name);
  };
  ASSERT_NO_THROW(mpt::read_safetensors(put("ok", "{" + entry("w", "F32", "[2]", 0, 8) + "," +
                                                      entry("v", "F16", "[4]", 8, 16) + "}")));

  // Header length beyond the file.
  auto bytes = st_bytes("{}", data);
  bytes[0] = uint8_t(20 + r.below(200));
  bytes[1] = uint8_t(r.below(4));
  write_bytes(d.file("len"), bytes);
  expect_error(d.file("len"), "header length");
  write_bytes(d.file("short"), std::vector<uint8_t>(1 + r.below(7), 0));
  expect_error(d.file("short"), "header length");

  expect_error(put("json", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],"), "header", "invalid JSON");
  expect_error(put("array", "[1,2]"), "header");
  expect_error(put("range", "{" + entry("w", "F32", "[6]", 0, 24) + "}"), "w", "run past");
  expect_error(put("range2", "{" + entry("w", "F32", "[2]", 0, 8) + "," + entry("tail.bias", "F16", "[8]", 12, 28) + "}"),
               "tail.bias", "run past");
  // One byte past the end is already out of range.
  expect_error(put("range1", "{" + entry("w", "F32", "[2]", 0, 8) + "," + entry("u", "U8", "[9]", 8, 17) + "}"), "u",
               "run past");
  expect_error(put("overlap", "{" + entry("a", "F32", "[2]", 0, 8) + "," + entry("b", "F32", "[2]", 4, 12) + "}"), "b",
               "\"a\"");
  // A small tensor inside a large one, after an empty tensor that must not hide the overlap.
  expect_error(put("inside", "{" + entry("big", "F32", "[4]", 0, 16) + "," + entry("e", "F32", "[0]", 4, 4) + "," +
                                entry("small", "F16", "[1]", 6, 8) + "}"),
               "small", "\"big\"");
  expect_error(put("dtype", "{" + entry("w", "F12", "[2]", 0, 8) + "}"), "w", "F12");
  expect_error(put("size", "{" + entry("w", "F32", "[3]", 0, 8) + "}"), "w", "needs 12");
  expect_error(put("order", "{" + entry("w", "F32", "[0]", 8, 4) + "}"), "w", "after end");
  expect_error(put("neg", "{" + entry("w", "F32", "[-2]", 0, 8) + "}"), "w");
  expect_error(put("meta", "{\"__metadata__\":{\"n\":3}," + entry("w", "F32", "[2]", 0, 8) + "}"), "__metadata__");
  expect_error(put("noshape", "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}"), "w", "shape");
  expect_error(d.file("absent"), "open");
}

TEST(Safetensors, WriterRejectsInconsistentTensors) {
  TempDir d;
  mpt::StFile f;
  f.tensors["w"] = mpt::st_from_float({1.f, 2.f, 3.f}, {3});
  f.tensors["w"].data.pop_back();
  EXPECT_THROW(mpt::write_safetensors(d.file("a"), f), mpt::InputError);
  f.tensors["w"] = mpt::st_from_float({1.f, 2.f, 3.f}, {3});
  f.tensors["w"].dtype = "F24";
  EXPECT_THROW(mpt::write_safetensors(d.file("b"), f), mpt::InputError);
  EXPECT_FALSE(fs::exists(d.file("a")) || fs::exists(d.file("b")));
  EXPECT_THROW(mpt::st_from_float({1.f, 2.f}, {3}), std::invalid_argument);
  EXPECT_THROW(mpt::st_from_int32({1, 2, 3}, {2, 2}), std::invalid_argument);
}
