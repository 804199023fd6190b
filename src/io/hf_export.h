// What `mptrain export` writes beside the safetensors so that Hugging Face's
// GPT2LMHeadModel.from_pretrained(DIR) loads the directory unchanged: config.json.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "src/config/config.h"
#include "src/core/dtype.h"

namespace mpt {

// The GPT-2 config.json of model `m` with tensors stored in `dtype`: architecture and sizes, the
// tanh-form GELU (gelu_new), the LayerNorm epsilon, no dropout (the trainer has none), the LM head tied
// to wte, and `eos_token` as the begin/end-of-text token (null when outside the vocabulary).
nlohmann::json hf_gpt2_config(const ModelConfig& m, DType dtype, int eos_token);

// `--out` as the user gave it -> the safetensors path: a directory (existing, or written with a trailing
// '/') gets model.safetensors inside it, the name from_pretrained looks for.
std::string export_weights_path(const std::string& out);

// Writes `j` to `path` atomically (temporary file, rename); InputError naming the path on failure.
void write_json_file(const std::string& path, const nlohmann::json& j);

}  // namespace mpt
