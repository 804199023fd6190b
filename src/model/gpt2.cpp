#include "src/model/gpt2.h"

#include <cmath>
#include <cstring>
#include <set>
#include <stdexcept>

#include "kernels/activation.h"
#include "kernels/attention.h"
#include "kernels/bias_grad.h"
#include "kernels/cast.h"
#include "kernels/embedding.h"
#include "kernels/gemm.h"
#include "kernels/layernorm.h"
#include "kernels/softmax_xent.h"
#include "kernels/sum.h"
#include "src/config/precision.h"
#include "src/core/check.h"

namespace mpt {

namespace {

constexpr float kLnEps = kGpt2LayerNormEps;
constexpr float kInitStd = 0.02f;
const std::string kPrefix = kGpt2HfPrefix;

size_t nbytes(int64_t rows, int64_t cols, DType t) { return size_t(rows) * size_t(cols) * dtype_size(t); }

}  // namespace

Gpt2::Gpt2(const ModelConfig& m, const PrecisionConfig& p, DType model_dtype, const Exec& ex, int max_batch)
    : cfg_(m), ex_(ex), md_(model_dtype), B_(max_batch), T_(m.seq_len), C_(m.n_embd), H_(m.n_head),
      L_(m.n_layer), V_(m.vocab), Vp_((m.vocab + 127) / 128 * 128), up_(ex.device, ex.stream) {
  if (B_ < 1) throw std::invalid_argument("Gpt2: max_batch must be >= 1");
  const Device d = ex_.device;
  const int64_t N = int64_t(B_) * T_;
  auto linear = [&](const std::string& name, int in, int out) {
    Linear l;
    l.name = name;
    l.in = in;
    l.out = out;
    l.dt = layer_dtype(p, name, md_);
    if (l.dt != md_) {
      l.x_cast = Buffer(d, nbytes(N, in, l.dt));
      l.y_cast = Buffer(d, nbytes(N, out, l.dt));
      l.dy_cast = Buffer(d, nbytes(N, out, l.dt));
      l.dx_cast = Buffer(d, nbytes(N, in, l.dt));
    }
    return l;
  };
  auto norm = [&](const std::string& name) {
    Norm n;
    n.name = name;
    n.dt = layer_dtype(p, name, DType::F32);  // default policy: LayerNorm parameters in FP32
    return n;
  };
  blocks_.resize(size_t(L_));
  for (int l = 0; l < L_; ++l) {
    Block& b = blocks_[size_t(l)];
    const std::string h = "h." + std::to_string(l) + ".";
    b.ln1 = norm(h + "ln_1");
    b.c_attn = linear(h + "attn.c_attn", C_, 3 * C_);
    b.c_proj = linear(h + "attn.c_proj", C_, C_);
    b.ln2 = norm(h + "ln_2");
    b.c_fc = linear(h + "mlp.c_fc", C_, 4 * C_);
    b.fc_proj = linear(h + "mlp.c_proj", 4 * C_, C_);
    b.x = Buffer(d, nbytes(N, C_, md_));
    b.ln1_out = Buffer(d, nbytes(N, C_, md_));
    b.ln1_mean = Buffer(d, size_t(N) * 4);
    b.ln1_rstd = Buffer(d, size_t(N) * 4);
    b.qkv = Buffer(d, nbytes(N, 3 * C_, md_));
    b.att = Buffer(d, nbytes(N, C_, md_));
    b.lse = Buffer(d, size_t(N) * size_t(H_) * 4);
    b.a = Buffer(d, nbytes(N, C_, md_));
    b.ln2_out = Buffer(d, nbytes(N, C_, md_));
    b.ln2_mean = Buffer(d, size_t(N) * 4);
    b.ln2_rstd = Buffer(d, size_t(N) * 4);
    b.fc_pre = Buffer(d, nbytes(N, 4 * C_, md_));
    b.fc_act = Buffer(d, nbytes(N, 4 * C_, md_));
  }
  ln_f_ = norm("ln_f");
  tokens_ = Buffer(d, size_t(N) * 4);
  targets_ = Buffer(d, size_t(N) * 4);
  order_ = Buffer(d, size_t(N) * 4);
  starts_ = Buffer(d, size_t(N + 1) * 4);
  uniq_ = Buffer(d, size_t(N) * 4);
  xf_ = Buffer(d, nbytes(N, C_, md_));
  lnf_out_ = Buffer(d, nbytes(N, C_, md_));
  lnf_mean_ = Buffer(d, size_t(N) * 4);
  lnf_rstd_ = Buffer(d, size_t(N) * 4);
  logits_ = Buffer(d, nbytes(N, Vp_, md_));
  proj_ = Buffer(d, nbytes(N, C_, md_));
  dres_ = Buffer(d, nbytes(N, C_, md_));
  dsmall_ = Buffer(d, nbytes(N, C_, md_));
  dbig_ = Buffer(d, nbytes(N, 4 * C_, md_));
  delta_ = Buffer(d, size_t(N) * size_t(H_) * 4);
  if (d == Device::CUDA) {
    attn_scratch_bytes_ = cuda::attention_backward_scratch_bytes(md_, B_, T_, H_, C_ / H_);
    if (attn_scratch_bytes_ > logits_.bytes()) attn_own_ = Buffer(d, attn_scratch_bytes_);
    attn_scratch_ = attn_scratch_bytes_ == 0 ? nullptr : attn_own_.empty() ? logits_.data() : attn_own_.data();
  }
  loss_rows_ = Buffer(d, size_t(N) * 4);
  pred_ = Buffer(d, size_t(N) * 4);
  build_specs();
}

void Gpt2::build_specs() {
  // Forward order, each parameter's index recorded as it is added. The optimizer lays them out reversed,
  // which is the order backward completes them in (ln_f first, then the blocks from the last, wpe and the
  // tied wte last).
  std::vector<ParamSpec>& s = specs_;
  s.clear();
  auto add = [&](const std::string& layer, const std::string& suffix, std::vector<int64_t> shape, DType dt,
                 bool decay, Init init, float scale) {
    ParamSpec p;
    p.name = kPrefix + layer + "." + suffix;
    p.layer = layer;
    p.shape = std::move(shape);
    p.dtype = dt;
    p.decay = decay;
    p.init = init;
    p.init_scale = scale;
    s.push_back(std::move(p));
    return int(s.size()) - 1;
  };
  // Residual projections get std / sqrt(2 L) so the residual stream's variance does not grow with depth.
  const float proj_std = kInitStd / std::sqrt(2.f * float(L_));
  auto lin = [&](Linear& l, std::vector<int64_t> w_shape, float w_std) {
    const int64_t out = w_shape[1];
    l.w = add(l.name, "weight", std::move(w_shape), l.dt, true, Init::Normal, w_std);
    l.b = add(l.name, "bias", {out}, l.dt, false, Init::Zeros, 0.f);
  };
  auto nrm = [&](Norm& n) {
    n.w = add(n.name, "weight", {C_}, n.dt, false, Init::Ones, 0.f);
    n.b = add(n.name, "bias", {C_}, n.dt, false, Init::Zeros, 0.f);
  };
  wte_ = add("wte", "weight", {Vp_, C_}, md_, true, Init::Normal, kInitStd);
  wpe_ = add("wpe", "weight", {T_, C_}, md_, true, Init::Normal, kInitStd);
  for (Block& b : blocks_) {
    nrm(b.ln1);
    lin(b.c_attn, {C_, 3 * C_}, kInitStd);
    lin(b.c_proj, {C_, C_}, proj_std);
    nrm(b.ln2);
    lin(b.c_fc, {C_, 4 * C_}, kInitStd);
    lin(b.fc_proj, {4 * C_, C_}, proj_std);
  }
  nrm(ln_f_);
}

void Gpt2::bind(const ParamSource& params) {
  params_ = &params;
  ptrs_.clear();
  for (int i = 0; i < int(specs_.size()); ++i) ptrs_.push_back(params.param(i));
}

std::string Gpt2::describe() const {
  return "GPT-2 " + std::to_string(L_) + " layers, " + std::to_string(H_) + " heads, C=" + std::to_string(C_) +
         ", T=" + std::to_string(T_) + ", vocab " + std::to_string(V_) + " (padded " + std::to_string(Vp_) + ")";
}

std::vector<std::pair<std::string, DType>> Gpt2::layer_dtypes() const {
  std::vector<std::pair<std::string, DType>> out = {{"wte", md_}, {"wpe", md_}};
  for (const Block& b : blocks_) {
    out.emplace_back(b.ln1.name, b.ln1.dt);
    out.emplace_back(b.c_attn.name, b.c_attn.dt);
    out.emplace_back(b.c_proj.name, b.c_proj.dt);
    out.emplace_back(b.ln2.name, b.ln2.dt);
    out.emplace_back(b.c_fc.name, b.c_fc.dt);
    out.emplace_back(b.fc_proj.name, b.fc_proj.dt);
  }
  out.emplace_back(ln_f_.name, ln_f_.dt);
  return out;
}

void Gpt2::linear_forward(Linear& L, const void* x, void* y, int n, bool gelu, void* pre) {
  const bool cast = L.dt != md_;
  if (cast) ops::cast(ex_, x, md_, L.x_cast.data(), L.dt, size_t(n) * size_t(L.in));
  GemmDesc g;
  g.m = n;
  g.n = L.out;
  g.k = L.in;
  g.dtype = L.dt;
  g.a = cast ? L.x_cast.data() : x;
  g.lda = L.in;
  g.b = param(L.w);
  g.ldb = L.out;
  g.ldc = L.out;
  g.bias = param(L.b);
  if (!cast) {
    g.c = y;
    g.epilogue = gelu ? Epilogue::BiasGelu : Epilogue::Bias;
    g.pre_act = gelu ? pre : nullptr;
    ops::gemm(ex_, g);
    return;
  }
  // Another dtype: the GEMM (with bias) runs in L.dt; GELU, if any, runs after the cast back.
  g.c = L.y_cast.data();
  g.epilogue = Epilogue::Bias;
  ops::gemm(ex_, g);
  const size_t cnt = size_t(n) * size_t(L.out);
  if (gelu) {
    ops::cast(ex_, L.y_cast.data(), L.dt, pre, md_, cnt);
    ops::act_forward(ex_, Act::Gelu, pre, y, md_, cnt);
  } else {
    ops::cast(ex_, L.y_cast.data(), L.dt, y, md_, cnt);
  }
}

bool Gpt2::linear_backward(Linear& L, const void* x, const void* dy, void* dx, int n, GradSink& grads,
                           const void* gelu_z, std::vector<WeightGrad>* later, void* keep) {
  const bool cast = L.dt != md_;
  if (cast) {
    ops::cast(ex_, dy, md_, L.dy_cast.data(), L.dt, size_t(n) * size_t(L.out));
    dy = L.dy_cast.data();
    x = L.x_cast.data();  // saved by forward
  } else if (later && keep) {
    copy_device(dy, keep, ex_.device, nbytes(n, L.out, md_), ex_.stream);
    dy = keep;
  }
  if (later) later->push_back(WeightGrad{&L, x, dy});
  else weight_grads(WeightGrad{&L, x, dy}, n, grads);
  if (!dx) return false;
  GemmDesc gx;  // dx[n, in] = dy W^T
  gx.trans_b = true;
  gx.m = n;
  gx.n = L.in;
  gx.k = L.out;
  gx.dtype = L.dt;
  gx.a = dy;
  gx.lda = L.out;
  gx.b = param(L.w);
  gx.ldb = L.out;
  gx.c = cast ? L.dx_cast.data() : dx;
  gx.ldc = L.in;
  const bool fused = gelu_z && !cast;
  if (fused) {
    gx.epilogue = Epilogue::DGelu;
    gx.pre_act = const_cast<void*>(gelu_z);  // read only: DGelu's input
  }
  ops::gemm(ex_, gx);
  if (cast) ops::cast(ex_, L.dx_cast.data(), L.dt, dx, md_, size_t(n) * size_t(L.in));
  return fused;
}

void Gpt2::weight_grads(const WeightGrad& w, int n, GradSink& grads) {
  Linear& L = *w.L;
  const void* x = w.x;
  const void* dy = w.dy;
  GemmDesc gw;  // dW[in, out] += x^T dy
  gw.trans_a = true;
  gw.m = L.in;
  gw.n = L.out;
  gw.k = n;
  gw.dtype = L.dt;
  gw.a = x;
  gw.lda = L.in;
  gw.b = dy;
  gw.ldb = L.out;
  gw.c = grads.grad(L.w);
  gw.ldc = L.out;
  gw.beta = 1.f;
  ops::gemm(ex_, gw);
  grads.grad_ready(L.w);
  ops::bias_grad(ex_, dy, L.dt, n, L.out, grads.grad(L.b), L.dt);
  grads.grad_ready(L.b);
}

void* Gpt2::defer_scratch() {
  const size_t align = 256;
  const size_t off = (attn_scratch_ == logits_.data() ? attn_scratch_bytes_ + align - 1 : 0) / align * align;
  const size_t need = nbytes(size_t(B_) * size_t(T_), 9 * size_t(C_) * size_t(deferred_blocks()), md_);
  if (off + need <= logits_.bytes()) return static_cast<char*>(logits_.data()) + off;
  if (defer_own_.empty()) defer_own_ = Buffer(ex_.device, need);
  return defer_own_.data();
}

void Gpt2::forward(const Batch& bt, int T) {
  const int n = bt.n;
  if (n < 1 || n > B_) throw std::invalid_argument("Gpt2: batch of " + std::to_string(n) + " sequences");
  if (T < 0 || T > T_) throw std::invalid_argument("Gpt2: " + std::to_string(T) + " positions per sequence");
  if (T == 0) T = T_;
  const int N = n * T;
  last_n_ = T == T_ ? n : 0;  // logits() and layer_output() describe full-length forwards only
  up_.upload(bt.inputs, tokens_.data(), size_t(N) * 4);
  ops::embedding_forward(ex_, tokens_.as<int32_t>(), param(wte_), param(wpe_), md_, blocks_[0].x.data(), N, T, C_);
  for (int l = 0; l < L_; ++l) {
    Block& b = blocks_[size_t(l)];
    if (l == 0) {
      ops::layernorm_forward(ex_, b.x.data(), md_, param(b.ln1.w), param(b.ln1.b), b.ln1.dt, b.ln1_out.data(),
                             b.ln1_mean.as<float>(), b.ln1_rstd.as<float>(), N, C_, kLnEps);
    } else {
      // x_l = a_{l-1} + mlp branch of block l-1 (in proj_), fused with ln_1.
      Block& p = blocks_[size_t(l - 1)];
      ops::residual_layernorm_forward(ex_, p.a.data(), proj_.data(), md_, param(b.ln1.w), param(b.ln1.b), b.ln1.dt,
                                      b.x.data(), b.ln1_out.data(), b.ln1_mean.as<float>(), b.ln1_rstd.as<float>(), N,
                                      C_, kLnEps);
    }
    linear_forward(b.c_attn, b.ln1_out.data(), b.qkv.data(), N, false, nullptr);
    ops::attention_forward(ex_, b.qkv.data(), b.att.data(), b.lse.as<float>(), md_, n, T, H_, C_ / H_);
    linear_forward(b.c_proj, b.att.data(), proj_.data(), N, false, nullptr);
    ops::residual_layernorm_forward(ex_, b.x.data(), proj_.data(), md_, param(b.ln2.w), param(b.ln2.b), b.ln2.dt,
                                    b.a.data(), b.ln2_out.data(), b.ln2_mean.as<float>(), b.ln2_rstd.as<float>(), N, C_,
                                    kLnEps);
    linear_forward(b.c_fc, b.ln2_out.data(), b.fc_act.data(), N, true, b.fc_pre.data());
    linear_forward(b.fc_proj, b.fc_act.data(), proj_.data(), N, false, nullptr);
  }
  ops::residual_layernorm_forward(ex_, blocks_.back().a.data(), proj_.data(), md_, param(ln_f_.w), param(ln_f_.b),
                                  ln_f_.dt, xf_.data(), lnf_out_.data(), lnf_mean_.as<float>(),
                                  lnf_rstd_.as<float>(), N, C_, kLnEps);
  GemmDesc g;  // logits[N, Vp] = ln_f(x) wte^T
  g.trans_b = true;
  g.m = N;
  g.n = Vp_;
  g.k = C_;
  g.dtype = md_;
  g.a = lnf_out_.data();
  g.lda = C_;
  g.b = param(wte_);
  g.ldb = C_;
  g.c = logits_.data();
  g.ldc = Vp_;
  ops::gemm(ex_, g);
}

double Gpt2::forward_backward(const Batch& bt, float grad_scale, GradSink& grads, float* loss_sum) {
  forward(bt);
  const int n = bt.n, N = n * T_;
  // Grouping the rows by token on the host (where the tokens are) makes the embedding backward
  // deterministic without atomics.
  const TokenGroups tg = make_token_groups(bt.inputs, N, V_);
  up_.upload(bt.targets, targets_.data(), size_t(N) * 4);
  up_.upload(tg.order.data(), order_.data(), tg.order.size() * 4);
  up_.upload(tg.starts.data(), starts_.data(), tg.starts.size() * 4);
  up_.upload(tg.uniq.data(), uniq_.data(), tg.uniq.size() * 4);
  ops::softmax_xent(ex_, logits_.data(), md_, targets_.as<int32_t>(), N, Vp_, V_, grad_scale, loss_rows_.as<float>(),
                    logits_.data(), nullptr);
  void* dlogits = logits_.data();
  {
    GemmDesc gw;  // dwte[Vp, C] += dlogits^T ln_f(x)
    gw.trans_a = true;
    gw.m = Vp_;
    gw.n = C_;
    gw.k = N;
    gw.dtype = md_;
    gw.a = dlogits;
    gw.lda = Vp_;
    gw.b = lnf_out_.data();
    gw.ldb = C_;
    gw.c = grads.grad(wte_);
    gw.ldc = C_;
    gw.beta = 1.f;
    ops::gemm(ex_, gw);
    GemmDesc gx;  // d ln_f(x) [N, C] = dlogits wte
    gx.m = N;
    gx.n = C_;
    gx.k = Vp_;
    gx.dtype = md_;
    gx.a = dlogits;
    gx.lda = Vp_;
    gx.b = param(wte_);
    gx.ldb = C_;
    gx.c = dsmall_.data();
    gx.ldc = C_;
    ops::gemm(ex_, gx);
  }
  ops::layernorm_backward(ex_, dsmall_.data(), xf_.data(), md_, param(ln_f_.w), ln_f_.dt, lnf_mean_.as<float>(),
                          lnf_rstd_.as<float>(), dres_.data(), grads.grad(ln_f_.w), grads.grad(ln_f_.b), N, C_);
  grads.grad_ready(ln_f_.w);
  grads.grad_ready(ln_f_.b);
  // When buckets reduce during backward, the weight gradients of the first deferred_blocks() blocks run
  // after the embedding backward (block 1's before block 0's): the tied embedding's bucket, the largest and
  // otherwise the last to start, then reduces beside them instead of after all compute. Their dy are kept
  // where later ops cannot overwrite them, per deferred block in its own part of the scratch: the two
  // residual gradients copied (keep), the MLP's [N, 4C] and the attention's [N, 3C] gradient written there
  // instead of into dbig_. The gradients are the same bit for bit.
  std::vector<WeightGrad> later;
  char* scratch = nullptr;
  if (grads.reduces_during_backward()) {
    later.reserve(size_t(4 * deferred_blocks()));
    scratch = static_cast<char*>(defer_scratch());
  }
  const size_t nc = nbytes(N, C_, md_);
  for (int l = L_ - 1; l >= 0; --l) {
    Block& b = blocks_[size_t(l)];
    std::vector<WeightGrad>* defer = scratch && l < deferred_blocks() ? &later : nullptr;
    char* keep = defer ? scratch + size_t(l) * 9 * nc : nullptr;
    void* big = defer ? keep + 2 * nc : dbig_.data();
    void* dqkv = defer ? keep + 6 * nc : dbig_.data();
    // dres: gradient at x_{l+1} = a + mlp branch.
    if (!linear_backward(b.fc_proj, b.fc_act.data(), dres_.data(), big, N, grads, b.fc_pre.data(), defer, keep))
      ops::act_backward(ex_, Act::Gelu, b.fc_pre.data(), big, big, md_, size_t(N) * size_t(4 * C_));
    linear_backward(b.c_fc, b.ln2_out.data(), big, dsmall_.data(), N, grads, nullptr, defer);
    ops::layernorm_backward(ex_, dsmall_.data(), b.a.data(), md_, param(b.ln2.w), b.ln2.dt, b.ln2_mean.as<float>(),
                            b.ln2_rstd.as<float>(), dres_.data(), grads.grad(b.ln2.w), grads.grad(b.ln2.b), N, C_, true);
    grads.grad_ready(b.ln2.w);
    grads.grad_ready(b.ln2.b);
    // dres: gradient at a = x + attention branch.
    linear_backward(b.c_proj, b.att.data(), dres_.data(), dsmall_.data(), N, grads, nullptr, defer,
                    keep ? keep + nc : nullptr);
    ops::attention_backward(ex_, dsmall_.data(), b.qkv.data(), b.att.data(), b.lse.as<float>(), delta_.as<float>(),
                            dqkv, md_, n, T_, H_, C_ / H_, attn_scratch_, attn_scratch_bytes_);
    linear_backward(b.c_attn, b.ln1_out.data(), dqkv, dsmall_.data(), N, grads, nullptr, defer);
    ops::layernorm_backward(ex_, dsmall_.data(), b.x.data(), md_, param(b.ln1.w), b.ln1.dt, b.ln1_mean.as<float>(),
                            b.ln1_rstd.as<float>(), dres_.data(), grads.grad(b.ln1.w), grads.grad(b.ln1.b), N, C_, true);
    grads.grad_ready(b.ln1.w);
    grads.grad_ready(b.ln1.b);
  }
  ops::embedding_backward(ex_, tokens_.as<int32_t>(), order_.as<int32_t>(), starts_.as<int32_t>(),
                          uniq_.as<int32_t>(), tg.num_unique(), dres_.data(), md_, grads.grad(wte_), grads.grad(wpe_), N,
                          T_, C_);
  grads.grad_ready(wpe_);
  grads.grad_ready(wte_);
  for (const WeightGrad& w : later) weight_grads(w, N, grads);
  if (loss_sum) {
    ops::sum(ex_, loss_rows_.as<float>(), N, loss_sum);
    return 0;
  }
  std::vector<float> loss(static_cast<size_t>(N));
  copy_to_host(loss_rows_.data(), ex_.device, loss.data(), loss.size() * 4, ex_.stream);
  double sum = 0;
  for (float v : loss) sum += v;
  return sum;
}

void Gpt2::evaluate(const Batch& bt, double* loss_sum, int64_t* correct) {
  forward(bt);
  const int N = bt.n * T_;
  copy_from_host(bt.targets, targets_.data(), ex_.device, size_t(N) * 4, ex_.stream);
  ops::softmax_xent(ex_, logits_.data(), md_, targets_.as<int32_t>(), N, Vp_, V_, 1.f, loss_rows_.as<float>(),
                    nullptr, pred_.as<int32_t>());
  std::vector<float> loss(static_cast<size_t>(N));
  std::vector<int32_t> pred(static_cast<size_t>(N));
  copy_to_host(loss_rows_.data(), ex_.device, loss.data(), loss.size() * 4, ex_.stream);
  copy_to_host(pred_.data(), ex_.device, pred.data(), pred.size() * 4, ex_.stream);
  for (int i = 0; i < N; ++i) {
    if (bt.targets[i] < 0) continue;
    *loss_sum += loss[size_t(i)];
    *correct += pred[size_t(i)] == bt.targets[i];
  }
}

std::vector<float> Gpt2::logits(int n) const {
  const int N = n * T_;
  std::vector<uint8_t> raw(nbytes(N, Vp_, md_));
  copy_to_host(logits_.data(), ex_.device, raw.data(), raw.size(), ex_.stream);
  std::vector<float> all(size_t(N) * size_t(Vp_)), out(size_t(N) * size_t(V_));
  to_float_n(raw.data(), md_, all.data(), all.size());
  for (int i = 0; i < N; ++i)
    std::memcpy(&out[size_t(i) * size_t(V_)], &all[size_t(i) * size_t(Vp_)], size_t(V_) * 4);
  return out;
}

std::vector<float> Gpt2::layer_output(const std::string& layer) const {
  const int N = last_n_ * T_;
  auto grab = [&](const Buffer& b, int64_t cols) {
    std::vector<uint8_t> raw(nbytes(N, cols, md_));
    copy_to_host(b.data(), ex_.device, raw.data(), raw.size(), ex_.stream);
    std::vector<float> out(size_t(N) * size_t(cols));
    to_float_n(raw.data(), md_, out.data(), out.size());
    return out;
  };
  if (N == 0) return {};
  for (const Block& b : blocks_) {
    if (layer == b.ln1.name) return grab(b.ln1_out, C_);
    if (layer == b.c_attn.name) return grab(b.qkv, 3 * C_);
    if (layer == b.ln2.name) return grab(b.ln2_out, C_);
    if (layer == b.c_fc.name) return grab(b.fc_act, 4 * C_);
  }
  if (layer == ln_f_.name) return grab(lnf_out_, C_);
  if (layer == "logits") return logits(last_n_);
  return {};
}

}  // namespace mpt
