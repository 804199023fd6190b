#!/usr/bin/env bash
# End-to-end CLI checks under mpirun -np 2: bad input gives one clear line naming the file and the key,
# exit code 2 from every rank, and no hang (each run is bounded by `timeout`); --help works; a tiny run
# trains and writes its metrics file.
set -u
MPTRAIN=$1; SRC=$2
fail=0
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
run() {  # expected_code pattern args...
  local want=$1 pat=$2; shift 2
  timeout 120 mpirun -np 2 --oversubscribe "$MPTRAIN" "$@" > "$tmp/out" 2>&1
  local rc=$?
  local n; n=$(grep -c -- "$pat" "$tmp/out")
  if [ "$rc" != "$want" ] || { [ "$want" = 2 ] && [ "$n" != 2 ]; } || { [ "$want" = 0 ] && [ "$n" -lt 1 ]; }; then
    echo "FAIL: mptrain $* -> exit $rc (want $want), '$pat' seen $n times"; sed 's/^/    /' "$tmp/out" | head -20; fail=$((fail+1))
  else
    echo "ok: mptrain $* -> exit $rc"
  fi
}
# Like run, for errors that one rank reports (the others exit with it silently): the pattern at least once.
run_any() {  # expected_code pattern args...
  local want=$1 pat=$2; shift 2
  timeout 120 mpirun -np 2 --oversubscribe "$MPTRAIN" "$@" > "$tmp/out" 2>&1
  local rc=$?
  if [ "$rc" != "$want" ] || ! grep -q -- "$pat" "$tmp/out"; then
    echo "FAIL: mptrain $* -> exit $rc (want $want), '$pat' not seen"; sed 's/^/    /' "$tmp/out" | head -20; fail=$((fail+1))
  else
    echo "ok: mptrain $* -> exit $rc"
  fi
}
cfg="$SRC/configs/smoke.json"
small=(--set device=cpu --set data.train_limit=1024 --set data.test_limit=200)
# Errors that used to leave a rank hanging or abort with a core dump: one clear message, exit 2 everywhere.
touch "$tmp/plainfile"
run_any 2 "checkpoint.dir" train "$cfg" "${small[@]}" --set train.steps=4 --set checkpoint.every_steps=2 \
  --set checkpoint.dir="\"$tmp/plainfile/ckpt\""
run 2 "batches: 'abc' is not an integer" analyze "$cfg" --batches abc
run 2 "precision.mode: the value is not valid UTF-8" train "$cfg" --set precision.mode=$'fp\xff16'
run 2 "model.hidden\[0\]: the model would have" train "$cfg" --set model.hidden=[2000000000]
run 2 "model.num_classes: the model would have" train "$cfg" --set model.num_classes=2147483647
/usr/bin/env python3 -c "print('{\"model\": ' + '[' * 100000 + ']' * 100000 + '}')" > "$tmp/deep.json"
run 2 "nested more than" train "$tmp/deep.json"
# A damaged checkpoint is refused with the field named.
run 0 "summary:" train "$cfg" "${small[@]}" --set train.steps=2 --set checkpoint.every_steps=1 \
  --set checkpoint.dir="\"$tmp/ck\""
/usr/bin/env python3 - "$tmp/ck/ckpt-2.bin" <<'PY'
import json, struct, sys
path = sys.argv[1]
data = open(path, "rb").read()
n = struct.unpack("<Q", data[8:16])[0]
h = json.loads(data[16:16 + n])
h["adam_step"] = -1
hb = json.dumps(h).encode()
open(path, "wb").write(data[:8] + struct.pack("<Q", len(hb)) + hb + data[16 + n:])
PY
run 2 "ckpt-2.bin: adam_step: must be >= 0" train "$cfg" "${small[@]}" --set train.steps=4 --set checkpoint.dir="\"$tmp/ck\""
# Ranks started with different configurations refuse to run, naming the key.
timeout 120 mpirun --oversubscribe -np 1 "$MPTRAIN" train "$cfg" "${small[@]}" : -np 1 "$MPTRAIN" train "$cfg" "${small[@]}" \
  --set optimizer.lr=0.5 > "$tmp/out" 2>&1
rc=$?
if [ "$rc" = 2 ] && grep -q "runs another configuration than rank 0: optimizer.lr" "$tmp/out"; then
  echo "ok: different configurations on two ranks -> exit 2 naming optimizer.lr"
else
  echo "FAIL: different configurations -> exit $rc"; sed 's/^/    /' "$tmp/out" | head -20; fail=$((fail+1))
