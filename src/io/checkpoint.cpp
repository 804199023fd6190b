#include "src/io/checkpoint.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <unistd.h>
#include <zlib.h>

#include "src/core/check.h"

namespace mpt {

namespace {

constexpr char kMagic[8] = {'M', 'P', 'T', 'C', 'K', 'P', 'T', '1'};

void write_atomically(const std::string& path, const std::string& field,
                      const std::function<void(std::FILE*)>& body) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw InputError(tmp, field, std::string("cannot create: ") + std::strerror(errno));
  body(f);
  const bool ok = std::fflush(f) == 0 && ::fsync(fileno(f)) == 0;
  const bool closed = std::fclose(f) == 0;
  if (!ok || !closed) {
    std::remove(tmp.c_str());
    throw InputError(tmp, field, "write failed (disk full?)");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw InputError(path, field, std::string("cannot rename into place: ") + std::strerror(errno));
  }
}

}  // namespace

std::string save_checkpoint(const std::string& dir, const CheckpointMeta& meta, const OptimizerState& s) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw InputError(dir, "checkpoint.dir", "cannot create directory: " + ec.message());
  nlohmann::json h;
  h["step"] = meta.step;
  h["epoch"] = meta.epoch;
  h["step_in_epoch"] = meta.step_in_epoch;
  h["adam_step"] = meta.adam_step;
  h["scaler"] = {{"scale", meta.scale}, {"growth_tracker", meta.growth_tracker},
                 {"hysteresis_left", meta.hysteresis_left}, {"skipped", meta.skipped}};
  h["params"] = nlohmann::json::array();
  for (const auto& [name, shape] : meta.params) h["params"].push_back({{"name", name}, {"shape", shape}});
  h["config"] = meta.config;
  if (!meta.precision.is_null()) h["precision"] = meta.precision;
  // CRC-32 (zlib) of each FP32 array as written: a flipped byte anywhere in the state is refused on load.
  auto crc = [](const std::vector<float>& v) {
    uLong c = crc32(0L, Z_NULL, 0);
    const auto* p = reinterpret_cast<const Bytef*>(v.data());
    size_t left = v.size() * 4;
    while (left > 0) {
      const uInt n = uInt(std::min<size_t>(left, 1u << 30));
      c = crc32(c, p, n);
      p += n, left -= n;
    }
    return uint32_t(c);
  };
  h["crc32"] = {{"master", crc(s.master)}, {"m", crc(s.m)}, {"v", crc(s.v)}};
  const std::string header = h.dump();
  const std::string name = "ckpt-" + std::to_string(meta.step) + ".bin";
  const std::string path = dir + "/" + name;
  write_atomically(path, "checkpoint", [&](std::FILE* f) {
    const uint64_t len = header.size();
    std::fwrite(kMagic, 1, 8, f);
    std::fwrite(&len, 8, 1, f);
    std::fwrite(header.data(), 1, header.size(), f);
    for (const auto* v : {&s.master, &s.m, &s.v}) std::fwrite(v->data(), 4, v->size(), f);
  });
  write_atomically(dir + "/latest", "latest", [&](std::FILE* f) { std::fprintf(f, "%s\n", name.c_str()); });
  return path;
}

std::vector<std::string> list_checkpoints(const std::string& dir) {
  std::vector<std::pair<int64_t, std::string>> found;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.size() < 10 || name.rfind("ckpt-", 0) != 0 || name.substr(name.size() - 4) != ".bin") continue;
    const std::string num = name.substr(5, name.size() - 9);
    if (num.empty() || num.find_first_not_of("0123456789") != std::string::npos || num.size() > 18) continue;
    found.emplace_back(std::stoll(num), e.path().string());
  }
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  std::vector<std::string> out;
  for (auto& f : found) out.push_back(std::move(f.second));
  return out;
}

void prune_checkpoints(const std::string& dir, int keep) {
  if (keep < 1) return;
  std::string latest;
  try {
    latest = latest_checkpoint(dir);
  } catch (const InputError&) {
  }
  const std::vector<std::string> all = list_checkpoints(dir);
  for (size_t i = size_t(keep); i < all.size(); ++i) {
    std::error_code ec;
    if (!latest.empty() && std::filesystem::equivalent(all[i], latest, ec)) continue;
    std::filesystem::remove(all[i], ec);
  }
}

int remove_stale_temporaries(const std::string& dir) {
  int n = 0;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.find(".tmp.") == std::string::npos) continue;
    if (name.rfind("ckpt-", 0) != 0 && name.rfind("latest", 0) != 0) continue;
    std::error_code rm;
    if (std::filesystem::remove(e.path(), rm)) ++n;
  }
  return n;
}

