// Which CUDA device a rank uses, from what it can see: a pure function so that the launch conventions
// are tested without GPUs (tests/unit/device_select_test.cpp).
//
// - Every GPU of the node visible to every rank (mpirun, srun without GPU binding): device = local rank.
// - Exactly one visible GPU (the launcher gives each rank its own through CUDA_VISIBLE_DEVICES, e.g.
//   `srun --gpus-per-task=1` or a per-rank wrapper): device 0, whatever the local rank.
// - Between the two (2..local_size-1 visible GPUs for local_size ranks): an error. Two ranks would share
//   a GPU through local_rank % count, which halves the memory of each and is almost always a launch
//   mistake (a wrong --map-by, a stale CUDA_VISIBLE_DEVICES); the message says how to launch instead.
// - No visible GPU: an error.
#pragma once

#include <string>

namespace mpt {

struct DeviceChoice {
  int device = -1;    // the CUDA device index to use; -1 when `error` says why none can be
  std::string error;  // "" on success
};

inline DeviceChoice choose_cuda_device(int local_rank, int local_size, int device_count) {
  DeviceChoice c;
  const std::string who = "local rank " + std::to_string(local_rank) + " of " + std::to_string(local_size) +
                          " ranks on this node";
  if (local_rank < 0 || local_size < 1 || local_rank >= local_size) {
    c.error = who + ": not a valid local rank";
  } else if (device_count <= 0) {
    c.error = who + " needs a GPU, but the node has 0 CUDA device(s) visible to it";
  } else if (device_count == 1) {
    c.device = 0;
  } else if (local_size <= device_count) {
    c.device = local_rank;
  } else {
    c.error = who + " needs its own GPU, but the node has " + std::to_string(device_count) +
              " CUDA device(s) visible to each rank; start at most one rank per GPU on each node, or give each "
              "rank exactly one GPU (CUDA_VISIBLE_DEVICES per rank, srun --gpus-per-task=1)";
  }
  return c;
}

}  // namespace mpt