fi
# Checkpoints: only the newest keep_last stay; leftovers of an unfinished write are removed; a damaged
# latest checkpoint is refused, naming the previous intact one, or used with fallback_to_previous.
ck2="$tmp/ck2"; mkdir -p "$ck2"; : > "$ck2/ckpt-99.bin.tmp.4242"
run 0 "summary:" train "$cfg" "${small[@]}" --set train.steps=5 --set checkpoint.every_steps=1 \
  --set checkpoint.keep_last=2 --set checkpoint.dir="\"$ck2\""
kept=$(ls "$ck2" | grep -c '^ckpt-.*\.bin$'); stale=$(ls "$ck2" | grep -c '\.tmp\.')
if [ "$kept" = 2 ] && [ "$stale" = 0 ] && [ -f "$ck2/ckpt-5.bin" ] && [ -f "$ck2/ckpt-4.bin" ]; then
  echo "ok: keep_last=2 keeps ckpt-4 and ckpt-5; the stale temporary is gone"
else
  echo "FAIL: checkpoint files after keep_last=2: $(ls "$ck2" | tr '\n' ' ')"; fail=$((fail+1))
fi
/usr/bin/env python3 -c "
import sys; p=sys.argv[1]; b=bytearray(open(p,'rb').read()); b[-5]^=0x10; open(p,'wb').write(b)" "$ck2/ckpt-5.bin"
run 2 "ckpt-5.bin: data.v: checksum mismatch.*the newest intact checkpoint is .*ckpt-4.bin" train "$cfg" "${small[@]}" \
  --set train.steps=7 --set checkpoint.dir="\"$ck2\""
run_any 0 "resuming from the newest intact checkpoint" train "$cfg" "${small[@]}" --set train.steps=7 \
  --set checkpoint.dir="\"$ck2\"" --set checkpoint.fallback_to_previous=true
# A preemption notice (SIGUSR1 to the ranks) saves a checkpoint and ends every rank with exit 5.
ranks_of() {  # the mptrain ranks whose command line holds $1
  for p in $(pgrep -x mptrain); do tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -q -- "$1" && echo "$p"; done
}
ck3="$tmp/ck3"
timeout 120 mpirun -np 2 --oversubscribe "$MPTRAIN" train "$cfg" "${small[@]}" --set train.steps=100000 \
  --set log.every=1 --set checkpoint.dir="\"$ck3\"" > "$tmp/sig.out" 2>&1 &
job=$!
for i in $(seq 1 100); do grep -q "^step" "$tmp/sig.out" && break; sleep 0.2; done
for p in $(ranks_of "$ck3"); do kill -USR1 "$p"; done
wait $job; rc=$?
if [ "$rc" = 5 ] && grep -q "interrupted: signal 10 after step" "$tmp/sig.out" && ls "$ck3" | grep -q '^ckpt-'; then
  echo "ok: SIGUSR1 -> checkpoint saved, exit 5 on every rank"
else
  echo "FAIL: SIGUSR1 -> exit $rc"; sed 's/^/    /' "$tmp/sig.out" | tail -15; fail=$((fail+1))
fi
# The watchdog: one rank stopped (SIGSTOP) leaves the other waiting in a collective; after
# watchdog.timeout_s it names the wait and the step and ends the job.
wd="$tmp/wd-marker"
start=$(date +%s)
timeout 120 mpirun -np 2 --oversubscribe "$MPTRAIN" train "$cfg" "${small[@]}" --set train.steps=100000 \
  --set log.every=1 --set watchdog.timeout_s=3 --set log.metrics="\"$wd.jsonl\"" > "$tmp/wd.out" 2>&1 &
job=$!
for i in $(seq 1 100); do grep -q "^step" "$tmp/wd.out" && break; sleep 0.2; done
victim=$(ranks_of "$wd" | tail -1)
[ -n "$victim" ] && kill -STOP "$victim"
wait $job; rc=$?
took=$(( $(date +%s) - start ))
[ -n "$victim" ] && { kill -CONT "$victim" 2>/dev/null; kill -9 "$victim" 2>/dev/null; }
if [ "$rc" != 0 ] && [ "$rc" != 124 ] && grep -q "watchdog: no progress for [0-9]* s .* while waiting in the .* of step [0-9]*" "$tmp/wd.out" \
   && [ "$took" -lt 60 ]; then
  echo "ok: a stopped rank ends the job through the watchdog (exit $rc, ${took} s)"
else
  echo "FAIL: watchdog -> exit $rc after ${took} s"; sed 's/^/    /' "$tmp/wd.out" | tail -15; fail=$((fail+1))
