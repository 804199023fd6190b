#include "src/io/hf_export.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <unistd.h>

#include "src/core/check.h"
#include "src/model/gpt2.h"

namespace mpt {

nlohmann::json hf_gpt2_config(const ModelConfig& m, DType dtype, int eos_token) {
  const char* torch_dtype = dtype == DType::BF16 ? "bfloat16" : (dtype == DType::F16 ? "float16" : "float32");
  // The token shards end documents with kEndOfText; a vocabulary too small to hold it has none.
  const nlohmann::json eos = eos_token >= 0 && eos_token < m.vocab ? nlohmann::json(eos_token) : nlohmann::json(nullptr);
  return {
      {"model_type", "gpt2"},
      {"architectures", {"GPT2LMHeadModel"}},
      {"vocab_size", m.vocab},  // the exported wte is unpadded
      {"n_positions", m.seq_len},
      {"n_ctx", m.seq_len},
      {"n_embd", m.n_embd},
      {"n_layer", m.n_layer},
      {"n_head", m.n_head},
      {"n_inner", nullptr},  // 4 * n_embd, as the trainer's MLP
      // kernels/activation.h: GELU in the tanh form, which Hugging Face calls gelu_new.
      {"activation_function", "gelu_new"},
      {"layer_norm_epsilon", double(kGpt2LayerNormEps)},
      {"resid_pdrop", 0.0},
      {"embd_pdrop", 0.0},
      {"attn_pdrop", 0.0},
      {"initializer_range", 0.02},
      {"scale_attn_weights", true},
      {"scale_attn_by_inverse_layer_idx", false},
      {"reorder_and_upcast_attn", false},
      {"tie_word_embeddings", true},
      {"use_cache", true},
      {"bos_token_id", eos},
      {"eos_token_id", eos},
      {"torch_dtype", torch_dtype},
  };
}

std::string export_weights_path(const std::string& out) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!out.empty() && (out.back() == '/' || fs::is_directory(out, ec)))
    return (fs::path(out) / "model.safetensors").string();
  return out;
}

void write_json_file(const std::string& path, const nlohmann::json& j) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    f << j.dump(2) << "\n";
    f.flush();
    if (!f) {
      const int e = errno;
      std::remove(tmp.c_str());
      throw InputError(path, "write", std::string("cannot write: ") + std::strerror(e ? e : EIO));
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    std::remove(tmp.c_str());
    throw InputError(path, "write", std::string("cannot rename into place: ") + std::strerror(e));
  }
}

}  // namespace mpt
