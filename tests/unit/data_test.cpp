// IDX loading (real Fashion-MNIST files and synthetic ones with every kind of damage), batch
// normalisation and the distributed sampler.
#include <gtest/gtest.h>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <vector>

#include "src/core/check.h"
#include "src/data/data.h"
#include "tests/test_util.h"

namespace fs = std::filesystem;

namespace {

fs::path dataset_dir() {
  const char* env = std::getenv("MPT_FASHION_MNIST_DIR");
  return env ? fs::path(env) : fs::path("/usr/share/datasets/fashion-mnist");
}

bool have_dataset() {
  const fs::path d = dataset_dir();
  for (const char* f : {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                        "t10k-labels-idx1-ubyte.gz"})
    if (!fs::exists(d / f)) return false;
  return true;
}

void put_be32(std::vector<uint8_t>& b, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) b.push_back(uint8_t(v >> s));
}

std::vector<uint8_t> idx_images(uint32_t magic, uint32_t count, uint32_t rows, uint32_t cols,
                                const std::vector<uint8_t>& pixels) {
  std::vector<uint8_t> b;
  put_be32(b, magic);
  put_be32(b, count);
  put_be32(b, rows);
  put_be32(b, cols);
  b.insert(b.end(), pixels.begin(), pixels.end());
  return b;
}

std::vector<uint8_t> idx_labels(uint32_t magic, uint32_t count, const std::vector<uint8_t>& labels) {
  std::vector<uint8_t> b;
  put_be32(b, magic);
  put_be32(b, count);
  b.insert(b.end(), labels.begin(), labels.end());
  return b;
}

// Reads a whole file through zlib without any IDX parsing, to check the loader against raw offsets.
std::vector<uint8_t> gunzip_all(const fs::path& p) {
  gzFile f = gzopen(p.c_str(), "rb");
  if (!f) return {};
  std::vector<uint8_t> out;
  uint8_t buf[1 << 16];
  int r;
  while ((r = gzread(f, buf, sizeof buf)) > 0) out.insert(out.end(), buf, buf + r);
  gzclose(f);
  return out;
}

class IdxFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "mpt_data_test_XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  std::string write_plain(const std::string& name, const std::vector<uint8_t>& bytes) {
    const fs::path p = dir_ / name;
    std::ofstream f(p, std::ios::binary);
    f.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
    EXPECT_TRUE(f.good());
    return p.string();
  }
  std::string write_gz(const std::string& name, const std::vector<uint8_t>& bytes) {
    const fs::path p = dir_ / name;
    gzFile f = gzopen(p.c_str(), "wb");
    EXPECT_NE(f, nullptr);
    EXPECT_EQ(gzwrite(f, bytes.data(), unsigned(bytes.size())), int(bytes.size()));
    EXPECT_EQ(gzclose(f), Z_OK);
    return p.string();
  }

  // A consistent random dataset, and its images / labels files written plainly.
  void make_random(uint32_t count, uint32_t rows, uint32_t cols) {
    mpt::Rng r = mpt::test::fresh_rng();
    count_ = count;
    rows_ = rows;
    cols_ = cols;
    pixels_.resize(size_t(count) * rows * cols);
    // Draw bytes from the full range so that 0 and 255 both occur and no value is special-cased.
    for (size_t k = 0; k < pixels_.size(); k += 8) {
      uint64_t bits = r.next();
      for (size_t j = k; j < std::min(k + 8, pixels_.size()); ++j, bits >>= 8) pixels_[j] = uint8_t(bits);
    }
    labels_.resize(count);
    for (auto& l : labels_) l = uint8_t(r.below(10));
  }

  // Loads and expects an InputError naming `file` and `field`; returns its message.
  std::string expect_input_error(const std::string& images, const std::string& labels, const std::string& file,
                                 const std::string& field, int64_t limit = 0) {
    try {
      mpt::load_idx(images, labels, limit);
    } catch (const mpt::InputError& e) {
      EXPECT_EQ(e.file(), file) << e.what();
      EXPECT_EQ(e.field(), field) << e.what();
      EXPECT_NE(std::string(e.what()).find(file), std::string::npos) << "message must name the file: " << e.what();
      return e.what();
    }
    ADD_FAILURE() << "no InputError for " << images << " / " << labels;
    return {};
  }

  void expect_matches(const mpt::ImageDataset& d, int64_t n) {
    ASSERT_EQ(d.count, n);
    EXPECT_EQ(d.rows, int(rows_));
    EXPECT_EQ(d.cols, int(cols_));
    ASSERT_EQ(d.pixels.size(), size_t(n) * rows_ * cols_);
    ASSERT_EQ(d.labels.size(), size_t(n));
    EXPECT_TRUE(std::equal(d.pixels.begin(), d.pixels.end(), pixels_.begin()));
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(d.labels[size_t(i)], int32_t(labels_[size_t(i)])) << "index " << i;
  }

  fs::path dir_;
  uint32_t count_ = 0, rows_ = 0, cols_ = 0;
  std::vector<uint8_t> pixels_, labels_;
};

}  // namespace

