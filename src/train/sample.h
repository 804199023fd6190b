// Text generation (`mptrain sample`): drawing the next token from a model's logits.
#pragma once

#include <cstdint>
#include <vector>

#include "src/core/rng.h"

namespace mpt {

// The next token from logits over the vocabulary: temperature <= 0 takes the argmax (the lowest index of
// ties); otherwise softmax(logits / temperature) over the top_k largest logits (top_k <= 0 or >= size: all),
// evaluated in double, and one uniform draw from rng. Non-finite logits never win a draw. Throws
// std::invalid_argument for empty logits or when no logit is finite.
int32_t sample_token(const std::vector<float>& logits, double temperature, int top_k, Rng& rng);

}  // namespace mpt
