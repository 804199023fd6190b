#!/usr/bin/env bash
# Per-op profile of one steady-state training step on one rank: `mptrain profile`, whose table lists every
# op (kernel and shape) with its launches, ms per step, share of the step, and achieved TFLOP/s or GB/s
# against the device's ceilings; the rows and the step come from one timeline of CUDA events (host clocks
# on CPU ranks), and the row "not in any op" is what the ops do not cover (launch gaps, copies, host waits).
#   bash launch/profile.sh CONFIG [--warmup N] [--steps N] [--profiled-steps N] [--without-comm] [--out FILE.json]
#        [--set key=value ...]
# --profiled-steps N: the rows are the mean of N profiled steps (default 1). --without-comm (several ranks:
# run it under mpirun): as many steps again with the bucket collectives skipped (debug.skip_bucket_comm), in
# chunks of 4 alternating with, without, without, with, ... (the clocks' drift falls on both sides alike), and
# a table of every op's time with, without and the difference, rank by rank: where communication slows the
# step. Every rank's rows go into --out.
# e.g. bash launch/profile.sh configs/gpt2-124m.json --set train.batch_size=16 --set precision.mode=bf16
# Uses $MPTRAIN, else build/mptrain (launch/build.sh builds it). The device is the config's (`device`).
set -euo pipefail
cd "$(dirname "$0")/.."
MPTRAIN="${MPTRAIN:-build/mptrain}"
[ -x "$MPTRAIN" ] || { echo "profile: no mptrain at $MPTRAIN (run launch/build.sh, or set MPTRAIN)" >&2; exit 1; }
[ $# -ge 1 ] || { echo "usage: launch/profile.sh CONFIG [--warmup N] [--steps N] [--profiled-steps N] [--without-comm] [--out FILE.json] [--set k=v ...]" >&2; exit 2; }
exec "$MPTRAIN" profile "$@"
