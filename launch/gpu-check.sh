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
#   attention  mptrain bench-attention (bf16, fp16; the CUDA-core kernels for scale) beside PyTorch's
#              scaled_dot_product_attention backends (tests/reference/attention_peer.py), B=16 T=1024 H=12 D=64
#   profile    mptrain profile of gpt2-124m at B=16 on one GPU, bf16 and fp16 (per-op tables); with
#              PROFILE_SIMT=1 also bf16 with the CUDA-core attention (the table before the tensor-core kernels);
#              PROFILE_MODES="bf16" profiles that precision only
#   commcost   mptrain profile --without-comm of gpt2-124m bf16 ZeRO-1 at B=16 on all GPUs: every op's time with
#              and without the bucket collectives, on every rank (where communication slows the step); then
#              (COMMCOST_MEET=0 skips it) GPU 0 alone against all GPUs without the bucket collectives
#              (launch/profile_diff.py, rank by rank: what meeting every step costs each op);
#              COMMCOST_SETS adds --set options (e.g. "zero.copy_engine_reduce=false")
#   reliability  the watchdog on all GPUs (one rank SIGSTOPped: the job must end within watchdog.timeout_s
#              plus a margin, naming the wait; one rank killed: the job must end), and compute-sanitizer
#              memcheck over the GPU tests (SANITIZE_FILTER narrows them) and a short gpt2-tiny run on one GPU
#   scaling    mptrain bench-comm on all GPUs over NVLink and over the network transport (NCCL_P2P_DISABLE=1
#              NCCL_SHM_DISABLE=1), launch/bench.sh gpt2-124m at B=16 on 1 and all GPUs (bf16 ZeRO-1/2, fp16
#              ZeRO-1, the network-transport run, one-rank runs on every GPU at once, the PyTorch DDP peer) and
#              launch/project.py's projection;
#              BENCH_MODES, BENCH_STEPS, BENCH_PEER= (no peer), BENCH_NET= (no network run), SCALING_COMM=0
#              (no bench-comm and no projection)
#   sample     gpt2-tiny trained on one GPU, then mptrain sample from its checkpoint (twice: the same text);
#              mptrain sample of an untrained gpt2-124m with GPT-2 BPE (.data/gpt2-bpe, carried along) for the
#              tokens/s of generation; the bf16 export loaded by transformers' GPT2LMHeadModel.from_pretrained
#   maxbatch   the largest B of gpt2-124m (bf16, ZeRO-1) that fits on one GPU, and its tokens/s
#              (MAXBATCH_SIZES, default "256 320 336 352")
#   offload    zero.offload = cpu: gpt2-124m bf16 ZeRO-1 at B=16 with and without offload on 1 and all GPUs
#              (launch/bench.sh: ms/step and peak memory side by side), then the widest 12-layer GPT-2 (head
#              size 64, B=4, T=1024, bf16 ZeRO-1, fp32 states) that fits on one GPU without and with offload
#              (OFFLOAD_WIDTHS_GPU, OFFLOAD_WIDTHS_HOST: the widths tried; empty: none), and the same with int8 states
#              (OFFLOAD_WIDTHS_INT8, with and without offload); OFFLOAD_BENCH= skips the bench
#   features   the automatic precision policy on a GPU (mptrain analyze and train with precision.layers "auto"),
#              and gpt2-124m for 500 steps with fp32, int8 and bf16 AdamW states (loss and optimizer memory)
#   windows    zero.symmetric_memory on (with and without zero.copy_engine_reduce) and off on all GPUs: gpt2-124m
#              bf16 ZeRO 0/1/2 for 12 steps with the cross-rank parameter checksum every step; losses and
#              gradient norms must be bitwise equal
#   peer       the PyTorch peer (tests/reference/peer_gpt2.py: torch.compile, autocast, SDPA, fused AdamW) and
#              mptrain, gpt2-124m at B=16 T=1024 on one GPU, bf16 and fp16, in this call: ms/step, tokens/s,
#              peak memory, ratio; PEER_UNTUNED=1 also runs mptrain with MPT_GEMM_TUNE=0 (the GEMM tuning's gain)
# GTEST_FILTER (tests part) runs only the matching GPU test cases, on 1 and 2 ranks, without ctest;
# TRAIN_FILTER (any parts) runs the matching training tests on GPUs, on 1 and all GPUs.
# Data: Fashion-MNIST from $MPT_DATA_DIR (default /usr/share/datasets/fashion-mnist, else .data/fashion-mnist);
# token shards from .data/text (launch/prepare-text.sh writes them). On a machine without the Debian dataset
# package, bring both folders along (the device tool: carry .data/fashion-mnist and .data/text): the
# training tests (tests part) read Fashion-MNIST, and without it most of them fail at once.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-check-out}"
mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 NCCL_NVLS_ENABLE=0
DATA="${MPT_DATA_DIR:-/usr/share/datasets/fashion-mnist}"
[ -f "$DATA/train-images-idx3-ubyte.gz" ] || DATA="$PWD/.data/fashion-mnist"
export MPT_FASHION_MNIST_DIR="$DATA"
NGPU=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
NPS=$( (echo 1; echo "$NGPU") | sort -un | tr '\n' ' ')  # 1 rank, and all GPUs when there are more
PARTS="${*:-build tests reference gpt2 smoke precision attention profile commcost reliability scaling windows sample peer}"
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

