#include "src/core/comm_exposure.h"

#include <stdexcept>

#include <cuda_runtime_api.h>

#include "src/core/cuda_check.h"

namespace mpt {

ExposureProbe::~ExposureProbe() {
  for (auto& [a, b] : events_) {
    cudaEventDestroy(static_cast<cudaEvent_t>(a));
    cudaEventDestroy(static_cast<cudaEvent_t>(b));
  }
}

void ExposureProbe::enable(const Exec& ex) {
  ex_ = ex;
  on_ = true;
}

void ExposureProbe::stream_begin(ExposureSite site) {
  if (!on_ || !ex_.cuda()) return;
  if (open_) throw std::logic_error("ExposureProbe: stream_begin inside an open bracket");
  if (used_ == events_.size()) {
    cudaEvent_t a, b;
    MPT_CUDA_CHECK(cudaEventCreate(&a));
    MPT_CUDA_CHECK(cudaEventCreate(&b));
    events_.emplace_back(a, b);
    sites_.push_back(site);
  }
  sites_[used_] = site;
  MPT_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(events_[used_].first), static_cast<cudaStream_t>(ex_.stream)));
  open_ = true;
}

void ExposureProbe::stream_end() {
  if (!on_ || !ex_.cuda()) return;
  if (!open_) throw std::logic_error("ExposureProbe: stream_end without stream_begin");
  MPT_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(events_[used_].second), static_cast<cudaStream_t>(ex_.stream)));
  ++used_;
  open_ = false;
}

void ExposureProbe::host_begin(ExposureSite site) {
  if (!on_ || host_depth_++ > 0) return;
  host_site_ = site;
  host_t0_ = std::chrono::steady_clock::now();
}

void ExposureProbe::host_end() {
  if (!on_ || host_depth_ == 0 || --host_depth_ > 0) return;
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - host_t0_).count();
  host_ms_[size_t(host_site_)] += ms;
  host_total_ += ms;
}

void ExposureProbe::end_step() {
  if (!on_) return;
  if (open_) throw std::logic_error("ExposureProbe: end_step inside an open bracket");
  step_ends_.emplace_back(used_, host_total_);
}

double ExposureProbe::take_ms(std::array<double, kExposureSites>* by_site, std::vector<double>* per_step) {
  std::array<double, kExposureSites> ms = host_ms_;
  host_ms_ = {};
  if (per_step) {  // each closed step's host part first; its stream brackets are added below
    per_step->assign(step_ends_.size(), 0.0);
    double prev = 0;
    for (size_t i = 0; i < step_ends_.size(); ++i) {
      (*per_step)[i] = step_ends_[i].second - prev;
      prev = step_ends_[i].second;
    }
  }
  if (on_ && ex_.cuda() && used_ > 0) {
    MPT_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(ex_.stream)));
    size_t step = 0;
    for (size_t k = 0; k < used_; ++k) {
      float e = 0;
      MPT_CUDA_CHECK(cudaEventElapsedTime(&e, static_cast<cudaEvent_t>(events_[k].first),
                                          static_cast<cudaEvent_t>(events_[k].second)));
      ms[size_t(sites_[k])] += double(e);
      while (step < step_ends_.size() && k >= step_ends_[step].first) ++step;
      if (per_step && step < step_ends_.size()) (*per_step)[step] += double(e);
    }
  }
  used_ = 0;
  host_total_ = 0;
  step_ends_.clear();
  if (by_site) *by_site = ms;
  double total = 0;
  for (double x : ms) total += x;
  return total;
}

}  // namespace mpt
