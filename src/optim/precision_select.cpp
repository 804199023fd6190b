#include "src/optim/precision_select.h"

#include <algorithm>
#include <cstdio>

namespace mpt {

namespace {

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}
std::string ms(double s) { return fmt("%.3g ms", s * 1e3); }
std::string mib(double b) { return fmt("%.4g MiB", b / 1048576.0); }

double seconds_of(const LayerInput& l, DType t) {
  return t == DType::F32 ? l.t_f32 : t == DType::F16 ? l.t_f16 : l.t_bf16;
}
double bytes_of(const LayerInput& l, DType t) { return double(l.elems) * double(dtype_size(t)); }

// Tie order: the layer's default first (no override), then the more accurate or wider-ranged dtype.
int tie_rank(DType t, DType def) {
  if (t == def) return 0;
  return t == DType::F32 ? 1 : t == DType::BF16 ? 2 : 3;
}

struct Plan {
  DType base = DType::F32;
  std::vector<LayerDecision> layers;
  std::vector<std::vector<DType>> allowed;  // admissible dtypes per layer
  double seconds = 0, bytes = 0;
  bool fits = true;
};

Plan plan_for(const SelectInputs& in, DType base) {
  Plan p;
  p.base = base;
  p.bytes = in.fixed_bytes;
  for (const LayerInput& l : in.layers) {
    LayerDecision d;
    d.layer = l.name;
    d.default_f32 = l.default_f32;
    d.default_dtype = l.default_f32 ? DType::F32 : base;
    std::vector<DType> opts = {d.default_dtype, DType::F32, base};
    if (base == DType::F16 && in.bf16_hw) opts.push_back(DType::BF16);
    std::vector<DType> ok;
    std::string def_excluded;  // why the default is not admissible ("" : it is)
    for (DType t : opts) {
      if (std::find(ok.begin(), ok.end(), t) != ok.end()) continue;
      std::string why;
      if (admissible(l, t, in, &why)) ok.push_back(t);
      else if (t == d.default_dtype) def_excluded = why;
    }
    std::sort(ok.begin(), ok.end(), [&](DType a, DType b) {
      const double ta = seconds_of(l, a), tb = seconds_of(l, b);
      if (ta != tb) return ta < tb;
      return tie_rank(a, d.default_dtype) < tie_rank(b, d.default_dtype);
    });
    d.dtype = ok.front();
    if (d.dtype == d.default_dtype) {
      d.reason = "default " + std::string(dtype_name(d.dtype));
    } else if (!def_excluded.empty()) {
      d.reason = std::string(dtype_name(d.default_dtype)) + " excluded (" + def_excluded + "); fastest admissible " +
                 dtype_name(d.dtype) + " " + ms(seconds_of(l, d.dtype));
    } else {
      d.reason = std::string(dtype_name(d.dtype)) + " faster: " + ms(seconds_of(l, d.dtype)) + " vs " +
                 dtype_name(d.default_dtype) + " " + ms(seconds_of(l, d.default_dtype));
    }
    p.seconds += seconds_of(l, d.dtype);
    p.bytes += bytes_of(l, d.dtype);
    p.layers.push_back(std::move(d));
    p.allowed.push_back(std::move(ok));
  }
  if (in.budget_bytes <= 0 || p.bytes <= in.budget_bytes) return p;
  // Over budget: the move with the largest saving per second lost first, until it fits.
  while (p.bytes > in.budget_bytes) {
    int best = -1;
    DType best_t = DType::F32;
    double best_ratio = -1;
    for (size_t i = 0; i < in.layers.size(); ++i) {
      const LayerInput& l = in.layers[i];
      for (DType t : p.allowed[i]) {
        const double save = bytes_of(l, p.layers[i].dtype) - bytes_of(l, t);
        if (save <= 0) continue;
        const double cost = std::max(0.0, seconds_of(l, t) - seconds_of(l, p.layers[i].dtype));
        const double ratio = save / std::max(cost, 1e-15);
        if (ratio > best_ratio) best_ratio = ratio, best = int(i), best_t = t;
      }
    }
    if (best < 0) {
      p.fits = false;
      return p;
    }
    LayerDecision& d = p.layers[size_t(best)];
    const LayerInput& l = in.layers[size_t(best)];
    p.bytes -= bytes_of(l, d.dtype) - bytes_of(l, best_t);
    p.seconds += seconds_of(l, best_t) - seconds_of(l, d.dtype);
    d.reason = "memory budget: " + std::string(dtype_name(best_t)) + " instead of " + dtype_name(d.dtype) + " saves " +
               mib(bytes_of(l, d.dtype) - bytes_of(l, best_t));
    d.dtype = best_t;
  }
  return p;
}

}  // namespace

