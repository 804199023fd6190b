#!/usr/bin/env bash
# The scaling benchmark: `mptrain bench` at each world size on this node, the PyTorch peer (DDP) at the same
# sizes in the same call, and the report: bench.json (rows + weak-scaling efficiency), bench.md (a table)
# and scaling.png (launch/plot.py; needs python3-matplotlib); steps/ holds every rank's time, readback wait and
# exposure per step for each mptrain row (`mptrain bench --steps-out`).
#   bash launch/bench.sh CONFIG [--gpus 1,2,...] [--cpu] [--ranks 1,2] [--modes "bf16:1 fp16:2"]
#        [--steps N] [--warmup 5] [--warmup-seconds S] [--peer | --no-peer] [--net] [--out DIR] [--set key=value ...]
#   --gpus     world sizes on GPUs (default: 1 and every GPU of the node)
#   --cpu      CPU ranks instead (world sizes from --ranks, default 1,2): what CI runs
#   --modes    precision:ZeRO-stage pairs, one series each (default "bf16:1"; on CPU "fp32:1"); a third
#              field "nooverlap" runs the pair with zero.overlap=false (every collective waited for at once:
#              the baseline that shows what overlap hides), "nosym" with zero.symmetric_memory=false (NCCL's
#              ordinary kernels for every collective), "nocomm" with debug.skip_bucket_comm=true (timing only:
#              no bucket collectives; the difference to the plain series is what communication costs a step,
#              contention included), "ncclrs" with zero.copy_engine_reduce=false (NCCL's reduce-scatter kernels
#              instead of the copy-engine all-to-all and a local sum), "noreorder" with zero.reorder_backward=false (block 0's weight gradients
#              in the plain backward order, before the embedding's), "offload" with zero.offload=cpu (master weights and
#              AdamW state in host memory, the update on host threads)
#   --steps    timed steps per row (default 100 on GPUs: several periods of a power-capped GPU's clock swings;
#              20 on CPU ranks)
#   --warmup-seconds  warm-up time after the --warmup steps (default 5 on GPUs, which a power-capped GPU needs
#              to settle its clocks after the load starts; 0 on CPU ranks); the peer warms up as long
#   --peer     also tests/reference/peer_gpt2.py under torchrun at each GPU count, in the first mode's precision
#              (same model shape, batch and sequence length as CONFIG; needs PyTorch): the peer rows and the
#              mptrain / PyTorch ratio. On GPUs this is the default when python3 can import torch and
#              torchrun is on the PATH (otherwise a note says the peer rows are left out); --no-peer skips it
#   --net      also the largest GPU count again, first mode, with NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1: the
#              ranks talk through the network transport (sockets here), the nearest stand-in for two nodes
#   --independent / --no-independent  also the first mode as N independent one-rank runs at once, one per GPU
#              (N = the largest world size; CUDA_VISIBLE_DEVICES picks each run's GPU): the series "... independent",
#              every GPU loaded as in the N-GPU run but with no collective and no step in lockstep. Its efficiency
#              against the one-GPU row is what the node's GPUs give with nothing shared; below it, the "nocomm"
#              series adds the ranks meeting every step, the plain series adds communication. Default on GPUs
#              when the largest world size is above 1; on CPU ranks only with --independent.
set -uo pipefail
cd "$(dirname "$0")/.."
MPT="${MPTRAIN:-build/mptrain}"
[ -n "${MPT_BUILD_DIR:-}" ] && MPT="$MPT_BUILD_DIR/mptrain"
[ -x "$MPT" ] || { echo "bench: $MPT not found (run launch/build.sh, or set MPTRAIN)" >&2; exit 2; }
[ $# -ge 1 ] || { sed -n 2,15p "$0" >&2; exit 2; }
CONFIG=$1; shift
[ -f "$CONFIG" ] || { echo "bench: $CONFIG: no such config file" >&2; exit 2; }
NGPU=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
SIZES=""; CPU=0; MODES=""; STEPS=""; WARMUP=5; WSECS=""; PEER=auto; NET=0; INDEP=auto; OUTDIR=""; SETS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --gpus|--ranks) SIZES=$(echo "$2" | tr ',' ' '); shift 2 ;;
    --cpu) CPU=1; shift ;;
    --modes) MODES=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --warmup-seconds) WSECS=$2; shift 2 ;;
    --peer) PEER=1; shift ;;
    --no-peer) PEER=0; shift ;;
    --net) NET=1; shift ;;
    --independent) INDEP=1; shift ;;
    --no-independent) INDEP=0; shift ;;
    --out) OUTDIR=$2; shift 2 ;;
    --set) SETS+=(--set "$2"); shift 2 ;;
    *) echo "bench: unknown option $1" >&2; exit 2 ;;
  esac
