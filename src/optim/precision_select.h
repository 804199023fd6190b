// The automatic per-layer precision policy (precision.layers = "auto"): a pure decision from measured
// inputs, so that it can be tested with constructed ones. The inputs are gathered by src/train/precision_auto.h
// (the trainer at start and every precision.reanalyze_every steps, and `mptrain analyze`).
//
// The decision, for each candidate base dtype B (the precision.mode dtype, or with mode auto every dtype
// the hardware offers):
//   1. per layer, the dtypes it may take: its default under B (B, or FP32 for LayerNorm), FP32, and B;
//      under an fp16 base also bf16 where the hardware has it (the remedy for a range problem alone);
//   2. a half dtype is admissible for a layer only when the analysis of that layer alone in that dtype
//      stays under the thresholds: output relative error <= max_output_err, weight-gradient relative error
//      <= max_grad_err and, for fp16, the fraction of gradient elements underflowing or overflowing at the
//      run's loss scale <= max_range_frac (bf16 has FP32's range); FP32 is always admissible;
//   3. each layer takes its fastest admissible dtype (measured time of its GEMMs); equal times go to the
//      layer's default, then fp32, bf16, fp16, so the decision is deterministic;
//   4. when a memory budget is set and the estimate is over it, layers move to an admissible dtype that
//      needs less memory, the largest saving per second lost first, until it fits; a base that cannot fit
//      is dropped.
// Among the bases left, the smallest predicted time wins (ties: the order of `bases`).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "src/config/config.h"
#include "src/core/dtype.h"

namespace mpt {

// The analysis of one layer alone in one half dtype (every other layer in FP32); see src/train/analyze.cpp.
struct HalfError {
  bool measured = false;
  double out_err = 0, grad_err = 0;  // relative L2 errors against the FP32 reference
  double underflow = 0, overflow = 0;  // fp16: fractions of the reference gradient out of range at the scale
};

struct LayerInput {
  std::string name;
  HalfError f16, bf16;
  // Measured seconds of this layer's GEMMs (forward and backward) in each dtype; 0 where it has none.
  double t_f32 = 0, t_f16 = 0, t_bf16 = 0;
  // Bytes this layer needs per dtype (its parameters, gradients and saved output; see estimate in
  // src/train/precision_auto.h), as elements: bytes = elems * dtype size.
  int64_t elems = 0;
  bool default_f32 = false;          // the layer defaults to FP32 whatever the base (LayerNorm)
};

struct SelectInputs {
  std::vector<LayerInput> layers;    // forward order
  std::vector<DType> bases;          // candidate base dtypes, in preference order for ties
  bool bf16_hw = false;              // bf16 per-layer overrides are allowed under an fp16 base
  double max_output_err = 1e-2, max_grad_err = 5e-2, max_range_frac = 1e-2;
  double fixed_bytes = 0;            // what no choice changes (FP32 master weights and AdamW moments)
  double budget_bytes = 0;           // 0: no budget
};

struct LayerDecision {
  std::string layer;
  DType dtype = DType::F32, default_dtype = DType::F32;
  bool default_f32 = false;          // the layer defaults to FP32 whatever the base (LayerNorm)
  std::string reason;                // why this dtype (filled for every layer)
};

struct Selection {
  bool ok = false;                   // false: no base fits the budget (see `why`)
  DType base = DType::F32;
  std::vector<LayerDecision> layers;
  double seconds = 0;                // predicted GEMM time of one micro-batch, forward and backward
  double bytes = 0;                  // memory estimate
  std::string why;                   // one line on the base: what was compared
  // precision.layers rules for the layers that differ from their default under `base`, in layer order.
  std::vector<LayerPrecision> rules() const;
};

// Whether the analysis admits `t` for a layer (FP32 always; a half dtype not measured never).
bool admissible(const LayerInput& l, DType t, const SelectInputs& in, std::string* why_not = nullptr);

Selection select_precision(const SelectInputs& in);

// Compact encoding for a broadcast: {base, dtype of layer 0, 1, ...} as dtype codes.
std::vector<int32_t> encode_selection(const Selection& s);
// Overwrites base and layer dtypes of `s` (same layers) from `code`; layers whose dtype changed get `reason`.
void apply_encoded(const std::vector<int32_t>& code, Selection* s, const std::string& reason = "decided on rank 0");

// Predicted seconds and bytes of an encoded policy under `in` (same layers); false when one of its dtypes is
// not admissible there or it is over the budget.
bool evaluate_policy(const SelectInputs& in, const std::vector<int32_t>& code, double* seconds, double* bytes);

// Re-analysis: a new decision replaces the current policy only when its predicted time is at least this
// fraction lower (or the current one is no longer admissible or over budget), so that timing noise
// between near-equal choices does not switch the run back and forth.
inline constexpr double kMinReanalysisGain = 0.05;
// `fresh` (decided on `in`) or, when it does not gain kMinReanalysisGain over the admissible `current`,
// the current policy with its predicted time and reasons saying it was kept.
Selection keep_unless_better(const SelectInputs& in, const Selection& fresh, const std::vector<int32_t>& current);

}  // namespace mpt
