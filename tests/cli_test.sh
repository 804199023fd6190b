#!/usr/bin/env bash
# End-to-end CLI checks under mpirun -np 2: bad input gives one clear line naming the file and the key,
# exit code 2 from every rank, and no hang (each run is bounded by `timeout`); --help works; a tiny run
# trains and writes its metrics file.
set -u
MPTRAIN=$1; SRC=$2
fail=0
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
run() {  # expected_code pattern args...
  # Each rank reports its own exit code (the wrapper itself exits 0, so mpirun never ends a rank early);
  # every rank must exit with the expected code, and a bad-input message must appear exactly once.
  local want=$1 pat=$2; shift 2
  timeout 120 mpirun -np 2 --oversubscribe sh -c '"$0" "$@"; echo "mptrain-rank-exit $?"' "$MPTRAIN" "$@" > "$tmp/out" 2>&1
  local rc=$?
  local n; n=$(grep -c -- "$pat" "$tmp/out")
  local exits; exits=$(grep -c "^mptrain-rank-exit $want\$" "$tmp/out")
  if [ "$rc" != 0 ] || [ "$exits" != 2 ] || { [ "$want" = 2 ] && [ "$n" != 1 ]; } || { [ "$want" = 0 ] && [ "$n" -lt 1 ]; }; then
    echo "FAIL: mptrain $* -> $exits rank(s) exited $want (want 2), '$pat' seen $n times"; sed 's/^/    /' "$tmp/out" | head -20; fail=$((fail+1))
  else
    echo "ok: mptrain $* -> exit $want on both ranks"
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
if [ "$rc" != 0 ] && [ "$rc" != 124 ] && grep -q "watchdog: no progress for [0-9]* s (watchdog.timeout_s = 3) in step [0-9]*, waiting in the " "$tmp/wd.out" \
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
# --help for every subcommand (also after other arguments), --version, --print-config.
for c in train export dump analyze profile bench-attention tokenize synth-tokens; do
  "$MPTRAIN" "$c" "$cfg" --help > "$tmp/help" 2>&1; rc=$?
  if [ "$rc" = 0 ] && grep -q "usage: mptrain $c" "$tmp/help"; then echo "ok: mptrain $c --help"
  else echo "FAIL: mptrain $c --help -> exit $rc"; sed 's/^/    /' "$tmp/help" | head -5; fail=$((fail+1)); fi
done
"$MPTRAIN" --version > "$tmp/ver" 2>&1; rc=$?
commit=$(sed -n 's/^mptrain .* (commit \([0-9a-z]*\))$/\1/p' "$tmp/ver")
if [ "$rc" = 0 ] && grep -q "^CUDA runtime: " "$tmp/ver" && grep -q "^NCCL: [0-9]" "$tmp/ver" && grep -q "^MPI: ." "$tmp/ver" \
   && { [ "$commit" = unknown ] || git -C "$SRC" cat-file -e "$commit^{commit}" 2>/dev/null; }; then
  echo "ok: mptrain --version (commit $commit)"
else
  echo "FAIL: mptrain --version -> exit $rc, commit '$commit'"; sed 's/^/    /' "$tmp/ver"; fail=$((fail+1))
fi
"$MPTRAIN" train "$cfg" --set optimizer.lr=0.0123 --print-config > "$tmp/pc.json" 2> "$tmp/pc.err"; rc=$?
if [ "$rc" = 0 ] && /usr/bin/env python3 - "$tmp/pc.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))  # the whole stdout must be the JSON document
ok = c["optimizer"]["lr"] == 0.0123 and c["precision"]["mode"] == "fp16"   # --set, then the file
ok = ok and c["watchdog"]["timeout_s"] == 60 and c["cpu"]["gemm"] == "own"  # defaults
sys.exit(0 if ok else 1)
PY
then echo "ok: train --print-config"; else echo "FAIL: train --print-config -> exit $rc"; head -c 600 "$tmp/pc.json" "$tmp/pc.err"; fail=$((fail+1)); fi
run 0 '"optimizer": {' train "$cfg" --print-config
if [ "$(grep -c '"optimizer": {' "$tmp/out")" != 1 ]; then echo "FAIL: --print-config on 2 ranks printed $(grep -c '"optimizer": {' "$tmp/out") times"; fail=$((fail+1)); fi
run 2 "cpu.gemm" train "$cfg" --set cpu.gemm=fast
run 0 "summary:" train "$cfg" --set device=cpu --set data.train_limit=2048 --set data.test_limit=500 \
  --set train.steps=20 --set log.metrics="\"$tmp/m.jsonl\""
if [ "$(grep -c '"step"' "$tmp/m.jsonl" 2>/dev/null)" -lt 20 ]; then echo "FAIL: metrics file has fewer than 20 step records"; fail=$((fail+1)); fi
# GPT-2 tiny on real English text (the fortunes package, byte-level shards) on 2 CPU ranks: the loss goes down.
if MPTRAIN="$MPTRAIN" bash "$SRC/launch/prepare-text.sh" "$tmp/text" > "$tmp/prep" 2>&1; then
  run 0 "summary:" train "$SRC/configs/gpt2-tiny.json" --set device=cpu --set train.steps=60 --set train.eval_every=30 \
    --set data.train_shards="[\"$tmp/text/train-*.bin\"]" --set data.val_shards="[\"$tmp/text/val-*.bin\"]" \
    --set log.metrics="\"$tmp/g.jsonl\"" --set checkpoint.dir="\"$tmp/gck\"" --set checkpoint.every_steps=60
  first=$(grep '"type":"step"' "$tmp/g.jsonl" | grep '"step":1,' | sed 's/.*"loss":\([0-9.e+-]*\).*/\1/')
  last=$(grep '"type":"step"' "$tmp/g.jsonl" | grep '"step":60,' | sed 's/.*"loss":\([0-9.e+-]*\).*/\1/')
  if awk -v a="$first" -v b="$last" 'BEGIN { exit !(a > 5 && b < a - 1.5) }'; then
    echo "ok: gpt2-tiny loss $first -> $last"
  else
    echo "FAIL: gpt2-tiny loss $first -> $last (want a drop of more than 1.5 from > 5)"; fail=$((fail+1))
  fi
  # Text from the trained checkpoint: the same seed gives the same text, mostly printable ASCII after 60
  # steps on English, where the untrained model's bytes (uniform over 257 tokens) are mostly not.
  tiny=("$SRC/configs/gpt2-tiny.json" --set device=cpu --set data.train_shards="[\"$tmp/text/train-*.bin\"]"
        --set data.val_shards="[\"$tmp/text/val-*.bin\"]" --set log.metrics='""')
  seed=$RANDOM
  "$MPTRAIN" sample "${tiny[@]}" --set checkpoint.dir="\"$tmp/gck\"" --prompt "The " --tokens 150 --seed $seed > "$tmp/s1" 2>/dev/null
  rc1=$?
  # The second run names data files that do not exist: sample reads weights only, and gives the same text.
  "$MPTRAIN" sample "${tiny[@]}" --set checkpoint.dir="\"$tmp/gck\"" --set data.train_shards='["/nonexistent/t-*.bin"]' \
    --set data.val_shards='["/nonexistent/v-*.bin"]' --prompt "The " --tokens 150 --seed $seed > "$tmp/s2" 2>/dev/null
  "$MPTRAIN" sample "${tiny[@]}" --prompt "The " --tokens 150 --seed $seed --temperature 1 --top-k 0 > "$tmp/s0" 2>"$tmp/s0.err"
  if [ "$rc1" = 0 ] && cmp -s "$tmp/s1" "$tmp/s2" && grep -q "untrained" "$tmp/s0.err" && python3 - "$tmp/s1" "$tmp/s0" <<'PY'
import sys
def printable(p):
    b = open(p, "rb").read()[4:-1]  # after the prompt, before the final newline
    return sum(1 for c in b if 32 <= c < 127 or c == 10) / max(1, len(b)), len(b)
(t, nt), (u, nu) = printable(sys.argv[1]), printable(sys.argv[2])
print(f"    printable ASCII: trained {t:.2f} of {nt} bytes, untrained {u:.2f} of {nu}")
sys.exit(0 if t >= 0.85 and u < 0.7 and nt > 20 else 1)
PY
  then echo "ok: sample from the checkpoint (seed $seed): reproducible, English-like bytes"
  else echo "FAIL: sample (exit $rc1)"; head -c 300 "$tmp/s1"; fail=$((fail+1)); fi
  # The per-op profile of one step (1 rank): a table whose rows add up to no more than the step, with the
  # attention, GEMM and loss rows present and every row's rate computed.
  # One rank: with two, the profiled step also holds the wait for the other rank, which a loaded machine
  # stretches at will, and that wait belongs to no op.
  if timeout 120 "$MPTRAIN" profile "$SRC/configs/gpt2-tiny.json" --set device=cpu --warmup 1 --steps 2 \
    --set data.train_shards="[\"$tmp/text/train-*.bin\"]" --set data.val_shards="[\"$tmp/text/val-*.bin\"]" \
    --out "$tmp/prof.json" > "$tmp/prof.out" 2>&1 && grep -q "sum of the ops above" "$tmp/prof.out"; then
    echo "ok: mptrain profile (1 rank)"
  else
    echo "FAIL: mptrain profile"; sed 's/^/    /' "$tmp/prof.out" | head -20; fail=$((fail+1))
  fi
  if /usr/bin/env python3 - "$tmp/prof.json" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))