if want tests && [ -n "${GTEST_FILTER:-}" ]; then
  echo "== GPU tests matching $GTEST_FILTER"
  for np in $NPS; do
    timeout 600 mpirun -np "$np" --bind-to none build-gpu/tests/gpu_tests --gtest_filter="$GTEST_FILTER" --gtest_color=no \
      > "$OUT/gpu-tests-np$np.log" 2>&1 || status=1
    grep -E "^\[  (PASSED|FAILED|  OK) |Failure|error|ratio" "$OUT/gpu-tests-np$np.log" | sed "s/^/np$np: /" | head -80
  done
elif want tests; then
  echo "== GPU tests"
  (cd build-gpu && ctest -L gpu --output-on-failure) > "$OUT/gpu-tests.log" 2>&1 || status=1
  grep -E "tests passed|FAILED|Skipped|\[  PASSED|\[  FAILED|\[ info" "$OUT/gpu-tests.log" | head -60
  [ "${SKIP_TRAIN_TESTS:-0}" = 1 ] || echo "== training tests on GPUs"
  [ "${SKIP_TRAIN_TESTS:-0}" = 1 ] || for np in $NPS; do
    MPT_TEST_DEVICE=cuda timeout 300 mpirun -np "$np" --bind-to none build-gpu/tests/train_tests > "$OUT/train-tests-np$np.log" 2>&1 || status=1
    grep -E "info|OK \]|FAILED|Failure|PASSED|SKIPPED" "$OUT/train-tests-np$np.log" | sed "s/^/np$np: /"
  done
fi

if [ -n "${TRAIN_FILTER:-}" ]; then
  echo "== training tests on GPUs matching $TRAIN_FILTER"
  for np in $NPS; do
    MPT_TEST_DEVICE=cuda timeout 300 mpirun -np "$np" --bind-to none build-gpu/tests/train_tests --gtest_filter="$TRAIN_FILTER" \
      --gtest_color=no > "$OUT/train-tests-np$np.log" 2>&1 || status=1
    grep -E "OK \]|FAILED|Failure|PASSED|SKIPPED" "$OUT/train-tests-np$np.log" | sed "s/^/np$np: /"
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
    echo "np=$1 $2 ZeRO-$3: $(grep -E '^(step +1/|step +'"$STEPS"'/|summary|throughput|model:)' "$OUT/$tag.log" | sed 's/  */ /g' | tr '\n' ' ')"
  }
  for mode in fp16 bf16; do gpt2 1 "$mode" 0; done
  if [ "$NGPU" -ge 2 ]; then
    for mode in bf16 fp16; do for z in 0 1 2; do gpt2 "$NGPU" "$mode" "$z"; done; done
  fi
