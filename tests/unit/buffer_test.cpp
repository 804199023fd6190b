// Buffer::adopt: memory allocated elsewhere (a communicator's window) is owned, counted and handed back to
// its release function exactly once, whatever moves happen in between.
#include <cstdlib>
#include <vector>

#include <gtest/gtest.h>

#include "src/core/buffer.h"

namespace mpt {
namespace {

TEST(Buffer, AdoptedMemoryIsCountedAndReleasedOnce) {
  std::vector<void*> released;
  const size_t before = allocated_bytes(Device::CPU);
  void* p = std::malloc(1000);
  {
    Buffer a = Buffer::adopt(p, 1000, Device::CPU, [&](void* q) {
      released.push_back(q);
      std::free(q);
    });
    EXPECT_EQ(a.data(), p);
    EXPECT_EQ(a.bytes(), 1000u);
    EXPECT_EQ(allocated_bytes(Device::CPU), before + 1000);
    Buffer b = std::move(a);  // the release travels with the memory
    EXPECT_TRUE(a.empty());
    Buffer c(Device::CPU, 64);
    c = std::move(b);         // c's own memory is freed the ordinary way; the adopted one moves in
    EXPECT_TRUE(released.empty());
    EXPECT_EQ(c.data(), p);
  }
  ASSERT_EQ(released.size(), 1u);
  EXPECT_EQ(released[0], p);
  EXPECT_EQ(allocated_bytes(Device::CPU), before);
  // No memory: an empty buffer, and nothing to release.
  Buffer none = Buffer::adopt(nullptr, 0, Device::CPU, [&](void* q) { released.push_back(q); });
  EXPECT_TRUE(none.empty());
}

}  // namespace
}  // namespace mpt
