// One micro-batch on the host: what a Dataset produces and a Model consumes.
#pragma once

#include <cstdint>

namespace mpt {

// Classifier: x [n, input_dim] FP32 and targets [n] labels.
// Language model: inputs [n, T] tokens and targets [n, T] next tokens (-1: no loss at that position).
struct Batch {
  int n = 0;
  const float* x = nullptr;
  const int32_t* inputs = nullptr;
  const int32_t* targets = nullptr;
};

}  // namespace mpt
