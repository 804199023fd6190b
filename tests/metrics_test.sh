#!/usr/bin/env bash
# The metrics file (schema v1) and the progress line, end to end on 2 CPU ranks: every line is one JSON
# record; a header first; step records numbered 1..N as the progress line prints them; a null grad_norm on
# the step whose overflow is injected (debug.inject_inf_step, at a step drawn fresh each run); a resumed
# run appends a header and a resume event and goes on numbering; a fresh run moves an earlier file aside
# (m.jsonl -> m.1.jsonl, m.2.jsonl); log.quiet keeps the summary line; an unusable log.metrics path ends
# every rank with exit 2 naming the key; a language model writes tokens/s and val_* evaluation records.
set -u
MPTRAIN=$1; SRC=$2
fail=0
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
ok() { echo "ok: $*"; }
bad() { echo "FAIL: $*"; fail=$((fail+1)); }
train() {  # out_file args...: mptrain train on 2 CPU ranks; returns its exit code
  local out=$1; shift
  timeout 120 mpirun -np 2 --oversubscribe "$MPTRAIN" train "$@" > "$out" 2>&1
}
cfg="$SRC/configs/smoke.json"
small=(--set device=cpu --set data.train_limit=1024 --set data.test_limit=200 --set loss_scale.init=256)
steps=$((6 + RANDOM % 6))                 # 6..11 (8 steps per epoch here: an epoch boundary may fall inside)
inj=$((1 + RANDOM % (steps - 2)))         # 0-based index of the overflowing step: 1-based step inj+1
every=$((2 + RANDOM % 3))
m="$tmp/run/m.jsonl"
echo "steps=$steps injected overflow at step $((inj + 1)) log.every=$every"

# 1. A fresh run.
if train "$tmp/out1" "$cfg" "${small[@]}" --set train.steps=$steps --set log.every=$every \
     --set debug.inject_inf_step=$inj --set checkpoint.dir="\"$tmp/ck\"" --set checkpoint.every_steps=2 \
     --set log.metrics="\"$m\""; then ok "fresh run"; else bad "fresh run exit $?"; sed 's/^/    /' "$tmp/out1" | tail -20; fi
cp "$m" "$tmp/m-after-1" 2>/dev/null
if python3 - "$m" "$tmp/out1" "$steps" "$inj" "$every" <<'PY'
import json, re, sys
path, out, steps, inj, every = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
errors = []
def check(cond, msg):
    if not cond: errors.append(msg)
recs = [json.loads(l) for l in open(path)]  # every line must be JSON
h = recs[0]
check(h.get("type") == "header" and h.get("schema") == 1, f"first record is not a schema-1 header: {h}")
check(isinstance(h.get("git_commit"), str) and h["git_commit"] != "", "header git_commit")
check(re.fullmatch(r"[0-9a-f]{16}", str(h.get("run_id"))), "header run_id")
check(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(h.get("start_time"))), "header start_time")
check(h.get("world_size") == 2 and h.get("device_type") == "cpu" and h.get("device_name") == "cpu", "header world/device")
check(h.get("config", {}).get("train", {}).get("steps") == steps, "header config is the effective one")
check(h.get("unit") == "samples" and h.get("model_dtype") == "fp16" and h.get("start_step") == 0, "header unit/dtype/start")
times = [r.get("time") for r in recs]
check(all(isinstance(t, (int, float)) for t in times), "a record without a numeric time")
check(all(b >= a for a, b in zip(times, times[1:])), "times go backwards")
st = [r for r in recs if r["type"] == "step"]
check([r["step"] for r in st] == list(range(1, steps + 1)), f"step numbers {[r['step'] for r in st]}")
for r in st:
    for k, t in (("loss", float), ("lr", float), ("scale", (int, float)), ("skipped", bool), ("step_s", float),
                 ("samples_per_s", float), ("unit", str), ("epoch", int)):
        check(isinstance(r.get(k), t), f"step {r['step']}: {k} = {r.get(k)!r}")
    check(r["unit"] == "samples" and "tokens_per_s" not in r, "unit samples")
    check((r["grad_norm"] is None) == r["overflow"], f"step {r['step']}: grad_norm {r['grad_norm']} vs overflow {r['overflow']}")
    if r["overflow"]: check(r["skipped"], f"step {r['step']}: overflow not skipped")
