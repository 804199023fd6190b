#!/usr/bin/env bash
# precision.layers = "auto" end to end on CPU ranks: `mptrain analyze CONFIG` prints the same decision as
# the trainer makes for that config (precision.auto_timing = flops, so both see the same speeds), the
# decision reaches the metrics file as a `precision_auto` event, and a memory budget nothing fits is one
# clear error naming the field, exit 2 on every rank.
set -u
MPTRAIN=$1; SRC=$2
fail=0
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cfg="$SRC/configs/smoke.json"
small=(--set device=cpu --set data.train_limit=1024 --set data.test_limit=200 --set train.batch_size=32
       --set model.hidden='[64,48]' --set model.layernorm=true --set precision.auto_timing=flops)
# The decision block: "auto precision: ..." and the indented lines after it.
block() { awk '/^auto precision:/ {on=1; print; next} on && /^  / {print; next} {on=0}' "$1"; }
for mode in fp16 auto bf16; do
  timeout 300 "$MPTRAIN" analyze "$cfg" "${small[@]}" --set precision.mode=$mode --batches 1 > "$tmp/an.$mode" 2>&1
  rc1=$?
  timeout 300 "$MPTRAIN" train "$cfg" "${small[@]}" --set precision.mode=$mode --set precision.layers=auto \
    --set train.steps=2 --set log.metrics="\"$tmp/m.$mode.jsonl\"" > "$tmp/tr.$mode" 2>&1
  rc2=$?
  block "$tmp/an.$mode" > "$tmp/an.$mode.block"; block "$tmp/tr.$mode" > "$tmp/tr.$mode.block"
  if [ $rc1 = 0 ] && [ $rc2 = 0 ] && [ -s "$tmp/an.$mode.block" ] && cmp -s "$tmp/an.$mode.block" "$tmp/tr.$mode.block"; then
    echo "ok: mode $mode: analyze and train decide alike ($(head -1 "$tmp/an.$mode.block"))"
  else
    echo "FAIL: mode $mode: analyze (exit $rc1) and train (exit $rc2) differ"; diff "$tmp/an.$mode.block" "$tmp/tr.$mode.block" | head -20
    tail -5 "$tmp/an.$mode" "$tmp/tr.$mode"; fail=$((fail+1))
  fi
  if grep -q '"event":"precision_auto"' "$tmp/m.$mode.jsonl" 2>/dev/null; then echo "ok: mode $mode: precision_auto event logged"
  else echo "FAIL: mode $mode: no precision_auto event in the metrics file"; fail=$((fail+1)); fi
done
# fp16 on CPU ranks (half GEMMs modeled slower than FP32 there): every Linear layer gets an FP32 override with
# its reason, LayerNorm (FP32 by default) none; under mode auto the base is FP32 and nothing is overridden.
n=$(grep -c '^  fc[0-9]* -> fp32: fp32 faster' "$tmp/tr.fp16.block")
if [ "$n" = 3 ] && ! grep -q '^  ln' "$tmp/tr.fp16.block"; then echo "ok: fp16: 3 Linear layers -> fp32 with reasons"
else echo "FAIL: fp16: want 3 'fcN -> fp32: fp32 faster' lines and no ln line"; cat "$tmp/tr.fp16.block"; fail=$((fail+1)); fi
if grep -q '^auto precision: fp32, 0 layer override' "$tmp/tr.auto.block"; then echo "ok: auto: fp32 base on CPU ranks"
else echo "FAIL: auto: want an fp32 base without overrides"; cat "$tmp/tr.auto.block"; fail=$((fail+1)); fi
grep -q '^auto policy: precision.mode fp16, precision.layers \[{"dtype":"fp32","pattern":"fc1"}' "$tmp/an.fp16" ||
  { echo "FAIL: analyze prints no ready precision.layers value"; fail=$((fail+1)); }
# A budget nothing fits: one message naming the field, exit 2 on both ranks, no hang.
timeout 300 mpirun -np 2 --oversubscribe sh -c '"$0" "$@"; echo "mptrain-rank-exit $?"' "$MPTRAIN" train "$cfg" "${small[@]}" \
  --set precision.layers=auto --set precision.memory_budget_gib=1e-6 --set train.steps=2 --set log.metrics='""' > "$tmp/budget" 2>&1
if [ "$(grep -c '^mptrain-rank-exit 2$' "$tmp/budget")" = 2 ] && [ "$(grep -c 'precision.memory_budget_gib' "$tmp/budget")" = 1 ]; then
  echo "ok: a budget nothing fits -> exit 2 on both ranks, one message"
else echo "FAIL: memory budget error"; head -20 "$tmp/budget"; fail=$((fail+1)); fi
echo "precision_auto_test: $fail failed"
[ "$fail" = 0 ]
