// The precision policy: the model dtype a precision.mode resolves to on this hardware, and the dtype of each
// layer under precision.layers rules. Models read it to type their layers; the trainer to set up.
#pragma once

#include <string>

#include "src/config/config.h"
#include "src/core/dtype.h"

namespace mpt {

// What the hardware offers, for precision `auto`.
struct HardwareCaps {
  bool cuda = false;
  int cc_major = 0, cc_minor = 0;
};

struct ResolvedPrecision {
  DType model = DType::F32;  // activations, weights and gradients of layers without an override
  bool allow_tf32 = false;   // mode tf32
  std::string mode;          // what was picked, e.g. "bf16 (auto: sm90)"
};

// auto: bf16 on sm80+, fp16 on sm70+, fp32 otherwise (and on CPU ranks, which have no half arithmetic).
ResolvedPrecision resolve_precision(const PrecisionConfig& p, const HardwareCaps& hw);

// Shell-style glob with '*' (any run) and '?' (one character).
bool glob_match(const std::string& pattern, const std::string& name);

// Dtype of a layer: the last matching precision.layers rule, else `fallback`.
DType layer_dtype(const PrecisionConfig& p, const std::string& layer, DType fallback);

}  // namespace mpt
