// `mptrain sample CONFIG`: text from the latest checkpoint (or model.init_from), on the config's device.
// The prompt runs through one batched forward that fills a KV cache (src/model/gpt2_decode.h); each new token
// then runs through the model for its own position only. When the text outgrows the context (seq_len),
// the window slides: the last ceil(seq_len / 2) tokens are prefilled again. Only logits of one position
// leave the device per token.
#include "src/train/sample.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>

#include "src/data/bpe.h"
#include "src/core/check.h"
#include "src/train/commands.h"
#include "src/model/gpt2.h"
#include "src/data/tokens.h"
#include "src/train/train.h"
#include "src/model/gpt2_decode.h"

namespace mpt {

int32_t sample_token(const std::vector<float>& logits, double temperature, int top_k, Rng& rng) {
  if (logits.empty()) throw std::invalid_argument("sample_token: no logits");
  std::vector<int32_t> idx;
  for (size_t i = 0; i < logits.size(); ++i)
    if (std::isfinite(logits[i])) idx.push_back(int32_t(i));
  if (idx.empty()) throw std::invalid_argument("sample_token: no finite logit");
  // Largest first; ties by index, so the result does not depend on the sort's stability.
  auto larger = [&](int32_t a, int32_t b) { return logits[size_t(a)] > logits[size_t(b)] || (logits[size_t(a)] == logits[size_t(b)] && a < b); };
  if (temperature <= 0) return *std::min_element(idx.begin(), idx.end(), larger);
  const size_t k = (top_k <= 0 || size_t(top_k) >= idx.size()) ? idx.size() : size_t(top_k);
  std::partial_sort(idx.begin(), idx.begin() + std::ptrdiff_t(k), idx.end(), larger);
  idx.resize(k);
  const double top = double(logits[size_t(idx[0])]);
  std::vector<double> w(k);
  double sum = 0;
  for (size_t i = 0; i < k; ++i) sum += w[i] = std::exp((double(logits[size_t(idx[i])]) - top) / temperature);
  // 53 random bits: the draw resolves probabilities far below float's.
  const double u = double(rng.next() >> 11) * (1.0 / 9007199254740992.0) * sum;
  double acc = 0;
  for (size_t i = 0; i < k; ++i) {
    acc += w[i];
    if (u < acc) return idx[i];
  }
  return idx[k - 1];
}

int sample_command(int argc, char** argv) {
  CommandArgs a;
  if (!parse_command_args(argc, argv, {"prompt", "tokens", "temperature", "top-k", "seed", "bpe"}, {}, &a))
    return kExitBadInput;
  int n_new = 0, top_k = 0, seed = 0;
  double temperature = 0;
  // --temperature 0 (greedy) is allowed; anything else must be a positive number.
  const auto t_opt = a.opts.find("temperature");
  const bool greedy = t_opt != a.opts.end() && std::strtod(t_opt->second.c_str(), nullptr) == 0.0 &&
                      t_opt->second.find_first_not_of("0.+-") == std::string::npos && !t_opt->second.empty();
  if (!int_option(a, "tokens", 200, 1, &n_new) || !int_option(a, "top-k", 40, 0, &top_k) ||
      !int_option(a, "seed", 1234, 0, &seed) || (!greedy && !double_option(a, "temperature", 0.8, &temperature)))
    return kExitBadInput;
  const std::string prompt = a.opts.count("prompt") ? a.opts.at("prompt") : std::string();
  return run_config_command(a, [&](Config& cfg, const WorldInfo& world) {
    if (world.size != 1) throw InputError(a.config, "", "mptrain sample runs on one rank");
    cfg.log.quiet = true;
    cfg.log.metrics = "";
    // The tokenizer follows the vocabulary: byte-level (257) or GPT-2 BPE (50257, from --bpe DIR or the
    // folder launch/setup.sh fills).
    std::unique_ptr<BpeTokenizer> bpe;
    if (cfg.model.vocab != kByteVocab) {
      std::string dir = a.opts.count("bpe") ? a.opts.at("bpe") : std::string();
      if (dir.empty()) {
        const char* src = std::getenv("MPT_SOURCE_DIR");
        for (const std::string& d : {std::string(".data/gpt2-bpe"), std::string(src ? src : "") + "/.data/gpt2-bpe"})
          if (std::filesystem::exists(d + "/encoder.json")) { dir = d; break; }
      }
      if (dir.empty())
        throw InputError(a.config, "model.vocab", "is " + std::to_string(cfg.model.vocab) +
                                                     ", not the byte-level 257: give the GPT-2 BPE files with --bpe DIR");
      bpe = std::make_unique<BpeTokenizer>(BpeTokenizer::load(dir));
      if (bpe->vocab_size() != cfg.model.vocab)
        throw InputError(dir + "/encoder.json", "", "has " + std::to_string(bpe->vocab_size()) +
                                                        " tokens; model.vocab is " + std::to_string(cfg.model.vocab));
    }
    Trainer t(cfg, world, MPI_COMM_WORLD, Trainer::Data::WeightsOnly);
    auto* gpt2 = dynamic_cast<Gpt2*>(&t.model());
    if (!gpt2) throw InputError(cfg.source, "model.type", "mptrain sample needs a gpt2 model");
    Gpt2& model = *gpt2;
    const int64_t step = t.optimizer().adam_step();
    if (step == 0)
      std::fprintf(stderr, "sample: warning: %s; sampling from the initial, untrained weights\n",
                   cfg.checkpoint.dir.empty() ? "checkpoint.dir is not set" : ("no checkpoint in " + cfg.checkpoint.dir).c_str());
    const int32_t eot = bpe ? bpe->end_of_text() : kEndOfText;
    std::vector<int32_t> tokens;
    if (bpe) tokens = bpe->encode(prompt);
    else for (unsigned char c : prompt) tokens.push_back(int32_t(c));
    if (tokens.empty()) tokens.push_back(eot);  // no prompt: start a new document
    std::fputs(prompt.c_str(), stdout);
    Rng rng(uint64_t(seed) * 0x9E3779B97F4A7C15ull + 1);
    // The cache holds what this run can use: the prompt and the new tokens, at most the context.
    const auto t0 = std::chrono::steady_clock::now();
    Gpt2Decoder dec(model, int(std::min<int64_t>(model.seq_len(), int64_t(tokens.size()) + n_new)));
    std::vector<float> logits = dec.begin(tokens);
    const int prefilled = dec.length();
    const auto t1 = std::chrono::steady_clock::now();
    int generated = 0;
    for (; generated < n_new; ++generated) {
      if (generated > 0) logits = dec.extend(tokens);
      const int32_t next = sample_token(logits, temperature, top_k, rng);
      if (next == eot) break;
      tokens.push_back(next);
      // Raw bytes as they come: a UTF-8 character split across tokens is whole once both are out.
      const std::string bytes = bpe ? bpe->token_bytes(next) : std::string(1, char(next));
      std::fwrite(bytes.data(), 1, bytes.size(), stdout);
      std::fflush(stdout);
    }
    std::printf("\n");
    std::fflush(stdout);
    const auto t2 = std::chrono::steady_clock::now();
    const double s_prefill = std::chrono::duration<double>(t1 - t0).count(), s_gen = std::chrono::duration<double>(t2 - t1).count();
    std::fprintf(stderr, "sample: %d token(s) at temperature %g, top-k %d, seed %d, from step %lld\n", generated,
                 temperature, top_k, seed, static_cast<long long>(step));
    // Generation speed: the tokens drawn (all but the first after one decode step each) over the time after
    // the prefill.
    std::fprintf(stderr, "sample: prefill of %d token(s) %.3f s; %d token(s) in %.3f s after it (%.1f tokens/s)\n",
                 prefilled, s_prefill, generated, s_gen, s_gen > 0 ? generated / s_gen : 0.0);
  });
}

}  // namespace mpt