s = st[inj]
check(s["step"] == inj + 1 and s["overflow"] and s["skipped"] and s["grad_norm"] is None, f"injected step record {s}")
check(any(r["grad_norm"] is not None and r["grad_norm"] > 0 for r in st), "no finite grad norm at all")
ck = [r["step"] for r in recs if r["type"] == "event" and r.get("event") == "checkpoint"]
check(set(k for k in range(2, steps + 1, 2)) | {steps} <= set(ck), f"checkpoint events {ck}")
ev = [r for r in recs if r["type"] == "eval"]
check(ev and ev[-1]["step"] == steps and isinstance(ev[-1].get("test_loss"), float), f"eval records {ev}")
sm = recs[-1]
check(sm["type"] == "summary" and sm["steps"] == steps and sm["skipped"] >= 1, f"summary {sm}")
check("peak_allocated_bytes" in sm and "device_used_bytes" in sm and "samples_per_s" in sm, "summary fields")
check(sum(1 for r in recs if r["type"] in ("header", "summary")) == 2, "one header, one summary")
# The progress line: step 1 always, every log.every-th step and the last, in one fixed format.
pat = re.compile(r"step +(\d+)/(\d+) \| epoch \d+ \| loss [0-9.]+ \| lr [0-9.e+-]+ \| scale [0-9.e+]+ \| "
                 r"gnorm ([0-9.]+|-) \| skipped \d+ \| \d+ samples/s \| elapsed \d+:\d\d:\d\d \| ETA \d+:\d\d:\d\d")
lines = [l for l in open(out).read().splitlines() if l.startswith("step ")]
shown = []
for l in lines:
    mm = pat.fullmatch(l)
    check(mm is not None, f"progress line format: {l!r}")
    if mm:
        shown.append(int(mm.group(1)))
        check(int(mm.group(2)) == steps, f"total in {l!r}")
        check((mm.group(3) == "-") == (int(mm.group(1)) in {r["step"] for r in st if r["overflow"]}), f"gnorm in {l!r}")
want = sorted({1, steps} | {k for k in range(1, steps + 1) if k % every == 0})
check(shown == want, f"progress lines at steps {shown}, want {want}")
check(re.search(r"^summary: \d+ steps", open(out).read(), re.M), "summary line")
for e in errors: print("   ", e)
sys.exit(1 if errors else 0)
PY
then ok "metrics records and progress lines of the fresh run"; else bad "metrics of the fresh run"; fi

# 2. Resume: appends (header, resume event), numbering goes on.
more=$((steps + 3))
if train "$tmp/out2" "$cfg" "${small[@]}" --set train.steps=$more --set log.every=$every \
     --set checkpoint.dir="\"$tmp/ck\"" --set checkpoint.every_steps=2 --set log.metrics="\"$m\"" \
   && grep -q "resumed from" "$tmp/out2"; then ok "resumed run"; else bad "resumed run"; sed 's/^/    /' "$tmp/out2" | tail -20; fi
if python3 - "$m" "$tmp/m-after-1" "$steps" "$more" <<'PY'
import json, sys
path, before, steps, more = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
text, old = open(path).read(), open(before).read()
errors = []
def check(cond, msg):
    if not cond: errors.append(msg)
check(text.startswith(old), "the resumed run did not append (the first run's records changed)")
new = [json.loads(l) for l in text[len(old):].splitlines()]
check(new[0]["type"] == "header" and new[0]["start_step"] == steps and new[0]["resumed_from"], f"second header {new[0]}")
check(new[1]["type"] == "event" and new[1]["event"] == "resume" and new[1]["step"] == steps
      and new[1]["checkpoint"].endswith(f"ckpt-{steps}.bin"), f"resume event {new[1]}")
check([r["step"] for r in new if r["type"] == "step"] == list(range(steps + 1, more + 1)), "steps after the resume")
check(new[-1]["type"] == "summary" and new[-1]["steps"] == more, f"summary {new[-1]}")
for e in errors: print("   ", e)
sys.exit(1 if errors else 0)
PY
then ok "resume appends a header and a resume event"; else bad "metrics after the resume"; fi
[ -e "$tmp/run/m.1.jsonl" ] && bad "a resumed run moved the metrics file aside"

