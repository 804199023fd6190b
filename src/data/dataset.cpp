#include "src/data/dataset.h"

#include <algorithm>
#include <cstdio>
#include <stdexcept>
#include <vector>

#include "src/core/check.h"
#include "src/data/data.h"
#include "src/data/tokens.h"

namespace mpt {

namespace {

class ImageData : public Dataset {
 public:
  explicit ImageData(const Config& cfg) {
    const ModelConfig& m = cfg.model;
    if (m.type != "mlp")
      throw InputError(cfg.source, "data.dataset", "fashion-mnist is an image dataset; model.type gpt2 needs 'tokens'");
    train_ = load_fashion_mnist(cfg.data.dir, true, cfg.data.train_limit);
    test_ = load_fashion_mnist(cfg.data.dir, false, cfg.data.test_limit);
    if (train_.dim() != m.input_dim)
      throw InputError(cfg.source, "model.input_dim",
                       std::to_string(m.input_dim) + " does not match the data (" + std::to_string(train_.dim()) + ")");
    if (m.num_classes < train_.num_classes)
      throw InputError(cfg.source, "model.num_classes", "smaller than the dataset's " + std::to_string(train_.num_classes));
  }
  int64_t train_count() const override { return train_.count; }
  int64_t eval_count() const override { return test_.count; }
  Batch batch(bool train, const int64_t* idx, int n) override {
    const size_t need = size_t(std::max(n, 0));
    if (y_.size() < need) {
      x_.resize(need * size_t(train_.dim()));
      y_.resize(need);
    }
    make_image_batch(train ? train_ : test_, idx, n, x_.data(), y_.data());
    Batch b;
    b.n = n;
    b.x = x_.data();
    b.targets = y_.data();
    return b;
  }
  // The classifier evaluates in large batches.
  int max_batch(int batch_size) const override { return std::max(batch_size, 1024); }
  void reserve(int max_batch) override {
    x_.resize(size_t(max_batch) * size_t(train_.dim()));
    y_.resize(size_t(max_batch));
  }
  std::string describe(int64_t steps_per_epoch, int batch_size, int grad_accum, int world) const override {
    char buf[256];
    std::snprintf(buf, sizeof buf, "data: %lld train / %lld test examples; %lld steps per epoch of %d x %d x %d samples",
                  static_cast<long long>(train_count()), static_cast<long long>(eval_count()),
                  static_cast<long long>(steps_per_epoch), batch_size, grad_accum, world);
    return buf;
  }
  const DatasetWords& words() const override {
    static const DatasetWords w{"samples", "training examples", "test", "test_", "test", false};
    return w;
  }
  const char* source_key() const override { return "data.dir"; }

 private:
  ImageDataset train_, test_;
  std::vector<float> x_;
  std::vector<int32_t> y_;
};

class TokenData : public Dataset {
 public:
  explicit TokenData(const Config& cfg) : T_(cfg.model.seq_len) {
    const ModelConfig& m = cfg.model;
    if (m.type != "gpt2") throw InputError(cfg.source, "data.dataset", "token shards need model.type gpt2");
    const ShardFormat format = parse_shard_format(cfg.data.format);
    train_ = load_token_stream(expand_shard_paths(cfg.data.train_shards, "data.train_shards"), format, uint64_t(m.vocab));
    if (!cfg.data.val_shards.empty())
      val_ = load_token_stream(expand_shard_paths(cfg.data.val_shards, "data.val_shards"), format, uint64_t(m.vocab));
    const uint64_t vocab = std::max(train_.vocab, val_.vocab);
    if (vocab > uint64_t(m.vocab))
      throw InputError(cfg.source, "model.vocab",
                       std::to_string(m.vocab) + " is smaller than the shards' vocabulary (" + std::to_string(vocab) + ")");
    win_train_ = std::make_unique<TokenWindows>(&train_, m.seq_len);
    win_val_ = std::make_unique<TokenWindows>(&val_, m.seq_len);
    train_count_ = win_train_->count();
    eval_count_ = win_val_->count();
    if (cfg.data.train_limit > 0) train_count_ = std::min(train_count_, cfg.data.train_limit);
    if (cfg.data.test_limit > 0) eval_count_ = std::min(eval_count_, cfg.data.test_limit);
  }
  int64_t train_count() const override { return train_count_; }
  int64_t eval_count() const override { return eval_count_; }
  Batch batch(bool train, const int64_t* idx, int n) override {
    const TokenWindows& w = train ? *win_train_ : *win_val_;
    const size_t T = size_t(T_), need = size_t(std::max(n, 0)) * T;
    if (in_.size() < need) {
      in_.resize(need);
      y_.resize(need);
    }
    for (int j = 0; j < n; ++j) w.get(idx[j], in_.data() + size_t(j) * T, y_.data() + size_t(j) * T);
    Batch b;
    b.n = n;
    b.inputs = in_.data();
    b.targets = y_.data();
    return b;
  }
  // The language model's activations scale with the batch.
  int max_batch(int batch_size) const override { return batch_size; }
  void reserve(int max_batch) override {
    in_.resize(size_t(max_batch) * size_t(T_));
    y_.resize(size_t(max_batch) * size_t(T_));
  }
  std::string describe(int64_t steps_per_epoch, int batch_size, int grad_accum, int world) const override {
    char buf[320];
    std::snprintf(buf, sizeof buf,
                  "data: %lld train / %lld validation tokens (vocab %llu), %lld / %lld windows of %d; %lld steps per "
                  "epoch of %d x %d x %d sequences",
                  static_cast<long long>(train_.tokens.size()), static_cast<long long>(val_.tokens.size()),
                  static_cast<unsigned long long>(std::max(train_.vocab, val_.vocab)),
                  static_cast<long long>(train_count_), static_cast<long long>(eval_count_), T_,
                  static_cast<long long>(steps_per_epoch), batch_size, grad_accum, world);
    return buf;
  }
  const DatasetWords& words() const override {
    static const DatasetWords w{"tokens", "training windows", "validation", "val_", "next-token", true};
    return w;
  }
  const char* source_key() const override { return "data.train_shards"; }

 private:
  int T_;
  TokenStream train_, val_;
  std::unique_ptr<TokenWindows> win_train_, win_val_;
  int64_t train_count_ = 0, eval_count_ = 0;
  std::vector<int32_t> in_, y_;
};

}  // namespace

namespace {
class NoData final : public Dataset {
 public:
  explicit NoData(const Config& cfg) : lm_(cfg.model.type == "gpt2") {}
  int64_t train_count() const override { return 0; }
  int64_t eval_count() const override { return 0; }
  Batch batch(bool, const int64_t*, int) override {
    throw std::logic_error("this run was started without data (mptrain sample/export): it cannot train");
  }
  int max_batch(int batch_size) const override { return batch_size; }
  void reserve(int) override {}
  std::string describe(int64_t, int, int, int) const override { return "data: none (weights only)"; }
  const DatasetWords& words() const override {
    static const DatasetWords tokens{"tokens", "training windows", "validation", "val_", "next-token", true};
    static const DatasetWords images{"samples", "training examples", "test", "test_", "test", false};
    return lm_ ? tokens : images;
  }
  const char* source_key() const override { return "data"; }

 private:
  bool lm_;
};
}  // namespace

std::unique_ptr<Dataset> no_dataset(const Config& cfg) { return std::make_unique<NoData>(cfg); }

std::unique_ptr<Dataset> load_dataset(const Config& cfg) {
  if (cfg.data.dataset == "tokens") return std::make_unique<TokenData>(cfg);
  return std::make_unique<ImageData>(cfg);
}

}  // namespace mpt
