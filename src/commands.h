// The subcommands that take a config: argument parsing shared by all of them, and the commands.
// Each returns the process exit code: 0, or 2 for bad input (every rank prints or agrees on it).
#pragma once

#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace mpt {

struct CommandArgs {
  std::string config;
  std::vector<std::string> sets;
  std::map<std::string, std::string> opts;  // --name value
};
// argv[0] is the command name. value_opts: the options that take a value (besides --set), `required`
// those that must be given. Prints the problem and returns false on bad arguments.
bool parse_command_args(int argc, char** argv, const std::set<std::string>& value_opts,
                        const std::set<std::string>& required, CommandArgs* out);

// --name as an integer >= lo (default when absent) or a double; false after printing the problem.
bool int_option(const CommandArgs& a, const std::string& name, int def, int lo, int* out);
bool double_option(const CommandArgs& a, const std::string& name, double def, double* out);

struct Config;
struct WorldInfo;
// MPI set-up, the config (agreed on by every rank), the body, and the one exit-code policy of the
// commands that take a config.
int run_config_command(const CommandArgs& a, const std::function<void(Config&, const WorldInfo&)>& body);

// `mptrain train CONFIG [--set k=v]...`
int train_command(int argc, char** argv);
// `mptrain export CONFIG --out FILE.safetensors [--set k=v]...`: the model's weights (after resuming from
// checkpoint.dir when there is a checkpoint) with Hugging Face GPT-2 names, FP32.
int export_command(int argc, char** argv);
// `mptrain dump CONFIG --out DIR [--steps K] [--set k=v]...`, one rank: what the PyTorch reference check
// (tests/reference/gpt2_reference.py) compares against: DIR/weights.safetensors (initial weights, HF
// names), DIR/step0.safetensors (batch, logits, loss, unscaled FP32 gradients of the first batch) and
// DIR/trajectory.safetensors (the batches and losses of K training steps) + DIR/meta.json.
int dump_command(int argc, char** argv);
// `mptrain analyze CONFIG [--batches N] [--dtype fp16|bf16] [--out FILE.json]`, one rank: per-layer
// precision sensitivity (src/analyze.cpp).
int analyze_command(int argc, char** argv);
// `mptrain profile CONFIG [--warmup N] [--steps N] [--out FILE.json] [--peak-tflops X] [--peak-gbs Y]`:
// per-op times of one steady-state training step (src/bench_commands.cpp).
int profile_command(int argc, char** argv);
// `mptrain bench CONFIG [--warmup N] [--steps N] [--out FILE.json] [--label TEXT] [--peak-tflops X]`: the
// scaling benchmark's row at this world size (src/bench.cpp).
int bench_command(int argc, char** argv);
// `mptrain bench-comm [...]`: collective latency and bandwidth, alpha-beta fits (src/bench_comm.cpp).
int bench_comm_command(int argc, char** argv);
// `mptrain bench-attention [--dtype bf16] [--batch 16] [--seq 1024] [--heads 12] [--head-dim 64]`: the
// attention kernels alone on device 0, TFLOP/s with causal FLOPs.
int bench_attention_command(int argc, char** argv);

}  // namespace mpt