fi

if want smoke; then
  echo "== smoke"
  for np in $NPS; do
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
if want attention; then
  echo "== attention: mptrain kernels and PyTorch SDPA, B=16 T=1024 H=12 D=64 causal"
  for dt in bf16 fp16; do
    "$MPT" bench-attention --dtype $dt --out "$OUT/attn-mpt-$dt.json" 2>&1 | tee -a "$OUT/attention.log" || status=1
    python3 tests/reference/attention_peer.py --dtype $dt --out "$OUT/attn-torch-$dt.json" 2>&1 \
      | tee -a "$OUT/attention.log" || status=1
  done
  MPT_ATTENTION=simt "$MPT" bench-attention --dtype bf16 --iters 3 2>&1 | tee -a "$OUT/attention.log" || status=1
  if [ "${ATTN_SWEEP:-0}" = 1 ]; then
    echo "-- block shapes at D=64 (MPT_FLASH), bf16; backward parts alone (MPT_FLASH_BWD)"
    for cfg in fwd=4x2,dkdv=4,dq=4 fwd=8x1,dkdv=8,dq=8 fwd=4x1,dkdv=4,dq=8 fwd=8x2,dkdv=8,dq=4; do
      echo "$cfg: $(MPT_FLASH=$cfg "$MPT" bench-attention --dtype bf16 --iters 10 2>&1 | grep -E 'forward|backward' | tr -s ' ' | tr '\n' ' ')"
      for part in dkdv dq; do
        echo "  $part only: $(MPT_FLASH=$cfg MPT_FLASH_BWD=$part "$MPT" bench-attention --dtype bf16 --iters 10 2>&1 | grep backward | tr -s ' ')"
      done
    done 2>&1 | tee -a "$OUT/attention-sweep.log"
  fi
fi

if want profile; then
  echo "== profile: gpt2-124m, B=16 T=1024, one GPU"
  prof() {  # tag mode [env]
    env ${3:-} timeout 300 "$MPT" profile configs/gpt2-124m.json --set device=cuda --set precision.mode="$2" \
      --set train.batch_size=16 --out "$OUT/profile-$1.json" > "$OUT/profile-$1.log" 2>&1 || status=1
    echo "-- $1"; head -45 "$OUT/profile-$1.log"
  }
  [ "${PROFILE_SIMT:-0}" = 1 ] && prof bf16-simt bf16 MPT_ATTENTION=simt
  for m in ${PROFILE_MODES:-bf16 fp16}; do prof "$m" "$m"; done
fi

if want commcost; then
  echo "== commcost: gpt2-124m bf16 ZeRO-1, B=16, on $NGPU GPU(s), with and without the bucket collectives"
  sets=(); for kv in ${COMMCOST_SETS:-}; do sets+=(--set "$kv"); done
  # 150 warm-up steps (~5 s): a power-capped GPU settles its clocks first (see README, steady state).
  timeout 300 $RUN -np "$NGPU" "$MPT" profile configs/gpt2-124m.json --set device=cuda --set precision.mode=bf16 \
    --set zero.stage=1 --set train.batch_size=16 "${sets[@]}" --warmup 150 --steps 40 --profiled-steps 40 --without-comm \
    --out "$OUT/commcost.json" > "$OUT/commcost.log" 2>&1 || status=1
  sed -n "/^by rank/p;/^communication's cost/,\$p" "$OUT/commcost.log" | head -40
  if [ "$NGPU" -gt 1 ] && [ "${COMMCOST_MEET:-1}" = 1 ]; then
    # What the ranks meeting every step costs each op: GPU 0 alone against all GPUs without the bucket
    # collectives (ZeRO-1 there also halves each rank's optimizer work).
    pargs=(configs/gpt2-124m.json --set device=cuda --set precision.mode=bf16 --set zero.stage=1 --set train.batch_size=16
           "${sets[@]}" --warmup 150 --steps 40 --profiled-steps 40)
    CUDA_VISIBLE_DEVICES=0 timeout 300 "$MPT" profile "${pargs[@]}" --out "$OUT/commcost-1gpu.json" \
      > "$OUT/commcost-1gpu.log" 2>&1 || status=1
    timeout 300 $RUN -np "$NGPU" "$MPT" profile "${pargs[@]}" --set debug.skip_bucket_comm=true \
      --out "$OUT/commcost-nocomm.json" > "$OUT/commcost-nocomm.log" 2>&1 || status=1
    for ((r = 0; r < NGPU; r++)); do
      echo "-- one GPU (A) against rank $r of $NGPU GPUs without the bucket collectives (B)"
      python3 launch/profile_diff.py "$OUT/commcost-1gpu.json" "$OUT/commcost-nocomm.json" --rank-b $r --rows 12
    done
  fi
