// AdamW with low-precision moments (optimizer.state_dtype bf16 | int8): the FP32 master weights and the
// update arithmetic are those of kernels/adamw.h; only the storage of m and v changes. One pass per
// quantisation block: dequantise m and v, update in FP32 (the header's order), write the master and the
// model-dtype parameter, requantise m and v.
//
// Storage:
//   bf16: m and v as bf16, each rounded to nearest even on store. v itself is stored, not sqrt(v): bf16 has
//         FP32's exponent range, so small v survive either way, and the relative change of v per step,
//         (1 - beta2) * (g*g/v - 1), is twice that of sqrt(v), so v keeps moving under rounding to nearest
//         for smaller (1 - beta2) than sqrt(v) would. (With beta2 = 0.999 neither can decay: a change of
//         0.1% is below bf16's half ulp, 0.2% to 0.4%; the shipped GPT-2 configs use beta2 = 0.95.)
//   int8: blockwise dynamic quantisation with square-root companding. Per block of at most kQBlock
//         elements, two FP32 scales: M = max|m| and U = max sqrt(v) of the block's NEW values.
//         m: signed code q in [-127, 127], q = sign(m) * rint(127 * sqrt(|m| / M)), m = sign * M * (|q|/127)^2.
//         v: kept as u = sqrt(v) (the update divides by sqrt(v) anyway, and u spans half of v's range in
//         log terms), unsigned code c in [0, 255], c = rint(255 * sqrt(u / U)), u = U * (c/255)^2; a
//         non-zero u never rounds to code 0 (c >= 1), so a tiny denominator cannot blow an update up.
//         The companding makes the step relative: a value at code k is known to about 1/k of itself, and
//         values down to M/16129 (m) and U/65025 (u) stay non-zero, where linear codes would zero everything
//         below M/254. Rounding is to nearest (even on ties), deterministic, so every rank and stage agrees.
//   fp32 states use kernels/adamw.h.
// Blocks never straddle a shard edge: the optimizer (src/optim/adamw_lowp_blocks.cpp) cuts each parameter, from its first
// element, into runs of `block` elements (the alignment padding after it joins its last run) and cuts runs
// again at the edges of the ZeRO parts. The parts are the same in stages 0, 1 and 2, so every stage
// quantises the same elements together. Parameters and parts start on multiples of 64 elements, so with
// block = 64 no part edge ever cuts a run and the blocks do not depend on the world size either.
#pragma once
#include <cstdint>
#include <string_view>

#include "kernels/adamw.h"

namespace mpt {

enum class StateDType : uint8_t { F32 = 0, BF16 = 1, I8 = 2 };
inline constexpr const char* state_dtype_name(StateDType t) {
  return t == StateDType::F32 ? "fp32" : (t == StateDType::BF16 ? "bf16" : "int8");
}
inline bool parse_state_dtype(std::string_view s, StateDType* out) {
  if (s == "fp32") { *out = StateDType::F32; return true; }
  if (s == "bf16") { *out = StateDType::BF16; return true; }
  if (s == "int8") { *out = StateDType::I8; return true; }
  return false;
}
// Bytes of m plus v per element.
inline constexpr size_t state_bytes_per_elem(StateDType t) {
  return t == StateDType::F32 ? 8 : (t == StateDType::BF16 ? 4 : 2);
}

// Quantisation blocks hold at most kQBlock elements (optimizer.state_block picks the size, 64..kQBlock).
inline constexpr int64_t kQBlock = 2048;
struct StateFormat {
  StateDType dtype = StateDType::F32;
  int64_t block = 64;                // int8: elements per quantisation block, a power of two in [64, kQBlock]
};

// A quantisation block: the store range [store, store + len) of m, v and the master, covered in order by the
// segments segs[seg_begin, seg_begin + nsegs) (kernels/adamw.h; each segment lies inside one block).
// Block k's scales are scales[2k] (M) and scales[2k + 1] (U); bf16 states have no scales (pass null).
struct AdamWQBlock {
  int64_t store = 0, len = 0;
  int32_t seg_begin = 0, nsegs = 0;
};

// m, v: StateDType storage (bf16: uint16 bits; int8: int8 m codes, uint8 v codes) indexed like master.
namespace cpu {
void adamw_lowp(float* master, void* m, void* v, float* scales, StateDType sd, const void* grad, DType gt,
                float grad_unscale, void* params, DType pt, const AdamWSegment* segs, const AdamWQBlock* blocks,
                int nblocks, const AdamWHyper& h);
// Host conversions block by block (checkpoints, tests): the values the update would read, and the storage
// that the update would write for given FP32 values (for int8 the scales are the blocks' maxima).
void lowp_state_to_f32(const void* m, const void* v, const float* scales, StateDType sd, const AdamWQBlock* blocks,
                       int nblocks, float* m_out, float* v_out);
void lowp_state_from_f32(const float* m_in, const float* v_in, StateDType sd, const AdamWQBlock* blocks, int nblocks,
                         void* m, void* v, float* scales);
}  // namespace cpu
namespace cuda {
// blocks, segs, scales: device memory; the launch runs one thread block per quantisation block, max_len
// bounds the blocks' lengths (it sizes shared memory).
void adamw_lowp(float* master, void* m, void* v, float* scales, StateDType sd, const void* grad, DType gt,
                float grad_unscale, void* params, DType pt, const AdamWSegment* segs, const AdamWQBlock* blocks,
                int nblocks, int64_t max_len, const AdamWHyper& h, Stream s);
}  // namespace cuda
namespace ops {
inline void adamw_lowp(const Exec& e, float* master, void* m, void* v, float* scales, StateDType sd, const void* grad,
                       DType gt, float grad_unscale, void* params, DType pt, const AdamWSegment* segs,
                       const AdamWQBlock* blocks, int nblocks, int64_t max_len, int64_t elems, const AdamWHyper& h) {
  OpScope scope(e, [&] {
    const double sb = double(state_bytes_per_elem(sd));
    return OpInfo{"adamw_lowp", 16.0 * double(elems),
                  double(elems) * (8.0 + 2.0 * sb + double(dtype_size(gt)) + double(dtype_size(pt)))};
  });
  e.cuda() ? cuda::adamw_lowp(master, m, v, scales, sd, grad, gt, grad_unscale, params, pt, segs, blocks, nblocks,
                              max_len, h, e.stream)
           : cpu::adamw_lowp(master, m, v, scales, sd, grad, gt, grad_unscale, params, pt, segs, blocks, nblocks, h);
}
}  // namespace ops
}  // namespace mpt
