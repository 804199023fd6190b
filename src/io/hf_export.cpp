#include "src/io/hf_export.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <stdexcept>

#include <unistd.h>

#include "src/core/check.h"

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

// ---- Hugging Face interop

namespace {
bool is_wte(const ParamSpec& s) { return s.layer == "wte"; }
}  // namespace

StFile gpt2_export(const std::vector<ParamSpec>& specs, const std::vector<float>& values, const ModelConfig& m,
                   DType store) {
  StFile f;
  f.metadata["format"] = "pt";
  f.metadata["producer"] = "mptrain";
  f.metadata["n_layer"] = std::to_string(m.n_layer);
  f.metadata["n_head"] = std::to_string(m.n_head);
  f.metadata["n_embd"] = std::to_string(m.n_embd);
  f.metadata["n_positions"] = std::to_string(m.seq_len);
  f.metadata["vocab_size"] = std::to_string(m.vocab);
  size_t pos = 0;
  for (const ParamSpec& s : specs) {
    const size_t n = size_t(s.numel());
    if (pos + n > values.size()) throw std::invalid_argument("gpt2_export: fewer values than parameters");
    std::vector<int64_t> shape = s.shape;
    size_t keep = n;
    if (is_wte(s)) {  // drop the padded rows
      shape[0] = m.vocab;
      keep = size_t(m.vocab) * size_t(s.shape[1]);
    }
    f.tensors[s.name] = st_from_float(std::vector<float>(values.begin() + long(pos), values.begin() + long(pos + keep)),
                                      shape, store);
    pos += n;
  }
  return f;
}

std::vector<float> gpt2_import(const std::string& path, const std::vector<ParamSpec>& specs, const ModelConfig& m,
                               Gpt2ImportReport* report) {
  const StFile f = read_safetensors(path);
  const std::string prefix = kGpt2HfPrefix;
  std::vector<float> out;
  std::set<std::string> used;
  for (const ParamSpec& s : specs) {
    auto it = f.tensors.find(s.name);
    if (it == f.tensors.end() && s.name.rfind(prefix, 0) == 0) it = f.tensors.find(s.name.substr(prefix.size()));
    if (it == f.tensors.end()) throw InputError(path, s.name, "tensor missing");
    used.insert(it->first);
    std::vector<int64_t> want = s.shape;
    if (is_wte(s)) want[0] = m.vocab;
    if (it->second.shape != want) {
      auto str = [](const std::vector<int64_t>& v) {
        std::string r = "[";
        for (size_t i = 0; i < v.size(); ++i) r += (i ? ", " : "") + std::to_string(v[i]);
        return r + "]";
      };
      throw InputError(path, it->first, "shape " + str(it->second.shape) + ", the model needs " + str(want));
    }
    std::vector<float> v = it->second.to_float();
    out.insert(out.end(), v.begin(), v.end());
    if (is_wte(s)) out.insert(out.end(), size_t(s.numel()) - v.size(), 0.f);  // padded rows
  }
  if (report) {
    report->loaded = int(used.size());
    report->ignored.clear();
    for (const auto& [name, t] : f.tensors)
      if (!used.count(name)) report->ignored.push_back(name);
  }
  return out;
}

}  // namespace mpt