fi

if want reliability; then
  echo "== reliability: watchdog on $NGPU GPU(s), compute-sanitizer memcheck"
  tiny=(configs/gpt2-tiny.json --set device=cuda --set train.steps=1000000 --set log.every=1 --set train.eval_every=0)
  pids_of() { for p in $(pgrep -x mptrain); do tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -q -- "$1" && echo "$p"; done; }
  for how in STOP KILL; do
    marker="$OUT/wd-$how"
    start=$(date +%s)
    timeout 200 $RUN -np "$NGPU" "$MPT" train "${tiny[@]}" --set watchdog.timeout_s=10 \
      --set log.metrics="\"$marker.jsonl\"" > "$OUT/watchdog-$how.log" 2>&1 &
    job=$!
    for i in $(seq 1 600); do grep -q "^step" "$OUT/watchdog-$how.log" && break; sleep 0.2; done
    sleep 2
    victim=$(pids_of "$marker" | tail -1)
    [ -n "$victim" ] && kill -$how "$victim"
    wait $job; rc=$?
    took=$(( $(date +%s) - start ))
    [ -n "$victim" ] && { kill -CONT "$victim" 2>/dev/null; kill -9 "$victim" 2>/dev/null; }
    verdict=FAIL
    if [ "$how" = STOP ]; then
      [ "$rc" != 0 ] && [ "$rc" != 124 ] && grep -q "watchdog: no progress for [0-9]* s .* in step [0-9]*, waiting in the " "$OUT/watchdog-$how.log" && verdict=ok
    else
      [ "$rc" != 0 ] && [ "$rc" != 124 ] && verdict=ok
    fi
    [ "$verdict" = ok ] || status=1
    echo "watchdog $verdict: SIG$how of rank $(( NGPU - 1 )) of $NGPU -> exit $rc after ${took} s (timeout_s 10): $(grep -m1 -E 'watchdog:|exited on signal|mptrain: \[' "$OUT/watchdog-$how.log" | cut -c1-220)"
  done
  # API errors are not reported: NCCL's set-up probes cudaFuncGetAttributes on kernels built for other
  # architectures and gets cudaErrorNoKernelImageForDevice by design; mptrain checks every CUDA call itself.
  if command -v compute-sanitizer > /dev/null || [ -x /usr/local/cuda/bin/compute-sanitizer ]; then
    CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
    timeout 420 "$CS" --tool memcheck --report-api-errors no --error-exitcode 99 --print-limit 20 build-gpu/tests/gpu_tests \
      --gtest_filter="${SANITIZE_FILTER:-*}" > "$OUT/memcheck-gpu-tests.log" 2>&1
    rc=$?; [ "$rc" = 0 ] || status=1
    echo "memcheck gpu_tests: exit $rc: $(grep -E '^\[  PASSED|^\[  FAILED|ERROR SUMMARY' "$OUT/memcheck-gpu-tests.log" | tr '\n' ' ')"
    timeout 300 "$CS" --tool memcheck --report-api-errors no --error-exitcode 99 --print-limit 20 "$MPT" train configs/gpt2-tiny.json \
      --set device=cuda --set train.steps=6 --set train.eval_every=3 --set train.eval_batches=2 \
      --set log.metrics="\"$OUT/memcheck-train.jsonl\"" > "$OUT/memcheck-train.log" 2>&1
    rc=$?; [ "$rc" = 0 ] || status=1
    echo "memcheck gpt2-tiny training: exit $rc: $(grep -E '^summary|ERROR SUMMARY' "$OUT/memcheck-train.log" | tr '\n' ' ')"
  else
    echo "compute-sanitizer not found"; status=1
  fi
