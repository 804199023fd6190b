// mptrain: mixed-precision data-parallel training. Subcommands dispatch here.
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include "src/config/config.h"
#include "src/core/check.h"
#include "src/train/commands.h"
#include "src/data/tokens.h"
#include "src/core/version.h"

namespace {

const char* kUsage =
    "mptrain - mixed-precision data-parallel trainer (FP16/BF16 compute, FP32 master weights, ZeRO 0/1/2)\n"
    "\n"
    "usage: mptrain <command> [options]\n"
    "       mpirun -np N mptrain <command> [options]      (one rank per GPU, or CPU ranks)\n"
    "\n"
    "commands:\n"
    "  train CONFIG [--set key.path=value ...] [--print-config]\n"
    "                                            train the model described by the JSON file CONFIG\n"
    "  export CONFIG --out FILE [--dtype fp32|fp16|bf16] [--set ...]\n"
    "                                            write the (resumed) GPT-2 weights as safetensors with HF names,\n"
    "                                            and a Hugging Face config.json beside them\n"
    "  dump CONFIG --out DIR [--steps K]         one rank: initial weights, first-batch logits/loss/gradients and\n"
    "                                            a K-step loss trajectory, for the PyTorch reference check\n"
    "  analyze CONFIG [--batches N] [--dtype fp16|bf16] [--out FILE.json]\n"
    "                                            per-layer precision sensitivity and recommended overrides\n"
    "  profile CONFIG [--warmup N] [--steps N] [--profiled-steps N] [--without-comm] [--out FILE.json]\n"
    "                                            per-op times of steady-state steps, against the device's peaks;\n"
    "                                            --without-comm: each op with and without the bucket collectives\n"
    "  bench CONFIG [--warmup 5] [--warmup-seconds S] [--steps 20] [--out FILE.json] [--label TEXT]\n"
    "                                            step time, tokens/s, exposed communication, memory and MFU at this\n"
    "                                            world size (launch/bench.sh runs it at each GPU count)\n"
    "  bench-comm [--device auto|cuda|cpu] [--dtype bf16] [--min-bytes B] [--max-bytes B] [--out FILE.json]\n"
    "                                            all-reduce / reduce-scatter / all-gather times and alpha-beta fits\n"
    "  sample CONFIG [--prompt TEXT] [--tokens N] [--temperature T] [--top-k K] [--seed S]\n"
    "                                            one rank: generated text from the latest checkpoint\n"
    "  bench-attention [--dtype bf16|fp16] [--batch 16] [--seq 1024] [--heads 12] [--head-dim 64]\n"
    "                                            the attention kernels alone on device 0 (TFLOP/s, causal FLOPs)\n"
    "  tokenize --out DIR [--bpe BPE_DIR] [--val-fraction F] FILE...   text -> byte-level or GPT-2 BPE shards; --decode: back\n"
    "  synth-tokens --out FILE --tokens N [--vocab V] [--seed S]   a synthetic token shard (benchmarks)\n"
    "\n"
    "options:\n"
    "  -h, --help          this help; `mptrain COMMAND --help` describes one command, `mptrain train --help`\n"
    "                      also lists every config key\n"
    "  --version           version, git commit, CUDA runtime and driver, NCCL and MPI library versions\n"
    "\n"
    "exit codes: 0 success, 2 bad input (config, data, checkpoint: the message names the file and the key),\n"
    "            3 stopped by the stability monitor, 4 the run did not train (final loss not finite, most steps\n"
    "            skipped, or overflowing at the minimum loss scale), 5 interrupted by SIGTERM/SIGUSR1 (checkpoint\n"
    "            saved), anything else: a failed library call, an unexpected error or the watchdog (reported with\n"
    "            host and rank; every rank is ended).\n";

const char* kTrainUsage =
    "usage: mptrain train CONFIG [--set key.path=value ...] [--print-config]\n"
    "\n"
    "Trains on every rank of the MPI job (mpirun -np N; a plain `mptrain train` is one rank).\n"
    "  CONFIG                 JSON file; keys not given take the defaults below\n"
    "  --set key.path=value   override one key after the file is read (repeatable). The value is parsed as\n"
    "                         JSON when it can be (numbers, true/false, [arrays], {objects}, \"strings\"),\n"
    "                         otherwise taken as a string: --set optimizer.lr=3e-4 --set device=cpu\n"
    "  --print-config         print the effective config (defaults + file + overrides) as JSON and exit 0\n"
    "                         without training\n"
    "  -h, --help             this help\n"
    "\n"
    "Unknown keys, wrong types and out-of-range values are errors (exit code 2, on every rank).\n"
    "\n"
    "config keys (key, default, meaning):\n";

const char* kSetHelp =
    "  --set key.path=value   override one config key after the file is read (repeatable; see mptrain train --help)\n"
    "  -h, --help             this help\n";

struct CommandHelp {
  const char* name;
  const char* usage;
};
const CommandHelp kCommandHelp[] = {
    {"export",
     "usage: mptrain export CONFIG --out FILE.safetensors [--dtype fp32|fp16|bf16] [--set key.path=value ...]\n"
     "\n"
     "Writes the GPT-2 weights of CONFIG (resumed from checkpoint.dir when it holds a checkpoint; otherwise the\n"
     "initial weights, with a warning) as safetensors with Hugging Face GPT-2 names, and config.json beside\n"
     "them, so that GPT2LMHeadModel.from_pretrained(DIR) loads the directory unchanged.\n"
     "  --out FILE             the safetensors file (conventionally DIR/model.safetensors)\n"
     "  --dtype D              fp32 (default), fp16 or bf16: the FP32 master weights rounded to nearest even\n"},
    {"dump",
     "usage: mptrain dump CONFIG --out DIR [--steps K] [--set key.path=value ...]\n"
     "\n"
     "One rank: initial weights, first-batch logits, loss and gradients and a K-step loss trajectory (default\n"
     "10) written to DIR, for the PyTorch reference check (tests/reference/gpt2_reference.py).\n"},
    {"analyze",
     "usage: mptrain analyze CONFIG [--batches N] [--dtype fp16|bf16] [--out FILE.json] [--set key.path=value ...]\n"
     "\n"
     "Per-layer precision sensitivity: each layer alone in fp16 (or bf16) against FP32, on N batches\n"
     "(default 4); prints recommended precision.layers overrides and writes them with --out.\n"},
    {"profile",
     "usage: mptrain profile CONFIG [--warmup N] [--steps N] [--profiled-steps N] [--without-comm]\n"
     "                      [--out FILE.json] [--peak-tflops X] [--peak-gbs Y] [--set key.path=value ...]\n"
     "       (under mpirun -np N for several ranks)\n"
     "\n"
     "Per-op times of steady-state training steps (after --warmup steps, default 3; the unprofiled step is the\n"
     "median of --steps steps, default 5), the mean of --profiled-steps profiled steps (default 1), each op's\n"
     "rate against the device's peaks, and the largest gaps between ops on the compute stream; rank 0's\n"
     "table, and every rank's step.\n"
     "--without-comm: as many steps again with the bucket collectives skipped (debug.skip_bucket_comm), in\n"
     "chunks of 4 alternating with, without, without, with, ..., and a table of each op's time with, without\n"
     "and the difference, rank by rank: where communication slows the step, and each side's SM clock. After\n"
     "the measured steps, one step without the collectives must leave the ranks' parameters different and one\n"
     "with them must make them agree; the last line says so. --out: rank 0's rows, every rank's rows, and\n"
     "with --without-comm the other side and the comparison.\n"},
    {"bench",
     "usage: mpirun -np N mptrain bench CONFIG [--warmup 5] [--warmup-seconds S] [--steps 20] [--out FILE.json]\n"
     "                                   [--label TEXT] [--peak-tflops X] [--steps-out FILE.json]\n"
     "                                   [--rendezvous DIR --rendezvous-count N [--rendezvous-timeout 120]]\n"
     "                                   [--set key.path=value ...]\n"
     "\n"
     "The scaling benchmark's row at this world size: after the warm-up (--warmup steps, then more for\n"
     "--warmup-seconds: default 5 on GPUs, which a power-capped GPU needs to settle its clocks, 0 on CPU ranks),\n"
     "the median and spread of the step time (the slowest rank's, per step) over the timed steps, tokens/s in\n"
     "all and per GPU, the exposed communication per step, peak memory per GPU, MFU (data-sheet peak, or\n"
     "--peak-tflops), and each GPU's median SM clock and mean power (NVML). One line on stdout, one JSON row\n"
     "with --out; --steps-out writes every rank's time and readback wait per step. --rendezvous: N separate\n"
     "runs time their steps together (each, once warmed up, leaves a file in DIR and warms up on until N files\n"
     "are there, or times alone after the timeout). launch/bench.sh runs it at each world size and writes the\n"
     "report.\n"},
    {"bench-comm",
     "usage: mpirun -np N mptrain bench-comm [--device auto|cuda|cpu] [--dtype bf16|fp16|fp32] [--min-bytes 4096]\n"
     "                                   [--max-bytes 268435456] [--iters 20] [--out FILE.json]\n"
     "\n"
     "All-reduce, reduce-scatter and all-gather on the communicator training uses (NCCL on GPUs, MPI on CPU\n"
     "ranks) at sizes from min to max bytes by factors of 4: the slowest rank's median time, the bus bandwidth,\n"
     "and a fit t = alpha + f S / busbw per collective (launch/project.py reads it).\n"},
    {"sample",
     "usage: mptrain sample CONFIG [--prompt TEXT] [--tokens 200] [--temperature 0.8] [--top-k 40] [--seed 1234]\n"
     "                      [--bpe DIR] [--set key.path=value ...]\n"
     "\n"
     "One rank: text from the GPT-2 of CONFIG, resumed from checkpoint.dir (or model.init_from; untrained weights\n"
     "with a warning). The prompt is encoded with the model's tokenizer (byte-level for vocab 257, GPT-2 BPE for\n"
     "50257: --bpe DIR, default .data/gpt2-bpe); generation stops after N tokens or at end-of-text.\n"
     "  --temperature T        0: greedy; otherwise softmax(logits / T) over the top K (0: all) logits\n"},
    {"bench-attention",
     "usage: mptrain bench-attention [--dtype bf16|fp16|fp32] [--batch 16] [--seq 1024] [--heads 12] [--head-dim 64]\n"
     "                              [--iters 20] [--out FILE.json]\n"
     "\n"
     "The attention kernels alone on CUDA device 0: forward and backward times and TFLOP/s (causal FLOPs).\n"
     "  -h, --help             this help\n"},
};

bool wants_help(int argc, char** argv) {
  for (int i = 2; i < argc; ++i)
    if (!std::strcmp(argv[i], "-h") || !std::strcmp(argv[i], "--help")) return true;
  return false;
}

// An exception that escapes everything (a thread, a destructor) must still end the whole job: print it and
// take the fatal path, which aborts the communicator so that no other rank waits forever.
void on_terminate() {
  std::string what = "unknown exception";
  if (std::exception_ptr e = std::current_exception()) {
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      what = ex.what();
    } catch (...) {
    }
  }
  mpt::fatal_call(__FILE__, __LINE__, "mptrain", "uncaught exception: " + what);
}

}  // namespace

