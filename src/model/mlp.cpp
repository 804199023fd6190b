#include "src/model/mlp.h"

#include <cmath>
#include <stdexcept>

#include "kernels/bias_grad.h"
#include "kernels/cast.h"
#include "kernels/gemm.h"
#include "kernels/layernorm.h"
#include "kernels/softmax_xent.h"
#include "kernels/sum.h"
#include "src/config/precision.h"

namespace mpt {

namespace {
constexpr float kLnEps = 1e-5f;
size_t bytes(int rows, int cols, DType t) { return size_t(rows) * size_t(cols) * dtype_size(t); }
}  // namespace

Mlp::Mlp(const ModelConfig& m, const PrecisionConfig& p, DType model_dtype, const Exec& ex, int max_batch)
    : cfg_(m), ex_(ex), max_batch_(max_batch), act_(m.activation == "relu" ? Act::Relu : Act::Gelu),
      up_(ex.device, ex.stream) {
  std::vector<int> dims;
  dims.push_back(m.input_dim);
  for (int h : m.hidden) dims.push_back(h);
  dims.push_back(m.num_classes);
  const size_t nl = dims.size() - 1;
  layers_.resize(nl);
  for (size_t i = 0; i < nl; ++i) {
    Linear& L = layers_[i];
    L.name = "fc" + std::to_string(i + 1);
    L.in = dims[i];
    L.out = dims[i + 1];
    L.dt = layer_dtype(p, L.name, model_dtype);
    L.has_ln = m.layernorm && i + 1 < nl;
    if (L.has_ln) {
      L.ln_name = "ln" + std::to_string(i + 1);
      L.ln_dt = layer_dtype(p, L.ln_name, DType::F32);  // default policy: LayerNorm parameters in FP32
    }
  }
  const Device d = ex.device;
  const int B = max_batch;
  x_in = Buffer(d, bytes(B, m.input_dim, DType::F32));
  labels_ = Buffer(d, size_t(B) * 4);
  loss_rows_ = Buffer(d, size_t(B) * 4);
  pred_ = Buffer(d, size_t(B) * 4);
  for (size_t i = 0; i < nl; ++i) {
    Linear& L = layers_[i];
    const bool hidden = i + 1 < nl;
    const DType producer = i == 0 ? DType::F32 : layers_[i - 1].dt;
    if (producer != L.dt) L.x_cast = Buffer(d, bytes(B, L.in, L.dt));
    L.z = Buffer(d, bytes(B, L.out, L.dt));
    L.dz = Buffer(d, bytes(B, L.out, L.dt));
    if (hidden) L.a = Buffer(d, bytes(B, L.out, L.dt));
    if (L.has_ln) {
      L.y_ln = Buffer(d, bytes(B, L.out, L.dt));
      L.dy_ln = Buffer(d, bytes(B, L.out, L.dt));
      L.mean = Buffer(d, size_t(B) * 4);
      L.rstd = Buffer(d, size_t(B) * 4);
    }
    if (i > 0) L.dx = Buffer(d, bytes(B, L.in, L.dt));
    if (hidden && layers_[i + 1].dt != L.dt) L.dx_cast = Buffer(d, bytes(B, L.out, L.dt));
  }
  build_specs();
}

void Mlp::build_specs() {
  std::vector<ParamSpec>& s = specs_;
  s.clear();
  auto add = [&](ParamSpec p) {
    s.push_back(std::move(p));
    return int(s.size()) - 1;
  };
  for (Linear& L : layers_) {
    // PyTorch's nn.Linear default: U(-1/sqrt(in), 1/sqrt(in)) for weight and bias; or N(0, init_std) weights.
    const float bound = 1.f / std::sqrt(float(L.in));
    const bool normal = cfg_.init_std > 0.f;
    L.w = add({L.name + ".weight", L.name, {L.out, L.in}, L.dt, true, normal ? Init::Normal : Init::Uniform,
               normal ? cfg_.init_std : bound});
    L.b = add({L.name + ".bias", L.name, {L.out}, L.dt, false, normal ? Init::Zeros : Init::Uniform,
               normal ? 0.f : bound});
    if (L.has_ln) {
      L.ln_w = add({L.ln_name + ".weight", L.ln_name, {L.out}, L.ln_dt, false, Init::Ones, 0.f});
      L.ln_b = add({L.ln_name + ".bias", L.ln_name, {L.out}, L.ln_dt, false, Init::Zeros, 0.f});
    }
  }
}

void Mlp::bind(const ParamSource& params) {
  params_ = &params;
  ptrs_.clear();
  for (int i = 0; i < int(specs_.size()); ++i) ptrs_.push_back(params.param(i));
}

std::vector<std::pair<std::string, DType>> Mlp::layer_dtypes() const {
  std::vector<std::pair<std::string, DType>> r;
  for (const Linear& L : layers_) {
    r.emplace_back(L.name, L.dt);
    if (L.has_ln) r.emplace_back(L.ln_name, L.ln_dt);
  }
  return r;
}

const void* Mlp::layer_input(size_t i) const {
  const Linear& L = layers_[i];
  if (!L.x_cast.empty()) return L.x_cast.data();
  return i == 0 ? x_in.data() : layers_[i - 1].a.data();
}

void Mlp::forward(const float* x, int n) {
  if (n <= 0 || n > max_batch_) throw std::invalid_argument("Mlp: batch of " + std::to_string(n) + " rows");
  last_n_ = n;
  up_.upload(x, x_in.data(), bytes(n, cfg_.input_dim, DType::F32));
  params_->all_params_ready();  // a small model: no per-layer overlap of the parameter all-gather
  const size_t nl = layers_.size();
  for (size_t i = 0; i < nl; ++i) {
    Linear& L = layers_[i];
    if (!L.x_cast.empty()) {
      const void* src = i == 0 ? x_in.data() : layers_[i - 1].a.data();
      const DType st = i == 0 ? DType::F32 : layers_[i - 1].dt;
      ops::cast(ex_, src, st, L.x_cast.data(), L.dt, size_t(n) * size_t(L.in));
    }
    const bool hidden = i + 1 < nl;
    GemmDesc g;
    g.trans_b = true;  // y = x W^T with W stored [out, in]
    g.m = n; g.n = L.out; g.k = L.in;
    g.dtype = L.dt;
    g.a = layer_input(i); g.lda = L.in;
    g.b = ptrs_[size_t(L.w)]; g.ldb = L.in;
    g.bias = ptrs_[size_t(L.b)];
    if (hidden && !L.has_ln) {
      // Fused bias + activation epilogue; the pre-activation is kept for backward.
      g.epilogue = act_ == Act::Gelu ? Epilogue::BiasGelu : Epilogue::BiasRelu;
      g.c = L.a.data(); g.ldc = L.out;
      g.pre_act = L.z.data();
      ops::gemm(ex_, g);
      continue;
    }
    g.epilogue = Epilogue::Bias;
    g.c = L.z.data(); g.ldc = L.out;
    ops::gemm(ex_, g);
    if (L.has_ln) {
      ops::layernorm_forward(ex_, L.z.data(), L.dt, ptrs_[size_t(L.ln_w)], ptrs_[size_t(L.ln_b)],
                             L.ln_dt, L.y_ln.data(), L.mean.as<float>(), L.rstd.as<float>(), n, L.out, kLnEps);
      ops::act_forward(ex_, act_, L.y_ln.data(), L.a.data(), L.dt, size_t(n) * size_t(L.out));
    }
  }
}

double Mlp::forward_backward(const float* x, const int32_t* y, int n, float grad_scale, GradSink& grads,
                             float* loss_sum) {
  forward(x, n);
  up_.upload(y, labels_.data(), size_t(n) * 4);
  const size_t nl = layers_.size();
  Linear& head = layers_[nl - 1];
  ops::softmax_xent(ex_, head.z.data(), head.dt, labels_.as<int32_t>(), n, head.out, head.out, grad_scale,
                    loss_rows_.as<float>(), head.dz.data(), nullptr);

  for (size_t i = nl; i-- > 0;) {
    Linear& L = layers_[i];
    const void* W = ptrs_[size_t(L.w)];
    // db += column sums of dz ; dW += dz^T x. Gradient pointers come from grads.grad() at the write: in
    // ZeRO-2 they point into a bucket staging slot that exists only while the bucket is being filled.
    // The bias goes first because the flat layout is backward order (reversed specs: bias before
    // weight): buckets then complete in the order they are opened, and a bucket cut between a weight
    // and the next layer's bias does not hold a second staging slot open.
    ops::bias_grad(ex_, L.dz.data(), L.dt, n, L.out, grads.grad(L.b), L.dt);
    grads.grad_ready(L.b);
    GemmDesc gw;
    gw.trans_a = true;
    gw.m = L.out; gw.n = L.in; gw.k = n;
    gw.dtype = L.dt;
    gw.a = L.dz.data(); gw.lda = L.out;
    gw.b = layer_input(i); gw.ldb = L.in;
    gw.c = grads.grad(L.w); gw.ldc = L.in;
    gw.beta = 1.f;
    ops::gemm(ex_, gw);
    grads.grad_ready(L.w);
    if (i == 0) break;

    // dx = dz W, then back through the previous layer's activation (and LayerNorm).
    GemmDesc gx;
    gx.m = n; gx.n = L.in; gx.k = L.out;
    gx.dtype = L.dt;
    gx.a = L.dz.data(); gx.lda = L.out;
    gx.b = W; gx.ldb = L.in;
    gx.c = L.dx.data(); gx.ldc = L.in;
    ops::gemm(ex_, gx);
    Linear& P = layers_[i - 1];
    const void* da = L.dx.data();
    if (!P.dx_cast.empty()) {
      ops::cast(ex_, L.dx.data(), L.dt, P.dx_cast.data(), P.dt, size_t(n) * size_t(P.out));
      da = P.dx_cast.data();
    }
    const size_t cnt = size_t(n) * size_t(P.out);
    if (P.has_ln) {
      ops::act_backward(ex_, act_, P.y_ln.data(), da, P.dy_ln.data(), P.dt, cnt);
      ops::layernorm_backward(ex_, P.dy_ln.data(), P.z.data(), P.dt, ptrs_[size_t(P.ln_w)], P.ln_dt,
                              P.mean.as<float>(), P.rstd.as<float>(), P.dz.data(), grads.grad(P.ln_w),
                              grads.grad(P.ln_b), n, P.out);
      grads.grad_ready(P.ln_w);
      grads.grad_ready(P.ln_b);
    } else {
      ops::act_backward(ex_, act_, P.z.data(), da, P.dz.data(), P.dt, cnt);
    }
  }
  if (loss_sum) {
    ops::sum(ex_, loss_rows_.as<float>(), n, loss_sum);
    return 0;
  }
  std::vector<float> loss(static_cast<size_t>(n));
  copy_to_host(loss_rows_.data(), ex_.device, loss.data(), loss.size() * 4, ex_.stream);
  double sum = 0;
  for (float v : loss) sum += v;
  return sum;
}

void Mlp::evaluate(const float* x, const int32_t* y, int n, double* loss_sum, int64_t* correct) {
  forward(x, n);
  copy_from_host(y, labels_.data(), ex_.device, size_t(n) * 4, ex_.stream);
  Linear& head = layers_.back();
  ops::softmax_xent(ex_, head.z.data(), head.dt, labels_.as<int32_t>(), n, head.out, head.out, 1.f,
                    loss_rows_.as<float>(), nullptr, pred_.as<int32_t>());
  std::vector<float> loss(static_cast<size_t>(n));
  std::vector<int32_t> pred(static_cast<size_t>(n));
  copy_to_host(loss_rows_.data(), ex_.device, loss.data(), loss.size() * 4, ex_.stream);
  copy_to_host(pred_.data(), ex_.device, pred.data(), pred.size() * 4, ex_.stream);
  for (int i = 0; i < n; ++i) {
    *loss_sum += loss[size_t(i)];
    *correct += pred[size_t(i)] == y[i];
  }
}

std::vector<float> Mlp::layer_output(const std::string& layer) const {
  for (size_t i = 0; i < layers_.size(); ++i) {
    const Linear& L = layers_[i];
    const bool hidden = i + 1 < layers_.size();
    const Buffer* b = nullptr;
    if (layer == L.name) b = hidden ? &L.a : &L.z;
    if (L.has_ln && layer == L.ln_name) b = &L.y_ln;
    if (!b || last_n_ == 0) continue;
    const size_t cnt = size_t(last_n_) * size_t(L.out);
    std::vector<uint8_t> raw(cnt * dtype_size(L.dt));
    copy_to_host(b->data(), ex_.device, raw.data(), raw.size(), ex_.stream);
    std::vector<float> out(cnt);
    to_float_n(raw.data(), L.dt, out.data(), cnt);
    return out;
  }
  return {};
}

}  // namespace mpt
