// cuda::act_forward / act_backward against the CPU twins.
//
// Tolerances. ReLU is a comparison and a select, with no rounding of its own, so the results must be
// exactly equal. GELU differs only in FP32: CUDA's tanhf and glibc's tanh are each within
// ~2 ulp, and nvcc may fuse the polynomial's multiply-adds. Propagated through 0.5 z (1 + t), that is a
// few ulp of |z| (2^-19 |z| below is a 4x margin over 2 ulp of tanh and 2 of the products); the backward
// has the extra term z (1 - t^2) c (1 + 3a z^2), whose size grows like |z|^3, hence the |z|^3 factor.
// A half-precision output adds at most one ulp of the output dtype: both sides round FP32 values that
// differ by the above to the nearest half value once, so they land on the same value or on neighbours.
#include <cmath>

#include "kernels/activation.h"
#include "tests/gpu/gpu_test_util.h"

namespace mpt::test {
namespace {

// Multiples of 8 (8, 1000, 2^20) take the 16-byte path for half types; the others the scalar one.
const size_t kSizes[] = {1, 8, 37, 1000, 4097, size_t(1) << 20, (size_t(1) << 20) + 1};
constexpr size_t kGuard = 64;

// z in [-5, 5] with a sprinkling of values that test the edges: zeros of both signs, infinities, NaN.
std::vector<float> act_inputs(Rng& r, size_t n) {
  std::vector<float> z(n);
  const float specials[] = {0.f, -0.f, INFINITY, -INFINITY, NAN, 1e-30f, -1e-30f};
  for (size_t i = 0; i < n; ++i) z[i] = r.below(64) == 0 ? specials[r.below(7)] : r.uniform(-5.f, 5.f);
  return z;
}

std::vector<uint8_t> stored(const std::vector<float>& v, DType t) {
  std::vector<uint8_t> b(v.size() * dtype_size(t));
  from_float_n(v.data(), b.data(), t, v.size());
  return b;
}

class ActivationGpu : public GpuTest, public ::testing::WithParamInterface<DType> {
 protected:
  // Runs the GPU kernel into a guarded buffer, checks the guard, returns the n outputs as floats.
  std::vector<float> run_forward(Act act, const std::vector<uint8_t>& z, DType t, size_t n) {
    DeviceBuffer dz = to_device(z);
    DeviceBuffer dy((n + kGuard) * dtype_size(t));
    dy.fill(0xA5, stream());
    cuda::act_forward(act, dz.get(), dy.get(), t, n, stream());
    return finish(dy, t, n);
  }
  std::vector<float> run_backward(Act act, const std::vector<uint8_t>& z, const std::vector<uint8_t>& g, DType t,
                                  size_t n) {
    DeviceBuffer dz = to_device(z), dg = to_device(g);
    DeviceBuffer dout((n + kGuard) * dtype_size(t));
    dout.fill(0xA5, stream());
    cuda::act_backward(act, dz.get(), dg.get(), dout.get(), t, n, stream());
    return finish(dout, t, n);
  }
  std::vector<float> finish(const DeviceBuffer& b, DType t, size_t n) {
    std::vector<uint8_t> all = to_host<uint8_t>(b, (n + kGuard) * dtype_size(t));
    EXPECT_EQ(std::vector<uint8_t>(all.begin() + std::ptrdiff_t(n * dtype_size(t)), all.end()),
              std::vector<uint8_t>(kGuard * dtype_size(t), 0xA5))
        << "wrote past n";
    all.resize(n * dtype_size(t));
    return to_floats(all, t);
  }
};

TEST_P(ActivationGpu, ReluForwardAndBackwardExact) {
  const DType t = GetParam();
  Rng r = fresh_rng();
  for (size_t n : kSizes) {
    SCOPED_TRACE("n=" + std::to_string(n));
    const std::vector<uint8_t> z = stored(act_inputs(r, n), t);
    const std::vector<uint8_t> g = random_buffer(r, t, n, -2.f, 2.f);
    std::vector<uint8_t> ref_y(z.size()), ref_dz(z.size());
    cpu::act_forward(Act::Relu, z.data(), ref_y.data(), t, n);
    cpu::act_backward(Act::Relu, z.data(), g.data(), ref_dz.data(), t, n);
    const auto exact = [](size_t) { return 0.0; };
    EXPECT_TRUE(all_close("relu forward", run_forward(Act::Relu, z, t, n), to_floats(ref_y, t), exact));
    EXPECT_TRUE(all_close("relu backward", run_backward(Act::Relu, z, g, t, n), to_floats(ref_dz, t), exact));
  }
}

TEST_P(ActivationGpu, GeluForwardMatchesCpu) {
  const DType t = GetParam();
  Rng r = fresh_rng();
  for (size_t n : kSizes) {
    SCOPED_TRACE("n=" + std::to_string(n));
    const std::vector<uint8_t> z = stored(act_inputs(r, n), t);
    std::vector<uint8_t> ref(z.size());
    cpu::act_forward(Act::Gelu, z.data(), ref.data(), t, n);
    const std::vector<float> zf = to_floats(z, t), rf = to_floats(ref, t);
    const auto tol = [&](size_t i) {
      return (is_half(t) ? ulp(t, rf[i]) : 0.0) + std::ldexp(std::fabs(zf[i]) + std::fabs(rf[i]), -19);
    };
    EXPECT_TRUE(all_close("gelu forward", run_forward(Act::Gelu, z, t, n), rf, tol));
  }
}

TEST_P(ActivationGpu, GeluBackwardMatchesCpu) {
  const DType t = GetParam();
  Rng r = fresh_rng();
  for (size_t n : kSizes) {
    SCOPED_TRACE("n=" + std::to_string(n));
    const std::vector<uint8_t> z = stored(act_inputs(r, n), t);
    const std::vector<uint8_t> g = random_buffer(r, t, n, -2.f, 2.f);
    std::vector<uint8_t> ref(z.size());
    cpu::act_backward(Act::Gelu, z.data(), g.data(), ref.data(), t, n);
    const std::vector<float> zf = to_floats(z, t), gf = to_floats(g, t), rf = to_floats(ref, t);
    const auto tol = [&](size_t i) {
      const double a = std::fabs(zf[i]);
      return (is_half(t) ? ulp(t, rf[i]) : 0.0) + std::ldexp(std::fabs(gf[i]) * (1 + a + a * a * a), -19);
    };
    EXPECT_TRUE(all_close("gelu backward", run_backward(Act::Gelu, z, g, t, n), rf, tol));
  }
}

// The trainer overwrites the incoming gradient in place: dz == dy.
TEST_P(ActivationGpu, BackwardInPlaceEqualsOutOfPlace) {
  const DType t = GetParam();
  Rng r = fresh_rng();
  const size_t n = 4097;
  for (Act act : {Act::Gelu, Act::Relu}) {
    const std::vector<uint8_t> z = stored(act_inputs(r, n), t);
    const std::vector<uint8_t> g = random_buffer(r, t, n, -2.f, 2.f);
    DeviceBuffer dz = to_device(z), dg = to_device(g), dout(g.size());
    cuda::act_backward(act, dz.get(), dg.get(), dout.get(), t, n, stream());
    cuda::act_backward(act, dz.get(), dg.get(), dg.get(), t, n, stream());
    EXPECT_TRUE(same_bits("in place", to_host<uint8_t>(dg, g.size()), to_host<uint8_t>(dout, g.size()), t));
  }
}

TEST_P(ActivationGpu, BadArgumentsThrow) {
  const DType t = GetParam();
  DeviceBuffer b(64);
  EXPECT_THROW(cuda::act_forward(Act::Gelu, nullptr, b.get(), t, 4, stream()), std::invalid_argument);
  EXPECT_THROW(cuda::act_backward(Act::Relu, b.get(), nullptr, b.get(), t, 4, stream()), std::invalid_argument);
  EXPECT_NO_THROW(cuda::act_forward(Act::Gelu, nullptr, nullptr, t, 0, stream()));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, ActivationGpu, ::testing::Values(DType::F32, DType::F16, DType::BF16), dtype_param_name);

}  // namespace
}  // namespace mpt::test