int main(int argc, char** argv) {
  std::set_terminate(on_terminate);
  if (argc < 2 || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "help")) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  if (!std::strcmp(argv[1], "--version") || !std::strcmp(argv[1], "version")) {
    std::fputs(mpt::version_text().c_str(), stdout);
    return 0;
  }
  const std::string cmd = argv[1];
  if (cmd == "train") {
    if (wants_help(argc, argv)) {
      std::fputs(kTrainUsage, stdout);
      std::fputs(mpt::config_help().c_str(), stdout);
      return 0;
    }
    return mpt::train_command(argc - 1, argv + 1);
  }
  // tokenize and synth-tokens answer --help themselves.
  for (const CommandHelp& h : kCommandHelp)
    if (cmd == h.name && wants_help(argc, argv)) {
      std::fputs(h.usage, stdout);
      if (cmd != "bench-attention") std::fputs(kSetHelp, stdout);
      return 0;
    }
  if (cmd == "export") return mpt::export_command(argc - 1, argv + 1);
  if (cmd == "analyze") return mpt::analyze_command(argc - 1, argv + 1);
  if (cmd == "dump") return mpt::dump_command(argc - 1, argv + 1);
  if (cmd == "profile") return mpt::profile_command(argc - 1, argv + 1);
  if (cmd == "bench") return mpt::bench_command(argc - 1, argv + 1);
  if (cmd == "sample") return mpt::sample_command(argc - 1, argv + 1);
  if (cmd == "bench-comm") return mpt::bench_comm_command(argc - 1, argv + 1);
  if (cmd == "bench-attention") return mpt::bench_attention_command(argc - 1, argv + 1);
  if (cmd == "tokenize") return mpt::tokenize_command(argc - 1, argv + 1);
  if (cmd == "synth-tokens") return mpt::synth_tokens_command(argc - 1, argv + 1);
  std::fprintf(stderr, "mptrain: unknown command '%s' (see mptrain --help)\n", cmd.c_str());
  return 2;
}
