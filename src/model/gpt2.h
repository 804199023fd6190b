// GPT-2 (decoder-only transformer), hand-written forward and backward over the kernels in kernels/.
//
//   x0 = wte[tokens] + wpe[positions]
//   per block l:  a = x + attn.c_proj(attention(attn.c_attn(ln_1(x))))
//                 x = a + mlp.c_proj(gelu(mlp.c_fc(ln_2(a))))
//   logits = ln_f(x) wte^T  (the LM head is tied to the token embedding), cross-entropy on next tokens.
// Residual adds are fused into the following LayerNorm (residual_layernorm_forward), so the residual
// stream's gradient flows through layernorm_backward(accumulate_dx).
//
// Parameters carry the Hugging Face GPT-2 names and layouts (Conv1D weights stored [in, out]):
// transformer.wte.weight [Vp, C] (vocab padded to a multiple of 128; padded logits are masked out of the
// loss and the padded rows never receive gradient), transformer.wpe.weight [T, C],
// transformer.h.<l>.{ln_1,attn.c_attn,attn.c_proj,ln_2,mlp.c_fc,mlp.c_proj}.{weight,bias},
// transformer.ln_f.{weight,bias}. Layer names for precision rules drop the "transformer." prefix and the
// parameter suffix: "wte", "h.3.attn.c_attn", "h.3.ln_1", "ln_f", ...
//
// Precision: activations and the residual stream are in the model dtype; LayerNorm parameters default to
// FP32 and every LayerNorm/softmax/loss computes in FP32; a Linear layer may be given another dtype by a
// precision rule (its input and output are cast around it). wte/wpe (and so the tied head) follow
// precision.mode.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "src/core/buffer.h"
#include "src/model/model.h"

namespace mpt {

class Gpt2 : public Model {
 public:
  Gpt2(const ModelConfig& m, const PrecisionConfig& p, DType model_dtype, const Exec& ex, int max_batch);

  std::vector<ParamSpec> param_specs() const override { return specs_; }
  void bind(const ParamSource& params) override;
  double forward_backward(const Batch& b, float grad_scale, GradSink& grads, float* loss_sum = nullptr) override;
  void evaluate(const Batch& b, double* loss_sum, int64_t* correct) override;
  std::vector<std::pair<std::string, DType>> layer_dtypes() const override;
  int max_batch() const override { return B_; }
  int64_t targets_per_example() const override { return T_; }
  std::string describe() const override;
  std::vector<float> layer_output(const std::string& layer) const override;

  int padded_vocab() const { return Vp_; }
  // Logits of the last forward, [n*T, vocab] (padding dropped), as float (tests, the reference check).
  std::vector<float> logits(int n) const;
  int seq_len() const { return T_; }
  int vocab() const { return V_; }

 private:
  friend class Gpt2Decoder;  // text generation with a KV cache (src/model/gpt2_decode.h) runs the layers row by row
  struct Linear {
    std::string name;
    int in = 0, out = 0;
    DType dt = DType::F32;
    int w = -1, b = -1;
    Buffer x_cast, y_cast, dy_cast, dx_cast;  // only when dt differs from the model dtype
  };
  struct Norm {
    std::string name;
    DType dt = DType::F32;
    int w = -1, b = -1;
  };
  struct Block {
    Norm ln1, ln2;
    Linear c_attn, c_proj, c_fc, fc_proj;
    // saved activations [N, *] in the model dtype
    Buffer x;          // block input (residual stream)
    Buffer ln1_out, ln1_mean, ln1_rstd;
    Buffer qkv, att, lse;
    Buffer a;          // x + attention branch
    Buffer ln2_out, ln2_mean, ln2_rstd;
    Buffer fc_pre, fc_act;
  };

  // T: positions per sequence, 1..seq_len (0: seq_len); the KV cache's prefill runs only the prompt's.
  void forward(const Batch& b, int T = 0);
  // y = x W + bias in the layer's dtype; x, y in the model dtype. act: GELU epilogue (pre stored).
  void linear_forward(Linear& L, const void* x, void* y, int n, bool gelu, void* pre);
  // dW += x^T dy, db += sum dy, dx = dy W^T (dx may be null). x, dy, dx in the model dtype. gelu_z: the
  // GELU pre-activation that produced x; when given and the layer runs in the model dtype, dx becomes
  // gelu'(gelu_z) dy W^T in the GEMM's epilogue (one rounding) and true is returned; false means dx is
  // dy W^T and the caller applies the activation's backward.
  // later: instead of computing dW and db now, record what they read (the layer, x and dy as the layer's
  // dtype sees them) for weight_grads(); when dy is in the model dtype it is first copied to `keep`, since
  // the caller's dy buffer is overwritten before then (the cast copy, L.dy_cast, is the layer's own).
  struct WeightGrad { Linear* L; const void* x; const void* dy; };
  bool linear_backward(Linear& L, const void* x, const void* dy, void* dx, int n, GradSink& grads,
                       const void* gelu_z = nullptr, std::vector<WeightGrad>* later = nullptr, void* keep = nullptr);
  // dW += x^T dy and db += sum dy of one layer, then its grad_ready calls.
  void weight_grads(const WeightGrad& w, int n, GradSink& grads);
  // Blocks whose weight gradients backward defers when buckets reduce during backward (zero.reorder_backward).
  int deferred_blocks() const { return L_ < 2 ? L_ : 2; }
  // Scratch for the deferred weight gradients, 9 [N, C] per deferred block: two copies of the residual
  // gradient, the MLP's [N, 4C] and the attention's [N, 3C] gradient; in the logits buffer past the
  // attention backward's scratch when it fits (both are dead during the blocks' backward), else in
  // defer_own_.
  void* defer_scratch();
  // The specs in forward order; records each parameter's index in its layer (wte_, Linear::w, ...).
  void build_specs();
  // Parameter i for the compute stream, after its bucket's all-gather (ParamSource::param_ready).
  const void* param(int i) const {
    params_->param_ready(i);
    return ptrs_[size_t(i)];
  }

  ModelConfig cfg_;
  Exec ex_;
  DType md_;
  int B_, T_, C_, H_, L_, V_, Vp_;
  std::vector<Block> blocks_;
  Norm ln_f_;
  int wte_ = -1, wpe_ = -1;
  std::vector<ParamSpec> specs_;
  std::vector<void*> ptrs_;                // set by bind: parameter i's storage
  const ParamSource* params_ = nullptr;    // set by bind
  // batch-level buffers
  Buffer tokens_, targets_, order_, starts_, uniq_;
  Buffer x0_, xf_, lnf_out_, lnf_mean_, lnf_rstd_, logits_;
  Buffer proj_, dres_, dsmall_, dbig_, delta_, loss_rows_, pred_;
  // The attention backward's scratch (kernels/attention.h): the logits buffer, dead once the LM head's
  // backward has read dlogits, when it is large enough; else its own buffer (attn_own_).
  Buffer attn_own_, defer_own_;
  void* attn_scratch_ = nullptr;
  size_t attn_scratch_bytes_ = 0;
  Uploader up_;  // tokens, targets and the token groups of each micro-batch
  int last_n_ = 0;
};

}  // namespace mpt
