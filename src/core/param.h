// What a model and the optimizer share about parameters, and nothing more: the description of each
// parameter (ParamSpec, in the model's own order), where the compute stream may read parameter i
// (ParamSource) and where backward writes parameter i's gradient (GradSink). Models see only these
// interfaces; src/optim implements them (ParamStore, GradReducer).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "src/core/dtype.h"

namespace mpt {

enum class Init { Uniform, Normal, Zeros, Ones };

struct ParamSpec {
  std::string name;                  // e.g. "fc1.weight"
  std::string layer;                 // e.g. "fc1" (what precision rules match)
  std::vector<int64_t> shape;
  DType dtype = DType::F32;
  bool decay = false;                // AdamW weight decay applies (weight matrices)
  Init init = Init::Zeros;
  float init_scale = 0.f;            // Uniform: bound; Normal: std
  int64_t numel() const {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    return n;
  }
};

// The FP32 optimizer state (master weights, AdamW m and v) of every parameter, in spec order and world-size
// independent: what checkpoints store and load.
struct OptimizerState { std::vector<float> master, m, v; };

// Parameter i (an index into the model's param_specs()) in the model dtype, for the compute stream.
class ParamSource {
 public:
  virtual ~ParamSource() = default;
  // The parameter's storage. Before the compute stream reads it, call param_ready(i) (or
  // all_params_ready()): on GPUs the all-gather of the last update may still be writing it.
  virtual void* param(int i) const = 0;
  virtual void param_ready(int i) const = 0;
  virtual void all_params_ready() const = 0;
};

// The one thing backward needs from gradient reduction.
class GradSink {
 public:
  virtual ~GradSink() = default;
  // Where backward writes (and accumulates, beta = 1) parameter i's gradient in this micro-batch; valid
  // until grad_ready(i) has been called for every parameter that shares its bucket.
  virtual void* grad(int i) = 0;
  // Parameter i's gradient for this micro-batch is complete (once per micro-batch: a second call throws).
  virtual void grad_ready(int i) = 0;
  // True when a bucket completed by grad_ready is reduced at once, beside the rest of backward (several
  // ranks, overlap on, the step's last micro-batch or ZeRO-2). Backward may then reorder independent work
  // so that the bucket that would complete last completes earlier (Gpt2: block 0's weight gradients run
  // after the embedding backward). Gradient values must not depend on it.
  virtual bool reduces_during_backward() const { return false; }
};

}  // namespace mpt
