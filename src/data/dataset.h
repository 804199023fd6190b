// The Dataset interface: what the trainer needs from training data, whatever its kind. Two kinds exist:
// images (Fashion-MNIST IDX files, src/data/data.h) and token shards (own, llm.c and nanoGPT formats,
// src/data/tokens.h) cut into windows of seq_len + 1 tokens. The trainer draws example indices from the
// DistributedSampler and asks the dataset for the batch; how a kind is named in reports comes from words().
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "src/config/config.h"
#include "src/core/batch.h"

namespace mpt {

// How reports name a dataset's things.
struct DatasetWords {
  const char* unit;                  // what throughput counts: "tokens" | "samples"
  const char* examples;              // "training windows" | "training examples"
  const char* eval_split;            // "validation" | "test"
  const char* eval_key;              // metrics key prefix of evaluation records: "val_" | "test_"
  const char* accuracy;              // "next-token" | "test"
  bool perplexity;                   // evaluation lines report exp(loss)
};

class Dataset {
 public:
  virtual ~Dataset() = default;
  // Examples (windows) of the training and evaluation splits, after data.train_limit / data.test_limit.
  virtual int64_t train_count() const = 0;
  virtual int64_t eval_count() const = 0;
  // Examples idx[0, n) of the training (train) or evaluation split. The batch points into buffers the
  // dataset owns: valid until the next call.
  virtual Batch batch(bool train, const int64_t* idx, int n) = 0;
  // The largest micro-batch the model is built for, given train.batch_size; reserve() sizes the batch
  // buffers for it once, so that every batch lands at the same place.
  virtual int max_batch(int batch_size) const = 0;
  virtual void reserve(int max_batch) = 0;
  // The banner's data line.
  virtual std::string describe(int64_t steps_per_epoch, int batch_size, int grad_accum, int world) const = 0;
  virtual const DatasetWords& words() const = 0;
  // The config key a rank's differing data is blamed on.
  virtual const char* source_key() const = 0;
};

// data.dataset: "fashion-mnist" or "tokens". Throws InputError (config source, key) for data that cannot be
// read or does not fit the model.
std::unique_ptr<Dataset> load_dataset(const Config& cfg);
// No data at all, for commands that only use the weights (mptrain sample, export): no examples, batch()
// throws. The config's data section is not read, so its files need not exist.
std::unique_ptr<Dataset> no_dataset(const Config& cfg);

}  // namespace mpt
