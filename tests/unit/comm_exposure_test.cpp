// ExposureProbe's host brackets (src/core/comm_exposure.h), as CPU ranks use them: the time inside brackets
// by site, nested brackets counted once, and the split by the steps end_step closes. Lower bounds come from
// the sleeps; the split must add up to the total exactly, the part after the last end_step left out.
#include <gtest/gtest.h>

#include <chrono>
#include <numeric>
#include <thread>

#include "src/core/comm_exposure.h"

namespace mpt {
namespace {

void wait_ms(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

TEST(ExposureProbe, HostBracketsSplitBySiteAndByStep) {
  ExposureProbe p;
  p.enable(Exec{});  // CPU: stream brackets are no-ops, host brackets time the waits
  p.host_begin(ExposureSite::Gradients);
  wait_ms(12);
  p.host_begin(ExposureSite::Statistics);  // nested: counted once, in the outer site
  wait_ms(3);
  p.host_end();
  p.host_end();
  p.stream_begin(ExposureSite::Parameters);
  p.stream_end();
  p.end_step();
  wait_ms(10);  // outside any bracket: not exposed
  p.host_begin(ExposureSite::Statistics);
  wait_ms(5);
  p.host_end();
  p.host_begin(ExposureSite::Parameters);
  wait_ms(6);
  p.host_end();
  p.end_step();
  p.host_begin(ExposureSite::Gradients);  // after the last end_step: in the total, not in a step
  wait_ms(7);
  p.host_end();

  std::array<double, kExposureSites> by_site{};
  std::vector<double> steps;
  const double total = p.take_ms(&by_site, &steps);
  ASSERT_EQ(steps.size(), 2u);
  EXPECT_GE(steps[0], 15.0);
  EXPECT_GE(steps[1], 11.0);
  EXPECT_LT(steps[0] + steps[1], total - 7.0 + 1e-9) << "the tail bracket belongs to no step";
  EXPECT_GE(by_site[size_t(ExposureSite::Gradients)], 12.0 + 3.0 + 7.0);
  EXPECT_GE(by_site[size_t(ExposureSite::Statistics)], 5.0);
  EXPECT_LT(by_site[size_t(ExposureSite::Statistics)], steps[1]) << "the nested bracket counted in its own site";
  EXPECT_GE(by_site[size_t(ExposureSite::Parameters)], 6.0);
  EXPECT_EQ(by_site[size_t(ExposureSite::Staging)], 0.0);
  EXPECT_DOUBLE_EQ(std::accumulate(by_site.begin(), by_site.end(), 0.0), total);
  // The gap between brackets (10 ms) is not exposure: step 1 holds its two brackets only. Its exact value
  // is the Statistics and Parameters time (the tail is Gradients).
  EXPECT_DOUBLE_EQ(steps[1], by_site[size_t(ExposureSite::Statistics)] + by_site[size_t(ExposureSite::Parameters)]);

  // A take starts over: nothing since, no steps.
  EXPECT_EQ(p.take_ms(&by_site, &steps), 0.0);
  EXPECT_TRUE(steps.empty());
}

}  // namespace
}  // namespace mpt