fi

if want scaling; then
  echo "== scaling: collectives, the benchmark on 1 and $NGPU GPU(s) with the PyTorch peer, the projection"
  # SCALING_COMM=0: the benchmark only (no bench-comm, no projection); BENCH_NET= leaves out the network run.
  if [ "${SCALING_COMM:-1}" = 1 ]; then
    $RUN -np "$NGPU" "$MPT" bench-comm --out "$OUT/comm-nvlink.json" > "$OUT/comm-nvlink.log" 2>&1 || status=1
    grep "fit" "$OUT/comm-nvlink.log" | sed 's/^/nvlink: /'
    $RUN -x NCCL_P2P_DISABLE=1 -x NCCL_SHM_DISABLE=1 -np "$NGPU" "$MPT" bench-comm --max-bytes 67108864 \
      --out "$OUT/comm-net.json" > "$OUT/comm-net.log" 2>&1 || status=1
    grep "fit" "$OUT/comm-net.log" | sed 's/^/net: /'
  fi
  MPTRAIN="$MPT" timeout 500 bash launch/bench.sh configs/gpt2-124m.json --modes "${BENCH_MODES:-bf16:1 bf16:2 fp16:1}" \
    --steps "${BENCH_STEPS:-100}" $([ -n "${BENCH_PEER-x}" ] && echo --peer || echo --no-peer) ${BENCH_NET---net} --out "$OUT/bench" --set train.batch_size=16 2>&1 | tail -30 || status=1
  [ "${SCALING_COMM:-1}" = 1 ] && { python3 launch/project.py --bench "$OUT/bench/bench.json" --comm "$OUT/comm-nvlink.json" \
    --comm-net "$OUT/comm-net.json" --out "$OUT/projection" 2>&1 | tail -40 || status=1; }
fi

if want sample; then
  echo "== sample"
  ck="$OUT/sample-ck"; rm -rf "$ck"
  timeout 120 "$MPT" train configs/gpt2-tiny.json --set device=cuda --set checkpoint.dir="\"$ck\"" \
    --set checkpoint.every_steps=150 --set log.metrics="\"$OUT/sample-train.jsonl\"" > "$OUT/sample-train.log" 2>&1 || status=1
  grep "^summary" "$OUT/sample-train.log"
  for i in 1 2; do
    timeout 60 "$MPT" sample configs/gpt2-tiny.json --set device=cuda --set checkpoint.dir="\"$ck\"" --prompt "The " \
      --tokens 200 --seed 3 > "$OUT/sample-$i.txt" 2> "$OUT/sample-$i.err" || status=1
  done
  cmp -s "$OUT/sample-1.txt" "$OUT/sample-2.txt" && echo "sample ok: the same seed gives the same text:" || { echo "sample FAIL: differs"; status=1; }
  head -c 400 "$OUT/sample-1.txt"; echo; cat "$OUT/sample-1.err"
  if [ -s .data/gpt2-bpe/encoder.json ]; then
    start=$(date +%s.%N)
    timeout 120 "$MPT" sample configs/gpt2-124m.json --set device=cuda --bpe .data/gpt2-bpe --prompt "Hello, my name is" \
      --tokens 200 --temperature 0 > "$OUT/sample-bpe.txt" 2> "$OUT/sample-bpe.err" || status=1
    echo "BPE sample, untrained gpt2-124m (greedy), $(python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 1))" "$start" "$(date +%s.%N)") s with start-up:"
    head -c 300 "$OUT/sample-bpe.txt"; echo; tail -2 "$OUT/sample-bpe.err"
  fi
  timeout 120 "$MPT" export configs/gpt2-tiny.json --set device=cuda --set checkpoint.dir="\"$ck\"" --out "$OUT/hf/" \
    --dtype bf16 > "$OUT/export.log" 2>&1 || status=1
  python3 - "$OUT/hf" <<'PY' || status=1