names = [r["op"] for r in p["rows"]]
ok = p["step_ms"] > 0 and 0.5 * p["step_ms"] <= p["ops_ms"] <= 1.02 * p["step_ms"]
ok = ok and abs(sum(r["ms"] for r in p["rows"]) - p["ops_ms"]) < 1e-6 * max(1.0, p["ops_ms"])
for want in ("attention_forward", "attention_backward", "gemm", "softmax_xent", "adamw_segments", "layernorm_backward"):
    ok = ok and any(n.startswith(want) for n in names)
ok = ok and all(r["rate"] > 0 and r["launches"] >= 1 for r in p["rows"])
# The compute stream's gaps (every op is on it on CPU ranks): one before each op and one after the last, and
# with the ops they make up the step exactly.
g = p["gaps"]
ok = ok and len(g) == sum(r["launches"] for r in p["rows"]) + 1 and [x["position"] for x in g] == list(range(len(g)))
ok = ok and g[0]["after"] == "(step begins)" and g[-1]["before"] == "(step ends)" and all(x["ms"] >= 0 for x in g)
ok = ok and all(g[k]["before"] == g[k + 1]["after"] for k in range(len(g) - 1))
ok = ok and abs(sum(x["ms"] for x in g) - p["gaps_ms"]) <= 1e-9 * p["step_ms"]
ok = ok and abs(p["gaps_ms"] + p["ops_ms"] - p["step_ms"]) <= 1e-6 * p["step_ms"]
if not ok:
    print(f"step_ms {p['step_ms']} ops_ms {p['ops_ms']} rows {[(r['op'], r['ms'], r['rate'], r['launches']) for r in p['rows']]}")
