// The MLP classifier: Linear(+bias) layers with GELU or ReLU between them, an optional LayerNorm after each
// hidden Linear, and a fused softmax cross-entropy. Hand-written forward and backward over the kernels in
// kernels/; parameters come from a ParamSource and gradients go to a GradSink (src/core/param.h).
//
// Layer names (what precision rules match) and parameter names follow PyTorch:
//   fc1.weight [h1, in], fc1.bias [h1], ln1.weight [h1], ln1.bias [h1], fc2.weight ..., fcL (the head).
// Each Linear runs in its layer's dtype (precision.mode, or a precision.layers rule); LayerNorm parameters
// and statistics are FP32 by default; the loss is FP32. Where neighbouring layers have different dtypes
// the activations are cast between them.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/activation.h"
#include "kernels/exec.h"
#include "src/core/buffer.h"
#include "src/config/config.h"
#include "src/core/param.h"

namespace mpt {

class Mlp {
 public:
  Mlp(const ModelConfig& m, const PrecisionConfig& p, DType model_dtype, const Exec& ex, int max_batch);

  std::vector<ParamSpec> param_specs() const { return specs_; }
  void bind(const ParamSource& params);

  // Forward and backward on one micro-batch of n <= max_batch examples (x: host FP32 [n, input_dim]).
  // dL/dlogits is multiplied by grad_scale (= loss scale / (global micro-batch rows)); gradients are
  // accumulated where grads.grad(i) points (stage 2: bucket staging slots) and grads.grad_ready(i) is called as each
  // one completes.
  // Returns the sum over rows of the FP32 per-row losses (unscaled).
  // loss_sum: as Model::forward_backward.
  double forward_backward(const float* x, const int32_t* y, int n, float grad_scale, GradSink& grads,
                          float* loss_sum = nullptr);

  // Forward only. Adds the summed loss and the number of correct predictions.
  void evaluate(const float* x, const int32_t* y, int n, double* loss_sum, int64_t* correct);

  // "name dtype" per layer, for the start-up banner.
  std::vector<std::pair<std::string, DType>> layer_dtypes() const;
  int max_batch() const { return max_batch_; }
  // Output of layer `layer` (a Linear "fcN" after its activation, or "lnN") from the last forward, as
  // float on the host; empty for an unknown name. For `mptrain analyze`.
  std::vector<float> layer_output(const std::string& layer) const;

 private:
  struct Linear {
    std::string name;
    int in = 0, out = 0;
    DType dt = DType::F32;
    int w = -1, b = -1;              // parameter indices
    bool has_ln = false;
    std::string ln_name;
    DType ln_dt = DType::F32;
    int ln_w = -1, ln_b = -1;
    // activations (max_batch rows)
    Buffer x_cast;                   // input cast to dt when the producer's dtype differs
    Buffer z, y_ln, a;               // pre-activation, LayerNorm output, activation output
    Buffer mean, rstd;
    Buffer dz, dy_ln, dx, dx_cast;   // gradients
  };

  void build_specs();
  void forward(const float* x, int n);
  const void* layer_input(size_t i) const;

  ModelConfig cfg_;
  Exec ex_;
  int max_batch_;
  Act act_;
  std::vector<Linear> layers_;
  std::vector<ParamSpec> specs_;           // built with the layers; records the indices in Linear
  std::vector<void*> ptrs_;                // set by bind: parameter i's storage
  const ParamSource* params_ = nullptr;    // set by bind: the forward waits for the parameter all-gather
  Buffer x_in, labels_, loss_rows_, pred_;
  Uploader up_;  // inputs and labels of each micro-batch
  int last_n_ = 0;
};

}  // namespace mpt
