#include "src/train/precision_auto.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <random>
#include <tuple>

#include <cuda_runtime_api.h>

#include "kernels/gemm.h"
#include "src/core/buffer.h"
#include "src/core/cuda_check.h"
#include "src/optim/zero.h"

namespace mpt {

namespace sensitivity {

double rel_l2(const std::vector<float>& a, const std::vector<float>& ref) {
  if (a.size() != ref.size()) return INFINITY;
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = double(a[i]) - double(ref[i]);
    num += d * d;
    den += double(ref[i]) * double(ref[i]);
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

Fp16Range fp16_range(const std::vector<float>& g, double scale) {
  Fp16Range r;
  size_t nz = 0;
  for (float v : g) {
    const double a = std::fabs(double(v)) * scale;
    if (a == 0) continue;
    ++nz;
    if (a < std::ldexp(1.0, -25)) r.underflow += 1;
    else if (a < std::ldexp(1.0, -14)) r.subnormal += 1;
    if (a > 65504.0) r.overflow += 1;
  }
  if (nz) {
    r.underflow /= double(nz);
    r.subnormal /= double(nz);
    r.overflow /= double(nz);
  }
  return r;
}

std::vector<float> grad_of(const ShardedOptimizer& opt, const Exec& ex, int i) {
  const ParamView& v = opt.view(i);
  std::vector<uint8_t> raw(size_t(v.numel) * dtype_size(v.dtype));
  copy_to_host(v.grad, ex.device, raw.data(), raw.size(), ex.stream);
  std::vector<float> g(size_t(v.numel));
  to_float_n(raw.data(), v.dtype, g.data(), g.size());
  return g;
}

int weight_index(const ShardedOptimizer& opt, const std::string& layer) {
  for (int i = 0; i < opt.num_params(); ++i)
    if (opt.spec(i).layer == layer && opt.spec(i).shape.size() == 2) return i;
  return -1;
}

}  // namespace sensitivity

namespace {

using namespace sensitivity;

constexpr int kReps = 3;  // timed repetitions per GEMM shape and dtype (after one warm-up)

double g_perturb_f32 = 1.0, g_perturb_half = 1.0;

struct Pass {
  std::map<std::string, std::vector<float>> out, grad;
};

// One forward + backward of `b`; outputs of `layers` and their weight gradients divided by `scale`.
Pass run_pass(Model& m, ShardedOptimizer& opt, const Exec& ex, const Batch& b, double scale, int64_t targets,
              const std::vector<std::string>& layers) {
  opt.zero_grads();
  opt.begin_micro_batch(true);
  m.forward_backward(b, float(scale / double(targets)), opt);
  opt.finish_reduction();
  Pass p;
  for (const std::string& l : layers) {
    p.out[l] = m.layer_output(l);
    const int w = weight_index(opt, l);
    if (w < 0) continue;
    std::vector<float> g = grad_of(opt, ex, w);
    for (float& v : g) v = float(double(v) / scale);
    p.grad[l] = std::move(g);
  }
  return p;
}

// Seconds of one GEMM m x n x k in dtype t (mean of kReps after a warm-up).
double time_gemm(const Exec& ex, int m, int n, int k, DType t, bool trans_a, bool trans_b) {
  const size_t es = dtype_size(t);
  Buffer a(ex.device, size_t(m) * size_t(k) * es), b(ex.device, size_t(k) * size_t(n) * es),
      c(ex.device, size_t(m) * size_t(n) * es);
  {
    // Values of the size activations and weights have (zeros would let the CPU GEMM take shortcuts).
    std::mt19937 rng(12345);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    std::vector<float> f(std::max(a.bytes(), b.bytes()) / es);
    for (float& v : f) v = u(rng);
    std::vector<uint8_t> raw(f.size() * es);
    from_float_n(f.data(), raw.data(), t, f.size());
    copy_from_host(raw.data(), a.data(), ex.device, a.bytes(), ex.stream);
    copy_from_host(raw.data(), b.data(), ex.device, b.bytes(), ex.stream);
  }
  GemmDesc d;
  d.trans_a = trans_a;
  d.trans_b = trans_b;
  d.m = m;
  d.n = n;
  d.k = k;
  d.dtype = t;
  d.a = a.data();
  d.lda = trans_a ? m : k;
  d.b = b.data();
  d.ldb = trans_b ? k : n;
  d.c = c.data();
  d.ldc = n;
  ops::gemm(ex, d);  // warm-up (cuBLASLt plan, caches)
  if (ex.cuda()) {
    cudaEvent_t e0, e1;
    MPT_CUDA_CHECK(cudaEventCreate(&e0));
    MPT_CUDA_CHECK(cudaEventCreate(&e1));
    const auto s = reinterpret_cast<cudaStream_t>(ex.stream);
    MPT_CUDA_CHECK(cudaEventRecord(e0, s));
    for (int r = 0; r < kReps; ++r) ops::gemm(ex, d);
    MPT_CUDA_CHECK(cudaEventRecord(e1, s));
    MPT_CUDA_CHECK(cudaEventSynchronize(e1));
    float msec = 0;
    MPT_CUDA_CHECK(cudaEventElapsedTime(&msec, e0, e1));
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    return double(msec) * 1e-3 / kReps;
  }
  const auto t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < kReps; ++r) ops::gemm(ex, d);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / kReps;
}

// The fixed model of precision.auto_timing = "flops": seconds = FLOPs / rate, with the rate of each dtype
// relative to FP32: tensor-core half GEMMs 2x (sm70+; bf16 from sm80), CPU ranks convert half operands
// to FP32 first (0.8x).
double modeled_seconds(double flops, DType t, const HardwareCaps& hw) {
  double rate = 1e12;
  if (t != DType::F32) {
    const bool tc = hw.cuda && hw.cc_major >= (t == DType::BF16 ? 8 : 7);
    rate *= hw.cuda ? (tc ? 2.0 : 1.0) : 0.8;
  }
  return flops / rate;
}

}  // namespace

void set_auto_timing_perturbation(double f32, double half) {
  g_perturb_f32 = f32;
  g_perturb_half = half;
}

AutoPrecision decide_auto_precision(const AutoPrecisionContext& ctx) {
  const Config& cfg = *ctx.cfg;
  const PrecisionConfig& pc = cfg.precision;
  const Exec& ex = *ctx.ex;
  Communicator& comm = *ctx.comm;
  const HardwareCaps& hw = ctx.hw;
  // CPU ranks emulate both half dtypes; GPUs have fp16 from sm70 and bf16 from sm80.
  const bool f16_hw = !hw.cuda || hw.cc_major >= 7, bf16_hw = !hw.cuda || hw.cc_major >= 8;

  AutoPrecision res;
  SelectInputs& in = res.in;
  if (pc.mode == "auto") {
    // Preference order for equal predictions: what `auto` resolves to on this hardware first.
    if (hw.cuda) {
      if (bf16_hw) in.bases.push_back(DType::BF16);
      if (f16_hw) in.bases.push_back(DType::F16);
      in.bases.push_back(DType::F32);
    } else {
      in.bases = {DType::F32, DType::BF16, DType::F16};
    }
  } else {
    DType b = DType::F32;
    if (pc.mode != "tf32") parse_dtype(pc.mode, &b);
    in.bases = {b};
  }
  in.bf16_hw = bf16_hw;
  in.max_output_err = pc.max_output_err;
  in.max_grad_err = pc.max_grad_err;
  in.max_range_frac = pc.max_range_frac;
  in.budget_bytes = pc.memory_budget_gib * 1073741824.0;
  std::vector<DType> halves;
  for (DType b : in.bases)
    if (b != DType::F32 && std::find(halves.begin(), halves.end(), b) == halves.end()) halves.push_back(b);
  if (std::find(halves.begin(), halves.end(), DType::F16) != halves.end() && bf16_hw &&
      std::find(halves.begin(), halves.end(), DType::BF16) == halves.end())
    halves.push_back(DType::BF16);

  // The FP32 reference with the given weights; stage 0 so that every gradient is readable in full.
  const int B = cfg.train.batch_size;
  PrecisionConfig p32;
  p32.mode = "fp32";
  auto ref = make_model(cfg.model, p32, DType::F32, ex, B);
  const size_t bucket = size_t(cfg.zero.bucket_mb * 1048576.0);
  ShardedOptimizer ref_opt(ex, comm, ref->param_specs(), 0, bucket, cfg.train.seed);
  ref->bind(ref_opt.params());
  std::vector<float> master = ctx.master.empty() ? ref_opt.gather_master() : ctx.master;
  const ShardedOptimizer::FullState st{master, std::vector<float>(master.size()), std::vector<float>(master.size())};
  ref_opt.load_state(st);
  const int64_t targets = int64_t(B) * ref->targets_per_example() * comm.size();
  const double s16 = loss_scaling_enabled(cfg.loss_scale, DType::F16) ? cfg.loss_scale.init : 1.0;
  std::vector<std::string> names;
  for (const auto& [layer, dt] : ref->layer_dtypes()) names.push_back(layer);
  const int nb = pc.auto_batches;
  std::vector<Pass> refs;
  for (int k = 0; k < nb; ++k) refs.push_back(run_pass(*ref, ref_opt, ex, ctx.batch(int64_t(k) * B, B), s16, targets, names));

  // Layers and their sizes, shapes and defaults.
  const std::vector<ParamSpec> specs = ref->param_specs();
  const int64_t rows = int64_t(B) * ref->targets_per_example();
  auto base_model = make_model(cfg.model, PrecisionConfig{}, DType::F16, ex, 1);
  const auto defaults_list = base_model->layer_dtypes();
  const std::map<std::string, DType> f16_defaults(defaults_list.begin(), defaults_list.end());
  base_model.reset();
  double total_params = 0;
  for (const ParamSpec& s : specs) total_params += double(s.numel());
  // FP32 master + AdamW moments on the GPU (none with zero.offload = cpu: they live in host memory).
  in.fixed_bytes = cfg.zero.offload == "cpu" ? 0.0 : 12.0 * total_params / (cfg.zero.stage >= 1 ? double(comm.size()) : 1.0);
  std::map<std::tuple<int, int, int, int>, double> timed;  // (m, n, k, dtype) -> seconds of the 3 GEMMs
  for (const std::string& name : names) {
    LayerInput l;
    l.name = name;
    l.default_f32 = f16_defaults.count(name) && f16_defaults.at(name) == DType::F32;
    int64_t params = 0, out = 0;
    const ParamSpec* w = nullptr;
    for (const ParamSpec& s : specs) {
      if (s.layer != name) continue;
      params += s.numel();
      if (s.shape.size() == 2 && !w) w = &s;
      if (s.shape.size() == 1 && s.name.size() >= 4 && s.name.compare(s.name.size() - 4, 4, "bias") == 0) out = s.numel();
    }
    if (out == 0 && w) out = std::max(w->shape[0], w->shape[1]);
    if (out == 0) for (const ParamSpec& s : specs) if (s.layer == name) out = std::max(out, s.numel());
    l.elems = 2 * params + rows * out;
    // GEMM time: embeddings looked up by position (wpe) have none; the tied wte is the logits' GEMM.
    if (w && name != "wpe") {
      const int m = int(rows), a = int(w->shape[0]), b = int(w->shape[1]);
      for (DType t : {DType::F32, DType::F16, DType::BF16}) {
        if (t == DType::F16 && !f16_hw) continue;
        if (t == DType::BF16 && !bf16_hw) continue;
        const auto key = std::make_tuple(m, b, a, int(t));
        if (!timed.count(key)) {
          double sec = 0;
          if (pc.auto_timing == "flops") {
            sec = 3 * modeled_seconds(2.0 * m * a * b, t, hw);
          } else {
            sec = time_gemm(ex, m, b, a, t, false, false)     // forward: [m,a] x [a,b]
                  + time_gemm(ex, m, a, b, t, false, true)    // input gradient: [m,b] x [a,b]^T
                  + time_gemm(ex, a, b, m, t, true, false);   // weight gradient: [m,a]^T x [m,b]
          }
          timed[key] = sec * (t == DType::F32 ? g_perturb_f32 : g_perturb_half);
        }
        (t == DType::F32 ? l.t_f32 : t == DType::F16 ? l.t_f16 : l.t_bf16) = timed.at(key);
      }
    }
    in.layers.push_back(std::move(l));
  }

  // Sensitivity: each layer alone in each half dtype.
  for (DType h : halves) {
    const double scale = h == DType::F16 ? s16 : 1.0;
    for (LayerInput& l : in.layers) {
      PrecisionConfig p;
      p.mode = "fp32";
      p.layers.push_back({l.name, dtype_name(h)});
      auto cand = make_model(cfg.model, p, DType::F32, ex, B);
      ShardedOptimizer opt(ex, comm, cand->param_specs(), 0, bucket, cfg.train.seed);
      cand->bind(opt.params());
      opt.load_state(st);
      HalfError e;
      e.measured = true;
      for (int k = 0; k < nb; ++k) {
        const Pass r = run_pass(*cand, opt, ex, ctx.batch(int64_t(k) * B, B), scale, targets, {l.name});
        const Pass& r0 = refs[size_t(k)];
        if (!r0.out.at(l.name).empty()) e.out_err += rel_l2(r.out.at(l.name), r0.out.at(l.name)) / nb;
        if (r0.grad.count(l.name)) {
          e.grad_err += rel_l2(r.grad.at(l.name), r0.grad.at(l.name)) / nb;
          const Fp16Range fr = fp16_range(r0.grad.at(l.name), s16);
          e.underflow += fr.underflow / nb;
          e.overflow += fr.overflow / nb;
        }
      }
      (h == DType::F16 ? l.f16 : l.bf16) = e;
    }
  }

  res.sel = select_precision(in);
  if (!ctx.current.empty()) res.sel = keep_unless_better(in, res.sel, ctx.current);
  // Rank 0 decides: its policy (or its verdict that nothing fits) goes to every rank.
  std::vector<int32_t> code = encode_selection(res.sel);
  code.push_back(res.sel.ok ? 1 : 0);
  // As FP32, which carries the small integer codes exactly (every communicator reduces and sends it).
  std::vector<float> fcode(code.begin(), code.end());
  Buffer buf(ex.device, fcode.size() * sizeof(float));
  copy_from_host(fcode.data(), buf.data(), ex.device, buf.bytes(), ex.stream);
  comm.broadcast(buf.data(), fcode.size(), DType::F32, 0, ex.stream);
  copy_to_host(buf.data(), ex.device, fcode.data(), buf.bytes(), ex.stream);
  std::vector<int32_t> agreed(fcode.begin(), fcode.end());
  res.sel.ok = agreed.back() != 0;
  agreed.pop_back();
  apply_encoded(agreed, &res.sel);
  return res;
}

std::vector<std::string> selection_lines(const Selection& s) {
  std::vector<std::string> out;
  if (!s.ok) {
    out.push_back("auto precision: " + s.why);
    return out;
  }
  char head[160];
  std::snprintf(head, sizeof head, "auto precision: %s, %zu layer override(s), predicted GEMM time %.3g ms, memory %.4g MiB",
                dtype_name(s.base), s.rules().size(), s.seconds * 1e3, s.bytes / 1048576.0);
  out.push_back(head);
  out.push_back("  " + s.why);
  for (const LayerDecision& d : s.layers)
    if (d.dtype != d.default_dtype) out.push_back("  " + d.layer + " -> " + dtype_name(d.dtype) + ": " + d.reason);
  return out;
}

nlohmann::json selection_json(const Selection& s) {
  nlohmann::json layers = nlohmann::json::array();
  for (const LayerDecision& d : s.layers)
    if (d.dtype != d.default_dtype)
      layers.push_back({{"layer", d.layer}, {"dtype", dtype_name(d.dtype)}, {"default", dtype_name(d.default_dtype)},
                        {"reason", d.reason}});
  return {{"ok", s.ok}, {"base", dtype_name(s.base)}, {"why", s.why}, {"predicted_gemm_s", s.seconds},
          {"memory_estimate_bytes", s.bytes}, {"overrides", layers}};
}

}  // namespace mpt
