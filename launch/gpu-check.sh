#!/usr/bin/env bash
# GPU checks and benchmarks in one script; logs go to $OUT (or ./gpu-check-out).
#   bash launch/gpu-check.sh [PART...]     PART: build tests reference gpt2 smoke precision (default: all)
#   build      configure + build for CUDA_ARCHS (default 90) in build-gpu
#   tests      ctest -L gpu (CUDA kernels vs CPU twins, NCCL) and the training tests on 1 and all GPUs
#   reference  tests/reference/gpt2_reference.py: mptrain's GPT-2 vs PyTorch (loss, logits, gradients,
#              10-step trajectories in fp32 and bf16)
#   gpt2       gpt2-124m on 1 GPU (fp16, bf16) and on all GPUs (fp16, bf16 x ZeRO 0/1/2): loss, tokens/s,
#              step time, peak memory per rank
#   smoke      the Fashion-MNIST smoke config in fp32/fp16/bf16 on 1 and all GPUs
#   precision  mptrain analyze, the fp16-underflow case and the fallback case on a GPU
# Data: Fashion-MNIST from $MPT_DATA_DIR (default /usr/share/datasets/fashion-mnist, else .data/fashion-mnist);
# token shards from .data/text (launch/prepare-text.sh writes them).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-check-out}"
mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 NCCL_NVLS_ENABLE=0
DATA="${MPT_DATA_DIR:-/usr/share/datasets/fashion-mnist}"
[ -f "$DATA/train-images-idx3-ubyte.gz" ] || DATA="$PWD/.data/fashion-mnist"
export MPT_FASHION_MNIST_DIR="$DATA"
NGPU=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
PARTS="${*:-build tests reference gpt2 smoke precision}"
want() { [[ " $PARTS " == *" $1 "* ]]; }
MPT=build-gpu/mptrain
RUN="mpirun --bind-to none -x NCCL_NVLS_ENABLE"
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"
status=0

if want build || [ ! -x "$MPT" ]; then
  echo "== build"
  MPT_BUILD_DIR=build-gpu MPT_JOBS=$(nproc) CUDA_ARCHS="${CUDA_ARCHS:-90}" bash launch/build.sh > "$OUT/build.log" 2>&1 \
    || { tail -50 "$OUT/build.log"; exit 1; }
fi

if want tests; then
  echo "== GPU tests"
  (cd build-gpu && ctest -L gpu --output-on-failure) > "$OUT/gpu-tests.log" 2>&1 || status=1
  grep -E "tests passed|FAILED|Skipped|\[  PASSED|\[  FAILED|\[ info" "$OUT/gpu-tests.log" | head -60
  echo "== training tests on GPUs"
  for np in 1 $NGPU; do
    MPT_TEST_DEVICE=cuda timeout 300 mpirun -np "$np" --bind-to none build-gpu/tests/train_tests > "$OUT/train-tests-np$np.log" 2>&1 || status=1
    grep -E "info|OK \]|FAILED|Failure|PASSED|SKIPPED" "$OUT/train-tests-np$np.log" | sed "s/^/np$np: /"
  done
fi

if want reference; then
  echo "== PyTorch reference check"
  timeout 300 python3 tests/reference/gpt2_reference.py --mptrain "$MPT" --workdir "$OUT/reference" \
    --set device=cuda > "$OUT/reference.log" 2>&1 || status=1
  cat "$OUT/reference.log" | grep -v "^+" | head -60
fi

if want gpt2; then
  echo "== gpt2-124m"
  STEPS="${GPT2_STEPS:-40}"
  gpt2() {  # np mode stage
    local tag="gpt2-$2-z$3-np$1"
    timeout 240 $RUN -np "$1" "$MPT" train configs/gpt2-124m.json --set device=cuda --set precision.mode="$2" \
      --set zero.stage="$3" --set train.steps="$STEPS" --set log.metrics="\"$OUT/$tag.jsonl\"" > "$OUT/$tag.log" 2>&1 || status=1
    echo "np=$1 $2 ZeRO-$3: $(grep -E '^(step +1 |step +'"$STEPS"' |summary|throughput|model:)' "$OUT/$tag.log" | sed 's/  */ /g' | tr '\n' ' ')"
  }
  for mode in fp16 bf16; do gpt2 1 "$mode" 0; done
  if [ "$NGPU" -ge 2 ]; then
    for mode in bf16 fp16; do for z in 0 1 2; do gpt2 "$NGPU" "$mode" "$z"; done; done
  fi
fi

if want smoke; then
  echo "== smoke"
  for np in 1 $NGPU; do
    for mode in fp32 fp16 bf16; do
      $RUN -np "$np" "$MPT" train configs/smoke.json --set device=cuda --set precision.mode=$mode \
        --set data.dir="\"$DATA\"" --set log.metrics="\"$OUT/smoke-$mode-np$np.jsonl\"" > "$OUT/smoke-$mode-np$np.log" 2>&1 || status=1
      echo "np=$np $mode: $(grep -E '^(epoch|summary)' "$OUT/smoke-$mode-np$np.log" | tr '\n' ' ')"
    done
  done
fi

if want precision; then
  echo "== precision: analyze, underflow, fallback"
  $MPT analyze configs/underflow.json --set device=cuda --set data.dir="\"$DATA\"" --batches 2 \
    --out "$OUT/analyze.json" > "$OUT/analyze.log" 2>&1 || status=1
  cat "$OUT/analyze.log"
  for case in "fp32 on" "fp16 off" "fp16 on"; do
    set -- $case
    $RUN -np "$NGPU" "$MPT" train configs/underflow.json --set device=cuda --set precision.mode=$1 \
      --set loss_scale.enabled=$2 --set data.dir="\"$DATA\"" > "$OUT/underflow-$1-$2.log" 2>&1 || status=1
    echo "underflow case $1 scaling=$2: $(grep -E '^summary' "$OUT/underflow-$1-$2.log")"
  done
  $RUN -np "$NGPU" "$MPT" train configs/overflow.json --set device=cuda --set data.dir="\"$DATA\"" \
    > "$OUT/fallback.log" 2>&1 || status=1
  grep -E "fallback|summary|stability" "$OUT/fallback.log" | head -5
fi
exit $status
