#include "src/data.h"

#include <zlib.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <stdexcept>

#include "src/check.h"
#include "src/rng.h"

namespace mpt {
namespace {

constexpr uint32_t kImageMagic = 0x00000803;  // unsigned byte, 3 dimensions
constexpr uint32_t kLabelMagic = 0x00000801;  // unsigned byte, 1 dimension

std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

uint32_t read_be32(const uint8_t* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

// gzFile owner. zlib reads files without a gzip header transparently, so one code path serves the
// shipped .gz files and decompressed copies alike.
class GzReader {
 public:
  explicit GzReader(const std::string& path) : path_(path) {
    errno = 0;
    f_ = gzopen(path.c_str(), "rb");
    if (!f_) {
      std::string why = errno ? std::strerror(errno) : "out of memory";
      throw InputError(path, "open", "cannot open file (" + why + ")");
    }
    // The default 8 KiB buffer makes the 47 MB training set cost thousands of tiny reads.
    gzbuffer(f_, 1 << 20);
  }
  ~GzReader() {
    if (f_) gzclose(f_);
  }
  GzReader(const GzReader&) = delete;
  GzReader& operator=(const GzReader&) = delete;

  // Reads up to n bytes; returns how many arrived (fewer only at the end of the data).
  size_t read(void* dst, size_t n, const char* field) {
    auto* out = static_cast<uint8_t*>(dst);
    size_t got = 0;
    while (got < n) {
      // gzread takes an unsigned length but returns int, so keep each request below INT_MAX.
      unsigned want = unsigned(std::min<size_t>(n - got, size_t(1) << 30));
      int r = gzread(f_, out + got, want);
      if (r < 0) throw InputError(path_, field, "read failed (" + error_text() + ")");
      if (r == 0) break;
      got += size_t(r);
    }
    return got;
  }

  // zlib reports a gzip stream cut short as Z_BUF_ERROR after returning what it could decode;
  // naming it tells a damaged download apart from a file whose header overstates its size.
  std::string eof_note() {
    int err = Z_OK;
    const char* msg = gzerror(f_, &err);
    return err == Z_OK ? std::string() : std::string(" (") + msg + ")";
  }

  const std::string& path() const { return path_; }

 private:
  std::string error_text() {
    int err = Z_OK;
    const char* msg = gzerror(f_, &err);
    if (err == Z_ERRNO) return std::strerror(errno);
    return msg ? msg : "unknown zlib error";
  }

  std::string path_;
  gzFile f_ = nullptr;
};

// Reads the magic and the dimension fields that follow it; returns the dimensions.
template <size_t NDims>
std::array<uint32_t, NDims> read_header(GzReader& in, uint32_t expected_magic) {
  uint8_t buf[4 * (NDims + 1)];
  size_t got = in.read(buf, 4, "header");
  if (got < 4)
    throw InputError(in.path(), "header",
                     "truncated header: expected 4 bytes of magic, got " + std::to_string(got) + in.eof_note());
  uint32_t magic = read_be32(buf);
  if (magic != expected_magic)
    throw InputError(in.path(), "magic", "wrong magic number: expected " + hex32(expected_magic) + ", found " +
                                             hex32(magic) +
                                             (magic == (expected_magic ^ 0x2u) ? " (images and labels swapped?)" : ""));
  got = in.read(buf + 4, 4 * NDims, "header");
  if (got < 4 * NDims)
    throw InputError(in.path(), "header",
                     "truncated header: expected " + std::to_string(4 * (NDims + 1)) + " bytes, got " +
                         std::to_string(4 + got) + in.eof_note());
  std::array<uint32_t, NDims> dims;
  for (size_t i = 0; i < NDims; ++i) dims[i] = read_be32(buf + 4 * (i + 1));
  return dims;
}

// Reads exactly n bytes into a vector. The vector grows as bytes arrive instead of being sized from the
// header up front, so a header that claims absurd sizes ends in a clear truncation error, not bad_alloc.
std::vector<uint8_t> read_payload(GzReader& in, uint64_t n, const char* field) {
  std::vector<uint8_t> out;
  constexpr uint64_t kFirstChunk = uint64_t(16) << 20;
  out.resize(size_t(std::min(n, kFirstChunk)));
  uint64_t got = 0;
  for (;;) {
    size_t r = in.read(out.data() + got, out.size() - size_t(got), field);
    got += r;
    if (got < out.size()) break;  // end of data
    if (got == n) break;
    out.resize(size_t(std::min(n, uint64_t(out.size()) * 2)));
  }
  if (got < n)
    throw InputError(in.path(), field,
                     "truncated data: expected " + std::to_string(n) + " bytes, got " + std::to_string(got) +
                         in.eof_note());
  return out;
}

// A whole-file read that leaves bytes unread means the header's count does not describe the file.
void expect_end(GzReader& in, const char* field) {
  uint8_t extra;
  if (in.read(&extra, 1, field) != 0)
    throw InputError(in.path(), field, "file has more data than its header's count describes");
}

}  // namespace

ImageDataset load_idx(const std::string& images_path, const std::string& labels_path, int64_t limit) {
  GzReader images(images_path);
  GzReader labels(labels_path);
  auto [count, rows, cols] = read_header<3>(images, kImageMagic);
  auto [label_count] = read_header<1>(labels, kLabelMagic);

  // The counts are unsigned 32-bit in the format; above INT32_MAX they are a damaged header, not data.
  if (count > uint32_t(INT32_MAX))
    throw InputError(images_path, "count", "implausible image count " + std::to_string(count));
  if (count == 0) throw InputError(images_path, "count", "file holds no images");
  if (rows == 0 || cols == 0 || rows > 32768 || cols > 32768)
    throw InputError(images_path, "header",
                     "implausible image size " + std::to_string(rows) + "x" + std::to_string(cols));
  if (label_count != count)
    throw InputError(labels_path, "count",
                     "label count " + std::to_string(label_count) + " differs from image count " +
                         std::to_string(count) + " in " + images_path);

  ImageDataset d;
  d.rows = int(rows);
  d.cols = int(cols);
  d.count = (limit > 0 && limit < int64_t(count)) ? limit : int64_t(count);
  const bool whole = d.count == int64_t(count);

  d.pixels = read_payload(images, uint64_t(d.count) * uint64_t(d.dim()), "pixels");
  if (whole) expect_end(images, "pixels");

  std::vector<uint8_t> raw = read_payload(labels, uint64_t(d.count), "labels");
  if (whole) expect_end(labels, "labels");
  d.labels.resize(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) {
    if (raw[i] >= d.num_classes)
      throw InputError(labels_path, "labels",
                       "label " + std::to_string(raw[i]) + " at index " + std::to_string(i) + " is outside [0, " +
                           std::to_string(d.num_classes) + ")");
    d.labels[i] = raw[i];
  }
  return d;
}

ImageDataset load_fashion_mnist(const std::string& dir, bool train, int64_t limit) {
  const std::filesystem::path base(dir);
  const std::string prefix = train ? "train" : "t10k";
  return load_idx((base / (prefix + "-images-idx3-ubyte.gz")).string(),
                  (base / (prefix + "-labels-idx1-ubyte.gz")).string(), limit);
}

void make_image_batch(const ImageDataset& d, const int64_t* indices, int count, float* x, int32_t* y) {
  // 256 possible inputs: a table computed in double keeps every output correctly rounded and the
  // batch loop free of divisions.
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int p = 0; p < 256; ++p) t[size_t(p)] = float((p / 255.0 - 0.2860) / 0.3530);
    return t;
  }();
  const size_t dim = size_t(d.dim());
  for (int i = 0; i < count; ++i) {
    const int64_t k = indices[i];
    if (k < 0 || k >= d.count)
      throw std::out_of_range("make_image_batch: index " + std::to_string(k) + " outside dataset of " +
                              std::to_string(d.count));
    const uint8_t* src = d.pixels.data() + size_t(k) * dim;
    float* dst = x + size_t(i) * dim;
    for (size_t j = 0; j < dim; ++j) dst[j] = table[src[j]];
    y[i] = d.labels[size_t(k)];
  }
}

