#include "src/io/safetensors.h"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <stdexcept>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "src/core/check.h"

namespace mpt {

// Tensor bytes are copied as they are, so the host must share the format's byte order.
static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");

namespace {

// The reference implementation refuses headers above 100 MB; a larger length is a corrupt file, and
// checking it first avoids allocating whatever a damaged length field says.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;
const char* kMetadataKey = "__metadata__";

// Element size of a safetensors dtype string, 0 when unknown.
size_t st_elem_size(const std::string& d) {
  static const std::pair<const char*, size_t> kSizes[] = {
      {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"I32", 4}, {"I16", 2}, {"I8", 1},
      {"U64", 8}, {"U32", 4}, {"U16", 2}, {"U8", 1},   {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1}};
  for (const auto& [name, size] : kSizes)
    if (d == name) return size;
  return 0;
}

// numel of a shape, or -1 when a dimension is negative or the product overflows int64.
int64_t shape_numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (const int64_t d : shape) {
    if (d < 0) return -1;
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / d) return -1;
    n *= d;
  }
  return n;
}

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
using FilePtr = std::unique_ptr<std::FILE, FileCloser>;

// {"dtype", "shape", "data_offsets"} of one tensor entry.
struct Entry {
  std::string name, dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;
};

// Throws naming the tensor for any entry that is malformed on its own (overlaps need all entries).
Entry parse_entry(const std::string& path, const std::string& name, const nlohmann::json& j) {
  Entry e;
  e.name = name;
  if (!j.is_object()) throw InputError(path, name, "tensor entry is not a JSON object");
  const auto dt = j.find("dtype");
  if (dt == j.end() || !dt->is_string()) throw InputError(path, name, "missing or non-string \"dtype\"");
  e.dtype = dt->get<std::string>();
  if (st_elem_size(e.dtype) == 0) throw InputError(path, name, "unknown dtype \"" + e.dtype + "\"");
  const auto sh = j.find("shape");
  if (sh == j.end() || !sh->is_array()) throw InputError(path, name, "missing or non-array \"shape\"");
  for (const auto& d : *sh) {
    if (!d.is_number_integer() || d.get<int64_t>() < 0)
      throw InputError(path, name, "\"shape\" must hold non-negative integers, found " + d.dump());
    e.shape.push_back(d.get<int64_t>());
  }
  const auto off = j.find("data_offsets");
  if (off == j.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
      !(*off)[1].is_number_unsigned())
    throw InputError(path, name, "\"data_offsets\" must be [begin, end] with non-negative integers");
  e.begin = (*off)[0].get<uint64_t>();
  e.end = (*off)[1].get<uint64_t>();
  if (e.begin > e.end)
    throw InputError(path, name, "data_offsets begin " + std::to_string(e.begin) + " is after end " +
                                     std::to_string(e.end));
  const int64_t numel = shape_numel(e.shape);
  const size_t es = st_elem_size(e.dtype);
  if (numel < 0 || uint64_t(numel) > std::numeric_limits<uint64_t>::max() / es)
    throw InputError(path, name, "shape " + sh->dump() + " is too large");
  if (uint64_t(numel) * es != e.end - e.begin)
    throw InputError(path, name, "data_offsets span " + std::to_string(e.end - e.begin) + " bytes but " + e.dtype +
                                     " " + sh->dump() + " needs " + std::to_string(uint64_t(numel) * es));
  return e;
}

// Data order of the writer: larger elements first, then by name, so that with the 8-byte aligned header
// every tensor starts at a multiple of its element size (as the reference writer arranges).
bool write_order(const std::pair<const std::string*, const StTensor*>& a,
                 const std::pair<const std::string*, const StTensor*>& b) {
  const size_t sa = st_elem_size(a.second->dtype), sb = st_elem_size(b.second->dtype);
  if (sa != sb) return sa > sb;
  return *a.first < *b.first;
}