sys.exit(0 if ok else 1)
PY
  then echo "ok: profile table adds up"; else echo "FAIL: profile JSON"; fail=$((fail+1)); fi
  # What communication costs each op, on 2 ranks: the same steps with and without the bucket collectives.
  # Every row of the comparison must be the ranks' own rows (mean, and with - without rank by rank), and
  # the steps without must really have skipped the collectives: the ranks' parameters drift apart there
  # (each rank updates with its own gradients) and agree again one step with the collectives later.
  tshards=(--set data.train_shards="[\"$tmp/text/train-*.bin\"]" --set data.val_shards="[\"$tmp/text/val-*.bin\"]")
  if timeout 120 mpirun -np 2 --oversubscribe "$MPTRAIN" profile "$SRC/configs/gpt2-tiny.json" --set device=cpu \
    "${tshards[@]}" --warmup 1 --steps 2 --profiled-steps 2 --without-comm --out "$tmp/prof2.json" > "$tmp/prof2.out" 2>&1 \
    && grep -q "^communication's cost by op" "$tmp/prof2.out" && grep -q "^by rank (ms per step)" "$tmp/prof2.out" \
    && /usr/bin/env python3 - "$tmp/prof2.json" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))
c, w, wo = p["comm_cost"], p["by_rank"], p["without_comm"]["by_rank"]
close = lambda a, b: abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))
ok = len(w) == 2 and len(wo) == 2 and all(r["rows"] for r in w + wo)
ok = ok and len(c["rows"]) == len(set(w[0]["rows"]) | set(w[1]["rows"]) | set(wo[0]["rows"]) | set(wo[1]["rows"]))
for row in c["rows"]:
    a = [r["rows"].get(row["op"], 0.0) for r in w]
    b = [r["rows"].get(row["op"], 0.0) for r in wo]
    ok = ok and close(row["with_ms"], sum(a) / 2) and close(row["without_ms"], sum(b) / 2)
    ok = ok and all(close(d, x - y) for d, x, y in zip(row["diff_by_rank"], a, b)) and close(row["diff_ms"], row["with_ms"] - row["without_ms"])
