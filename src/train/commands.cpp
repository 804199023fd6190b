#include "src/train/commands.h"

#include <cerrno>
#include <cstdarg>
#include <cstring>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <filesystem>
#include <fstream>
#include <functional>

#include <mpi.h>
#include <nlohmann/json.hpp>

#include "comm/bootstrap.h"
#include "src/core/check.h"
#include "src/config/config.h"
#include "src/model/gpt2.h"
#include "src/io/hf_export.h"
#include "src/io/safetensors.h"
#include "src/data/tokens.h"
#include "src/train/train.h"

namespace mpt {

bool launcher_rank_is_zero() {
  for (const char* v : {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"})
    if (const char* r = std::getenv(v)) return std::strcmp(r, "0") == 0;
  return true;
}

void print_arg_error(const char* fmt, ...) {
  if (!launcher_rank_is_zero()) return;
  va_list ap;
  va_start(ap, fmt);
  std::vfprintf(stderr, fmt, ap);
  va_end(ap);
}

bool parse_command_args(int argc, char** argv, const std::set<std::string>& value_opts,
                        const std::set<std::string>& required, CommandArgs* out,
                        const std::set<std::string>& flag_opts) {
  const std::string cmd = argv[0];
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    std::string name = a, value;
    const size_t eq = a.find('=');
    const bool inline_value = a.rfind("--", 0) == 0 && eq != std::string::npos;
    if (inline_value) {
      name = a.substr(0, eq);
      value = a.substr(eq + 1);
    }
    if (name == "--set" || (name.rfind("--", 0) == 0 && value_opts.count(name.substr(2)))) {
      if (!inline_value) {
        if (i + 1 >= argc) {
          print_arg_error("mptrain %s: %s needs a value\n", cmd.c_str(), name.c_str());
          return false;
        }
        value = argv[++i];
      }
      if (name == "--set") out->sets.push_back(value);
      else out->opts[name.substr(2)] = value;
    } else if (!inline_value && a.rfind("--", 0) == 0 && flag_opts.count(a.substr(2))) {
      out->flags.insert(a.substr(2));
    } else if (!a.empty() && a[0] == '-') {
      print_arg_error("mptrain %s: unknown option %s (see mptrain %s --help)\n", cmd.c_str(), a.c_str(), cmd.c_str());
      return false;
    } else if (out->config.empty()) {
      out->config = a;
    } else {
      print_arg_error("mptrain %s: one CONFIG only (got %s and %s)\n", cmd.c_str(), out->config.c_str(), a.c_str());
      return false;
    }
  }
  if (out->config.empty()) {
    print_arg_error("mptrain %s: missing CONFIG (see mptrain %s --help)\n", cmd.c_str(), cmd.c_str());
    return false;
  }
  for (const std::string& o : required)
    if (!out->opts.count(o)) {
      print_arg_error("mptrain %s: missing --%s\n", cmd.c_str(), o.c_str());
      return false;
    }
  return true;
}

bool int_option(const CommandArgs& a, const std::string& name, int def, int lo, int* out) {
  *out = def;
  auto it = a.opts.find(name);
  if (it == a.opts.end()) return true;
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(it->second.c_str(), &end, 10);
  if (it->second.empty() || *end || errno || v < lo || v > std::numeric_limits<int>::max()) {
    print_arg_error("mptrain: --%s: '%s' is not an integer >= %d\n", name.c_str(), it->second.c_str(), lo);
    return false;
  }
  *out = int(v);
  return true;
}

bool double_option(const CommandArgs& a, const std::string& name, double def, double* out, bool allow_zero) {
  *out = def;
  auto it = a.opts.find(name);
  if (it == a.opts.end()) return true;
  char* end = nullptr;
  const double v = std::strtod(it->second.c_str(), &end);
  if (it->second.empty() || *end || !(allow_zero ? v >= 0 : v > 0) || !std::isfinite(v)) {
    print_arg_error(allow_zero ? "mptrain: --%s: '%s' is not a number >= 0\n" : "mptrain: --%s: '%s' is not a positive number\n",
                    name.c_str(), it->second.c_str());
    return false;
  }
  *out = v;
  return true;
}

int run_config_command(const CommandArgs& a, const std::function<void(Config&, const WorldInfo&)>& body) {
  WorldInfo world = mpi_init(nullptr, nullptr);
  int code = 0;
  try {
    Config cfg;
    agree(MPI_COMM_WORLD, [&] { cfg = load_config(a.config, a.sets); });
    body(cfg, world);
  } catch (const InputError& e) {
    std::fprintf(stderr, "mptrain: %s\n", e.what());
    code = kExitBadInput;
  } catch (const PeerInputError&) {
    code = kExitBadInput;
  } catch (const StabilityStop& e) {
    // Every rank reaches the same decision at the same step; rank 0 says it.
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (rank == 0) std::fprintf(stderr, "mptrain: stopped by the stability monitor: %s\n", e.what());
    code = kExitStability;
  } catch (const RunFailed& e) {
    // Every rank reaches the same verdict from the same all-reduced values; rank 0 says it.
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (rank == 0) std::fprintf(stderr, "mptrain: the run failed: %s\n", e.what());
    code = kExitRunFailed;
  } catch (const Interrupted& e) {
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (rank == 0) std::fprintf(stderr, "mptrain: interrupted: %s\n", e.what());
    code = kExitInterrupted;
  } catch (const std::exception& e) {
    // Anything else happened on this rank alone, and the others may be waiting in a collective: the fatal
    // path aborts the communicator, which ends every rank.
    MPT_FATAL("mptrain", std::string("unexpected error: ") + e.what());
  }
  mpi_finalize();
  return code;
}

namespace {

Gpt2& gpt2_of(Trainer& t, const std::string& source) {
  auto* g = dynamic_cast<Gpt2*>(&t.model());
  if (!g) throw InputError(source, "model.type", "this command needs a gpt2 model");
  return *g;
}

std::vector<ParamSpec> specs_of(ShardedOptimizer& opt) {
  std::vector<ParamSpec> s;
  for (int i = 0; i < opt.num_params(); ++i) s.push_back(opt.spec(i));
  return s;
}

}  // namespace

int train_command(int argc, char** argv) {
  CommandArgs a;
  if (!parse_command_args(argc, argv, {}, {}, &a, {"print-config"})) return kExitBadInput;
  const bool print_only = a.flags.count("print-config") > 0;
  return run_config_command(a, [&](Config& cfg, const WorldInfo& world) {
    if (print_only) {
      if (world.rank == 0) std::printf("%s\n", cfg.resolved.dump(2).c_str());
      return;
    }
    Trainer t(cfg, world);
    t.run();
  });
}

int export_command(int argc, char** argv) {
  CommandArgs a;
  if (!parse_command_args(argc, argv, {"out", "dtype"}, {"out"}, &a)) return kExitBadInput;
  DType store = DType::F32;
  if (a.opts.count("dtype") && !parse_dtype(a.opts.at("dtype"), &store)) {
    print_arg_error("mptrain export: --dtype: '%s' is not fp32, fp16 or bf16\n", a.opts.at("dtype").c_str());
    return kExitBadInput;
  }
  return run_config_command(a, [&](Config& cfg, const WorldInfo& world) {
    cfg.log.quiet = true;
    Trainer t(cfg, world, MPI_COMM_WORLD, Trainer::Data::WeightsOnly);
    agree(MPI_COMM_WORLD, [&] { gpt2_of(t, cfg.source); });
    const std::vector<float> master = t.optimizer().gather_master();  // collective
    if (world.rank != 0) return;
    const std::string out = export_weights_path(a.opts.at("out"));
    const std::filesystem::path dir = std::filesystem::path(out).parent_path();
    if (!dir.empty()) {
      std::error_code ec;
      std::filesystem::create_directories(dir, ec);  // a failure shows up as the write's error below
    }
    const int64_t step = t.optimizer().adam_step();
    if (step == 0)
      std::fprintf(stderr, "export: warning: %s; these are the initial, untrained weights of seed %llu\n",
                   cfg.checkpoint.dir.empty() ? "checkpoint.dir is not set"
                                              : ("no checkpoint in " + cfg.checkpoint.dir).c_str(),
                   static_cast<unsigned long long>(cfg.train.seed));
    write_safetensors(out, gpt2_export(specs_of(t.optimizer()), master, cfg.model, store));
    const std::string config_json = ((dir.empty() ? std::filesystem::path(".") : dir) / "config.json").string();
    write_json_file(config_json, hf_gpt2_config(cfg.model, store, kEndOfText));
    std::printf("export: %s (%lld parameters, %s, step %lld) and %s\n", out.c_str(),
                static_cast<long long>(t.optimizer().num_elements()), dtype_name(store), static_cast<long long>(step),
                config_json.c_str());
    if (std::filesystem::path(out).filename() != "model.safetensors")
      std::printf("export: note: from_pretrained(DIR) looks for DIR/model.safetensors; this file is named %s\n",
                  std::filesystem::path(out).filename().c_str());
  });
}

int dump_command(int argc, char** argv) {
  CommandArgs a;
  if (!parse_command_args(argc, argv, {"out", "steps"}, {"out"}, &a)) return kExitBadInput;
  int steps = 0;
  if (!int_option(a, "steps", 10, 1, &steps)) return kExitBadInput;
  return run_config_command(a, [&](Config& cfg, const WorldInfo& world) {
    if (world.size != 1) throw InputError(a.config, "", "mptrain dump runs on one rank");
    const std::string dir = a.opts.at("out");
    // Stage 0 keeps the full gradient buffer readable; one micro-batch per step; nothing else written.
    cfg.zero.stage = 0;
    cfg.train.grad_accum = 1;
    cfg.checkpoint.dir = "";
    cfg.log.quiet = true;
    Trainer t(cfg, world);
    Gpt2& model = gpt2_of(t, cfg.source);
    ShardedOptimizer& opt = t.optimizer();
    const std::vector<ParamSpec> specs = specs_of(opt);
    std::filesystem::create_directories(dir);
    write_safetensors(dir + "/weights.safetensors", gpt2_export(specs, opt.gather_master(), cfg.model));

    const int B = cfg.train.batch_size, T = cfg.model.seq_len, V = cfg.model.vocab;
    StFile step0;
    {
      const Batch b = t.train_batch(0, B);
      step0.tensors["inputs"] = st_from_int32(std::vector<int32_t>(b.inputs, b.inputs + size_t(B) * T), {B, T});
      step0.tensors["targets"] = st_from_int32(std::vector<int32_t>(b.targets, b.targets + size_t(B) * T), {B, T});
      double loss_sum = 0;
      int64_t correct = 0;
      model.evaluate(b, &loss_sum, &correct);  // forward only: the logits stay intact
      step0.tensors["logits"] = st_from_float(model.logits(B), {B, T, V});
      step0.tensors["loss"] = st_from_float({float(loss_sum / double(B * T))}, {});
      opt.zero_grads();
      opt.begin_micro_batch(true);
      model.forward_backward(b, float(1.0 / double(B * T)), opt.grads());
      opt.finish_reduction();
      for (int i = 0; i < opt.num_params(); ++i) {
        const ParamView& v = opt.view(i);
        std::vector<uint8_t> raw(size_t(v.numel) * dtype_size(v.dtype));
        copy_to_host(v.grad, t.exec().device, raw.data(), raw.size(), t.exec().stream);
        std::vector<float> g(size_t(v.numel));
        to_float_n(raw.data(), v.dtype, g.data(), g.size());
        std::vector<int64_t> shape = specs[size_t(i)].shape;
        if (specs[size_t(i)].layer == "wte") {
          shape[0] = V;
          g.resize(size_t(V) * size_t(shape[1]));
        }
        step0.tensors["grad." + specs[size_t(i)].name] = st_from_float(g, shape);
      }
    }
    write_safetensors(dir + "/step0.safetensors", step0);

    StFile traj;
    for (int k = 0; k < steps; ++k) {
      const Batch b = t.train_batch(int64_t(k) * B, B);
      traj.tensors["inputs." + std::to_string(k)] =
          st_from_int32(std::vector<int32_t>(b.inputs, b.inputs + size_t(B) * T), {B, T});
      traj.tensors["targets." + std::to_string(k)] =
          st_from_int32(std::vector<int32_t>(b.targets, b.targets + size_t(B) * T), {B, T});
    }
    nlohmann::json meta = {{"config", cfg.resolved}, {"precision", dtype_name(t.model_dtype())}};
    std::vector<float> losses, lrs, norms;
    std::vector<int> skipped;
    for (int k = 0; k < steps; ++k) {
      const StepRecord r = t.train_step();
      losses.push_back(float(r.loss));
      lrs.push_back(float(r.lr));
      norms.push_back(float(r.grad_norm));
      skipped.push_back(r.skipped ? 1 : 0);
    }
    traj.tensors["loss"] = st_from_float(losses, {steps});
    meta["lr"] = lrs;
    meta["grad_norm"] = norms;
    meta["skipped"] = skipped;
    write_safetensors(dir + "/trajectory.safetensors", traj);
    std::ofstream(dir + "/meta.json") << meta.dump(2) << "\n";
    std::printf("dump: %s (precision %s, %d steps, final loss %.5f)\n", dir.c_str(), dtype_name(t.model_dtype()), steps,
                double(losses.empty() ? 0.f : losses.back()));
  });
}

}  // namespace mpt