import sys, torch
from transformers import GPT2LMHeadModel
m = GPT2LMHeadModel.from_pretrained(sys.argv[1])
ids = torch.tensor([[84, 104, 101, 32]])
out = m(ids, labels=ids)
print(f"HF from_pretrained ok: {type(m).__name__}, {m.config.n_layer} layers, vocab {m.config.vocab_size}, "
      f"dtype {next(m.parameters()).dtype}, logits {tuple(out.logits.shape)}, loss {out.loss.item():.4f}")
PY
fi

if want features; then
  echo "== automatic precision policy on a GPU (gpt2-124m shapes, 2 layers, B=4)"
  A=(--set device=cuda --set model.n_layer=2 --set train.batch_size=4 --set precision.mode=auto --set precision.layers='"auto"')
  timeout 240 "$MPT" analyze configs/gpt2-124m.json "${A[@]}" --batches 1 > "$OUT/auto-analyze.log" 2>&1 || status=1
  timeout 240 "$MPT" train configs/gpt2-124m.json "${A[@]}" \
    --set precision.reanalyze_every=10 --set train.steps=20 --set train.eval_every=0 \
    --set log.metrics="\"$OUT/auto-train.jsonl\"" > "$OUT/auto-train.log" 2>&1 || status=1
  for f in auto-analyze auto-train; do
    echo "$f: $(awk '/^auto precision:/{on=1;print;next} on&&/^  /{print;next}{on=0}' "$OUT/$f.log" | head -12 | tr '\n' '|')"
  done
  grep -E "^summary|Error|error" "$OUT/auto-train.log" | head -5
  echo "precision_auto events: $(grep -c '"precision_auto"' "$OUT/auto-train.jsonl" 2>/dev/null)"  echo "== AdamW states fp32 / int8 / bf16: gpt2-124m, 500 steps on one GPU (optimizer.state_dtype)"
  for sd in fp32 int8 bf16; do
    timeout 200 $RUN -np 1 "$MPT" train configs/gpt2-124m.json --set device=cuda --set optimizer.state_dtype="\"$sd\"" \
      --set train.steps=500 --set train.eval_every=500 --set log.every=100 --set checkpoint.dir='""' \
      --set log.metrics="\"$OUT/states-$sd.jsonl\"" > "$OUT/states-$sd.log" 2>&1 || status=1
    echo "$sd: $(grep -E '^model:' "$OUT/states-$sd.log" | grep -oE 'adam [^,]*' | head -1) | $(grep -E '^summary' "$OUT/states-$sd.log")"
  done
  python3 launch/compare_loss.py "$OUT/states-fp32.jsonl" "$OUT/states-int8.jsonl" "$OUT/states-bf16.jsonl" --window 50 || status=1
fi

if want maxbatch; then
  echo "== largest batch on one GPU: gpt2-124m bf16, T=1024, ZeRO-1"
  for b in ${MAXBATCH_SIZES:-256 320 336 352}; do
    if timeout 120 "$MPT" bench configs/gpt2-124m.json --set device=cuda --set precision.mode=bf16 --set zero.stage=1 \
        --set train.batch_size=$b --warmup 1 --steps 2 > "$OUT/maxbatch-$b.log" 2>&1; then
      grep "^bench" "$OUT/maxbatch-$b.log" | sed "s/^bench: .*| bf16/B=$b: bf16/"
    else
      echo "B=$b: does not fit or failed: $(grep -m1 -iE 'memory|error' "$OUT/maxbatch-$b.log" | cut -c1-200)"
    fi
  done