diffs = [r["diff_ms"] for r in c["rows"]]
ok = ok and diffs == sorted(diffs, reverse=True)
ok = ok and close(c["step"]["with_ms"], (w[0]["step_ms"] + w[1]["step_ms"]) / 2)
ok = ok and close(c["step"]["diff_by_rank"][1], w[1]["step_ms"] - wo[1]["step_ms"])
ok = ok and close(c["other"]["diff_by_rank"][0], w[0]["other_ms"] - wo[0]["other_ms"])
ok = ok and close(c["unprofiled_step"]["without_ms"], (wo[0]["unprofiled_step_ms"] + wo[1]["unprofiled_step_ms"]) / 2)
ok = ok and p["comm_cost"]["params"] == {"diverged_without": True, "identical_after": True}
# The gaps compared position by position: each row the ranks' own gaps at that position.
ok = ok and len(c["gaps"]) == len(w[0]["gaps"]) > 1
for row in c["gaps"]:
    k = int(row["op"].rsplit("(position ", 1)[1].rstrip(")"))
    a, b = [r["gaps"][k]["ms"] for r in w], [r["gaps"][k]["ms"] for r in wo]
    ok = ok and row["op"].startswith(w[0]["gaps"][k]["after"] + " -> " + w[0]["gaps"][k]["before"])
    ok = ok and close(row["with_ms"], sum(a) / 2) and close(row["without_ms"], sum(b) / 2)
    ok = ok and all(close(d, x - y) for d, x, y in zip(row["diff_by_rank"], a, b))
if not ok:
    print(json.dumps(c["params"] if "params" in c else c, indent=1)[:2000])
sys.exit(0 if ok else 1)
PY
  then echo "ok: mptrain profile --without-comm (2 ranks): the comparison is the ranks' rows, the collectives were skipped"
  else echo "FAIL: mptrain profile --without-comm"; sed 's/^/    /' "$tmp/prof2.out" | tail -20; fail=$((fail+1)); fi
  run 2 "--without-comm: the config already skips the bucket collectives" profile "$SRC/configs/gpt2-tiny.json" \
    --set device=cpu "${tshards[@]}" --without-comm --set debug.skip_bucket_comm=true
  run 2 "profiled-steps" profile "$SRC/configs/gpt2-tiny.json" --set device=cpu "${tshards[@]}" --profiled-steps 0
  # launch/profile_diff.py: rank 0 of the 2-rank profile against its rank 1 (the same op sequence, so the gaps
  # are compared too); every row B - A of the files.
  if /usr/bin/env python3 "$SRC/launch/profile_diff.py" "$tmp/prof2.json" "$tmp/prof2.json" --rank-b 1 --json "$tmp/pd.json" \
       > "$tmp/pd.out" 2>&1 && grep -q "^step, profiled" "$tmp/pd.out" && /usr/bin/env python3 - "$tmp/prof2.json" "$tmp/prof2.json" "$tmp/pd.json" <<'PY'