// Temporary file, fsync, rename, then fsync of the directory (best effort) so the rename is durable too:
// a crash leaves the old file or the new one, never a partial one.
void write_atomically(const std::string& path, const std::string& header,
                      const std::vector<std::pair<const std::string*, const StTensor*>>& order) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  std::FILE* out = std::fopen(tmp.c_str(), "wb");
  if (!out) throw InputError(path, "write", std::string("cannot create temporary file: ") + std::strerror(errno));
  uint8_t lenb[8];
  for (int i = 0; i < 8; ++i) lenb[i] = uint8_t(uint64_t(header.size()) >> (8 * i));
  bool ok = std::fwrite(lenb, 1, 8, out) == 8 && std::fwrite(header.data(), 1, header.size(), out) == header.size();
  for (const auto& [name, t] : order)
    ok = ok && (t->data.empty() || std::fwrite(t->data.data(), 1, t->data.size(), out) == t->data.size());
  ok = ok && std::fflush(out) == 0 && ::fsync(fileno(out)) == 0;
  const int saved = errno;
  ok = (std::fclose(out) == 0) && ok;
  if (!ok) {
    std::remove(tmp.c_str());
    throw InputError(path, "write", std::string("write failed: ") + std::strerror(saved ? saved : EIO));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    std::remove(tmp.c_str());
    throw InputError(path, "write", std::string("cannot rename into place: ") + std::strerror(e));
  }
  const std::string dir = std::filesystem::path(path).parent_path().string();
  const int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace

int64_t StTensor::numel() const { return shape_numel(shape); }

std::vector<float> StTensor::to_float() const {
  const int64_t n = numel();
  const size_t es = st_elem_size(dtype);
  if (n < 0 || es == 0 || data.size() != size_t(n) * es)
    throw std::invalid_argument("StTensor::to_float: " + dtype + " data of " + std::to_string(data.size()) +
                                " bytes does not match its shape");
  std::vector<float> out(static_cast<size_t>(n));
  const uint8_t* p = data.data();
  // memcpy per element: the byte vector gives no alignment guarantee for wider types.
  if (dtype == "F32") {
    if (!data.empty()) std::memcpy(out.data(), p, data.size());
  } else if (dtype == "F16" || dtype == "BF16") {
    const bool bf = dtype == "BF16";
    for (size_t i = 0; i < out.size(); ++i) {
      uint16_t b;
      std::memcpy(&b, p + 2 * i, 2);
      out[i] = bf ? bf16_bits_to_float(b) : half_bits_to_float(b);
    }
  } else if (dtype == "F64") {
    for (size_t i = 0; i < out.size(); ++i) {
      double v;
      std::memcpy(&v, p + 8 * i, 8);
      out[i] = float(v);
    }
  } else if (dtype == "I32") {
    for (size_t i = 0; i < out.size(); ++i) {
      int32_t v;
      std::memcpy(&v, p + 4 * i, 4);
      out[i] = float(v);
    }
  } else if (dtype == "I64") {
    for (size_t i = 0; i < out.size(); ++i) {
      int64_t v;
      std::memcpy(&v, p + 8 * i, 8);
      out[i] = float(v);
    }
  } else {
    throw std::invalid_argument("StTensor::to_float: dtype " + dtype + " is not convertible to float");
  }
  return out;
}

StTensor st_from_float(const std::vector<float>& v, std::vector<int64_t> shape, DType store) {
  StTensor t;
  t.shape = std::move(shape);
  if (t.numel() < 0 || size_t(t.numel()) != v.size())
    throw std::invalid_argument("st_from_float: " + std::to_string(v.size()) + " values do not fill the shape");
  t.dtype = store == DType::F32 ? "F32" : (store == DType::F16 ? "F16" : "BF16");
  t.data.resize(v.size() * dtype_size(store));
  from_float_n(v.data(), t.data.data(), store, v.size());
  return t;
}

StTensor st_from_int32(const std::vector<int32_t>& v, std::vector<int64_t> shape) {
  StTensor t;
  t.shape = std::move(shape);
  if (t.numel() < 0 || size_t(t.numel()) != v.size())
    throw std::invalid_argument("st_from_int32: " + std::to_string(v.size()) + " values do not fill the shape");
  t.dtype = "I32";
  t.data.resize(v.size() * 4);
  if (!v.empty()) std::memcpy(t.data.data(), v.data(), t.data.size());
  return t;
}

