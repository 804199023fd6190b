// sample_power (kernels/device_info.h) on a real GPU: NVML answers for the rank's device, and every field is
// in its unit. Watts, the limit and the energy counter's rate all have to land in a board's range (tens to
// about a thousand watts): a milliwatt or millijoule left unconverted is 1000x out of it, and a counter not
// read at all gives no rate.
#include <chrono>
#include <thread>

#include "kernels/device_info.h"
#include "tests/gpu/gpu_test_util.h"

namespace mpt::test {
namespace {

TEST(DeviceInfoGpu, PowerSampleReadsTheRanksDeviceInItsUnits) {
  MPT_REQUIRE_GPU();
  const PowerSample a = sample_power(gpu_env().device);
  ASSERT_TRUE(a.ok) << "NVML (libnvidia-ml.so.1) did not answer for device " << gpu_env().device;
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  const PowerSample b = sample_power(gpu_env().device);
  ASSERT_TRUE(b.ok);
  EXPECT_GT(b.sm_max_mhz, 300u);
  EXPECT_GT(b.sm_mhz, 0u);
  EXPECT_LE(b.sm_mhz, b.sm_max_mhz);
  EXPECT_GT(b.limit_watts, 50.0);
  EXPECT_LT(b.limit_watts, 2000.0);
  EXPECT_GT(b.watts, 10.0);
  EXPECT_LT(b.watts, 1.5 * b.limit_watts);
  EXPECT_GT(b.temperature_c, 0u);
  EXPECT_LT(b.temperature_c, 120u);
  // The energy counter's mean power over the sleep: the same board range (the counter updates every few
  // tens of milliseconds, well inside 400 ms).
  const double rate = (b.energy_joules - a.energy_joules) / 0.4;
  EXPECT_GT(rate, 10.0) << "energy counter " << a.energy_joules << " -> " << b.energy_joules << " J";
  EXPECT_LT(rate, 1.5 * b.limit_watts);
  EXPECT_FALSE(sample_power(cuda_device_count()).ok) << "a device index past the last one";
}

}  // namespace
}  // namespace mpt::test