done
if [ "$CPU" = 0 ] && [ "$NGPU" -lt 1 ]; then echo "bench: no GPU here; --cpu benchmarks CPU ranks" >&2; exit 2; fi
if [ "$CPU" = 1 ]; then DEV=cpu; SIZES=${SIZES:-"1 2"}; MODES=${MODES:-"fp32:1"}; STEPS=${STEPS:-20}; WSECS=${WSECS:-0}
else DEV=cuda; SIZES=${SIZES:-$( (echo 1; echo "$NGPU") | sort -un | tr '\n' ' ')}; MODES=${MODES:-"bf16:1"}; STEPS=${STEPS:-100}; WSECS=${WSECS:-5}; fi
OUTDIR=${OUTDIR:-runs/bench/$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUTDIR/rows" "$OUTDIR/steps" "$OUTDIR/independent"
export OMPI_MCA_rmaps_base_oversubscribe=1 NCCL_NVLS_ENABLE=0
RUN=(mpirun --bind-to none -x NCCL_NVLS_ENABLE)
[ "$(id -u)" = 0 ] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
status=0
one() {  # np mode stage tag [mpirun args...]
  local np=$1 mode=$2 stage=$3 tag=$4; shift 4
  "${RUN[@]}" "$@" -np "$np" "$MPT" bench "$CONFIG" --set device=$DEV --set precision.mode="$mode" \
    --set zero.stage="$stage" "${SETS[@]}" "${EXTRA[@]}" --warmup "$WARMUP" --warmup-seconds "$WSECS" --steps "$STEPS" --label "$tag" \
    --out "$OUTDIR/rows/mptrain-$np-${tag// /_}.json" --steps-out "$OUTDIR/steps/mptrain-$np-${tag// /_}.json" \
    > "$OUTDIR/rows/mptrain-$np-${tag// /_}.log" 2>&1 || status=1
  grep "^bench:" "$OUTDIR/rows/mptrain-$np-${tag// /_}.log" || tail -5 "$OUTDIR/rows/mptrain-$np-${tag// /_}.log"
}
EXTRA=()
for m in $MODES; do
  IFS=: read -r mode stage flag <<< "$m"
  tag="$mode ZeRO-$stage"; EXTRA=()
  case "$flag" in
    "") ;;
    nooverlap) tag="$tag no overlap"; EXTRA=(--set zero.overlap=false) ;;
    nosym) tag="$tag no symmetric memory"; EXTRA=(--set zero.symmetric_memory=false) ;;
    nocomm) tag="$tag no comm"; EXTRA=(--set debug.skip_bucket_comm=true) ;;
    ncclrs) tag="$tag NCCL reduce-scatter"; EXTRA=(--set zero.copy_engine_reduce=false) ;;
    noreorder) tag="$tag plain backward order"; EXTRA=(--set zero.reorder_backward=false) ;;
    offload) tag="$tag offload"; EXTRA=(--set 'zero.offload="cpu"') ;;
    *) echo "bench: unknown mode flag '$flag' in --modes $m (known: nooverlap, nosym, nocomm, ncclrs, noreorder, offload)" >&2; exit 2 ;;
  esac
  for np in $SIZES; do one "$np" "$mode" "$stage" "$tag"; done
done
EXTRA=()
first_mode=$(echo $MODES | cut -d' ' -f1)
if [ "$NET" = 1 ] && [ "$CPU" = 0 ]; then
  big=$(echo $SIZES | tr ' ' '\n' | sort -n | tail -1)
  IFS=: read -r mode stage _ <<< "$first_mode"
  [ "$big" -gt 1 ] && one "$big" "$mode" "$stage" "$mode ZeRO-$stage net" -x NCCL_P2P_DISABLE=1 -x NCCL_SHM_DISABLE=1