bool admissible(const LayerInput& l, DType t, const SelectInputs& in, std::string* why_not) {
  if (t == DType::F32) return true;
  const HalfError& e = t == DType::F16 ? l.f16 : l.bf16;
  std::string why;
  if (!e.measured) why = "not analyzed";
  else if (!(e.out_err <= in.max_output_err)) why = "output error " + fmt("%.3g", e.out_err) + " > " + fmt("%g", in.max_output_err);
  else if (!(e.grad_err <= in.max_grad_err)) why = "gradient error " + fmt("%.3g", e.grad_err) + " > " + fmt("%g", in.max_grad_err);
  else if (t == DType::F16 && !(e.underflow <= in.max_range_frac))
    why = "gradient underflow " + fmt("%.3g%%", 100 * e.underflow) + " > " + fmt("%g%%", 100 * in.max_range_frac);
  else if (t == DType::F16 && !(e.overflow <= in.max_range_frac))
    why = "gradient overflow " + fmt("%.3g%%", 100 * e.overflow) + " > " + fmt("%g%%", 100 * in.max_range_frac);
  if (why_not) *why_not = why;
  return why.empty();
}

Selection select_precision(const SelectInputs& in) {
  Selection s;
  const Plan* best = nullptr;
  std::vector<Plan> plans;
  plans.reserve(in.bases.size());
  for (DType b : in.bases) plans.push_back(plan_for(in, b));
  std::string compared;
  for (const Plan& p : plans) {
    compared += (compared.empty() ? "" : ", ") + std::string(dtype_name(p.base)) + " " + ms(p.seconds) + " " +
                mib(p.bytes) + (p.fits ? "" : " (over budget)");
    if (p.fits && (!best || p.seconds < best->seconds)) best = &p;
  }
  if (!best) {
    s.why = "no candidate fits the memory budget of " + mib(in.budget_bytes) + ": " + compared;
    return s;
  }
  s.ok = true;
  s.base = best->base;
  s.layers = best->layers;
  s.seconds = best->seconds;
  s.bytes = best->bytes;
  s.why = "base " + std::string(dtype_name(s.base)) + " (predicted GEMM time and memory per base: " + compared + ")";
  return s;
}

std::vector<LayerPrecision> Selection::rules() const {
  std::vector<LayerPrecision> r;
  for (const LayerDecision& d : layers)
    if (d.dtype != d.default_dtype) r.push_back({d.layer, dtype_name(d.dtype)});
  return r;
}

std::vector<int32_t> encode_selection(const Selection& s) {
  std::vector<int32_t> c = {int32_t(s.base)};
  for (const LayerDecision& d : s.layers) c.push_back(int32_t(d.dtype));
  return c;
}

void apply_encoded(const std::vector<int32_t>& code, Selection* s, const std::string& reason) {
  const DType base = DType(code.at(0));
  if (base != s->base) {
    s->base = base;
    s->why = "base " + std::string(dtype_name(base)) + " (" + reason + ")";
  }
  for (size_t i = 0; i < s->layers.size(); ++i) {
    LayerDecision& d = s->layers[i];
    const DType t = DType(code.at(i + 1));
    d.default_dtype = d.default_f32 ? DType::F32 : base;
    if (t != d.dtype) {
      d.dtype = t;
      d.reason = std::string(dtype_name(t)) + " (" + reason + ")";
    }
  }
}

bool evaluate_policy(const SelectInputs& in, const std::vector<int32_t>& code, double* seconds, double* bytes) {
  if (code.size() != in.layers.size() + 1) return false;
  *seconds = 0;
  *bytes = in.fixed_bytes;
  bool ok = true;
  for (size_t i = 0; i < in.layers.size(); ++i) {
    const DType t = DType(code[i + 1]);
    ok = ok && admissible(in.layers[i], t, in);
    *seconds += seconds_of(in.layers[i], t);
    *bytes += bytes_of(in.layers[i], t);
  }
  return ok && (in.budget_bytes <= 0 || *bytes <= in.budget_bytes);
}

Selection keep_unless_better(const SelectInputs& in, const Selection& fresh, const std::vector<int32_t>& current) {
  double cs = 0, cb = 0;
  if (!fresh.ok || encode_selection(fresh) == current || !evaluate_policy(in, current, &cs, &cb)) return fresh;
  if (fresh.seconds <= cs * (1 - kMinReanalysisGain)) return fresh;
  Selection kept = fresh;
  apply_encoded(current, &kept, "kept: the new decision gains under " + fmt("%g%%", 100 * kMinReanalysisGain));
  kept.seconds = cs;
  kept.bytes = cb;
  kept.why = "kept the current policy (" + ms(cs) + "): the new decision (" + ms(fresh.seconds) + ") gains under " +
             fmt("%g%%", 100 * kMinReanalysisGain);
  return kept;
}

}  // namespace mpt