DistributedSampler::DistributedSampler(int64_t dataset_size, int rank, int world, uint64_t seed, bool shuffle)
    : n_(dataset_size), per_rank_(0), rank_(rank), world_(world), seed_(seed), shuffle_(shuffle) {
  if (dataset_size < 0) throw std::invalid_argument("DistributedSampler: negative dataset size");
  if (world < 1 || rank < 0 || rank >= world)
    throw std::invalid_argument("DistributedSampler: rank " + std::to_string(rank) + " outside world of " +
                                std::to_string(world));
  per_rank_ = n_ / world_;
  set_epoch(0);
}

void DistributedSampler::set_epoch(int epoch) {
  if (!shuffle_) {
    perm_.resize(size_t(n_));
    for (int64_t i = 0; i < n_; ++i) perm_[size_t(i)] = i;
    return;
  }
  // Both seed and epoch go through the mixer: seeding with seed + epoch would make consecutive epochs
  // draw from overlapping SplitMix64 streams, one shifted by a step, giving related permutations.
  const uint64_t epoch_key = Rng(uint64_t(int64_t(epoch)) ^ 0x6a09e667f3bcc909ull).next();
  perm_ = permutation(n_, Rng(seed_ ^ epoch_key).next());
}

std::vector<int64_t> DistributedSampler::indices() const {
  std::vector<int64_t> out(static_cast<size_t>(per_rank_));
  for (int64_t i = 0; i < per_rank_; ++i) out[size_t(i)] = index(i);
  return out;
}

}  // namespace mpt
