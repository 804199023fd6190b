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
  std::set<std::string> flags;              // --name (the flag_opts given)
};
// argv[0] is the command name. value_opts: the options that take a value (besides --set), `required`
// those that must be given, flag_opts those that take none. Prints the problem (once per job: see
// print_arg_error) and returns false on bad arguments.
bool parse_command_args(int argc, char** argv, const std::set<std::string>& value_opts,
                        const std::set<std::string>& required, CommandArgs* out,
                        const std::set<std::string>& flag_opts = {});

// Command-line errors are found before MPI starts, on every rank alike (every rank gets the same
// arguments): only the rank the launcher numbers 0 prints them (Open MPI, PMIx, PMI or Slurm rank
// variables; a process started without a launcher prints). Every rank still exits 2.
bool launcher_rank_is_zero();
void print_arg_error(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// --name as an integer >= lo (default when absent) or a double; false after printing the problem.
bool int_option(const CommandArgs& a, const std::string& name, int def, int lo, int* out);
bool double_option(const CommandArgs& a, const std::string& name, double def, double* out, bool allow_zero = false);

struct Config;
struct WorldInfo;
// MPI set-up, the config (agreed on by every rank), the body, and the one exit-code policy of the
// commands that take a config.
int run_config_command(const CommandArgs& a, const std::function<void(Config&, const WorldInfo&)>& body);

// `mptrain train CONFIG [--set k=v]... [--print-config]`; --print-config prints the effective config
// (defaults + file + overrides) as JSON on rank 0 and exits 0 without training.
int train_command(int argc, char** argv);
// `mptrain export CONFIG --out FILE.safetensors [--dtype fp32|fp16|bf16] [--set k=v]...`: the model's
// weights (after resuming from checkpoint.dir when there is a checkpoint) with Hugging Face GPT-2 names,
// rounded to nearest even from the FP32 masters, and a Hugging Face config.json beside them
// (src/io/hf_export.h).
int export_command(int argc, char** argv);
// `mptrain dump CONFIG --out DIR [--steps K] [--set k=v]...`, one rank: what the PyTorch reference check
// (tests/reference/gpt2_reference.py) compares against: DIR/weights.safetensors (initial weights, HF
// names), DIR/step0.safetensors (batch, logits, loss, unscaled FP32 gradients of the first batch) and
// DIR/trajectory.safetensors (the batches and losses of K training steps) + DIR/meta.json.
int dump_command(int argc, char** argv);
// `mptrain analyze CONFIG [--batches N] [--dtype fp16|bf16] [--out FILE.json]`, one rank: per-layer
// precision sensitivity (src/train/analyze.cpp).
int analyze_command(int argc, char** argv);
// `mptrain profile CONFIG [--warmup N] [--steps N] [--out FILE.json] [--peak-tflops X] [--peak-gbs Y]`:
// per-op times of one steady-state training step (src/train/bench_commands.cpp).
int profile_command(int argc, char** argv);
// `mptrain bench CONFIG [--warmup N] [--steps N] [--out FILE.json] [--label TEXT] [--peak-tflops X]`: the
// scaling benchmark's row at this world size (src/train/bench.cpp).
int bench_command(int argc, char** argv);
// `mptrain sample CONFIG [--prompt TEXT] [--tokens N] [--temperature T] [--top-k K] [--seed S] [--bpe DIR]`:
// text from the latest checkpoint or model.init_from (src/train/sample.cpp).
int sample_command(int argc, char** argv);
// `mptrain bench-comm [...]`: collective latency and bandwidth, alpha-beta fits (src/train/bench_comm.cpp).
int bench_comm_command(int argc, char** argv);
// `mptrain bench-attention [--dtype bf16] [--batch 16] [--seq 1024] [--heads 12] [--head-dim 64]`: the
// attention kernels alone on device 0, TFLOP/s with causal FLOPs.
int bench_attention_command(int argc, char** argv);

}  // namespace mpt
