// Config defaults (default_config_json, the only place they live) and the help table of every key.
#include "src/config/config.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

namespace mpt {

using json = nlohmann::json;

const json& default_config_json() {
  static const json d = {
      {"model",
       {{"type", "mlp"},
        {"input_dim", 784},
        {"hidden", json::array({256, 256})},
        {"num_classes", 10},
        {"activation", "gelu"},
        {"layernorm", false},
        {"init_std", 0.0},
        {"n_layer", 2},
        {"n_head", 2},
        {"n_embd", 64},
        {"seq_len", 64},
        {"vocab", 257},
        {"init_from", ""}}},
      {"data",
       {{"dataset", "fashion-mnist"},
        {"dir", "/usr/share/datasets/fashion-mnist"},
        {"train_limit", 0},
        {"test_limit", 0},
        {"train_shards", json::array()},
        {"val_shards", json::array()},
        {"format", "auto"}}},
      {"precision",
       {{"mode", "auto"},
        {"layers", json::array()},
        {"fallback", "auto"},
        {"max_output_err", 1e-2},
        {"max_grad_err", 5e-2},
        {"max_range_frac", 1e-2},
        {"memory_budget_gib", 0.0},
        {"auto_batches", 1},
        {"auto_timing", "measure"},
        {"reanalyze_every", 0}}},
      {"loss_scale",
       {{"enabled", "auto"},
        {"init", 65536.0},
        {"growth_factor", 2.0},
        {"backoff_factor", 0.5},
        {"growth_interval", 2000},
        {"min", 1.0},
        {"max", 16777216.0},
        {"hysteresis", 1}}},
      {"optimizer",
       {{"lr", 1e-3},
        {"beta1", 0.9},
        {"beta2", 0.999},
        {"eps", 1e-8},
        {"weight_decay", 0.0},
        {"warmup_steps", 0},
        {"schedule", "cosine"},
        {"min_lr", 0.0},
        {"clip_norm", 1.0},
        {"state_dtype", "fp32"},
        {"state_block", 64}}},
      {"zero", {{"stage", 2}, {"bucket_mb", 25.0}, {"overlap", true}, {"symmetric_memory", true}, {"reorder_backward", true}, {"copy_engine_reduce", true}, {"offload", "none"}}},
      {"train",
       {{"batch_size", 64},
        {"grad_accum", 1},
        {"epochs", 1},
        {"steps", 0},
        {"seed", uint64_t{1234}},
        {"eval_each_epoch", true},
        {"eval_every", 0},
        {"eval_batches", 0}}},
      {"log", {{"every", 50}, {"metrics", ""}, {"quiet", false}}},
      {"checkpoint", {{"dir", ""}, {"every_steps", 0}, {"resume", true}, {"keep_last", 0},
                      {"fallback_to_previous", false}}},
      {"debug", {{"inject_inf_step", -1}, {"inject_inf_rank", 0}, {"check_consistency", false}, {"skip_bucket_comm", false}}},
      {"watchdog", {{"timeout_s", 60}}},
      {"monitor",
       {{"enabled", true},
        {"window", 100},
        {"min_history", 20},
        {"spike_zscore", 6.0},
        {"on_loss_spike", "log"},
        {"on_grad_spike", "log"},
        {"on_nan_loss", "skip"},
        {"max_overflow_rate", 0.5},
        {"on_overflow_rate", "fallback"},
        {"min_scale_patience", 50},
        {"on_min_scale", "fallback"},
        {"recover_after", 0},
        {"max_recoveries", 2}}},
      {"device", "auto"},
      {"cpu", {{"gemm", "own"}, {"threads", 0}}},
  };
  return d;
}

namespace {

// Help text, in struct order. A test checks that this table and default_config_json() name the same keys.
struct KeyDoc {
  const char* path;
  const char* text;
};
const KeyDoc kKeyDocs[] = {
    {"model.type", "model family: mlp | gpt2"},
    {"model.input_dim", "MLP input features (784 for 28x28 images)"},
    {"model.hidden", "MLP hidden layer widths, each >= 1; [] gives a linear classifier"},
    {"model.num_classes", "output classes (>= 2)"},
    {"model.activation", "hidden activation: gelu | relu"},
    {"model.layernorm", "LayerNorm after each hidden Linear, before the activation"},
    {"model.init_std", "std of the Linear weight init; 0: PyTorch's default, uniform +-1/sqrt(fan_in)"},
    {"model.n_layer", "gpt2: transformer blocks (>= 1)"},
    {"model.n_head", "gpt2: attention heads; n_embd / n_head must be 16, 32, 64 or 128"},
    {"model.n_embd", "gpt2: model width C"},
    {"model.seq_len", "gpt2: context length T (position embeddings)"},
    {"model.vocab", "gpt2: vocabulary size (padded to a multiple of 128 internally)"},
    {"model.init_from", "gpt2: safetensors file with Hugging Face GPT-2 names to start from; \"\": random init"},
    {"data.dataset", "dataset: fashion-mnist | tokens (token shards, for gpt2)"},
    {"data.dir", "directory of {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz"},
    {"data.train_limit", "use the first N training examples; 0: all"},
    {"data.test_limit", "use the first N test examples; 0: all"},
    {"data.train_shards", "tokens: training shard files or glob patterns"},
    {"data.val_shards", "tokens: validation shard files or glob patterns"},
    {"data.format", "tokens: shard format: auto (by magic: MPTTOKEN or llm.c's 20240520) | mptrain | llmc | nanogpt (raw uint16)"},
    {"precision.mode", "compute precision: fp32 | tf32 | fp16 | bf16 | auto"},
    {"precision.layers", "per-layer dtype: [{\"pattern\": glob (* ?), \"dtype\": fp32|fp16|bf16}], last match wins"},
    {"precision.fallback", "precision after a stability fallback: auto (bf16 if supported, else fp32) | bf16 | fp32 | none"},
    {"precision.max_output_err", "analysis threshold: a layer's output relative error in a half dtype past which it is not used"},
    {"precision.max_grad_err", "analysis threshold: a layer's weight-gradient relative error past which the half dtype is not used"},
    {"precision.max_range_frac", "analysis threshold: fp16 gradient fraction under/overflowing at the loss scale past which fp16 is not used"},
    {"precision.memory_budget_gib", "layers \"auto\": per-rank memory estimate the policy must fit (GiB; 0: no budget)"},
    {"precision.auto_batches", "layers \"auto\": micro-batches the sensitivity analysis runs on (>= 1)"},
    {"precision.auto_timing", "layers \"auto\": measure (time the model's GEMM shapes on this device) | flops (fixed model, deterministic)"},
    {"precision.reanalyze_every", "layers \"auto\": decide again every N steps and switch on all ranks if it changes (0: off; ignored without \"auto\")"},
    {"loss_scale.enabled", "dynamic loss scaling: auto (on for fp16 only) | on | off"},
    {"loss_scale.init", "initial scale S, min <= init <= max"},
    {"loss_scale.growth_factor", "S *= growth_factor after growth_interval clean steps (> 1)"},
    {"loss_scale.backoff_factor", "S *= backoff_factor on overflow (0 < f < 1)"},
    {"loss_scale.growth_interval", "clean steps before S grows (>= 1)"},
    {"loss_scale.min", "lower bound for S (> 0)"},
    {"loss_scale.max", "upper bound for S (>= min)"},
    {"loss_scale.hysteresis", "overflowing steps tolerated before S backs off (>= 1)"},
    {"optimizer.lr", "peak AdamW learning rate (> 0)"},
    {"optimizer.beta1", "AdamW first-moment decay, [0, 1)"},
    {"optimizer.beta2", "AdamW second-moment decay, [0, 1)"},
    {"optimizer.eps", "AdamW denominator epsilon (> 0)"},
    {"optimizer.weight_decay", "decoupled weight decay on weight matrices only (>= 0)"},
    {"optimizer.warmup_steps", "linear learning-rate warm-up steps (>= 0)"},
    {"optimizer.schedule", "after warm-up: cosine (down to min_lr) | constant"},
    {"optimizer.min_lr", "cosine floor, 0 <= min_lr <= lr"},
    {"optimizer.clip_norm", "clip the global gradient norm to this; 0: no clipping"},
    {"optimizer.state_dtype", "AdamW m and v storage: fp32 | bf16 | int8 (blockwise, per-block FP32 scales)"},
    {"optimizer.state_block", "int8 states: elements per quantisation block, a power of two in [64, 2048]"},
    {"zero.stage", "ZeRO stage: 0 | 1 (shard optimizer state) | 2 (and gradients)"},
    {"zero.bucket_mb", "gradient communication bucket size in MiB (> 0)"},
    {"zero.offload", "none | cpu: keep the FP32 master weights and the AdamW moments in host memory and run the update on host threads (cpu.threads); saves 12 bytes per parameter (fp32 states) on the GPU, divided by the ranks in ZeRO-1/2"},
    {"zero.symmetric_memory", "GPUs, 2+ ranks: keep the parameters and gradients in NCCL symmetric windows and create the communicator with NCCL's zero-CTA policy, so that the parameter all-gather runs on the copy engines (no SMs taken from the forward it overlaps) and the gradient reduce-scatter on NCCL's symmetric kernels (NCCL 2.28+, within a node; elsewhere NCCL's usual kernels run). Same values either way"},
    {"zero.copy_engine_reduce", "with zero.symmetric_memory (GPUs, 2+ ranks, NCCL 2.28+): a gradient reduce-scatter runs as an all-to-all on the copy engines into a window staging buffer plus one local kernel that sums the blocks in rank order in FP32 and rounds once, so no NCCL kernel holds SMs during backward; the values are those of the MPI reduce-scatter (false: NCCL's reduce-scatter kernels; launch/bench.sh --modes bf16:1:ncclrs)"},
    {"zero.reorder_backward", "2+ ranks with overlap: GPT-2's backward computes the weight gradients of blocks 1 and 0 after the embedding backward, so that the tied embedding's bucket (the largest) is reduced beside them instead of after all compute. Same values either way (launch/bench.sh --modes bf16:1:noreorder: the plain order)"},
    {"zero.overlap", "GPUs: overlap the gradient reduction with backward and the parameter all-gather with the next forward (false: wait for each collective at once, the no-overlap baseline)"},
    {"train.batch_size", "examples per rank per micro-batch (>= 1)"},
    {"train.grad_accum", "micro-batches per optimizer step (>= 1)"},
    {"train.epochs", "passes over the training set (>= 1)"},
    {"train.steps", "> 0: stop after this many steps (overrides epochs); 0: use epochs"},
    {"train.seed", "seed for init and data order (unsigned 64-bit)"},
    {"train.eval_each_epoch", "evaluate on the test set after each epoch"},
    {"train.eval_every", "> 0: also evaluate (validation loss) every N steps"},
    {"train.eval_batches", "> 0: at most N micro-batches per evaluation; 0: the whole set"},
    {"log.every", "progress line every N steps, rank 0 (>= 1)"},
    {"log.metrics", "JSONL metrics file (README: Metrics file); an earlier run's file there is moved aside, a resumed run appends; \"\": none"},
    {"log.quiet", "no banner, progress or evaluation lines; the summary stays"},
    {"checkpoint.dir", "checkpoint directory; \"\": no checkpoints"},
    {"checkpoint.every_steps", "also save every N steps; 0: at the end of each epoch only"},
    {"checkpoint.resume", "resume from <dir>/latest when present"},
    {"checkpoint.keep_last", "keep only the newest K checkpoint files (0: keep all)"},
    {"checkpoint.fallback_to_previous", "a damaged latest checkpoint: resume from the newest intact one instead of stopping"},
    {"debug.inject_inf_step", "put an inf into one rank's gradient at this step; -1: never"},
    {"debug.inject_inf_rank", "the rank that gets the injected inf (>= 0)"},
    {"debug.check_consistency", "compare S and a parameter checksum across ranks every step"},
    {"debug.skip_bucket_comm", "timing only, results are wrong: the gradient buckets are not reduced and the updated parameters not gathered (launch/bench.sh --modes bf16:1:nocomm: what communication costs a step, overlap and contention included)"},
    {"monitor.enabled", "stability monitor over loss, gradient norm and overflow rate"},
    {"monitor.window", "rolling window in steps (>= 2)"},
    {"monitor.min_history", "clean steps before spike z-scores count (>= 2)"},
    {"monitor.spike_zscore", "z-score above the window mean that is a spike (> 0)"},
    {"monitor.on_loss_spike", "log | skip | fallback | stop"},
    {"monitor.on_grad_spike", "log | skip | fallback | stop"},
    {"monitor.on_nan_loss", "log | skip | fallback | stop"},
    {"monitor.max_overflow_rate", "overflowing fraction of the window that triggers on_overflow_rate, (0, 1]"},
    {"monitor.on_overflow_rate", "log | skip | fallback | stop"},
    {"monitor.min_scale_patience", "fp16: overflowing steps in a row at loss_scale.min that trigger on_min_scale (>= 1)"},
    {"monitor.recover_after", "after a precision fallback: clean steps in a row before the faster precision is tried again (0: never)"},
    {"monitor.max_recoveries", "how many times a run tries the faster precision again (>= 0)"},
    {"monitor.on_min_scale", "log | skip | fallback | stop"},
    {"watchdog.timeout_s", "end the job when a rank waits this long for the others in one collective or one training step; 0: off"},
    {"device", "auto | cuda | cpu"},
    {"cpu.gemm", "CPU ranks' GEMM: own (deterministic, the reference) | blas (OpenBLAS, faster; builds with it)"},
    {"cpu.threads", "host threads per rank for the BLAS GEMM of CPU ranks and the update of zero.offload = cpu; 0: the node's cores / ranks on the node (at least 1)"},
};

}  // namespace

std::string config_help() {
  const json& d = default_config_json();
  size_t wpath = 0, wdef = 0;
  std::vector<std::pair<std::string, std::string>> rows;
  for (const KeyDoc& k : kKeyDocs) {
    std::string pointer = "/" + std::string(k.path);
    std::replace(pointer.begin(), pointer.end(), '.', '/');
    const std::string def = d.at(json::json_pointer(pointer)).dump();
    rows.emplace_back(k.path, def);
    wpath = std::max(wpath, std::strlen(k.path));
    wdef = std::max(wdef, def.size());
  }
  std::string out;
  for (size_t i = 0; i < rows.size(); ++i) {
    out += "  " + rows[i].first + std::string(wpath - rows[i].first.size() + 2, ' ') + rows[i].second +
           std::string(wdef - rows[i].second.size() + 2, ' ') + kKeyDocs[i].text + "\n";
  }
  return out;
}

}  // namespace mpt