import json, sys
a2, b2, d = (json.load(open(f)) for f in sys.argv[1:4])
a = [r for r in a2["by_rank"] if r["rank"] == 0][0]
b = [r for r in b2["by_rank"] if r["rank"] == 1][0]
ra, rb = a["rows"], b["rows"]
ok = sorted(r["op"] for r in d["rows"]) == sorted(set(ra) | set(rb))
ok = ok and all(r["a_ms"] == ra.get(r["op"], 0.0) and r["b_ms"] == rb.get(r["op"], 0.0) and
                abs(r["diff_ms"] - (r["b_ms"] - r["a_ms"])) < 1e-12 for r in d["rows"])
t = d["totals"]
ok = ok and t["step, profiled"]["a_ms"] == a["step_ms"] and t["step, profiled"]["b_ms"] == b["step_ms"]
ok = ok and abs(t["not in any op"]["diff_ms"] - ((b["step_ms"] - b["ops_ms"]) - (a["step_ms"] - a["ops_ms"]))) < 1e-9
ok = ok and d["gaps_compared"] and len(d["gaps"]) == len(a["gaps"])
ok = ok and all(g["a_ms"] == a["gaps"][g["position"]]["ms"] and g["b_ms"] == b["gaps"][g["position"]]["ms"] for g in d["gaps"])
sys.exit(0 if ok else 1)
PY
  then echo "ok: launch/profile_diff.py (rank 0 against rank 1)"
  else echo "FAIL: launch/profile_diff.py"; sed 's/^/    /' "$tmp/pd.out" | tail -10; fail=$((fail+1)); fi
  if ! /usr/bin/env python3 "$SRC/launch/profile_diff.py" "$tmp/prof.json" "$tmp/prof2.json" --rank-b 7 > "$tmp/pd.out" 2>&1 \
     && grep -q "prof2.json: by_rank: no rank 7" "$tmp/pd.out"; then echo "ok: profile_diff.py names a missing rank"
  else echo "FAIL: profile_diff.py --rank-b 7"; cat "$tmp/pd.out"; fail=$((fail+1)); fi
  # An --out that cannot be written is named (rank 0 writes it; nothing half-written is left).
  run_any 2 "$tmp/nodir/p.json: write: cannot write" profile "$SRC/configs/gpt2-tiny.json" --set device=cpu \
    "${tshards[@]}" --warmup 1 --steps 1 --out "$tmp/nodir/p.json"
  # Export for Hugging Face: fp32 and bf16 of the same (untrained: warned about) weights, config.json beside
  # them; bf16 must be the fp32 values rounded to nearest even, bit for bit. Then init_from reads it back.
  shards=(--set data.train_shards="[\"$tmp/text/train-*.bin\"]" --set data.val_shards="[\"$tmp/text/val-*.bin\"]")
  run 0 "export: " export "$SRC/configs/gpt2-tiny.json" --set device=cpu "${shards[@]}" --out "$tmp/hf32/"
  grep -q "initial, untrained weights" "$tmp/out" || { echo "FAIL: no warning for untrained weights"; fail=$((fail+1)); }
  # The bf16 export names data files that do not exist: export reads weights only.
  run 0 "export: " export "$SRC/configs/gpt2-tiny.json" --set device=cpu --set data.train_shards='["/nonexistent/t-*.bin"]' \
    --set data.val_shards='["/nonexistent/v-*.bin"]' --out "$tmp/hf16/" --dtype bf16
  if /usr/bin/env python3 - "$tmp/hf32" "$tmp/hf16" <<'PY'
import json, struct, sys
def load(d):
    b = open(d + "/model.safetensors", "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n])
    h.pop("__metadata__", None)
    return {k: (v["dtype"], v["shape"], b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]]) for k, v in h.items()}
