// The launch conventions of comm/device_select.h: which CUDA device a rank takes from its local rank,
// the ranks on its node and the devices it can see.
#include "comm/device_select.h"

#include <random>

#include <gtest/gtest.h>

namespace mpt {
namespace {

TEST(DeviceSelect, EveryGpuVisibleGivesTheLocalRank) {
  for (int size = 1; size <= 8; ++size)
    for (int count = std::max(size, 2); count <= 9; ++count)
      for (int r = 0; r < size; ++r) {
        const DeviceChoice c = choose_cuda_device(r, size, count);
        EXPECT_EQ(c.device, r) << r << "/" << size << " with " << count;
        EXPECT_TRUE(c.error.empty()) << c.error;
      }
}

TEST(DeviceSelect, OneVisibleGpuPerRankGivesDeviceZero) {
  for (int size = 1; size <= 8; ++size)
    for (int r = 0; r < size; ++r) {
      const DeviceChoice c = choose_cuda_device(r, size, 1);
      EXPECT_EQ(c.device, 0) << r << "/" << size;
      EXPECT_TRUE(c.error.empty()) << c.error;
    }
}

TEST(DeviceSelect, FewerGpusThanRanksIsAnErrorNamingTheCounts) {
  for (int size = 3; size <= 8; ++size)
    for (int count = 2; count < size; ++count)
      for (int r = 0; r < size; ++r) {
        const DeviceChoice c = choose_cuda_device(r, size, count);
        EXPECT_EQ(c.device, -1);
        EXPECT_NE(c.error.find("local rank " + std::to_string(r) + " of " + std::to_string(size)), std::string::npos)
            << c.error;
        EXPECT_NE(c.error.find(std::to_string(count) + " CUDA device"), std::string::npos) << c.error;
        EXPECT_NE(c.error.find("CUDA_VISIBLE_DEVICES"), std::string::npos) << c.error;
      }
}

TEST(DeviceSelect, NoGpuOrABadLocalRankIsAnError) {
  EXPECT_EQ(choose_cuda_device(0, 1, 0).device, -1);
  EXPECT_NE(choose_cuda_device(0, 1, 0).error.find("0 CUDA device"), std::string::npos);
  EXPECT_EQ(choose_cuda_device(2, 2, 4).device, -1);
  EXPECT_EQ(choose_cuda_device(-1, 2, 4).device, -1);
  EXPECT_EQ(choose_cuda_device(0, 0, 4).device, -1);
}

// Whatever the shape, a chosen device exists and no two local ranks share one unless each sees only one.
TEST(DeviceSelect, RandomShapesNeverPickAMissingOrSharedDevice) {
  std::mt19937 rng{std::random_device{}()};
  for (int t = 0; t < 2000; ++t) {
    const int size = 1 + int(rng() % 16), count = int(rng() % 17);
    std::vector<int> used(size_t(std::max(count, 1)), 0);
    for (int r = 0; r < size; ++r) {
      const DeviceChoice c = choose_cuda_device(r, size, count);
      if (c.device < 0) {
        EXPECT_FALSE(c.error.empty());
        continue;
      }
      ASSERT_LT(c.device, count);
      if (count > 1) {
        EXPECT_EQ(++used[size_t(c.device)], 1) << "device " << c.device << " shared";
      }
    }
  }
}

}  // namespace
}  // namespace mpt
