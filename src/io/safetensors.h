// safetensors files (the format Hugging Face uses for weights): an 8-byte little-endian header length,
// a JSON header {"name": {"dtype": "F32"|"F16"|"BF16"|"I32"|..., "shape": [...], "data_offsets": [b, e]},
// "__metadata__": {...}} and the raw little-endian tensor bytes. Writes are atomic (temporary file,
// fsync, rename).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "src/core/dtype.h"

namespace mpt {

struct StTensor {
  std::string dtype;                 // safetensors dtype string: "F32", "F16", "BF16", "I32", "I64", "U8", ...
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;         // raw bytes, numel * element size
  int64_t numel() const;
  // The values as float (F32, F16, BF16, F64, I32, I64 accepted).
  std::vector<float> to_float() const;
};

struct StFile {
  std::map<std::string, StTensor> tensors;
  std::map<std::string, std::string> metadata;
};

StTensor st_from_float(const std::vector<float>& v, std::vector<int64_t> shape, DType store = DType::F32);
StTensor st_from_int32(const std::vector<int32_t>& v, std::vector<int64_t> shape);

// Throws InputError(path, field) for an unreadable file, a bad header (length, JSON, dtype, shape,
// offsets out of range or overlapping) naming the tensor.
StFile read_safetensors(const std::string& path);
void write_safetensors(const std::string& path, const StFile& f);

}  // namespace mpt
