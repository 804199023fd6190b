#!/usr/bin/env bash
# The test run from a fresh machine: set-up, build (CUDA code included), then every test through ctest:
# unit, CPU kernels, multi-rank MPI (mpirun -np 1..4, oversubscribed), and the GPU tests, which report
# themselves skipped on a machine without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
bash launch/build.sh
cd "${MPT_BUILD_DIR:-build}"
ctest --output-on-failure --timeout 1200 "$@"
