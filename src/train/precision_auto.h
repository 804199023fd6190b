// Gathers the inputs of the automatic precision policy (src/optim/precision_select.h) on this device and
// decides it: the same code path for the trainer (precision.layers = "auto", at start and every
// precision.reanalyze_every steps) and for `mptrain analyze`.
//
// * Sensitivity: from the given FP32 master weights, every layer alone in each candidate half dtype
//   (the others FP32) against the all-FP32 reference, on precision.auto_batches training micro-batches:
//   relative error of the layer's output and of its weight gradient, and for fp16 the fraction of the
//   reference gradient that underflows (< 2^-25) or overflows (> 65504) at the loss scale fp16 would use.
// * Speed: each distinct GEMM shape of the model (per layer with a 2-D weight [a, b], rows M = micro-batch
//   x positions: the forward M x b x a and the two backward GEMMs) timed per dtype, one warm-up and
//   kReps repetitions (CUDA events on GPUs, a steady clock on CPU ranks); precision.auto_timing = "flops"
//   replaces the measurement by a fixed model (deterministic: for tests and comparisons).
// * Memory estimate per layer and dtype: (weights + gradients + saved output of one micro-batch) in that
//   dtype, the output being M x (bias length, or the larger weight dimension without a bias); plus, for
//   every choice alike, the FP32 master weights and two AdamW moments (12 bytes a parameter, divided by
//   the ranks under ZeRO-1/2). Workspaces, attention scores and the communicator's buffers are not
//   counted: the budget is a bound on what the policy changes, not a prediction of the peak.
// Collective: every rank of `comm` calls it (the analysis runs on every rank); rank 0's decision is
// broadcast, so every rank returns the same policy whatever its own timings.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "comm/communicator.h"
#include "src/optim/amp.h"
#include "src/config/config.h"
#include "src/model/model.h"
#include "src/optim/precision_select.h"

namespace mpt {

class ShardedOptimizer;

// The measurements of the sensitivity analysis, shared by `mptrain analyze` (src/train/analyze.cpp) and
// the automatic policy.
namespace sensitivity {
// Relative L2 error of a against ref (infinity when the sizes differ).
double rel_l2(const std::vector<float>& a, const std::vector<float>& ref);
// Where the non-zero elements of g fall in the fp16 range at `scale`: fractions that underflow to zero
// (|g| < 2^-25), land in the subnormal range (< 2^-14: precision lost) or overflow (> 65504).
struct Fp16Range {
  double underflow = 0, subnormal = 0, overflow = 0;
};
Fp16Range fp16_range(const std::vector<float>& g, double scale);
// Parameter i's gradient (model dtype) as float on the host.
std::vector<float> grad_of(const ShardedOptimizer& opt, const Exec& ex, int i);
// The 2-D weight of a layer (its first parameter with two dimensions), or -1.
int weight_index(const ShardedOptimizer& opt, const std::string& layer);
}  // namespace sensitivity

struct AutoPrecisionContext {
  const Config* cfg = nullptr;
  const Exec* ex = nullptr;
  Communicator* comm = nullptr;
  HardwareCaps hw;
  std::function<Batch(int64_t first, int n)> batch;  // training micro-batch of this rank
  std::vector<float> master;                         // FP32 weights to analyze at (empty: the seed's init)
  // Re-analysis: the policy in force (encode_selection's layout); kept unless the new decision gains
  // kMinReanalysisGain (src/optim/precision_select.h). Empty at start.
  std::vector<int32_t> current;
};

struct AutoPrecision {
  Selection sel;
  SelectInputs in;
};

AutoPrecision decide_auto_precision(const AutoPrecisionContext& ctx);

// Console lines: the base with what was compared, then one line per layer that differs from its default.
std::vector<std::string> selection_lines(const Selection& s);
// The metrics event's fields (and `mptrain analyze --out`'s "auto_policy").
nlohmann::json selection_json(const Selection& s);

// Tests: this rank multiplies its measured FP32 times by `f32` and half times by `half` (1: none).
void set_auto_timing_perturbation(double f32, double half);

}  // namespace mpt
