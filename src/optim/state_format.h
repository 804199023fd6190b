// The AdamW state storage a config asks for (optimizer.state_dtype, optimizer.state_block), the offload
// options (zero.offload, cpu.threads), and the check that a checkpoint's state matches the config.
#pragma once
#include <algorithm>
#include <string>
#include <thread>

#include <sched.h>

#include <nlohmann/json.hpp>

#include "kernels/adamw_lowp.h"
#include "src/core/check.h"
#include "src/config/config.h"
#include "src/optim/sharded_adamw.h"

namespace mpt {

inline StateFormat state_format_of(const OptimizerConfig& o) {
  StateFormat f;
  parse_state_dtype(o.state_dtype, &f.dtype);  // validated by the config reader
  f.block = o.state_block;
  return f;
}

// The CPUs this process may run on (its affinity mask; mpirun binds each rank to one core unless told
// --bind-to none), or the hardware threads where the mask cannot be read.
inline int usable_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
  return int(std::max(1u, std::thread::hardware_concurrency()));
}

// zero.offload and its host threads (cpu.threads; 0: the node's hardware threads shared among the
// ranks on the node, at most the CPUs this rank may run on).
inline OffloadOptions offload_options(const Config& c, int ranks_on_node) {
  OffloadOptions o;
  o.cpu = c.zero.offload == "cpu";
  const int hw = int(std::max(1u, std::thread::hardware_concurrency()));
  o.threads = c.cpu.threads > 0 ? c.cpu.threads
                                : std::max(1, std::min(usable_cpus(), hw / std::max(1, ranks_on_node)));
  return o;
}

inline std::string describe_state(const StateFormat& f) {
  return f.dtype == StateDType::I8 ? "int8 m/v, blocks of " + std::to_string(f.block) : state_dtype_name(f.dtype) + std::string(" m/v");
}

// A checkpoint records the config it was written with; its moments are the values of that state dtype.
// Resuming them under another state dtype would silently change the optimizer, so it is refused rather
// than converted (a run that wants to switch starts from the weights: model.init_from).
inline void check_checkpoint_state(const std::string& path, const nlohmann::json& ckpt_config,
                                   const OptimizerConfig& o) {
  std::string saved = "fp32";  // checkpoints written before the field existed hold FP32 states
  const auto opt = ckpt_config.find("optimizer");
  if (opt != ckpt_config.end() && opt->is_object()) {
    const auto sd = opt->find("state_dtype");
    if (sd != opt->end() && sd->is_string()) saved = sd->get<std::string>();
  }
  if (saved != o.state_dtype)
    throw InputError(path, "config.optimizer.state_dtype",
                     "the checkpoint holds " + saved + " AdamW states but this run asks for optimizer.state_dtype=" +
                         o.state_dtype + "; resume with --set optimizer.state_dtype=" + saved +
                         " (a change of state dtype is not converted)");
}

}  // namespace mpt
