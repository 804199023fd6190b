#include "src/data/data.h"

#include <zlib.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <vector>

#include "src/core/check.h"
#include "src/core/rng.h"

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

// A gzip file (or, without the gzip magic, a plain copy) read through zlib's inflate, so that the end of the
// data is checked completely: the CRC-32 and length in the gzip trailer (zlib checks them at the end of a
// member), a trailer that is missing, and bytes after the last member that are not another gzip member.
class GzReader {
 public:
  explicit GzReader(const std::string& path) : path_(path), in_(1 << 20) {
    errno = 0;
    f_ = std::fopen(path.c_str(), "rb");
    if (!f_) throw InputError(path, "open", std::string("cannot open file (") + std::strerror(errno) + ")");
  }
  ~GzReader() {
    if (gzip_) inflateEnd(&z_);
    if (f_) std::fclose(f_);
  }
  GzReader(const GzReader&) = delete;
  GzReader& operator=(const GzReader&) = delete;

  // Reads up to n bytes; returns how many arrived (fewer only at the end of the data).
  size_t read(void* dst, size_t n, const char* field) {
    auto* out = static_cast<uint8_t*>(dst);
    size_t got = 0;
    if (!started_) {  // the first read tells gzip from a plain copy by the magic
      started_ = true;
      fill_more(field);
      gzip_ = avail() >= 2 && in_[pos_] == 0x1f && in_[pos_ + 1] == 0x8b;
      if (gzip_) start_member();
    }
    while (got < n) {
      if (avail() == 0 && !fill(field)) {
        if (gzip_ && !member_done_) throw InputError(path_, field, "damaged compressed file: unexpected end of file (the gzip trailer is missing)");
        break;
      }
      if (!gzip_) {
        const size_t k = std::min(n - got, avail());
        std::memcpy(out + got, &in_[pos_], k);
        pos_ += k, got += k;
        continue;
      }
      if (member_done_) {
        // Another member may follow (concatenated gzip); anything else is not gzip data.
        if (avail() < 2 && !fill_more(field)) {
          if (avail() > 0) throw InputError(path_, field, "damaged compressed file: trailing bytes after the gzip data");
          break;
        }
        if (in_[pos_] != 0x1f || in_[pos_ + 1] != 0x8b)
          throw InputError(path_, field, "damaged compressed file: trailing bytes after the gzip data");
        inflateEnd(&z_);
        start_member();
      }
      z_.next_in = &in_[pos_];
      z_.avail_in = uInt(std::min<size_t>(avail(), UINT_MAX));
      z_.next_out = out + got;
      z_.avail_out = uInt(std::min<size_t>(n - got, UINT_MAX));
      const uInt before_in = z_.avail_in, before_out = z_.avail_out;
      const int r = inflate(&z_, Z_NO_FLUSH);
      pos_ += before_in - z_.avail_in;
      got += before_out - z_.avail_out;
      if (r == Z_STREAM_END) {
        member_done_ = true;
      } else if (r != Z_OK && !(r == Z_BUF_ERROR && before_out != z_.avail_out)) {
        if (r == Z_BUF_ERROR && before_in == z_.avail_in && avail() == 0) continue;  // needs more input
        throw InputError(path_, field, std::string("damaged compressed file: ") + (z_.msg ? z_.msg : zError(r)));
      }
    }
    return got;
  }

  // Nothing to add once the reads above have checked everything; kept for the messages below.
  std::string eof_note() { return ""; }

  const std::string& path() const { return path_; }

 private:
  size_t avail() const { return len_ - pos_; }
  // Refills the buffer when it is empty; false at the end of the file.
  bool fill(const char* field) {
    if (avail() > 0) return true;
    pos_ = 0;
    errno = 0;
    len_ = std::fread(in_.data(), 1, in_.size(), f_);
    if (len_ == 0 && std::ferror(f_))
      throw InputError(path_, field, std::string("read failed (") + std::strerror(errno) + ")");
    return len_ > 0;
  }
  // Makes at least two bytes available when the file has them.
  bool fill_more(const char* field) {
    if (avail() >= 2) return true;
    std::memmove(in_.data(), &in_[pos_], avail());
    len_ = avail();
    pos_ = 0;
    errno = 0;
    len_ += std::fread(&in_[len_], 1, in_.size() - len_, f_);
    if (avail() == 0 && std::ferror(f_))
      throw InputError(path_, field, std::string("read failed (") + std::strerror(errno) + ")");
    return avail() >= 2;
  }
  void start_member() {
    z_ = z_stream{};
    if (inflateInit2(&z_, 16 + MAX_WBITS) != Z_OK) throw InputError(path_, "open", "zlib could not start");
    member_done_ = false;
  }

  std::string path_;
  std::FILE* f_ = nullptr;
  std::vector<uint8_t> in_;
  size_t pos_ = 0, len_ = 0;
  bool started_ = false, gzip_ = false, member_done_ = false;
  z_stream z_{};
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

// A whole-file read that leaves bytes unread means the header's count does not describe the file. Reading
// past the end also makes the reader check the gzip trailer (CRC-32, length) and what follows it.
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
