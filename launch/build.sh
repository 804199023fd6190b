#!/usr/bin/env bash
# Configures and builds everything (CUDA sources included) into build/ (or $MPT_BUILD_DIR).
# CUDA_ARCHS overrides the target architectures (default 90, e.g. CUDA_ARCHS="80;90").
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD="${MPT_BUILD_DIR:-build}"
args=(-S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release)
[ -n "${CUDA_ARCHS:-}" ] && args+=("-DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHS}")
cmake "${args[@]}" > /dev/null
cmake --build "$BUILD" -j "${MPT_JOBS:-$(nproc)}"
