// An owning byte buffer on the host or on the current CUDA device. Move-only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/exec.h"

namespace mpt {

class Buffer {
 public:
  Buffer() = default;
  Buffer(Device d, size_t bytes);
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
  void swap(Buffer& o) noexcept { std::swap(ptr_, o.ptr_); std::swap(bytes_, o.bytes_); std::swap(dev_, o.dev_); }
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  Device dev_ = Device::CPU;
};

// Bytes held by live Buffers on a device kind, now and at the peak (what mptrain itself allocated;
// CUDA context, NCCL and cuBLAS internals come on top).
size_t allocated_bytes(Device d);
size_t peak_allocated_bytes(Device d);

// Copies between host and a buffer on either device (synchronous on stream s for CUDA).
void copy_to_host(const void* src, Device d, void* host, size_t bytes, Stream s);
void copy_from_host(const void* host, void* dst, Device d, size_t bytes, Stream s);
void copy_device(const void* src, void* dst, Device d, size_t bytes, Stream s);

}  // namespace mpt