fi
# A run that does not train says so: exit 4 with the reason.
run_any 4 "the run failed" train "$cfg" "${small[@]}" --set train.steps=20 --set optimizer.lr=1e6 \
  --set precision.mode=fp16
run 2 "optimizer.lrr=1: optimizer.lrr: unknown key" train "$cfg" --set optimizer.lrr=1
echo '{"optimizer": {"lrr": 0.1}}' > "$tmp/unknown.json"
run 2 "unknown.json: optimizer.lrr: unknown key" train "$tmp/unknown.json"
run 2 "zero.stage" train "$cfg" --set zero.stage=3
run 2 "nope.json" train "$tmp/nope.json"
echo '{"train": {"batch_size": "big"}}' > "$tmp/bad.json"
run 2 "bad.json: train.batch_size" train "$tmp/bad.json"
run 2 "/nonexistent/train-images-idx3-ubyte.gz" train "$cfg" --set data.dir=/nonexistent --set device=cpu
run 0 "usage: mptrain train" train --help
run 0 "summary:" train "$cfg" --set device=cpu --set data.train_limit=2048 --set data.test_limit=500 \
  --set train.steps=20 --set log.metrics="\"$tmp/m.jsonl\""
if [ "$(grep -c '"step"' "$tmp/m.jsonl" 2>/dev/null)" -lt 20 ]; then echo "FAIL: metrics file has fewer than 20 step records"; fail=$((fail+1)); fi
# GPT-2 tiny on real English text (the fortunes package, byte-level shards) on 2 CPU ranks: the loss goes down.
if MPTRAIN="$MPTRAIN" bash "$SRC/launch/prepare-text.sh" "$tmp/text" > "$tmp/prep" 2>&1; then
  run 0 "summary:" train "$SRC/configs/gpt2-tiny.json" --set device=cpu --set train.steps=60 --set train.eval_every=30 \
    --set data.train_shards="[\"$tmp/text/train-*.bin\"]" --set data.val_shards="[\"$tmp/text/val-*.bin\"]" \
    --set log.metrics="\"$tmp/g.jsonl\""
  first=$(grep '"type":"step"' "$tmp/g.jsonl" | grep '"step":1,' | sed 's/.*"loss":\([0-9.e+-]*\).*/\1/')
  last=$(grep '"type":"step"' "$tmp/g.jsonl" | grep '"step":60,' | sed 's/.*"loss":\([0-9.e+-]*\).*/\1/')
  if awk -v a="$first" -v b="$last" 'BEGIN { exit !(a > 5 && b < a - 1.5) }'; then
    echo "ok: gpt2-tiny loss $first -> $last"
  else
    echo "FAIL: gpt2-tiny loss $first -> $last (want a drop of more than 1.5 from > 5)"; fail=$((fail+1))
  fi
  # The per-op profile of one step (1 rank): a table whose rows add up to no more than the step, with the
  # attention, GEMM and loss rows present and every row's rate computed.
  run 0 "sum of the ops above" profile "$SRC/configs/gpt2-tiny.json" --set device=cpu --warmup 1 --steps 2 \
    --set data.train_shards="[\"$tmp/text/train-*.bin\"]" --set data.val_shards="[\"$tmp/text/val-*.bin\"]" \
    --out "$tmp/prof.json"
  if /usr/bin/env python3 - "$tmp/prof.json" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))
names = [r["op"] for r in p["rows"]]
ok = p["step_ms"] > 0 and 0.5 * p["step_ms"] <= p["ops_ms"] <= 1.02 * p["step_ms"]
ok = ok and abs(sum(r["ms"] for r in p["rows"]) - p["ops_ms"]) < 1e-6 * max(1.0, p["ops_ms"])
for want in ("attention_forward", "attention_backward", "gemm", "softmax_xent", "adamw_segments", "layernorm_backward"):
    ok = ok and any(n.startswith(want) for n in names)
ok = ok and all(r["rate"] > 0 and r["launches"] >= 1 for r in p["rows"])
sys.exit(0 if ok else 1)
PY
  then echo "ok: profile table adds up"; else echo "FAIL: profile JSON"; head -c 2000 "$tmp/prof.json"; fail=$((fail+1)); fi
  printf 'NOTATOKENSHARD' > "$tmp/text/bad-00000.bin"
  run 2 "bad-00000.bin: magic" train "$SRC/configs/gpt2-tiny.json" --set device=cpu \
    --set data.train_shards="[\"$tmp/text/bad-00000.bin\"]"
else
  echo "FAIL: launch/prepare-text.sh"; sed 's/^/    /' "$tmp/prep"; fail=$((fail+1))
fi
echo "$((29 - fail)) passed, $fail failed"
[ "$fail" = 0 ]
