#!/usr/bin/env bash
# launch/train.sh CONFIG [NGPUS] [mptrain train options...]
# One rank per GPU on this node (NGPUS defaults to every visible GPU), NCCL settings passed through.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "usage: launch/train.sh CONFIG [NGPUS] [--set key=value ...]" >&2; exit 2; }
CONFIG=$1; shift
NGPUS=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)
if [ $# -ge 1 ] && [[ $1 =~ ^[0-9]+$ ]]; then NGPUS=$1; shift; fi
[ "${NGPUS:-0}" -ge 1 ] || { echo "launch/train.sh: no GPU found (use mpirun ... --set device=cpu for CPU ranks)" >&2; exit 2; }
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
pass=(-x NCCL_NVLS_ENABLE -x LD_LIBRARY_PATH)
for v in $(env | grep -oE '^NCCL_[A-Z_]+' || true); do pass+=(-x "$v"); done
[ "$(id -u)" = 0 ] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
exec mpirun -np "$NGPUS" --bind-to none "${pass[@]}" "${MPTRAIN:-build/mptrain}" train "$CONFIG" --set device=cuda "$@"
