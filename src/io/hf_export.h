// Hugging Face GPT-2 interop: the weights as safetensors with Hugging Face's names and shapes (export and
// import, `mptrain export`, model.init_from), and what `mptrain export` writes beside them so that
// GPT2LMHeadModel.from_pretrained(DIR) loads the directory unchanged: config.json.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "src/config/config.h"
#include "src/core/dtype.h"
#include "src/core/param.h"
#include "src/io/safetensors.h"

namespace mpt {

// Hugging Face GPT-2 safetensors interop. Export writes tensors with the HF names and shapes (wte unpadded
// [vocab, C]) in `store` (F32, or F16 / BF16 rounded to nearest even from the FP32 values); import accepts
// names with or without the "transformer." prefix and any float dtype, ignores the tensors the model has no
// use for (lm_head.weight, tied to wte; attention mask buffers), and throws InputError naming the file and
// tensor for a missing tensor or a shape mismatch. Values are in spec order of `specs`, as gather_master()
// returns.
StFile gpt2_export(const std::vector<ParamSpec>& specs, const std::vector<float>& values, const ModelConfig& m,
                   DType store = DType::F32);
struct Gpt2ImportReport {
  int loaded = 0;                    // tensors taken
  std::vector<std::string> ignored;  // tensors in the file that the model does not use, sorted
};
std::vector<float> gpt2_import(const std::string& path, const std::vector<ParamSpec>& specs, const ModelConfig& m,
                               Gpt2ImportReport* report = nullptr);

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
