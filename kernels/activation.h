// Elementwise activations, computed in FP32 from the storage dtype, rounded once on store.
// GELU is the tanh form: 0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3))).
// forward: y = act(z). backward: dz = dy * act'(z) (overwrites dz).
#pragma once
#include "kernels/exec.h"

namespace mpt {

enum class Act { Gelu, Relu };

namespace cpu {
void act_forward(Act act, const void* z, void* y, DType t, size_t n);
void act_backward(Act act, const void* z, const void* dy, void* dz, DType t, size_t n);
}
namespace cuda {
void act_forward(Act act, const void* z, void* y, DType t, size_t n, Stream s);
void act_backward(Act act, const void* z, const void* dy, void* dz, DType t, size_t n, Stream s);
}
namespace ops {
inline void act_forward(const Exec& e, Act act, const void* z, void* y, DType t, size_t n) {
  OpScope scope(e, [&] { return OpInfo{"act_forward", 0, 2.0 * double(n) * double(dtype_size(t))}; });
  e.cuda() ? cuda::act_forward(act, z, y, t, n, e.stream) : cpu::act_forward(act, z, y, t, n);
}
inline void act_backward(const Exec& e, Act act, const void* z, const void* dy, void* dz, DType t, size_t n) {
  OpScope scope(e, [&] { return OpInfo{"act_backward", 0, 3.0 * double(n) * double(dtype_size(t))}; });
  e.cuda() ? cuda::act_backward(act, z, dy, dz, t, n, e.stream) : cpu::act_backward(act, z, dy, dz, t, n);
}
}  // namespace ops
}  // namespace mpt
