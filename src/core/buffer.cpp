#include "src/core/buffer.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>
#include <stdexcept>

#include "src/core/cuda_check.h"

namespace mpt {

namespace {
std::atomic<size_t> g_current[2], g_peak[2];
void account(Device d, size_t bytes, bool add) {
  const int i = d == Device::CUDA ? 1 : 0;
  if (!add) { g_current[i] -= bytes; return; }
  const size_t now = g_current[i] += bytes;
  size_t peak = g_peak[i].load();
  while (now > peak && !g_peak[i].compare_exchange_weak(peak, now)) {}
}
}  // namespace

size_t allocated_bytes(Device d) { return g_current[d == Device::CUDA ? 1 : 0].load(); }
size_t peak_allocated_bytes(Device d) { return g_peak[d == Device::CUDA ? 1 : 0].load(); }

Buffer::Buffer(Device d, size_t bytes) : bytes_(bytes), dev_(d) {
  if (bytes == 0) return;
  if (d == Device::CUDA) {
    MPT_CUDA_CHECK(cudaMalloc(&ptr_, bytes));
  } else {
    // 64-byte alignment keeps vector loads aligned in the CPU kernels.
    ptr_ = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!ptr_) throw std::bad_alloc();
    std::memset(ptr_, 0, bytes);
  }
  account(d, bytes, true);
}

Buffer Buffer::host(size_t bytes, bool pin) {
  if (!pin || bytes == 0) return Buffer(Device::CPU, bytes);
  Buffer b;
  MPT_CUDA_CHECK(cudaHostAlloc(&b.ptr_, bytes, cudaHostAllocDefault));
  std::memset(b.ptr_, 0, bytes);
  b.bytes_ = bytes;
  b.dev_ = Device::CPU;
  b.pinned_ = true;
  account(Device::CPU, bytes, true);
  return b;
}

Buffer Buffer::adopt(void* p, size_t bytes, Device d, std::function<void(void*)> release) {
  Buffer b;
  if (!p) return b;
  b.ptr_ = p;
  b.bytes_ = bytes;
  b.dev_ = d;
  b.release_ = std::move(release);
  account(d, bytes, true);
  return b;
}

Buffer::~Buffer() {
  if (!ptr_) return;
  account(dev_, bytes_, false);
  if (release_) release_(ptr_);
  else if (dev_ == Device::CUDA) cudaFree(ptr_);
  else if (pinned_) cudaFreeHost(ptr_);
  else std::free(ptr_);
}

void Buffer::zero(Stream s) {
  if (!ptr_) return;
  if (dev_ == Device::CUDA) MPT_CUDA_CHECK(cudaMemsetAsync(ptr_, 0, bytes_, reinterpret_cast<cudaStream_t>(s)));
  else std::memset(ptr_, 0, bytes_);
}

void copy_to_host(const void* src, Device d, void* host, size_t bytes, Stream s) {
  if (bytes == 0) return;
  if (d == Device::CPU) { std::memcpy(host, src, bytes); return; }
  auto st = reinterpret_cast<cudaStream_t>(s);
  MPT_CUDA_CHECK(cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, st));
  MPT_CUDA_CHECK(cudaStreamSynchronize(st));
}

void copy_from_host(const void* host, void* dst, Device d, size_t bytes, Stream s) {
  if (bytes == 0) return;
  if (d == Device::CPU) { std::memcpy(dst, host, bytes); return; }
  auto st = reinterpret_cast<cudaStream_t>(s);
  MPT_CUDA_CHECK(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, st));
  MPT_CUDA_CHECK(cudaStreamSynchronize(st));
}

void copy_device(const void* src, void* dst, Device d, size_t bytes, Stream s) {
  if (bytes == 0) return;
  if (d == Device::CPU) { std::memmove(dst, src, bytes); return; }
  MPT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, reinterpret_cast<cudaStream_t>(s)));
}

void copy_buffer(const Buffer& src, Buffer& dst, size_t bytes, Stream s) {
  if (bytes > src.bytes() || bytes > dst.bytes()) throw std::out_of_range("copy_buffer: more bytes than the buffers hold");
  if (src.device() == Device::CPU) copy_from_host(src.data(), dst.data(), dst.device(), bytes, s);
  else if (dst.device() == Device::CPU) copy_to_host(src.data(), src.device(), dst.data(), bytes, s);
  else copy_device(src.data(), dst.data(), Device::CUDA, bytes, s);
}

Uploader::~Uploader() {
  for (Slot& sl : slots_) {
    if (sl.done) {
      cudaEventSynchronize(static_cast<cudaEvent_t>(sl.done));
      cudaEventDestroy(static_cast<cudaEvent_t>(sl.done));
    }
    if (sl.pinned) cudaFreeHost(sl.pinned);
  }
}

void Uploader::upload(const void* host, void* dst, size_t bytes) {
  if (bytes == 0) return;
  if (dev_ == Device::CPU) { std::memcpy(dst, host, bytes); return; }
  Slot& sl = slots_[next_];
  next_ = (next_ + 1) % kSlots;
  if (sl.used) MPT_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(sl.done)));
  if (sl.cap < bytes) {
    if (sl.pinned) MPT_CUDA_CHECK(cudaFreeHost(sl.pinned));
    sl.pinned = nullptr;
    MPT_CUDA_CHECK(cudaHostAlloc(&sl.pinned, bytes, cudaHostAllocDefault));
    sl.cap = bytes;
  }
  if (!sl.done) {
    cudaEvent_t ev;
    MPT_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    sl.done = ev;
  }
  std::memcpy(sl.pinned, host, bytes);
  auto st = reinterpret_cast<cudaStream_t>(stream_);
  MPT_CUDA_CHECK(cudaMemcpyAsync(dst, sl.pinned, bytes, cudaMemcpyHostToDevice, st));
  MPT_CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(sl.done), st));
  sl.used = true;
}

}  // namespace mpt
