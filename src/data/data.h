// Datasets and the distributed sampler.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mpt {

// An image-classification dataset held as uint8 pixels (what the IDX files store).
struct ImageDataset {
  int64_t count = 0;
  int rows = 0, cols = 0;            // 28 x 28 for Fashion-MNIST
  int num_classes = 10;
  std::vector<uint8_t> pixels;       // count * rows * cols
  std::vector<int32_t> labels;       // count
  int dim() const { return rows * cols; }
};

// Reads an IDX image file and its label file (gzip-compressed or plain). Throws InputError naming the
// file for a missing, unreadable, truncated or wrong-magic file, or for image/label counts that differ.
// limit > 0 keeps the first `limit` examples.
ImageDataset load_idx(const std::string& images_path, const std::string& labels_path, int64_t limit = 0);

// dir/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
ImageDataset load_fashion_mnist(const std::string& dir, bool train, int64_t limit = 0);

// Fashion-MNIST normalisation: x = (pixel / 255 - 0.2860) / 0.3530, FP32, row-major [count, dim].
void make_image_batch(const ImageDataset& d, const int64_t* indices, int count, float* x, int32_t* y);

// Disjoint shards per rank, reshuffled each epoch from (seed, epoch) identically on every rank.
// Epoch e uses permutation P of [0, n); rank r takes P[r], P[r + world], P[r + 2 world], ... and every rank
// gets the same number of samples (the tail that does not divide evenly is dropped), so all ranks run
// the same number of steps. Because ranks interleave, the global batch of world ranks with micro-batch b
// at step s is exactly the batch of one rank with micro-batch world * b at step s.
class DistributedSampler {
 public:
  DistributedSampler(int64_t dataset_size, int rank, int world, uint64_t seed, bool shuffle = true);
  void set_epoch(int epoch);
  int64_t per_rank() const { return per_rank_; }
  // This rank's i-th sample index for the current epoch (0 <= i < per_rank()).
  int64_t index(int64_t i) const { return perm_[size_t(i * world_ + rank_)]; }
  // The rank's sample indices for the current epoch, in order.
  std::vector<int64_t> indices() const;

 private:
  int64_t n_, per_rank_;
  int rank_, world_;
  uint64_t seed_;
  bool shuffle_;
  std::vector<int64_t> perm_;
};

}  // namespace mpt
