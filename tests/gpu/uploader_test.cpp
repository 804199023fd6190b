// Uploader (src/core/buffer.h): host-to-device copies that return at once. The caller's memory must be free to
// reuse as soon as upload() returns (the bytes were staged in pinned memory), and a staging slot must not be
// refilled before its copy has run: more uploads than slots, each source overwritten right after its
// upload, behind a long kernel-free queue of copies on a fresh stream, must all land intact.
#include <cstring>
#include <vector>

#include "src/core/buffer.h"
#include "tests/gpu/gpu_test_util.h"

namespace mpt::test {
namespace {

class UploaderGpu : public GpuTest {};

TEST_F(UploaderGpu, SourcesReusableAtOnceAndSlotsNotRefilledEarly) {
  Rng r = fresh_rng();
  const int n_uploads = 3 * Uploader::kSlots + 5;
  std::vector<DeviceBuffer> dst;
  std::vector<std::vector<uint8_t>> want;
  Uploader up(Device::CUDA, stream());
  std::vector<uint8_t> src;
  for (int k = 0; k < n_uploads; ++k) {
    const size_t bytes = 1 + r.below(k % 7 == 0 ? (4u << 20) : 4096);  // some large enough to take a while
    src.resize(bytes);
    for (auto& b : src) b = uint8_t(r.next());
    dst.emplace_back(bytes);
    up.upload(src.data(), dst.back().get(), bytes);
    want.push_back(src);
    std::memset(src.data(), 0xA5, src.size());  // the caller reuses its memory at once
  }
  sync();
  for (int k = 0; k < n_uploads; ++k)
    ASSERT_EQ(to_host<uint8_t>(dst[size_t(k)], want[size_t(k)].size()), want[size_t(k)]) << "upload " << k;
}

TEST(UploaderCpu, CopiesAtOnce) {
  std::vector<int> a = {1, 2, 3}, b(3, 0);
  Uploader up(Device::CPU, nullptr);
  up.upload(a.data(), b.data(), 3 * sizeof(int));
  EXPECT_EQ(a, b);
}

}  // namespace
}  // namespace mpt::test
