#include "src/model/model.h"

#include "src/model/gpt2.h"
#include "src/model/mlp.h"

namespace mpt {

namespace {

// The MLP classifier behind the Model interface.
class MlpModel : public Model {
 public:
  MlpModel(const ModelConfig& m, const PrecisionConfig& p, DType dt, const Exec& ex, int max_batch)
      : cfg_(m), mlp_(m, p, dt, ex, max_batch) {}
  std::vector<ParamSpec> param_specs() const override { return mlp_.param_specs(); }
  void bind(const ParamSource& params) override { mlp_.bind(params); }
  double forward_backward(const Batch& b, float grad_scale, GradSink& grads, float* loss_sum = nullptr) override {
    return mlp_.forward_backward(b.x, b.targets, b.n, grad_scale, grads, loss_sum);
  }
  void evaluate(const Batch& b, double* loss_sum, int64_t* correct) override {
    mlp_.evaluate(b.x, b.targets, b.n, loss_sum, correct);
  }
  std::vector<std::pair<std::string, DType>> layer_dtypes() const override { return mlp_.layer_dtypes(); }
  int max_batch() const override { return mlp_.max_batch(); }
  int64_t targets_per_example() const override { return 1; }
  std::string describe() const override {
    std::string s = "MLP " + std::to_string(cfg_.input_dim);
    for (int h : cfg_.hidden) s += "-" + std::to_string(h);
    return s + "-" + std::to_string(cfg_.num_classes);
  }
  std::vector<float> layer_output(const std::string& layer) const override { return mlp_.layer_output(layer); }

 private:
  ModelConfig cfg_;
  Mlp mlp_;
};

}  // namespace

std::unique_ptr<Model> make_model(const ModelConfig& m, const PrecisionConfig& p, DType model_dtype, const Exec& ex,
                                  int max_batch) {
  if (m.type == "gpt2") return std::make_unique<Gpt2>(m, p, model_dtype, ex, max_batch);
  return std::make_unique<MlpModel>(m, p, model_dtype, ex, max_batch);
}

}  // namespace mpt
