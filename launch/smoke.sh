#!/usr/bin/env bash
# The smoke training from a fresh machine: set-up, build, then configs/smoke.json on every GPU of this
# node (one rank per GPU), or on 2 CPU ranks when there is no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
bash launch/build.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 NCCL_NVLS_ENABLE=0
ngpu=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)
mkdir -p runs/smoke
if [ "${ngpu:-0}" -gt 0 ]; then
  exec mpirun -np "$ngpu" --oversubscribe --bind-to none build/mptrain train configs/smoke.json --set device=cuda "$@"
else
  exec mpirun -np 2 --oversubscribe --bind-to none build/mptrain train configs/smoke.json --set device=cpu "$@"
fi