// ---------------------------------------------------------------- real files

TEST(FashionMnist, RealFilesLoad) {
  if (!have_dataset()) GTEST_SKIP() << "Fashion-MNIST not found in " << dataset_dir() << " (set MPT_FASHION_MNIST_DIR)";
  const auto t0 = std::chrono::steady_clock::now();
  const mpt::ImageDataset train = mpt::load_fashion_mnist(dataset_dir().string(), true);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("[ timing   ] full training set loaded in %.3f s\n", secs);
  const mpt::ImageDataset test = mpt::load_fashion_mnist(dataset_dir().string(), false);

  for (const auto* d : {&train, &test}) {
    const bool is_train = d == &train;
    SCOPED_TRACE(is_train ? "train" : "t10k");
    EXPECT_EQ(d->count, is_train ? 60000 : 10000);
    EXPECT_EQ(d->rows, 28);
    EXPECT_EQ(d->cols, 28);
    EXPECT_EQ(d->num_classes, 10);
    ASSERT_EQ(d->pixels.size(), size_t(d->count) * 784);
    ASSERT_EQ(d->labels.size(), size_t(d->count));
    // Fashion-MNIST is exactly balanced: 6000 training and 1000 test images per class.
    std::vector<int64_t> per_class(10, 0);
    for (int32_t l : d->labels) {
      ASSERT_GE(l, 0);
      ASSERT_LT(l, 10);
      ++per_class[size_t(l)];
    }
    for (int c = 0; c < 10; ++c) EXPECT_EQ(per_class[size_t(c)], is_train ? 6000 : 1000) << "class " << c;
    // Images are not blank: pixels span the whole byte range.
    EXPECT_EQ(*std::max_element(d->pixels.begin(), d->pixels.end()), 255);
    EXPECT_EQ(*std::min_element(d->pixels.begin(), d->pixels.end()), 0);
  }

  // The first training example, checked against a separate decoding of the shipped file
  // (Python gzip, bytes 16..799 of the images and byte 8 of the labels): an ankle boot (class 9)
  // whose 784 pixels sum to 76247.
  EXPECT_EQ(train.labels[0], 9);
  int64_t sum0 = 0;
  for (int j = 0; j < 784; ++j) sum0 += train.pixels[size_t(j)];
  EXPECT_EQ(sum0, 76247);

  // The loader against the raw decompressed bytes at the offsets the format fixes (16-byte image header,
  // 8-byte label header): catches any off-by-header or byte-order slip on every example.
  const std::vector<uint8_t> raw_img = gunzip_all(dataset_dir() / "t10k-images-idx3-ubyte.gz");
  const std::vector<uint8_t> raw_lab = gunzip_all(dataset_dir() / "t10k-labels-idx1-ubyte.gz");
  ASSERT_EQ(raw_img.size(), 16 + test.pixels.size());
  ASSERT_EQ(raw_lab.size(), 8 + test.labels.size());
  EXPECT_TRUE(std::equal(test.pixels.begin(), test.pixels.end(), raw_img.begin() + 16));
  for (size_t i = 0; i < test.labels.size(); ++i) ASSERT_EQ(test.labels[i], int32_t(raw_lab[8 + i])) << i;

  // limit keeps exactly the leading examples.
  const mpt::ImageDataset head = mpt::load_fashion_mnist(dataset_dir().string(), true, 1234);
  ASSERT_EQ(head.count, 1234);
  ASSERT_EQ(head.pixels.size(), size_t(1234) * 784);
  EXPECT_TRUE(std::equal(head.pixels.begin(), head.pixels.end(), train.pixels.begin()));
  EXPECT_TRUE(std::equal(head.labels.begin(), head.labels.end(), train.labels.begin()));
}

