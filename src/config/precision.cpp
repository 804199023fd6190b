#include "src/config/precision.h"

namespace mpt {

ResolvedPrecision resolve_precision(const PrecisionConfig& p, const HardwareCaps& hw) {
  ResolvedPrecision r;
  if (p.mode == "auto") {
    if (hw.cuda && hw.cc_major >= 8) r.model = DType::BF16;
    else if (hw.cuda && hw.cc_major >= 7) r.model = DType::F16;
    else r.model = DType::F32;
    r.mode = std::string(dtype_name(r.model)) + " (auto: " +
             (hw.cuda ? "sm" + std::to_string(hw.cc_major) + std::to_string(hw.cc_minor) : std::string("cpu")) + ")";
    return r;
  }
  r.mode = p.mode;
  if (p.mode == "tf32") { r.model = DType::F32; r.allow_tf32 = true; return r; }
  parse_dtype(p.mode, &r.model);  // validated by the config loader
  return r;
}

bool glob_match(const std::string& pattern, const std::string& name) {
  // Iterative matcher with single-star backtracking: linear for the patterns people write.
  size_t p = 0, n = 0, star = std::string::npos, mark = 0;
  while (n < name.size()) {
    if (p < pattern.size() && (pattern[p] == '?' || pattern[p] == name[n])) { ++p; ++n; }
    else if (p < pattern.size() && pattern[p] == '*') { star = p++; mark = n; }
    else if (star != std::string::npos) { p = star + 1; n = ++mark; }
    else return false;
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

DType layer_dtype(const PrecisionConfig& p, const std::string& layer, DType fallback) {
  DType t = fallback;
  for (const auto& rule : p.layers)
    if (glob_match(rule.pattern, layer)) parse_dtype(rule.dtype, &t);
  return t;
}

}  // namespace mpt