# 3. Fresh runs onto a used path move the earlier records aside, never truncate them.
cp "$m" "$tmp/m-after-2"
for n in 1 2; do
  if train "$tmp/out3" "$cfg" "${small[@]}" --set train.steps=2 --set log.metrics="\"$m\"" \
     && cmp -s "$tmp/m-after-$((n + 1))" "$tmp/run/m.$n.jsonl" && grep -q "moved them to $tmp/run/m.$n.jsonl" "$tmp/out3" \
     && [ "$(head -n 1 "$m" | grep -c '^{"type":"header","schema":1,')" = 1 ] && [ "$(grep -c '"type":"step"' "$m")" = 2 ]; then
    ok "fresh run $n: the earlier file moved to m.$n.jsonl intact, a new file started"
  else
    bad "fresh run $n onto a used metrics path"; sed 's/^/    /' "$tmp/out3" | tail -10; ls -l "$tmp/run"
  fi
  cp "$m" "$tmp/m-after-$((n + 2))"
done

# 4. log.quiet: no progress lines, the summary stays.
if train "$tmp/out4" "$cfg" "${small[@]}" --set train.steps=3 --set log.every=1 --set log.quiet=true \
   && [ "$(grep -c '^step ' "$tmp/out4")" = 0 ] && [ "$(grep -c '^summary: ' "$tmp/out4")" = 1 ]; then
  ok "log.quiet keeps only the summary"
else
  bad "log.quiet"; sed 's/^/    /' "$tmp/out4" | tail -10
fi

# 5. An unusable metrics path: exit 2 on every rank, log.metrics named, nothing hangs.
touch "$tmp/plainfile"
train "$tmp/out5" "$cfg" "${small[@]}" --set train.steps=3 --set log.metrics="\"$tmp/plainfile/m.jsonl\""
rc=$?
if [ "$rc" = 2 ] && grep -q "plainfile/m.jsonl: log.metrics: cannot create the folder" "$tmp/out5"; then
  ok "unusable log.metrics -> exit 2 naming the key"
else
  bad "unusable log.metrics -> exit $rc"; sed 's/^/    /' "$tmp/out5" | tail -10
fi

# 6. A language model: tokens/s, val_* evaluation records.
mkdir -p "$tmp/tok"
if "$MPTRAIN" synth-tokens --out "$tmp/tok/train-00000.bin" --tokens 40000 --vocab 257 --seed $RANDOM > /dev/null \
   && "$MPTRAIN" synth-tokens --out "$tmp/tok/val-00000.bin" --tokens 8000 --vocab 257 --seed $RANDOM > /dev/null \
   && train "$tmp/out6" "$SRC/configs/gpt2-tiny.json" --set device=cpu --set train.steps=6 --set train.eval_every=3 \
        --set data.train_shards="[\"$tmp/tok/train-*.bin\"]" --set data.val_shards="[\"$tmp/tok/val-*.bin\"]" \
        --set log.metrics="\"$tmp/g.jsonl\"" \
   && python3 - "$tmp/g.jsonl" <<'PY'
import json, math, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
st = [r for r in recs if r["type"] == "step"]
ev = [r for r in recs if r["type"] == "eval"]
ok = recs[0]["type"] == "header" and recs[0]["unit"] == "tokens" and [r["step"] for r in st] == list(range(1, 7))
ok = ok and all(r["unit"] == "tokens" and r["tokens_per_s"] > 0 and "samples_per_s" not in r for r in st)
ok = ok and [r["step"] for r in ev] == [3, 6] and all(r["val_loss"] > 0 and r["val_tokens"] > 0 for r in ev)
ok = ok and all(abs(r["val_ppl"] - math.exp(r["val_loss"])) < 1e-6 * r["val_ppl"] for r in ev)
ok = ok and recs[-1]["type"] == "summary" and recs[-1]["val_loss"] == ev[-1]["val_loss"]
sys.exit(0 if ok else 1)
PY
then ok "language model: tokens/s and val_* records"; else bad "language-model metrics"; sed 's/^/    /' "$tmp/out6" | tail -10; fi
echo "$fail failed"
[ "$fail" = 0 ]
