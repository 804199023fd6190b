// Internal to src/config: the JSON side of loading a config (strict parsing of the text, merging a file
// and the --set overrides over the defaults while remembering which source set each key, and the short
// renderings that messages use). config.cpp reads and validates the merged document.
#pragma once

#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace mpt::config_detail {

using json = nlohmann::json;

struct Provenance {
  std::vector<std::string> names;     // [0]: the config source (and the defaults); [i]: the i-th --set
  std::map<std::string, int> set_by;  // key path -> index of the source that set it last

  // A value inside an array (model.hidden[2]) belongs to whoever set the array.
  int of(std::string path) const {
    for (;;) {
      auto it = set_by.find(path);
      if (it != set_by.end()) return it->second;
      const size_t cut = path.find_last_of(".[");
      if (cut == std::string::npos) return 0;
      path.resize(cut);
    }
  }
  const std::string& file_of(const std::string& path) const { return names[size_t(of(path))]; }
};

std::string join_path(const std::string& prefix, const std::string& key);
// Short, one-line rendering of a value for "got ..." in messages.
std::string describe(const json& v);
// Whole numbers print without ".0" so that integer ranges read naturally ("in [0, 2]").
std::string num_str(double x);
// "unknown key" with the closest of `known` as suggestions.
std::string unknown_key_message(const std::string& path, const std::vector<std::string>& known);
// Parses a config file's text: duplicate keys, too-deep nesting, bad UTF-8 and out-of-range numbers are
// InputErrors naming `file`.
json parse_json_text(const std::string& text, const std::string& file);
// Overlays src on dst. `shape` is the matching defaults subtree: it, not dst, says what is an object,
// so a leaf that a file wrongly set to an object never becomes a place to merge into.
void merge(json& dst, const json& shape, const json& src, const std::string& prefix, int source, Provenance& prov);
// Applies one `key.path=value` override (source: its index in prov.names).
void apply_override(json& doc, const std::string& ov, int source, Provenance& prov);

}  // namespace mpt::config_detail