TEST(FashionMnist, MissingDirectoryNamesTheFile) {
  const std::string dir = "/nonexistent/mpt-fashion-mnist";
  try {
    mpt::load_fashion_mnist(dir, true);
    FAIL() << "no InputError";
  } catch (const mpt::InputError& e) {
    EXPECT_EQ(e.file(), dir + "/train-images-idx3-ubyte.gz");
    EXPECT_EQ(e.field(), "open");
  }
}

// ---------------------------------------------------------------- synthetic files

TEST_F(IdxFiles, PlainAndGzipReadBackExactly) {
  make_random(37, 5, 7);
  const auto img = idx_images(0x803, count_, rows_, cols_, pixels_);
  const auto lab = idx_labels(0x801, count_, labels_);
  expect_matches(mpt::load_idx(write_plain("i", img), write_plain("l", lab)), count_);
  expect_matches(mpt::load_idx(write_gz("i.gz", img), write_gz("l.gz", lab)), count_);
  // Mixed: one compressed, one not.
  expect_matches(mpt::load_idx(dir_ / "i.gz", dir_ / "l"), count_);
}

TEST_F(IdxFiles, LargerThanOneReadChunk) {
  // Over 16 MiB of pixels so that the growing read buffer has to extend at least once. Written plainly:
  // compressing this much random data would dominate the test's run time.
  make_random(700, 160, 160);
  const auto img = idx_images(0x803, count_, rows_, cols_, pixels_);
  const auto lab = idx_labels(0x801, count_, labels_);
  expect_matches(mpt::load_idx(write_plain("i", img), write_gz("l.gz", lab)), count_);
}

TEST_F(IdxFiles, LimitKeepsLeadingExamplesAndReadsOnlyThose) {
  make_random(50, 4, 3);
  const auto img = idx_images(0x803, count_, rows_, cols_, pixels_);
  const auto lab = idx_labels(0x801, count_, labels_);
  const std::string i = write_gz("i.gz", img), l = write_plain("l", lab);
  expect_matches(mpt::load_idx(i, l, 7), 7);
  expect_matches(mpt::load_idx(i, l, 1), 1);
  expect_matches(mpt::load_idx(i, l, 50), 50);
  expect_matches(mpt::load_idx(i, l, 1000), 50);  // a limit above the count keeps everything

  // Damage after the kept examples is never read, so it cannot fail a limited load ...
  std::vector<uint8_t> cut(img.begin(), img.begin() + 16 + 10 * 12 + 5);
  std::vector<uint8_t> bad_lab = lab;
  bad_lab.at(bad_lab.size() - 1) = 200;  // the last example's label
  const std::string ci = write_plain("cut", cut), bl = write_plain("badlab", bad_lab);
  expect_matches(mpt::load_idx(ci, bl, 10), 10);
  // ... but is reported once the limit reaches it.
  expect_input_error(ci, l, ci, "pixels", 11);
  expect_input_error(i, bl, bl, "labels");
}

TEST_F(IdxFiles, MissingFile) {
  make_random(3, 2, 2);
  const std::string l = write_plain("l", idx_labels(0x801, count_, labels_));
  const std::string i = write_plain("i", idx_images(0x803, count_, rows_, cols_, pixels_));
  const std::string missing = (dir_ / "no-such-file.gz").string();
  std::string msg = expect_input_error(missing, l, missing, "open");
  EXPECT_NE(msg.find("No such file"), std::string::npos) << msg;
  expect_input_error(i, missing, missing, "open");
  // A directory opens but cannot be read.
  expect_input_error(dir_.string(), l, dir_.string(), "header");
}

