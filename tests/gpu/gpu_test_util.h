// Shared pieces of the GPU tests (tests/gpu): whether this rank has a usable CUDA device (decided once by
// gpu_main.cpp, the same verdict on every rank), a fixture that skips without one, device buffers, and the
// comparisons used against the CPU twins.
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <iomanip>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "comm/bootstrap.h"
#include "kernels/exec.h"
#include "src/core/cuda_check.h"
#include "src/core/dtype.h"
#include "tests/test_util.h"

namespace mpt::test {

struct GpuEnv {
  bool present = false;  // this rank selected CUDA device `device`
  int device = -1;
  WorldInfo world;
};
inline GpuEnv& gpu_env() {
  static GpuEnv env;
  return env;
}
inline bool gpu_present() { return gpu_env().present; }

}  // namespace mpt::test

// Skips the current test (from a TEST body or a fixture's SetUp) when there is no device.
#define MPT_REQUIRE_GPU()                                                         \
  do {                                                                            \
    if (!::mpt::test::gpu_present()) GTEST_SKIP() << "no CUDA device on this rank"; \
  } while (0)

namespace mpt::test {

// Owning device allocation. Tests are not a hot path, so plain cudaMalloc / cudaFree.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes_) MPT_CUDA_CHECK(cudaMalloc(&p_, bytes_));
  }
  ~DeviceBuffer() { reset(); }
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      p_ = std::exchange(o.p_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* get() const { return p_; }
  template <class T> T* as() const { return static_cast<T*>(p_); }
  // Address `bytes` into the buffer (for misaligned or offset views).
  void* at(size_t bytes) const { return static_cast<char*>(p_) + bytes; }
  size_t bytes() const { return bytes_; }

  // Copies in stream order and waits, so the host side is safe to use on return.
  void upload(const void* src, size_t n, Stream s, size_t offset = 0) {
    if (offset + n > bytes_) throw std::out_of_range("DeviceBuffer::upload past the end");
    MPT_CUDA_CHECK(cudaMemcpyAsync(at(offset), src, n, cudaMemcpyHostToDevice, static_cast<cudaStream_t>(s)));
    MPT_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(s)));
  }
  void download(void* dst, size_t n, Stream s, size_t offset = 0) const {
    if (offset + n > bytes_) throw std::out_of_range("DeviceBuffer::download past the end");
    MPT_CUDA_CHECK(cudaMemcpyAsync(dst, at(offset), n, cudaMemcpyDeviceToHost, static_cast<cudaStream_t>(s)));
    MPT_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(s)));
  }
  // Fills with a byte pattern (e.g. 0xFF: NaN in every dtype) so that unwritten outputs show.
  void fill(uint8_t byte, Stream s) {
    MPT_CUDA_CHECK(cudaMemsetAsync(p_, byte, bytes_, static_cast<cudaStream_t>(s)));
    MPT_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(s)));
  }

 private:
  void reset() {
    if (p_) cudaFree(p_);
    p_ = nullptr;
    bytes_ = 0;
  }
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

// Fixture for every single-device test: skips without a device, and runs the kernels on a fresh
// non-blocking stream so that a launcher that ignores its stream argument races the copies and fails.
class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    MPT_REQUIRE_GPU();
    MPT_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  }
  void TearDown() override {
    if (stream_) {
      MPT_CUDA_CHECK(cudaStreamSynchronize(stream_));
      MPT_CUDA_CHECK(cudaStreamDestroy(stream_));
      stream_ = nullptr;
    }
  }
  Stream stream() const { return stream_; }
  void sync() const { MPT_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

  template <class T> DeviceBuffer to_device(const std::vector<T>& v) const {
    DeviceBuffer b(v.size() * sizeof(T));
    if (!v.empty()) b.upload(v.data(), v.size() * sizeof(T), stream_);
    return b;
  }
  template <class T> std::vector<T> to_host(const DeviceBuffer& b, size_t n) const {
    std::vector<T> v(n);
    if (n) b.download(v.data(), n * sizeof(T), stream_);
    return v;
  }

  cudaStream_t stream_ = nullptr;
};

// ---- host-side helpers

inline std::vector<float> to_floats(const std::vector<uint8_t>& buf, DType t) {
  std::vector<float> f(buf.size() / dtype_size(t));
  to_float_n(buf.data(), t, f.data(), f.size());
  return f;
}

// Spacing of dtype t's values at v: 2^(floor(log2|v|) - mantissa bits), the subnormal spacing below the
// normal range. A correctly rounded result is within ulp/2 of the exact value; two results rounded from
// FP32 values that differ by d are within ulp + d of each other.
inline double ulp(DType t, double v) {
  const int mant = t == DType::F16 ? 10 : (t == DType::BF16 ? 7 : 23);
  const int emin = t == DType::F16 ? -14 : -126;
  const double a = std::fabs(v);
  int e = a > 0 && std::isfinite(a) ? std::ilogb(a) : emin;
  if (e < emin) e = emin;
  return std::ldexp(1.0, e - mant);
}

// NaN must meet NaN and infinities must match exactly; otherwise |got - ref| <= tol(i).
template <class TolFn>
::testing::AssertionResult all_close(const std::string& what, const std::vector<float>& got,
                                     const std::vector<float>& ref, TolFn tol) {
  if (got.size() != ref.size())
    return ::testing::AssertionFailure() << what << ": size " << got.size() << " != " << ref.size();
  size_t bad = 0;
  std::ostringstream first;
  first << std::setprecision(9);
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = got[i], r = ref[i];
    bool ok;
    double t = 0;
    if (std::isnan(r)) {
      ok = std::isnan(g);
    } else if (std::isinf(r)) {
      ok = g == r;
    } else {
      t = tol(i);
      ok = std::fabs(g - r) <= t;
    }
    if (!ok) {
      if (bad < 8) first << "\n  [" << i << "] got " << g << " ref " << r << " |diff| " << std::fabs(g - r) << " tol " << t;
      ++bad;
    }
  }
  if (bad)
    return ::testing::AssertionFailure() << what << ": " << bad << " of " << ref.size() << " elements outside tolerance"
                                         << first.str();
  return ::testing::AssertionSuccess();
}

// Bitwise equality of two buffers of dtype t, except that any NaN matches any NaN.
inline ::testing::AssertionResult same_bits(const std::string& what, const std::vector<uint8_t>& got,
                                            const std::vector<uint8_t>& ref, DType t) {
  if (got.size() != ref.size())
    return ::testing::AssertionFailure() << what << ": size " << got.size() << " != " << ref.size();
  const size_t n = ref.size() / dtype_size(t), es = dtype_size(t);
  size_t bad = 0;
  std::ostringstream first;
  for (size_t i = 0; i < n; ++i) {
    if (std::memcmp(got.data() + i * es, ref.data() + i * es, es) == 0) continue;
    const float g = load_elem(got.data(), t, i), r = load_elem(ref.data(), t, i);
    if (std::isnan(g) && std::isnan(r)) continue;
    if (bad < 8) first << "\n  [" << i << "] got " << std::setprecision(9) << g << " ref " << r;
    ++bad;
  }
  if (bad) return ::testing::AssertionFailure() << what << ": " << bad << " of " << n << " elements differ" << first.str();
  return ::testing::AssertionSuccess();
}

inline std::string dtype_param_name(const ::testing::TestParamInfo<DType>& info) { return dtype_name(info.param); }

}  // namespace mpt::test
