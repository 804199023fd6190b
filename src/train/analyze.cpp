// `mptrain analyze CONFIG`: per-layer precision sensitivity.
//
// The reference is the model with every layer in FP32. For each layer X that a precision rule can name,
// a second model runs with X alone in the half dtype (fp16 by default, --dtype bf16) and every other
// layer in FP32, from the same weights and on the same batches. Per layer it reports
//   * the relative L2 error of X's output against the reference,
//   * the relative L2 error of X's weight gradient,
//   * where X's reference weight gradient falls in the fp16 range, at the loss scale the run would use
//     (loss_scale.init for fp16) and without scaling: the fraction of non-zero elements that would
//     underflow to zero (|g| < 2^-25), land in the subnormal range (< 2^-14: precision lost), or overflow
//     (> 65504),
// and recommends an fp32 (or, for range problems on bf16-capable hardware, bf16) override for layers past
// the thresholds (precision.max_output_err, max_grad_err, max_range_frac). Then it prints the decision
// precision.layers = "auto" makes for the same config, through the trainer's code (src/train/precision_auto.h).
// Output: a table on stdout and, with --out, the same as JSON.
#include <cmath>
#include <cstdio>
#include <fstream>

#include <nlohmann/json.hpp>

#include "src/optim/amp.h"
#include "src/train/commands.h"
#include "src/core/check.h"
#include "src/train/train.h"
#include "src/train/precision_auto.h"

