// An owning byte buffer on the host or on the current CUDA device. Move-only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "kernels/exec.h"

namespace mpt {

class Buffer {
 public:
  Buffer() = default;
  Buffer(Device d, size_t bytes);
  // Host memory that CUDA copies read and write asynchronously (page-locked; cudaHostAlloc). Only when
  // `pin` (a CUDA run): without it, plain host memory, so that CPU ranks need no CUDA device.
  static Buffer host(size_t bytes, bool pin);
  // Memory allocated elsewhere (a communicator's window): owned from here on, counted like any other,
  // and handed to `release` instead of cudaFree/free when the Buffer dies.
  static Buffer adopt(void* p, size_t bytes, Device d, std::function<void(void*)> release);
  ~Buffer();
  Buffer(Buffer&& o) noexcept { swap(o); }
  Buffer& operator=(Buffer&& o) noexcept { if (this != &o) { Buffer t(std::move(o)); swap(t); } return *this; }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  void* data() { return ptr_; }
  const void* data() const { return ptr_; }
  template <class T> T* as() { return static_cast<T*>(ptr_); }
  template <class T> const T* as() const { return static_cast<const T*>(ptr_); }
  size_t bytes() const { return bytes_; }
  Device device() const { return dev_; }
  bool empty() const { return bytes_ == 0; }
  void zero(Stream s);

 private:
  void swap(Buffer& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
    std::swap(dev_, o.dev_);
    std::swap(pinned_, o.pinned_);
    std::swap(release_, o.release_);
  }
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  Device dev_ = Device::CPU;
  bool pinned_ = false;
  std::function<void(void*)> release_;
};

// Bytes held by live Buffers on a device kind, now and at the peak (what mptrain itself allocated;
// CUDA context, NCCL and cuBLAS internals come on top).
size_t allocated_bytes(Device d);
size_t peak_allocated_bytes(Device d);

// Copies between host and a buffer on either device (synchronous on stream s for CUDA).
void copy_to_host(const void* src, Device d, void* host, size_t bytes, Stream s);
void copy_from_host(const void* host, void* dst, Device d, size_t bytes, Stream s);
void copy_device(const void* src, void* dst, Device d, size_t bytes, Stream s);
// Between two buffers on any devices (host <-> CUDA included; synchronous on stream s when it involves the host).
void copy_buffer(const Buffer& src, Buffer& dst, size_t bytes, Stream s);

// Host-to-device uploads that do not make the host wait (DESIGN.md: batches arrive through pinned memory
// and asynchronous copies). upload() copies the host bytes into a pinned staging slot (so the caller may
// reuse its memory at once) and queues cudaMemcpyAsync on the stream; slots are used round-robin, and a
// slot is refilled only after its previous copy has finished (an event; with kSlots slots and the host
// reading results back once per step, that wait never happens in steady state). On CPU ranks: memcpy.
class Uploader {
 public:
  static constexpr int kSlots = 16;
  Uploader(Device d, Stream s) : dev_(d), stream_(s) {}
  ~Uploader();
  Uploader(const Uploader&) = delete;
  Uploader& operator=(const Uploader&) = delete;
  void upload(const void* host, void* dst, size_t bytes);

 private:
  struct Slot { void* pinned = nullptr; size_t cap = 0; void* done = nullptr; bool used = false; };
  Device dev_;
  Stream stream_;
  Slot slots_[kSlots];
  int next_ = 0;
};

}  // namespace mpt