std::string latest_checkpoint(const std::string& dir) {
  std::ifstream in(dir + "/latest");
  if (!in) return "";
  std::string name;
  std::getline(in, name);
  if (name.empty()) throw InputError(dir + "/latest", "", "empty; expected a checkpoint file name");
  return dir + "/" + name;
}

void load_checkpoint(const std::string& path, const std::vector<ParamSpec>& specs, CheckpointMeta* meta,
                     OptimizerState* s) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path, "", "cannot open checkpoint");
  char magic[8];
  uint64_t len = 0;
  if (!in.read(magic, 8) || std::memcmp(magic, kMagic, 8) != 0) throw InputError(path, "magic", "not an mptrain checkpoint");
  if (!in.read(reinterpret_cast<char*>(&len), 8) || len > (1u << 30)) throw InputError(path, "header", "truncated or corrupt header");
  std::string header(len, '\0');
  if (!in.read(header.data(), std::streamsize(len))) throw InputError(path, "header", "truncated header");
  nlohmann::json h;
  try {
    h = nlohmann::json::parse(header);
    meta->step = h.at("step");
    meta->epoch = h.at("epoch");
    meta->step_in_epoch = h.at("step_in_epoch");
    meta->adam_step = h.at("adam_step");
    meta->scale = h.at("scaler").at("scale");
    meta->growth_tracker = h.at("scaler").at("growth_tracker");
    meta->hysteresis_left = h.at("scaler").at("hysteresis_left");
    meta->skipped = h.at("scaler").at("skipped");
    meta->config = h.value("config", nlohmann::json::object());
    meta->precision = h.value("precision", nlohmann::json());
    meta->params.clear();
    for (const auto& p : h.at("params")) meta->params.emplace_back(p.at("name"), p.at("shape"));
  } catch (const nlohmann::json::exception& e) {
    throw InputError(path, "header", e.what());
  }
  // Every counter is a count and the scale a positive finite float: anything else is a damaged file, and
  // resuming from it would index the sampler out of range or train on a nonsense scale.
  auto nonneg = [&](int64_t v, const char* field) {
    if (v < 0) throw InputError(path, field, "must be >= 0, got " + std::to_string(v));
  };
  nonneg(meta->step, "step");
  nonneg(meta->epoch, "epoch");
  nonneg(meta->step_in_epoch, "step_in_epoch");
  nonneg(meta->adam_step, "adam_step");
  nonneg(meta->growth_tracker, "scaler.growth_tracker");
  nonneg(meta->hysteresis_left, "scaler.hysteresis_left");
  nonneg(meta->skipped, "scaler.skipped");
  if (!(meta->scale > 0) || !std::isfinite(meta->scale))
    throw InputError(path, "scaler.scale", "must be a positive finite number, got " + std::to_string(meta->scale));
  if (meta->params.size() != specs.size())
    throw InputError(path, "params", "has " + std::to_string(meta->params.size()) + " parameters, the model " +
                                         std::to_string(specs.size()));
  size_t total = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    if (meta->params[i].first != specs[i].name || meta->params[i].second != specs[i].shape)
      throw InputError(path, "params[" + std::to_string(i) + "]",
                       "is " + meta->params[i].first + ", the model expects " + specs[i].name + " with another shape");
    total += size_t(specs[i].numel());
  }
  const char* names[] = {"master", "m", "v"};
  int k = 0;
  for (auto* v : {&s->master, &s->m, &s->v}) {
    v->resize(total);
    if (!in.read(reinterpret_cast<char*>(v->data()), std::streamsize(total * 4)))
      throw InputError(path, "data", "truncated: expected " + std::to_string(3 * total * 4) + " bytes of state");
    // Files written before checksums have no crc32 entry; they load as before.
    if (h.contains("crc32")) {
      uLong c = crc32(0L, Z_NULL, 0);
      const auto* p = reinterpret_cast<const Bytef*>(v->data());
      size_t left = total * 4;
      while (left > 0) {
        const uInt n = uInt(std::min<size_t>(left, 1u << 30));
        c = crc32(c, p, n);
        p += n, left -= n;
      }
      uint32_t want = 0;
      try {
        want = h.at("crc32").at(names[k]).get<uint32_t>();
      } catch (const nlohmann::json::exception& e) {
        throw InputError(path, std::string("crc32.") + names[k], e.what());
      }
      if (uint32_t(c) != want)
        throw InputError(path, std::string("data.") + names[k], "checksum mismatch: the file is damaged");
    }
    ++k;
  }
  if (in.peek() != std::char_traits<char>::eof()) throw InputError(path, "data", "trailing bytes after the state");
}

}  // namespace mpt