a, b = load(sys.argv[1]), load(sys.argv[2])
cfg = json.load(open(sys.argv[2] + "/config.json"))
ok = cfg["model_type"] == "gpt2" and cfg["n_layer"] == 2 and cfg["n_head"] == 2 and cfg["n_embd"] == 64
ok = ok and cfg["n_positions"] == 64 and cfg["vocab_size"] == 257 and cfg["torch_dtype"] == "bfloat16"
ok = ok and sorted(a) == sorted(b) and a["transformer.wte.weight"][1] == [257, 64]
inexact = total = 0
for k in a:
    ok = ok and a[k][0] == "F32" and b[k][0] == "BF16" and a[k][1] == b[k][1]
    f = struct.unpack("<%dI" % (len(a[k][2]) // 4), a[k][2])
    h = struct.unpack("<%dH" % (len(b[k][2]) // 2), b[k][2])
    want = [((u + 0x7fff + ((u >> 16) & 1)) >> 16) & 0xffff for u in f]
    ok = ok and list(h) == want
    inexact += sum(1 for u in f if u & 0xffff)
    total += len(f)
sys.exit(0 if ok and inexact > total // 2 else 1)
PY
  then echo "ok: export fp32 + bf16 (nearest even) + config.json"; else echo "FAIL: export files"; fail=$((fail+1)); fi
  run 0 "init_from: .*loaded 28 tensor(s); ignored 0" train "$SRC/configs/gpt2-tiny.json" --set device=cpu "${shards[@]}" \
    --set train.steps=1 --set log.metrics='""' --set model.init_from="\"$tmp/hf16/model.safetensors\""
  # The BLAS GEMM (when built with it) trains the same model as well.
  if "$MPTRAIN" --version | grep -q "blas ("; then
    run 0 "summary:" train "$SRC/configs/gpt2-tiny.json" --set device=cpu --set train.steps=60 --set cpu.gemm=blas \
      "${shards[@]}" --set log.metrics="\"$tmp/b.jsonl\""
    first=$(grep '"type":"step"' "$tmp/b.jsonl" | grep '"step":1,' | sed 's/.*"loss":\([0-9.e+-]*\).*/\1/')
    last=$(grep '"type":"step"' "$tmp/b.jsonl" | grep '"step":60,' | sed 's/.*"loss":\([0-9.e+-]*\).*/\1/')
    if awk -v a="$first" -v b="$last" 'BEGIN { exit !(a > 5 && b < a - 1.5) }'; then echo "ok: gpt2-tiny with cpu.gemm=blas, loss $first -> $last"
    else echo "FAIL: gpt2-tiny with cpu.gemm=blas, loss $first -> $last"; fail=$((fail+1)); fi
  fi
  printf 'NOTATOKENSHARD' > "$tmp/text/bad-00000.bin"
  run 2 "bad-00000.bin: magic" train "$SRC/configs/gpt2-tiny.json" --set device=cpu \
    --set data.train_shards="[\"$tmp/text/bad-00000.bin\"]"
else
  echo "FAIL: launch/prepare-text.sh"; sed 's/^/    /' "$tmp/prep"; fail=$((fail+1))
fi
# tokenize and tokenize --decode give a file back byte for byte: byte-level, and GPT-2 BPE when
# launch/setup.sh has fetched the BPE files (.data/gpt2-bpe).
skipped=0
printf 'Hello world, it'"'"'s a test: 12345 tokens!!\n  Tabs\tand   spaces; caf\xc3\xa9 e\xcc\x81 \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80 trailing   \n\n' > "$tmp/doc.txt"
roundtrip() {  # name tokenize-options...
  local name=$1; shift
  rm -rf "$tmp/rt" "$tmp/rt.txt"
  if "$MPTRAIN" tokenize --out "$tmp/rt" --val-fraction 0 "$@" "$tmp/doc.txt" > "$tmp/out" 2>&1 &&
     "$MPTRAIN" tokenize --decode "$@" --out "$tmp/rt.txt" "$tmp/rt/train-00000.bin" >> "$tmp/out" 2>&1 &&
     cmp -s "$tmp/doc.txt" "$tmp/rt.txt"; then
    echo "ok: $name"
  else
    echo "FAIL: $name"; sed 's/^/    /' "$tmp/out" | head -20; fail=$((fail+1))
  fi
}
roundtrip "byte-level tokenize, then --decode: the same bytes"
if [ -s "$SRC/.data/gpt2-bpe/encoder.json" ] && [ -s "$SRC/.data/gpt2-bpe/vocab.bpe" ]; then
  roundtrip "tokenize --bpe, then --decode --bpe: the same bytes" --bpe "$SRC/.data/gpt2-bpe"
  # The shard: vocabulary 50257 in the header, "Hello" (15496) first, end-of-text (50256) last.
  if /usr/bin/env python3 - "$tmp/rt/train-00000.bin" <<'PY'
import struct, sys
b = open(sys.argv[1], "rb").read()
_, _, bpt, n, vocab = struct.unpack("<8sIIQQ", b[:32])
t = struct.unpack("<%dH" % n, b[64:64 + 2 * n])
sys.exit(0 if (bpt, vocab, t[0], t[1], t[-1]) == (2, 50257, 15496, 995, 50256) and len(t) < 60 else 1)
PY
  then echo "ok: BPE shard header and ids"; else echo "FAIL: BPE shard header or ids"; fail=$((fail+1)); fi
  # Sampling with the BPE vocabulary (an untrained small model): greedy twice gives the same valid UTF-8 text
  # after the prompt, and the prompt's tokens went through the tokenizer (20 new tokens, not 20 bytes).
  for i in 1 2; do
    "$MPTRAIN" sample "$SRC/configs/gpt2-tiny.json" --set device=cpu --set model.vocab=50257 --set log.metrics='""' \
      --set data.train_shards="[\"$tmp/text/train-*.bin\"]" --set data.val_shards="[\"$tmp/text/val-*.bin\"]" \
      --bpe "$SRC/.data/gpt2-bpe" --prompt "Hello, my name is" --tokens 20 --temperature 0 > "$tmp/bpe$i.txt" 2> "$tmp/bpe$i.err"
  done
  if cmp -s "$tmp/bpe1.txt" "$tmp/bpe2.txt" && grep -q "^sample: 20 token(s) at temperature 0" "$tmp/bpe1.err" &&
     python3 -c "import sys; t = open(sys.argv[1], 'rb').read().decode('utf-8'); sys.exit(0 if t.startswith('Hello, my name is') and len(t) > 40 else 1)" "$tmp/bpe1.txt"
  then echo "ok: BPE sample (greedy, reproducible, UTF-8)"; else echo "FAIL: BPE sample"; cat "$tmp/bpe1.err"; fail=$((fail+1)); fi
else
  echo "skip: .data/gpt2-bpe is missing (launch/setup.sh fetches it with npm): 2 BPE checks"; skipped=2
fi
# The same text in llm.c's format trains under data.format=llmc; a format that does not match is refused.
if [ -f "$tmp/text/train-00000.bin" ]; then
  /usr/bin/env python3 - "$tmp/text" <<'PY'
import struct, sys
d = sys.argv[1]
for split in ("train", "val"):
    b = open("%s/%s-00000.bin" % (d, split), "rb").read()
    n = struct.unpack("<Q", b[16:24])[0]
    head = struct.pack("<3i", 20240520, 1, n) + bytes(4 * 253)
    open("%s/%s-llmc.bin" % (d, split), "wb").write(head + b[64:64 + 2 * n])
PY
  run 0 "summary:" train "$SRC/configs/gpt2-tiny.json" --set device=cpu --set train.steps=2 --set data.format=llmc \
    --set data.train_shards="[\"$tmp/text/train-llmc.bin\"]" --set data.val_shards="[\"$tmp/text/val-llmc.bin\"]"
  run 2 "train-00000.bin: magic: starts with the magic of an mptrain shard" train "$SRC/configs/gpt2-tiny.json" \
    --set device=cpu --set data.format=nanogpt --set data.train_shards="[\"$tmp/text/train-00000.bin\"]"
else
  echo "FAIL: no byte-level shards to convert to llm.c's format"; fail=$((fail+1))
fi
echo "cli_test: $fail failed ($skipped skipped)"
[ "$fail" = 0 ]