namespace mpt {

namespace {

using namespace sensitivity;

struct Run {
  std::vector<float> out, grad;
};

// Forward + backward of one batch with model `m` over optimizer `opt`; grads are unscaled to FP32.
Run run_layer(Model& m, ShardedOptimizer& opt, const Exec& ex, const Batch& b, float scale, int64_t targets,
              const std::string& layer, int w) {
  opt.zero_grads();
  opt.begin_micro_batch(true);
  m.forward_backward(b, float(double(scale) / double(targets)), opt.grads());
  opt.finish_reduction();
  Run r;
  r.out = m.layer_output(layer);
  if (w >= 0) {
    r.grad = grad_of(opt, ex, w);
    for (float& v : r.grad) v /= scale;
  }
  return r;
}

}  // namespace

int analyze_command(int argc, char** argv) {
  CommandArgs a;
  if (!parse_command_args(argc, argv, {"out", "batches", "dtype"}, {}, &a)) return kExitBadInput;
  int batches = 0;
  if (!int_option(a, "batches", 4, 1, &batches)) return kExitBadInput;
  WorldInfo world = mpi_init(nullptr, nullptr);
  int code = 0;
  try {
    Config cfg;
    agree(MPI_COMM_WORLD, [&] {
      cfg = load_config(a.config, a.sets);
      if (world.size != 1) throw InputError(a.config, "", "mptrain analyze runs on one rank");
    });
    const std::string half_name = a.opts.count("dtype") ? a.opts.at("dtype") : "fp16";
    if (half_name != "fp16" && half_name != "bf16") throw InputError("--dtype", "", "must be fp16 or bf16");
    const DType half = half_name == "fp16" ? DType::F16 : DType::BF16;
    // FP32 everywhere for the reference; the full gradient buffer readable (stage 0); the scale fp16 would
    // start from.
    const double scale = half == DType::F16 ? cfg.loss_scale.init : 1.0;
    const Config given = cfg;  // what precision.layers = "auto" decides for (below)
    const double out_tol = given.precision.max_output_err, grad_tol = given.precision.max_grad_err,
                 range_tol = given.precision.max_range_frac;
    cfg.precision.mode = "fp32";
    cfg.precision.layers.clear();
    cfg.zero.stage = 0;
    cfg.checkpoint.dir = "";
    cfg.log.quiet = true;
    Trainer t(cfg, world);
    const Exec& ex = t.exec();
    ShardedOptimizer& ref_opt = t.optimizer();
    Model& ref = t.model();
    const std::vector<float> master = ref_opt.gather_master();
    OptimizerState st{master, std::vector<float>(master.size()), std::vector<float>(master.size())};
    const int B = cfg.train.batch_size;
    const int64_t targets = int64_t(B) * ref.targets_per_example();

    std::printf("analyze: %s, %d batch(es) of %d, each layer alone in %s (others FP32); fp16 range at scale %g\n",
                ref.describe().c_str(), batches, B, half_name.c_str(), scale);
    std::printf("%-22s %12s %12s %11s %11s %11s %11s  %s\n", "layer", "out rel err", "grad rel err", "underflow",
                "subnormal", "overflow", "unscaled uf", "recommendation");
    nlohmann::json report = {{"model", ref.describe()}, {"dtype", half_name}, {"batches", batches},
                             {"loss_scale", scale}, {"layers", nlohmann::json::array()}};
    nlohmann::json overrides = nlohmann::json::array();
    for (const auto& [layer, dt0] : ref.layer_dtypes()) {
      (void)dt0;
      PrecisionConfig p;
      p.mode = "fp32";
      p.layers.push_back({layer, half_name});
      auto cand = make_model(cfg.model, p, DType::F32, ex, ref.max_batch());
      ShardedOptimizer opt(ex, t.comm(), cand->param_specs(), 0, size_t(cfg.zero.bucket_mb * 1048576.0),
                           cfg.train.seed);
      cand->bind(opt.params());
      opt.load_state(st);
      const int w = weight_index(opt, layer);
      double out_err = 0, grad_err = 0;
      Fp16Range at_scale, unscaled;
      for (int k = 0; k < batches; ++k) {
        const Batch b = t.train_batch(int64_t(k) * B, B);
        const Run r0 = run_layer(ref, ref_opt, ex, b, float(scale), targets, layer, weight_index(ref_opt, layer));
        const Run r1 = run_layer(*cand, opt, ex, b, float(scale), targets, layer, w);
        out_err += r0.out.empty() ? 0 : rel_l2(r1.out, r0.out) / batches;
        grad_err += w >= 0 ? rel_l2(r1.grad, r0.grad) / batches : 0;
        const Fp16Range rs = fp16_range(r0.grad, scale), ru = fp16_range(r0.grad, 1.0);
        at_scale.underflow += rs.underflow / batches;
        at_scale.subnormal += rs.subnormal / batches;
        at_scale.overflow += rs.overflow / batches;
        unscaled.underflow += ru.underflow / batches;
      }
      std::string rec = "keep " + half_name;
      const bool range_bad = half == DType::F16 && (at_scale.underflow > range_tol || at_scale.overflow > range_tol);
      if (out_err > out_tol || grad_err > grad_tol || range_bad) {
        // A range problem alone is what bf16 solves; an accuracy problem needs fp32.
        const bool bf16_ok = range_bad && out_err <= out_tol && grad_err <= grad_tol && t.model_dtype() != DType::F16;
        rec = bf16_ok ? "bf16" : "fp32";
        overrides.push_back({{"pattern", layer}, {"dtype", rec}});
        rec = "override -> " + rec;
      }
      std::printf("%-22s %12.3e %12.3e %10.4f%% %10.4f%% %10.4f%% %10.4f%%  %s\n", layer.c_str(), out_err, grad_err,
                  100 * at_scale.underflow, 100 * at_scale.subnormal, 100 * at_scale.overflow, 100 * unscaled.underflow,
                  rec.c_str());
      report["layers"].push_back({{"layer", layer}, {"output_rel_err", out_err}, {"grad_rel_err", grad_err},
                                  {"underflow_frac", at_scale.underflow}, {"subnormal_frac", at_scale.subnormal},
                                  {"overflow_frac", at_scale.overflow}, {"unscaled_underflow_frac", unscaled.underflow}, {"recommendation", rec}});
    }
    report["recommended_precision_layers"] = overrides;
    std::printf("recommended precision.layers: %s\n", overrides.dump().c_str());
    // The decision precision.layers = "auto" makes for this config (the trainer's code path): the
    // analysis in every candidate dtype, the GEMM timing on this device and the memory budget.
    AutoPrecisionContext ctx;
    ctx.cfg = &given;
    ctx.ex = &ex;
    ctx.comm = &t.comm();
    ctx.hw = t.hardware();
    ctx.batch = [&t](int64_t first, int n) { return t.train_batch(first, n); };
    ctx.master = master;
    const AutoPrecision ap = decide_auto_precision(ctx);
    for (const std::string& l : selection_lines(ap.sel)) std::printf("%s\n", l.c_str());
    nlohmann::json rules = nlohmann::json::array();
    for (const LayerPrecision& r : ap.sel.rules()) rules.push_back({{"pattern", r.pattern}, {"dtype", r.dtype}});
    std::printf("auto policy: precision.mode %s, precision.layers %s\n", dtype_name(ap.sel.base), rules.dump().c_str());
    report["auto_policy"] = selection_json(ap.sel);
    report["auto_policy"]["precision_layers"] = rules;
    if (a.opts.count("out")) {
      std::ofstream f(a.opts.at("out"));
      if (!f) throw InputError(a.opts.at("out"), "--out", "cannot open for writing");
      f << report.dump(2) << "\n";
    }
  } catch (const InputError& e) {
    std::fprintf(stderr, "mptrain: %s\n", e.what());
    code = kExitBadInput;
  } catch (const PeerInputError&) {
    code = kExitBadInput;
  }
  mpi_finalize();
  return code;
}

}  // namespace mpt
