#!/usr/bin/env bash
# One call on a GPU machine: build, GPU tests (CUDA kernels vs CPU twins, NCCL collectives), the training
# tests on GPUs (ZeRO stages agree, identical ranks, injected overflow, 2 GPUs vs 1), and the smoke config
# in fp32/fp16/bf16 on 1 GPU and on all GPUs. Logs go to $OUT (or ./gpu-check-out).
# Fashion-MNIST is read from $MPT_DATA_DIR (default /usr/share/datasets/fashion-mnist, else .data/fashion-mnist).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-check-out}"
mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 NCCL_NVLS_ENABLE=0
DATA="${MPT_DATA_DIR:-/usr/share/datasets/fashion-mnist}"
[ -f "$DATA/train-images-idx3-ubyte.gz" ] || DATA="$PWD/.data/fashion-mnist"
export MPT_FASHION_MNIST_DIR="$DATA"
NGPU=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

echo "== build"
MPT_BUILD_DIR=build-gpu MPT_JOBS=$(nproc) CUDA_ARCHS="${CUDA_ARCHS:-90}" bash launch/build.sh > "$OUT/build.log" 2>&1 \
  || { tail -50 "$OUT/build.log"; exit 1; }
status=0
echo "== GPU tests"
(cd build-gpu && ctest -L gpu --output-on-failure) > "$OUT/gpu-tests.log" 2>&1 || status=1
grep -E "tests passed|FAILED|Skipped|\[  PASSED|\[  FAILED" "$OUT/gpu-tests.log" | head -40
echo "== training tests on GPUs"
for np in 1 $NGPU; do
  MPT_TEST_DEVICE=cuda mpirun -np "$np" --bind-to none build-gpu/tests/train_tests > "$OUT/train-tests-np$np.log" 2>&1 || status=1
  grep -E "info|OK \]|FAILED|Failure|PASSED" "$OUT/train-tests-np$np.log" | sed "s/^/np$np: /"
done
echo "== smoke"
for np in 1 $NGPU; do
  for mode in fp32 fp16 bf16; do
    mpirun -np "$np" --bind-to none -x NCCL_NVLS_ENABLE build-gpu/mptrain train configs/smoke.json --set device=cuda \
      --set precision.mode=$mode --set data.dir="\"$DATA\"" --set log.metrics="\"$OUT/smoke-$mode-np$np.jsonl\"" \
      > "$OUT/smoke-$mode-np$np.log" 2>&1 || status=1
    echo "np=$np $mode: $(grep -E '^(epoch|summary)' "$OUT/smoke-$mode-np$np.log" | tr '\n' ' ')"
  done
done
exit $status