fi

if want offload; then
  echo "== zero.offload = cpu: gpt2-124m bf16 ZeRO-1 B=16, without and with offload; host: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB"
  if [ -n "${OFFLOAD_BENCH-1}" ]; then
    MPTRAIN="$MPT" timeout 300 bash launch/bench.sh configs/gpt2-124m.json --modes "bf16:1 bf16:1:offload" \
      --steps "${BENCH_STEPS:-10}" --warmup 3 --out "$OUT/offload-bench" --set train.batch_size=16 2>&1 | grep -E "^bench|\|" || status=1
  fi
  echo "== the widest GPT-2 (12 layers, head size 64, B=4, T=1024, bf16 ZeRO-1, fp32 states) on one GPU"
  width_try() {  # width offload(none|cpu) state_dtype
    local w=$1 off=$2 sd=$3 log="$OUT/width-$1-$2-$3.log"
    local params=$(( 12 * (12 * w * w + 13 * w) + (50304 + 1024 + 2) * w ))
    if timeout 240 "$MPT" bench configs/gpt2-124m.json --set device=cuda --set precision.mode=bf16 --set zero.stage=1 \
        --set model.n_embd=$w --set model.n_head=$((w / 64)) --set train.batch_size=4 --set zero.offload="\"$off\"" \
        --set optimizer.state_dtype="\"$sd\"" --warmup 1 --steps 2 > "$log" 2>&1; then
      echo "width $w ($((params / 1000000))M params) offload $off, $sd states: fits | $(grep -oE '[0-9.]+ ms/step' "$log") | $(grep -oE 'peak [0-9.]+ GiB' "$log")"
    else
      echo "width $w ($((params / 1000000))M params) offload $off, $sd states: does not fit or failed: $(grep -m1 -iE 'memory|error|alloc|killed' "$log" | cut -c1-220)"
    fi
  }
  for w in ${OFFLOAD_WIDTHS_GPU-6656 7168}; do width_try "$w" none fp32; done
  for w in ${OFFLOAD_WIDTHS_HOST-7168}; do width_try "$w" cpu fp32; done
  for w in ${OFFLOAD_WIDTHS_INT8-9216}; do width_try "$w" none int8; width_try "$w" cpu int8; done
fi

if want windows && [ "$NGPU" -ge 2 ]; then
  echo "== symmetric memory on gpt2-124m: $NGPU GPUs, bf16, ZeRO 0/1/2, 12 steps: windows with the copy-engine reduce-scatter, windows with NCCL's, no windows"
  # Full-size buckets (the copy-engine all-gather, all-to-all and symmetric reduce-scatter run at these sizes)
  # with the parameter checksum compared across ranks every step; a sum over 2 ranks is one addition on any
  # path, so the losses and gradient norms must be bitwise those of NCCL's ordinary kernels.
  for z in 0 1 2; do
    for v in ce ncclrs plain; do
      case $v in
        ce) sets=(--set zero.symmetric_memory=true --set zero.copy_engine_reduce=true) ;;
        ncclrs) sets=(--set zero.symmetric_memory=true --set zero.copy_engine_reduce=false) ;;
        plain) sets=(--set zero.symmetric_memory=false) ;;
      esac
      timeout 120 $RUN -np "$NGPU" "$MPT" train configs/gpt2-124m.json --set device=cuda --set precision.mode=bf16 \
        --set zero.stage=$z --set train.steps=12 --set train.eval_every=0 --set debug.check_consistency=true \
        "${sets[@]}" --set log.metrics="\"$OUT/windows-z$z-$v.jsonl\"" > "$OUT/windows-z$z-$v.log" 2>&1 || status=1
    done
    python3 - "$OUT/windows-z$z-ce.jsonl" "$OUT/windows-z$z-ncclrs.jsonl" "$OUT/windows-z$z-plain.jsonl" "$z" <<'PY' || status=1
