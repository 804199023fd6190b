// The model interface the trainer drives: an MLP classifier (src/model/mlp.h) or a GPT-2 language model
// (src/model/gpt2.h). A model describes its parameters (param_specs, in its own order: index i everywhere
// means its i-th spec), reads them from a ParamSource and writes their gradients into a GradSink
// (src/core/param.h); it knows nothing of how they are stored, sharded or reduced.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kernels/exec.h"
#include "src/config/config.h"
#include "src/core/batch.h"
#include "src/core/param.h"

namespace mpt {

class Model {
 public:
  virtual ~Model() = default;
  virtual std::vector<ParamSpec> param_specs() const = 0;
  // Where parameter i lives from now on (the source outlives the binding; bind again after a rebuild).
  virtual void bind(const ParamSource& params) = 0;
  // Forward and backward; dL/dlogits is multiplied by grad_scale (loss scale / targets in the global
  // micro-batch set). Gradients are accumulated where grads.grad(i) points, grads.grad_ready(i) called as
  // each completes. loss_sum null: returns the sum of the FP32 per-target losses (unscaled), read back
  // from the device. loss_sum given (FP32, memory of the executing device): that sum is added into it on
  // the device (kernels/sum.h) and nothing is read back, so the host does not wait for the micro-batch;
  // returns 0.
  virtual double forward_backward(const Batch& b, float grad_scale, GradSink& grads, float* loss_sum = nullptr) = 0;
  // Forward only: adds the summed loss and the number of correct (argmax) predictions.
  virtual void evaluate(const Batch& b, double* loss_sum, int64_t* correct) = 0;
  // "layer dtype" for every layer that precision rules can match, in forward order.
  virtual std::vector<std::pair<std::string, DType>> layer_dtypes() const = 0;
  virtual int max_batch() const = 0;
  virtual int64_t targets_per_example() const = 0;  // 1 (classifier) or T (language model)
  virtual std::string describe() const = 0;         // one line for the banner
  // Output of a layer from the last forward (FP32 copy on the host), for `mptrain analyze`; empty when
  // the layer keeps no output.
  virtual std::vector<float> layer_output(const std::string& layer) const = 0;
};

// model_dtype: the resolved precision.mode dtype; per-layer rules come from p.
std::unique_ptr<Model> make_model(const ModelConfig& m, const PrecisionConfig& p, DType model_dtype, const Exec& ex,
                                  int max_batch);

}  // namespace mpt