StFile read_safetensors(const std::string& path) {
  FilePtr f(std::fopen(path.c_str(), "rb"));
  if (!f) throw InputError(path, "open", std::string("cannot open: ") + std::strerror(errno));
  struct stat st{};
  if (::fstat(fileno(f.get()), &st) != 0 || !S_ISREG(st.st_mode)) throw InputError(path, "open", "not a regular file");
  const uint64_t file_size = uint64_t(st.st_size);

  uint8_t lenb[8];
  if (file_size < 8 || std::fread(lenb, 1, 8, f.get()) != 8)
    throw InputError(path, "header length", "file is shorter than the 8-byte header length");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | lenb[i];
  if (header_len > kMaxHeaderBytes || header_len > file_size - 8)
    throw InputError(path, "header length", std::to_string(header_len) + " bytes does not fit in a file of " +
                                                std::to_string(file_size) + " bytes");
  std::string text(static_cast<size_t>(header_len), '\0');
  if (header_len && std::fread(text.data(), 1, text.size(), f.get()) != text.size())
    throw InputError(path, "header", "read failed");
  nlohmann::json h;
  try {
    h = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw InputError(path, "header", std::string("invalid JSON: ") + e.what());
  }
  if (!h.is_object()) throw InputError(path, "header", "JSON header is not an object");

  StFile out;
  std::vector<Entry> entries;
  for (auto it = h.begin(); it != h.end(); ++it) {
    if (it.key() == kMetadataKey) {
      if (!it->is_object()) throw InputError(path, kMetadataKey, "must be an object of strings");
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string()) throw InputError(path, kMetadataKey, "value of \"" + m.key() + "\" is not a string");
        out.metadata[m.key()] = m->get<std::string>();
      }
      continue;
    }
    entries.push_back(parse_entry(path, it.key(), *it));
  }

  const uint64_t data_start = 8 + header_len;
  const uint64_t data_len = file_size - data_start;
  std::vector<const Entry*> by_offset;
  for (const auto& e : entries) {
    if (e.end > data_len)
      throw InputError(path, e.name, "data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                                         "] run past the " + std::to_string(data_len) + " data bytes in the file");
    by_offset.push_back(&e);
  }
  std::sort(by_offset.begin(), by_offset.end(), [](const Entry* a, const Entry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  // Sorted by begin, a tensor overlaps an earlier one exactly when it starts before the furthest end seen
  // so far. Empty tensors occupy no bytes and overlap nothing.
  const Entry* furthest = nullptr;
  for (const Entry* cur : by_offset) {
    if (cur->begin == cur->end) continue;
    if (furthest && cur->begin < furthest->end)
      throw InputError(path, cur->name, "data_offsets overlap those of tensor \"" + furthest->name + "\"");
    if (!furthest || cur->end > furthest->end) furthest = cur;
  }

  for (const Entry* e : by_offset) {
    StTensor t;
    t.dtype = e->dtype;
    t.shape = e->shape;
    t.data.resize(static_cast<size_t>(e->end - e->begin));
    if (!t.data.empty()) {
      if (::fseeko(f.get(), off_t(data_start + e->begin), SEEK_SET) != 0 ||
          std::fread(t.data.data(), 1, t.data.size(), f.get()) != t.data.size())
        throw InputError(path, e->name, "read failed");
    }
    out.tensors.emplace(e->name, std::move(t));
  }
  return out;
}

void write_safetensors(const std::string& path, const StFile& f) {
  std::vector<std::pair<const std::string*, const StTensor*>> order;
  for (const auto& [name, t] : f.tensors) {
    if (name == kMetadataKey) throw InputError(path, name, "reserved name cannot be a tensor");
    const size_t es = st_elem_size(t.dtype);
    if (es == 0) throw InputError(path, name, "unknown dtype \"" + t.dtype + "\"");
    const int64_t n = t.numel();
    if (n < 0 || t.data.size() != size_t(n) * es)
      throw InputError(path, name, std::to_string(t.data.size()) + " data bytes do not match " + t.dtype +
                                       " of " + std::to_string(n) + " elements");
    order.emplace_back(&name, &t);
  }
  std::sort(order.begin(), order.end(), write_order);

  nlohmann::json h = nlohmann::json::object();
  uint64_t offset = 0;
  for (const auto& [name, t] : order) {
    h[*name] = {{"dtype", t->dtype}, {"shape", t->shape}, {"data_offsets", {offset, offset + t->data.size()}}};
    offset += t->data.size();
  }
  if (!f.metadata.empty()) h[kMetadataKey] = f.metadata;
  std::string header;
  try {
    header = h.dump();
  } catch (const nlohmann::json::exception& e) {
    throw InputError(path, "header", std::string("cannot encode (names and metadata must be UTF-8): ") + e.what());
  }
  // Spaces are valid JSON whitespace; padding puts the data (and so every tensor) at an 8-byte boundary.
  header.append((8 - header.size() % 8) % 8, ' ');
  write_atomically(path, header, order);
}

}  // namespace mpt