import json, sys
def steps(p):
    try:
        return [(r["step"], r["loss"], r["grad_norm"]) for r in map(json.loads, open(p)) if r.get("type") == "step"]
    except OSError:
        return []
a, b, c = steps(sys.argv[1]), steps(sys.argv[2]), steps(sys.argv[3])
ok = len(a) == 12 and a == b == c
print(f"windows ZeRO-{sys.argv[4]}: {'identical' if ok else 'DIFFERENT'} losses and norms over {len(a)} steps "
      f"(copy-engine reduce-scatter, NCCL's on windows, no windows; last loss {a[-1][1] if a else 'n/a'})")
sys.exit(0 if ok else 1)
PY
  done
fi

if want peer; then
  echo "== peer: PyTorch and mptrain, gpt2-124m B=16 T=1024, one GPU"
  PSTEPS="${PEER_STEPS:-30}"
  for dt in bf16 fp16; do
    timeout 400 python3 tests/reference/peer_gpt2.py --dtype $dt --steps "$PSTEPS" --data .data/text/train-00000.bin \
      --out "$OUT/peer-torch-$dt.json" > "$OUT/peer-torch-$dt.log" 2>&1 || status=1
    grep "^peer:" "$OUT/peer-torch-$dt.log" || tail -5 "$OUT/peer-torch-$dt.log"
    timeout 300 "$MPT" train configs/gpt2-124m.json --set device=cuda --set precision.mode=$dt \
      --set train.batch_size=16 --set train.steps="$PSTEPS" --set train.eval_every=0 \
      --set log.metrics="\"$OUT/peer-mpt-$dt.jsonl\"" > "$OUT/peer-mpt-$dt.log" 2>&1 || status=1
    grep -E "^(summary|throughput)" "$OUT/peer-mpt-$dt.log"
  done
  if [ "${PEER_UNTUNED:-0}" = 1 ]; then  # mptrain again with the GEMM tuning off (same call: its gain)
    for dt in bf16 fp16; do
      MPT_GEMM_TUNE=0 timeout 300 "$MPT" train configs/gpt2-124m.json --set device=cuda --set precision.mode=$dt \
        --set train.batch_size=16 --set train.steps="$PSTEPS" --set train.eval_every=0 \
        > "$OUT/peer-mpt-$dt-untuned.log" 2>&1 || status=1
      echo "$dt, MPT_GEMM_TUNE=0: $(grep -E '^throughput' "$OUT/peer-mpt-$dt-untuned.log")"
    done
  fi
  python3 - "$OUT" <<'PY'
import json, statistics, sys
out = sys.argv[1]
for dt in ("bf16", "fp16"):
    try:
        t = json.load(open(f"{out}/peer-torch-{dt}.json"))
        recs = [json.loads(l) for l in open(f"{out}/peer-mpt-{dt}.jsonl")]
        steps = [r for r in recs if r["type"] == "step"]
        ms = 1e3 * statistics.median(s["step_s"] for s in steps[10:])
        summ = [r for r in recs if r["type"] == "summary"][-1]
        tok = 16 * 1024 / (ms / 1e3)
        print(f"{dt}: mptrain {ms:.1f} ms/step {tok:,.0f} tok/s, peak {summ['peak_allocated_bytes'] / 2**30:.2f} GiB "
              f"allocated ({summ['device_used_bytes'] / 2**30:.2f} in use) | PyTorch {t['median_step_ms']:.1f} ms/step "
              f"{t['tokens_per_s']:,.0f} tok/s, peak {t['peak_gib']:.2f} GiB allocated ({t['device_used_gib']:.2f} in use)"
              f" | mptrain / PyTorch tokens/s = {tok / t['tokens_per_s']:.3f}")
    except Exception as e:
        print(f"{dt}: no comparison ({e})")
PY
fi
exit $status
