#!/usr/bin/env bash
# The unit, CPU-kernel, fuzz and collective tests built with AddressSanitizer and UndefinedBehaviorSanitizer
# (CMake option MPT_SANITIZE) in build-sanitize/ (or $MPT_BUILD_DIR). Any report fails the run. CI runs this
# after launch/test.sh. Leak checking is off: Open MPI keeps allocations to the end of the process on purpose.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh > /dev/null
BUILD="${MPT_BUILD_DIR:-build-sanitize}"
args=(-S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMPT_SANITIZE=ON)
[ -n "${CUDA_ARCHS:-}" ] && args+=("-DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHS}")
cmake "${args[@]}" > /dev/null
cmake --build "$BUILD" -j "${MPT_JOBS:-$(nproc)}" --target unit_tests kernel_tests fuzz_tests mpi_tests
export ASAN_OPTIONS="detect_leaks=0:protect_shadow_gap=0:abort_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
cd "$BUILD"
ctest --output-on-failure --timeout 1200 -L "unit|kernels|fuzz" "$@"
ctest --output-on-failure --timeout 1200 -R "mpi_tests_np[1-4]" "$@"