fi
big=$(echo $SIZES | tr ' ' '\n' | sort -n | tail -1)
[ "$INDEP" = auto ] && { [ "$CPU" = 0 ] && [ "$big" -gt 1 ] && INDEP=1 || INDEP=0; }
if [ "$INDEP" = 1 ] && [ "$big" -gt 1 ]; then
  # `big` one-rank runs at once, one per GPU; launch/bench_report.py joins their rows into one.
  devs=()  # the GPUs the runs take: CUDA_VISIBLE_DEVICES's list when set, else every GPU of the node
  if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then IFS=, read -ra devs <<< "$CUDA_VISIBLE_DEVICES"
  else for ((k = 0; k < NGPU; k++)); do devs+=("$k"); done; fi
  if [ "$CPU" = 0 ] && [ "$big" -gt "${#devs[@]}" ]; then
    echo "bench: --independent needs $big GPUs, ${#devs[@]} are visible" >&2; status=1
  else
    IFS=: read -r mode stage _ <<< "$first_mode"
    tag="$mode ZeRO-$stage"; pids=()
    # The runs meet after their warm-up (mptrain bench --rendezvous), so that their timed steps overlap.
    rv="$OUTDIR/independent/rendezvous-$big-${tag// /_}"
    rm -rf "$rv"; mkdir -p "$rv"
    for ((k = 0; k < big; k++)); do
      f="$OUTDIR/independent/mptrain-$big-$k-${tag// /_}"
      vis=(); [ "$CPU" = 0 ] && vis=("CUDA_VISIBLE_DEVICES=${devs[$k]}")
      env "${vis[@]}" "${RUN[@]}" -np 1 "$MPT" bench "$CONFIG" --set device=$DEV --set precision.mode="$mode" --set zero.stage="$stage" \
        "${SETS[@]}" --warmup "$WARMUP" --warmup-seconds "$WSECS" --steps "$STEPS" --label "$tag" \
        --rendezvous "$rv" --rendezvous-count "$big" --out "$f.json" --steps-out "$f.steps.json" > "$f.log" 2>&1 &
      pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || status=1; done
    for ((k = 0; k < big; k++)); do
      f="$OUTDIR/independent/mptrain-$big-$k-${tag// /_}"
      grep "^bench:" "$f.log" | head -1 | sed "s/^bench:/bench: independent run $k of $big:/" || tail -5 "$f.log"
    done
  fi
fi
if [ "$PEER" = auto ] && [ "$CPU" = 0 ]; then
  if command -v torchrun > /dev/null && python3 -c "import torch" 2> /dev/null; then PEER=1
  else PEER=0; echo "bench: no PyTorch (python3 -c 'import torch', torchrun) here: the peer rows are left out"; fi
fi
if [ "$PEER" = 1 ] && [ "$CPU" = 0 ]; then
  # The peer runs the shape of CONFIG (after --set): read it back from the first mptrain row.
  first=$(ls "$OUTDIR"/rows/mptrain-*.json | head -1)
  shape=$(python3 -c "
import json, sys; c = json.load(open(sys.argv[1]))['config']; m = c['model']
print(m['n_layer'], m['n_head'], m['n_embd'], m['vocab'], m['seq_len'], c['train']['batch_size'])" "$first") || status=1
  read -r L H C V T B <<< "$shape"
  shard=$(ls .data/text/train-*.bin 2>/dev/null | head -1)
  for m in $first_mode; do
    mode=${m%%:*}
    for np in $SIZES; do
      timeout 600 torchrun --standalone --nproc-per-node "$np" tests/reference/peer_gpt2.py --dtype "$mode" \
        --layers "$L" --heads "$H" --embd "$C" --vocab "$V" --seq "$T" --batch "$B" --steps $((STEPS + 10)) --warmup 10 --warmup-seconds "$WSECS" \
        ${shard:+--data "$shard"} --out "$OUTDIR/rows/pytorch-$np-$mode.json" > "$OUTDIR/rows/pytorch-$np-$mode.log" 2>&1 || status=1
      grep "^peer:" "$OUTDIR/rows/pytorch-$np-$mode.log" || tail -5 "$OUTDIR/rows/pytorch-$np-$mode.log"
    done
  done
fi
python3 launch/bench_report.py "$OUTDIR" --config "$CONFIG" || status=1
exit $status