// The end of a gzip file is checked completely: a damaged CRC-32, a missing trailer and bytes after the
// compressed data are each refused with the file named, while a second gzip member is read on.
TEST_F(IdxFiles, DamagedGzipEndsAreRefused) {
  make_random(40, 5, 7);
  const std::vector<uint8_t> img = idx_images(0x803, count_, rows_, cols_, pixels_);
  const std::string l = write_gz("l.gz", idx_labels(0x801, count_, labels_));
  const std::string good = write_gz("good.gz", img);
  std::vector<uint8_t> gz;
  {
    std::ifstream in(good, std::ios::binary);
    gz.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  ASSERT_GT(gz.size(), 18u);
  std::vector<uint8_t> crc = gz;
  crc[crc.size() - 6] ^= 0x5a;  // inside the CRC-32 of the trailer
  std::string msg = expect_input_error(write_plain("crc.gz", crc), l, dir_.string() + "/crc.gz", "pixels");
  EXPECT_NE(msg.find("damaged compressed file"), std::string::npos) << msg;
  const std::vector<uint8_t> cut(gz.begin(), gz.end() - 8);  // no trailer
  msg = expect_input_error(write_plain("cut.gz", cut), l, dir_.string() + "/cut.gz", "pixels");
  EXPECT_NE(msg.find("trailer is missing"), std::string::npos) << msg;
  std::vector<uint8_t> tail = gz;
  for (char c : std::string("garbage")) tail.push_back(uint8_t(c));
  msg = expect_input_error(write_plain("tail.gz", tail), l, dir_.string() + "/tail.gz", "pixels");
  EXPECT_NE(msg.find("trailing bytes"), std::string::npos) << msg;
  // Split into two gzip members, the file is the same data.
  const size_t half = img.size() / 2;
  const std::string a = write_gz("a.gz", {img.begin(), img.begin() + long(half)});
  const std::string b = write_gz("b.gz", {img.begin() + long(half), img.end()});
  std::vector<uint8_t> two;
  for (const std::string& p : {a, b}) {
    std::ifstream in(p, std::ios::binary);
    two.insert(two.end(), std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  expect_matches(mpt::load_idx(write_plain("two.gz", two), l), count_);
}

TEST_F(IdxFiles, WrongMagic) {
  make_random(4, 3, 3);
  const auto img = idx_images(0x803, count_, rows_, cols_, pixels_);
  const auto lab = idx_labels(0x801, count_, labels_);
  const std::string i = write_gz("i.gz", img), l = write_gz("l.gz", lab);

  // Labels passed as images and vice versa.
  std::string msg = expect_input_error(l, i, l, "magic");
  EXPECT_NE(msg.find("expected 0x00000803"), std::string::npos) << msg;
  EXPECT_NE(msg.find("found 0x00000801"), std::string::npos) << msg;

  // A random wrong magic in the labels file, printed in hex.
  mpt::Rng r = mpt::test::fresh_rng();
  uint32_t bogus;
  do bogus = uint32_t(r.next()); while (bogus == 0x801);
  const std::string bl = write_plain("bl", idx_labels(bogus, count_, labels_));
  msg = expect_input_error(i, bl, bl, "magic");
  char hex[16];
  std::snprintf(hex, sizeof hex, "0x%08x", bogus);
  EXPECT_NE(msg.find(std::string("found ") + hex), std::string::npos) << msg;
  EXPECT_NE(msg.find("expected 0x00000801"), std::string::npos) << msg;
}

TEST_F(IdxFiles, TruncatedHeader) {
  make_random(4, 3, 3);
  const auto img = idx_images(0x803, count_, rows_, cols_, pixels_);
  const auto lab = idx_labels(0x801, count_, labels_);
  const std::string l = write_plain("l", lab), i = write_plain("i", img);
  // Every cut inside the 16-byte image header, including an empty file and a cut inside the magic.
  for (size_t cut : {size_t(0), size_t(3), size_t(4), size_t(9), size_t(15)}) {
    SCOPED_TRACE(cut);
    const std::string p = write_gz("ti" + std::to_string(cut) + ".gz", {img.begin(), img.begin() + long(cut)});
    expect_input_error(p, l, p, "header");
  }
  const std::string tl = write_plain("tl", {lab.begin(), lab.begin() + 6});
  std::string msg = expect_input_error(i, tl, tl, "header");
  EXPECT_NE(msg.find("expected 8 bytes, got 6"), std::string::npos) << msg;
}

TEST_F(IdxFiles, TruncatedData) {
  make_random(6, 4, 5);
  const auto img = idx_images(0x803, count_, rows_, cols_, pixels_);
  const auto lab = idx_labels(0x801, count_, labels_);
  const std::string i = write_plain("i", img), l = write_plain("l", lab);

  // One pixel short, plain and compressed.
  std::vector<uint8_t> short_img(img.begin(), img.end() - 1);
  for (const std::string& p : {write_plain("si", short_img), write_gz("si.gz", short_img)}) {
    std::string msg = expect_input_error(p, l, p, "pixels");
    EXPECT_NE(msg.find("expected 120 bytes, got 119"), std::string::npos) << msg;
  }
  // Labels missing their last two entries.
  const std::string sl = write_gz("sl.gz", {lab.begin(), lab.end() - 2});
  std::string msg = expect_input_error(i, sl, sl, "labels");
  EXPECT_NE(msg.find("expected 6 bytes, got 4"), std::string::npos) << msg;

  // A gzip stream cut in the middle (a damaged download) is an error, not a short dataset.
  make_random(200, 28, 28);
  std::vector<uint8_t> noisy = idx_images(0x803, count_, rows_, cols_, pixels_);
  const std::string full = write_gz("full.gz", noisy);
  std::ifstream f(full, std::ios::binary);
  std::vector<uint8_t> gz((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  ASSERT_GT(gz.size(), 1000u);
  const std::string half = write_plain("half.gz", {gz.begin(), gz.begin() + long(gz.size() / 2)});
  const std::string l200 = write_plain("l200", idx_labels(0x801, count_, labels_));
  expect_input_error(half, l200, half, "pixels");
}

TEST_F(IdxFiles, TrailingBytesAreAnError) {
  make_random(5, 2, 3);
  auto img = idx_images(0x803, count_, rows_, cols_, pixels_);
  img.push_back(7);
  const std::string i = write_plain("i", img), l = write_plain("l", idx_labels(0x801, count_, labels_));
  expect_input_error(i, l, i, "pixels");
  expect_matches(mpt::load_idx(i, l, 4), 4);  // a limited read never looks past what it keeps
}

TEST_F(IdxFiles, CountMismatch) {
  make_random(8, 3, 2);
  const std::string i = write_plain("i", idx_images(0x803, count_, rows_, cols_, pixels_));
  // A label file that is itself consistent but one example short.
  std::vector<uint8_t> fewer(labels_.begin(), labels_.end() - 1);
  const std::string l = write_plain("l", idx_labels(0x801, count_ - 1, fewer));
  std::string msg = expect_input_error(i, l, l, "count");
  EXPECT_NE(msg.find("7"), std::string::npos) << msg;
  EXPECT_NE(msg.find("8"), std::string::npos) << msg;
  // Even when a limit would fit inside both, the files disagree and are rejected.
  expect_input_error(i, l, l, "count", 2);

  const std::string empty = write_plain("e", idx_images(0x803, 0, rows_, cols_, {}));
  const std::string el = write_plain("el", idx_labels(0x801, 0, {}));
  expect_input_error(empty, el, empty, "count");
}

TEST_F(IdxFiles, BadLabel) {
  make_random(20, 2, 2);
  mpt::Rng r = mpt::test::fresh_rng();
  const std::string i = write_plain("i", idx_images(0x803, count_, rows_, cols_, pixels_));
  const size_t at = size_t(r.below(count_));
  for (uint8_t bad : {uint8_t(10), uint8_t(10 + r.below(246))}) {
    std::vector<uint8_t> lab = labels_;
    lab[at] = bad;
    const std::string l = write_gz("l" + std::to_string(bad) + ".gz", idx_labels(0x801, count_, lab));
    std::string msg = expect_input_error(i, l, l, "labels");
    EXPECT_NE(msg.find("label " + std::to_string(bad) + " at index " + std::to_string(at)), std::string::npos)
        << msg;
  }
  // 9 is the largest valid label.
  std::vector<uint8_t> lab = labels_;
  lab[at] = 9;
  const auto d = mpt::load_idx(i, write_plain("l9", idx_labels(0x801, count_, lab)));
  EXPECT_EQ(d.labels[at], 9);
}

// ---------------------------------------------------------------- batches

TEST(ImageBatch, NormalisesAndGathers) {
  mpt::Rng r = mpt::test::fresh_rng();
  mpt::ImageDataset d;
  d.count = 40;
  d.rows = 3;
  d.cols = 5;
  d.pixels.resize(size_t(d.count * d.dim()));
  d.labels.resize(size_t(d.count));
  for (auto& p : d.pixels) p = uint8_t(r.below(256));
  d.pixels[0] = 0;  // the two ends of the range always appear
  d.pixels[1] = 255;
  for (auto& l : d.labels) l = int32_t(r.below(10));

  const int n = 17;
  std::vector<int64_t> idx(n);
  for (auto& k : idx) k = int64_t(r.below(uint64_t(d.count)));
  idx[0] = 0;
  std::vector<float> x(size_t(n * d.dim()), -999.f);
  std::vector<int32_t> y(n, -1);
  mpt::make_image_batch(d, idx.data(), n, x.data(), y.data());

  // The outputs lie in [-0.81, 2.03]; float rounding there is at most 1.2e-7, so 2.5e-7 admits only the
  // final rounding, while any change to the constants (e.g. 0.286 -> 0.2861) moves values by > 2.8e-4.
  for (int i = 0; i < n; ++i) {
    EXPECT_EQ(y[size_t(i)], d.labels[size_t(idx[size_t(i)])]);
    for (int j = 0; j < d.dim(); ++j) {
      const double p = d.pixels[size_t(idx[size_t(i)] * d.dim() + j)];
      const double ref = (p / 255.0 - 0.2860) / 0.3530;
      ASSERT_NEAR(x[size_t(i * d.dim() + j)], ref, 2.5e-7) << "example " << i << " pixel " << j;
    }
  }
  EXPECT_NEAR(x[0], -0.2860 / 0.3530, 2.5e-7);
  EXPECT_NEAR(x[1], (1.0 - 0.2860) / 0.3530, 2.5e-7);

  const int64_t bad = d.count;
  EXPECT_THROW(mpt::make_image_batch(d, &bad, 1, x.data(), y.data()), std::out_of_range);
}

// ---------------------------------------------------------------- sampler

namespace {

std::vector<std::vector<int64_t>> shards(int64_t n, int world, uint64_t seed, int epoch, bool shuffle = true) {
  std::vector<std::vector<int64_t>> out;
  for (int r = 0; r < world; ++r) {
    mpt::DistributedSampler s(n, r, world, seed, shuffle);
    s.set_epoch(epoch);
    out.push_back(s.indices());
  }
  return out;
}

// The epoch's full order as one rank of world 1 sees it.
std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int epoch) { return shards(n, 1, seed, epoch)[0]; }

}  // namespace

TEST(DistributedSampler, ShardsPartitionTheEpochPermutation) {
  mpt::Rng r = mpt::test::fresh_rng();
  const uint64_t seed = r.next();
  for (int trial = 0; trial < 20; ++trial) {
    const int64_t n = 1 + int64_t(r.below(3000));
    const int world = 1 + int(r.below(8));
    const int epoch = int(r.below(100));
    SCOPED_TRACE("n=" + std::to_string(n) + " world=" + std::to_string(world) + " epoch=" + std::to_string(epoch));

    const std::vector<int64_t> order = epoch_order(n, seed, epoch);
    ASSERT_EQ(int64_t(order.size()), n);
    ASSERT_EQ(std::set<int64_t>(order.begin(), order.end()).size(), size_t(n));
    ASSERT_GE(*std::min_element(order.begin(), order.end()), 0);
    ASSERT_LT(*std::max_element(order.begin(), order.end()), n);

    const auto sh = shards(n, world, seed, epoch);
    const int64_t per = n / world;
    std::set<int64_t> seen;
    for (int k = 0; k < world; ++k) {
      ASSERT_EQ(int64_t(sh[size_t(k)].size()), per);
      mpt::DistributedSampler s(n, k, world, seed);
      s.set_epoch(epoch);
      EXPECT_EQ(s.per_rank(), per);
      for (int64_t i = 0; i < per; ++i) {
        // Rank k's i-th sample is position i*world + k of the epoch order, whatever the world size.
        ASSERT_EQ(sh[size_t(k)][size_t(i)], order[size_t(i * world + k)]);
        ASSERT_EQ(s.index(i), sh[size_t(k)][size_t(i)]);
        ASSERT_TRUE(seen.insert(sh[size_t(k)][size_t(i)]).second) << "sample in two shards";
      }
    }
    // Union = the first world*per elements of the permutation; the remainder is dropped.
    EXPECT_EQ(seen, std::set<int64_t>(order.begin(), order.begin() + world * per));
  }
}

TEST(DistributedSampler, EpochsReshuffleDeterministically) {
  mpt::Rng r = mpt::test::fresh_rng();
  const uint64_t seed = r.next();
  const int64_t n = 5000;
  const int world = 4;

  // Every "rank" built independently agrees, as separate processes would.
  const auto a = shards(n, world, seed, 3);
  const auto b = shards(n, world, seed, 3);
  EXPECT_EQ(a, b);

  // Going back to an epoch reproduces it; construction starts at epoch 0.
  mpt::DistributedSampler s(n, 1, world, seed);
  const auto e0 = s.indices();
  s.set_epoch(7);
  const auto e7 = s.indices();
  s.set_epoch(0);
  EXPECT_EQ(s.indices(), e0);
  EXPECT_NE(e0, e7);

  // Consecutive epochs and different seeds are unrelated orders: a random pair of permutations shares
  // about one fixed position on average; 20 of 5000 would already signal correlated streams.
  std::vector<std::vector<int64_t>> orders;
  for (int e = 0; e < 6; ++e) orders.push_back(epoch_order(n, seed, e));
  orders.push_back(epoch_order(n, seed ^ 1, 0));
  orders.push_back(epoch_order(n, seed ^ 2, 0));
  for (size_t p = 0; p < orders.size(); ++p)
    for (size_t q = p + 1; q < orders.size(); ++q) {
      int64_t same = 0;
      for (int64_t i = 0; i < n; ++i) same += orders[p][size_t(i)] == orders[q][size_t(i)];
      EXPECT_LT(same, 20) << "orders " << p << " and " << q;
    }
  // A shuffled order is not the identity.
  int64_t fixed = 0;
  for (int64_t i = 0; i < n; ++i) fixed += orders[0][size_t(i)] == i;
  EXPECT_LT(fixed, 20);
}

TEST(DistributedSampler, NoShuffleIsIdentityInterleaved) {
  mpt::Rng r = mpt::test::fresh_rng();
  const int64_t n = 100 + int64_t(r.below(900));
  const int world = 1 + int(r.below(6));
  for (int epoch : {0, 5}) {
    const auto sh = shards(n, world, r.next(), epoch, false);
    for (int k = 0; k < world; ++k) {
      ASSERT_EQ(int64_t(sh[size_t(k)].size()), n / world);
      for (int64_t i = 0; i < n / world; ++i) ASSERT_EQ(sh[size_t(k)][size_t(i)], i * world + k);
    }
  }
}

TEST(DistributedSampler, GlobalBatchMatchesOneRankWithWorldTimesMicroBatch) {
  mpt::Rng r = mpt::test::fresh_rng();
  const uint64_t seed = r.next();
  for (int trial = 0; trial < 10; ++trial) {
    const int64_t n = 50 + int64_t(r.below(2000));
    const int world = 2 + int(r.below(7));
    const int64_t b = 1 + int64_t(r.below(16));
    const int epoch = int(r.below(10));
    SCOPED_TRACE("n=" + std::to_string(n) + " world=" + std::to_string(world) + " b=" + std::to_string(b));

    const auto many = shards(n, world, seed, epoch);
    mpt::DistributedSampler one(n, 0, 1, seed);
    one.set_epoch(epoch);
    const int64_t steps = many[0].size() / size_t(b);
    // Same number of whole steps either way: floor(floor(n/W)/b) == floor(n/(W*b)).
    EXPECT_EQ(steps, one.per_rank() / (world * b));
    for (int64_t s = 0; s < steps; ++s) {
      std::multiset<int64_t> global, single;
      for (int k = 0; k < world; ++k)
        for (int64_t j = 0; j < b; ++j) global.insert(many[size_t(k)][size_t(s * b + j)]);
      for (int64_t j = 0; j < world * b; ++j) single.insert(one.index(s * world * b + j));
      ASSERT_EQ(global, single) << "step " << s;
    }
  }
}

TEST(DistributedSampler, RejectsBadArguments) {
  EXPECT_THROW(mpt::DistributedSampler(10, 2, 2, 1), std::invalid_argument);
  EXPECT_THROW(mpt::DistributedSampler(10, -1, 2, 1), std::invalid_argument);
  EXPECT_THROW(mpt::DistributedSampler(10, 0, 0, 1), std::invalid_argument);
  EXPECT_THROW(mpt::DistributedSampler(-1, 0, 1, 1), std::invalid_argument);
  // Fewer samples than ranks: every rank gets none rather than an uneven share.
  mpt::DistributedSampler s(3, 2, 4, 1);
  EXPECT_EQ(s.per_rank(), 0);
  EXPECT_TRUE(s.indices().empty());
}
