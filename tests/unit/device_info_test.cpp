// The host side of kernels/device_info.h that needs no GPU: the names of NVML's clock-event reason bits, and
// sample_power's answer for a device that does not exist (on a machine without NVML, for any index).
#include <gtest/gtest.h>

#include "kernels/device_info.h"

namespace mpt {
namespace {

TEST(DeviceInfo, ClockReasonNamesNameEachLimitingBitAndSkipIdle) {
  EXPECT_EQ(clock_reason_names(0), "");
  EXPECT_EQ(clock_reason_names(0x1), "");  // idle: says nothing about a busy step
  EXPECT_EQ(clock_reason_names(0x4), "power cap");
  EXPECT_EQ(clock_reason_names(0x1 | 0x4 | 0x20), "power cap, thermal (software)");
  EXPECT_EQ(clock_reason_names(0x8 | 0x40 | 0x80), "hardware slowdown, thermal (hardware), power brake");
  EXPECT_EQ(clock_reason_names(0x2 | 0x10 | 0x100), "application clocks, sync boost, display clock");
}

TEST(DeviceInfo, PowerSampleOfAMissingDeviceIsEmpty) {
  for (int index : {-1, cuda_device_count(), cuda_device_count() + 7}) {
    const PowerSample s = sample_power(index);
    EXPECT_FALSE(s.ok) << index;
    EXPECT_EQ(s.sm_mhz, 0u);
    EXPECT_EQ(s.watts, 0.0);
  }
}

}  // namespace
}  // namespace mpt
