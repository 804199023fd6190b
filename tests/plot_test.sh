#!/usr/bin/env bash
# launch/plot.py: PNG curves from the metrics file of a short gpt2-tiny run on 2 CPU ranks (synthetic token
# shards drawn fresh each run), a scaling plot from a benchmark JSON with random rows, and clear errors
# (file and field named, exit 2) for bad input. Exit 77 (CTest: skipped) only when no python3 with
# matplotlib is found.
set -u
MPTRAIN=$1; SRC=$2
PLOT="$SRC/launch/plot.py"
PY=""
for cand in python3 /usr/bin/python3; do
  if command -v "$cand" > /dev/null && "$cand" -c "import matplotlib" 2> /dev/null; then PY=$cand; break; fi
done
if [ -z "$PY" ]; then echo "SKIP: no python3 with matplotlib (apt-get install python3-matplotlib)"; exit 77; fi
fail=0
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*"; fail=$((fail+1)); }
# A valid PNG: the 8-byte signature, an IHDR chunk first, and more than `min` bytes (an empty canvas of
# that size compresses to far less than a drawn plot).
png_ok() {  # file min_bytes
  "$PY" - "$1" "$2" <<'PY'
import struct, sys
b = open(sys.argv[1], "rb").read()
w, h = struct.unpack(">II", b[16:24]) if len(b) >= 24 else (0, 0)
ok = b[:8] == b"\x89PNG\r\n\x1a\n" and b[12:16] == b"IHDR" and w >= 200 and h >= 200 and len(b) > int(sys.argv[2])
sys.exit(0 if ok else 1)
PY
}

mkdir -p "$tmp/tok"
"$MPTRAIN" synth-tokens --out "$tmp/tok/train-00000.bin" --tokens 60000 --vocab 257 --seed $RANDOM > /dev/null
"$MPTRAIN" synth-tokens --out "$tmp/tok/val-00000.bin" --tokens 8000 --vocab 257 --seed $RANDOM > /dev/null
steps=$((12 + RANDOM % 8))
if timeout 120 mpirun -np 2 --oversubscribe "$MPTRAIN" train "$SRC/configs/gpt2-tiny.json" --set device=cpu \
     --set train.steps=$steps --set train.eval_every=4 --set precision.mode=fp16 --set loss_scale.init=1024 --set debug.inject_inf_step=$((RANDOM % 5)) \
     --set data.train_shards="[\"$tmp/tok/train-*.bin\"]" --set data.val_shards="[\"$tmp/tok/val-*.bin\"]" \
     --set log.metrics="\"$tmp/run/metrics.jsonl\"" > "$tmp/train.out" 2>&1; then
  ok "gpt2-tiny, $steps steps"
else
  bad "gpt2-tiny training"; sed 's/^/    /' "$tmp/train.out" | tail -15
fi
if "$PY" "$PLOT" "$tmp/run/metrics.jsonl" --out "$tmp/png" > "$tmp/plot.out" 2>&1; then
  missing=""
  for f in loss loss_scale grad_norm lr throughput overview; do
    png_ok "$tmp/png/$f.png" 8000 || missing="$missing $f"
  done
  # No GPU here: no MFU values, so no MFU panel.
  [ -e "$tmp/png/mfu.png" ] && missing="$missing (mfu.png drawn without data)"
  if [ -z "$missing" ]; then ok "plot.py METRICS: six valid PNGs"; else bad "plot.py METRICS:$missing"; ls -l "$tmp/png"; fi
else
  bad "plot.py METRICS exit $?"; cat "$tmp/plot.out"
fi
# Default --out: the metrics file's folder.
if "$PY" "$PLOT" "$tmp/run/metrics.jsonl" > /dev/null 2>&1 && png_ok "$tmp/run/loss.png" 8000; then
  ok "plot.py without --out writes beside the metrics file"
else
  bad "plot.py without --out"
fi

# A benchmark JSON with random rows: two systems, two labels, 1..8 GPUs.
"$PY" - "$tmp/bench.json" <<'PY'
import json, random, sys
rows = []
for system, labels in (("mptrain", ["bf16 ZeRO-1", "fp16 ZeRO-2"]), ("pytorch", ["bf16 DDP"])):
    for label in labels:
        base = random.uniform(2e5, 4e5)
        for g in (1, 2, 4, 8):
            eff = 1.0 if g == 1 else random.uniform(0.8, 1.0)
            tps = base * g * eff
            rows.append({"system": system, "label": label, "gpus": g, "ms_per_step": 16384 * g / tps * 1e3,
                         "tokens_per_s": tps, "tokens_per_s_per_gpu": tps / g, "efficiency": eff,
                         "exposed_comm_ms": random.uniform(0, 5), "peak_mem_gib": random.uniform(10, 40),
                         "mfu": random.uniform(0.3, 0.5)})
json.dump({"schema": "mptrain-bench/1", "machine": "test", "date": "2025-01-01", "git_commit": "abc",
           "config": "configs/gpt2-124m.json", "rows": rows}, open(sys.argv[1], "w"))
PY
if "$PY" "$PLOT" --bench "$tmp/bench.json" --out "$tmp/scaling/scaling.png" > "$tmp/plot.out" 2>&1 \
   && png_ok "$tmp/scaling/scaling.png" 15000; then
  ok "plot.py --bench: a valid PNG"
else
  bad "plot.py --bench"; cat "$tmp/plot.out"; ls -l "$tmp/scaling" 2>&1
fi

# Bad input: one line naming the file and the field (or line), exit 2.
expect_error() {  # pattern args...
  local pat=$1; shift
  "$PY" "$PLOT" "$@" > "$tmp/err.out" 2>&1
  local rc=$?
  if [ "$rc" = 2 ] && grep -q -- "$pat" "$tmp/err.out"; then ok "plot.py $* -> exit 2"; else
    bad "plot.py $* -> exit $rc, '$pat' not seen"; sed 's/^/    /' "$tmp/err.out" | tail -5; fi
}
"$PY" -c "
import json, sys
d = json.load(open(sys.argv[1])); del d['rows'][3]['gpus']; json.dump(d, open(sys.argv[2], 'w'))" "$tmp/bench.json" "$tmp/nogpus.json"
expect_error "nogpus.json: rows\[3\]: gpus: missing" --bench "$tmp/nogpus.json" --out "$tmp/x.png"
echo '{"schema": "other/9", "rows": []}' > "$tmp/schema.json"
expect_error "schema.json: schema: \"other/9\" is not" --bench "$tmp/schema.json" --out "$tmp/x.png"
{ head -n 3 "$tmp/run/metrics.jsonl"; echo '{"type":"step","step":'; } > "$tmp/cut.jsonl"
expect_error "cut.jsonl:4: not a JSON record" "$tmp/cut.jsonl" --out "$tmp/png2"
sed '2,$s/"lr":[^,]*,/"lr":"high",/' "$tmp/run/metrics.jsonl" > "$tmp/lr.jsonl"
expect_error "lr.jsonl:[0-9]*: lr: expected a number" "$tmp/lr.jsonl" --out "$tmp/png2"
echo "$fail failed"
[ "$fail" = 0 ]
