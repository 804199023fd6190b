#!/usr/bin/env bash
# The scaling benchmark on CPU ranks (gpt2-tiny, 1 and 2 ranks, synthetic tokens): launch/bench.sh writes
# one row per world size (and one for two independent one-rank runs at once), bench.json with the weak-scaling efficiency, bench.md with the table and, where
# python3-matplotlib is installed, scaling.png; the numbers in them agree with each other.
set -u
MPTRAIN=$1; SRC=$2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail=0
"$MPTRAIN" synth-tokens --out "$tmp/train.bin" --tokens 200000 --vocab 257 --seed $RANDOM > /dev/null || exit 1
MPTRAIN="$MPTRAIN" timeout 600 bash "$SRC/launch/bench.sh" "$SRC/configs/gpt2-tiny.json" --cpu --ranks 1,2 --steps 4 \
  --warmup 2 --out "$tmp/b" --set data.train_shards="[\"$tmp/train.bin\"]" --set data.val_shards="[\"$tmp/train.bin\"]" \
  > "$tmp/out" 2>&1
rc=$?
cat "$tmp/out"
[ "$rc" = 0 ] || { echo "FAIL: bench.sh exit $rc"; exit 1; }
python3 - "$tmp/b" <<'PY' || fail=1
import json, os, sys
d = sys.argv[1]
doc = json.load(open(os.path.join(d, "bench.json")))
ok = doc["schema"] == "mptrain-bench/1" and doc["git_commit"] and doc["date"]
rows = {r["ranks"]: r for r in doc["rows"] if r["label"] == "fp32 ZeRO-1"}
ok = ok and len(doc["rows"]) == 2 and sorted(rows) == [1, 2] and all(r["system"] == "mptrain" and r["unit"] == "tokens" for r in rows.values())
for n, r in rows.items():
    # tokens/s follows from the step time, the batch and the world size; the spread brackets the median.
    tok = r["batch_per_rank"] * 64 * n / (r["ms_per_step"] * 1e-3)
    ok = ok and abs(tok - r["tokens_per_s"]) <= 1e-6 * tok and r["ms_p10"] <= r["ms_per_step"] <= r["ms_p90"]
    ok = ok and 0 <= r["exposed_comm_ms"] <= r["ms_max"] and r["timed_steps"] == 4 and r["peak_mem_gib"] > 0
    ok = ok and r["zero_offload"] == "none" and r["zero_overlap"] is True and r["zero_symmetric_memory"] is True
    # The exposure split by site (each site and the total are the largest rank's): no site above the total,
    # the sites together not below it; one median step time per rank; the host's readback wait within a step.
    sites, total, eps = r["exposed_comm_ms_by_site"], r["exposed_comm_ms"], 1e-9
    ok = ok and sorted(sites) == ["gradients", "parameters", "staging", "statistics"] and min(sites.values()) >= 0
    ok = ok and max(sites.values()) <= total + eps and total <= sum(sites.values()) + eps
    ok = ok and (n == 1 or sites["gradients"] > 0)  # CPU ranks: every bucket collective is a host wait
    ok = ok and len(r["ms_per_step_by_rank"]) == n and all(0 < m <= r["ms_max"] for m in r["ms_per_step_by_rank"])
    ok = ok and 0 <= r["host_wait_ms"] <= r["ms_max"] and r["skip_bucket_comm"] is False
    # CPU ranks: no warm-up time added by default, and no GPU clocks or power to report.
    ok = ok and r["warmup_steps"] == 2 and r["warmup_seconds"] > 0 and r["sm_clock_mhz_by_rank"] == [None] * n
    ok = ok and r["power_w_by_rank"] == [None] * n and r["power_limit_w"] is None and r["clock_limited_by"] is None
# steps/: each row's per-step times, one list per rank, as many as the row timed.
for n in (1, 2):
    st = json.load(open(os.path.join(d, "steps", f"mptrain-{n}-fp32_ZeRO-1.json")))
    ok = ok and len(st["step_ms"]) == n and all(len(x) == 4 for x in st["step_ms"])
eff = rows[2]["tokens_per_s"] / (2 * rows[1]["tokens_per_s"])
ok = ok and rows[1]["efficiency"] == 1.0 and abs(rows[2]["efficiency"] - eff) < 1e-12
md = open(os.path.join(d, "bench.md")).read().splitlines()
ok = ok and sum(1 for l in md if l.startswith("| mptrain |")) == 2
if not ok:
    print("FAIL: bench.json / bench.md", json.dumps(doc, indent=1)[:3000])
sys.exit(0 if ok else 1)
PY
# The commit in bench.json: git's HEAD of the source tree (with -dirty when tracked files differ), or
# MPTRAIN_COMMIT where the caller knows better (a copy of the tree whose .git is stale).
want=$(git -C "$SRC" rev-parse --short HEAD 2>/dev/null || echo unknown)
[ "$want" != unknown ] && [ -n "$(git -C "$SRC" status --porcelain --untracked-files=no)" ] && want="$want-dirty"
got=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["git_commit"])' "$tmp/b/bench.json")
[ "$got" = "$want" ] && echo "ok: commit $got" || { echo "FAIL: bench.json commit $got, git says $want"; fail=1; }
tag="c$RANDOM$RANDOM"
MPTRAIN_COMMIT=$tag python3 "$SRC/launch/bench_report.py" "$tmp/b" --config "$SRC/configs/gpt2-tiny.json" > /dev/null 2>&1
got=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["git_commit"])' "$tmp/b/bench.json")
[ "$got" = "$tag" ] && echo "ok: MPTRAIN_COMMIT" || { echo "FAIL: MPTRAIN_COMMIT=$tag gave $got"; fail=1; }
# --independent: two one-rank runs at once, which meet after their warm-up (--rendezvous) so that their
# timed steps run at the same time, joined into one row of the series "... independent": tokens/s the sum of
# the runs' (and consistent with its ms/step), each run's median kept, the efficiency against the one-rank row
# of the plain series, no peer ratio.
MPTRAIN="$MPTRAIN" timeout 600 bash "$SRC/launch/bench.sh" "$SRC/configs/gpt2-tiny.json" --cpu --ranks 1,2 --steps 4 \
  --warmup 2 --independent --out "$tmp/i" --set data.train_shards="[\"$tmp/train.bin\"]" \
  --set data.val_shards="[\"$tmp/train.bin\"]" > "$tmp/i.out" 2>&1 || { echo "FAIL: bench.sh --independent"; cat "$tmp/i.out"; fail=1; }
python3 - "$tmp/i" <<'PY' || fail=1
import json, os, sys
d = sys.argv[1]
doc = json.load(open(os.path.join(d, "bench.json")))
one = [r for r in doc["rows"] if r["label"] == "fp32 ZeRO-1" and r["ranks"] == 1]
ind = [r for r in doc["rows"] if r["label"] == "fp32 ZeRO-1 independent"]
ok = len(doc["rows"]) == 3 and len(one) == 1 and len(ind) == 1
if ok:
    ir = ind[0]
    name = lambda k, ext: os.path.join(d, "independent", f"mptrain-2-{k}-fp32_ZeRO-1{ext}")
    runs = [json.load(open(name(k, ".json"))) for k in (0, 1)]
    st = [json.load(open(name(k, ".steps.json"))) for k in (0, 1)]
    tps = sum(r["tokens_per_s"] for r in runs)
    ok = ok and ir["ranks"] == 2 and ir["independent_runs"] == 2 and abs(ir["tokens_per_s"] - tps) <= 1e-9 * tps
    ok = ok and abs(ir["batch_per_rank"] * 64 * 2 / (ir["ms_per_step"] * 1e-3) - tps) <= 1e-6 * tps
    ok = ok and ir["ms_per_step_by_rank"] == [r["ms_per_step"] for r in runs] and all(r["ranks"] == 1 for r in runs)
    ok = ok and min(r["ms_p10"] for r in runs) == ir["ms_p10"] <= ir["ms_per_step"] <= ir["ms_p90"]
    ok = ok and abs(ir["efficiency"] - tps / (2 * one[0]["tokens_per_s"])) < 1e-12 and ir["vs_pytorch"] is None
    ok = ok and all(r["rendezvous_met"] is True and r["rendezvous_wait_s"] >= 0 for r in runs) and ir["rendezvous_met"]
    ok = ok and all(len(s["step_ms"]) == 1 and len(s["step_ms"][0]) == 4 for s in st)
    # The timed steps of the two runs overlap in time.
    (a0, a1), (b0, b1) = [(s["end_unix_s"][0] - s["step_ms"][0][0] / 1e3, s["end_unix_s"][-1]) for s in st]
    ok = ok and a0 < b1 and b0 < a1
md = open(os.path.join(d, "bench.md")).read().splitlines()
ok = ok and sum(1 for l in md if l.startswith("| mptrain |")) == 3
if not ok:
    print("FAIL: bench.sh --independent", json.dumps(doc, indent=1)[:3000])
sys.exit(0 if ok else 1)
PY
# --rendezvous alone (the other run never comes): it times alone after the timeout and says so; half an
# option is bad input.
timeout 120 mpirun -np 1 "$MPTRAIN" bench "$SRC/configs/gpt2-tiny.json" --warmup 1 --steps 2 --rendezvous "$tmp/rv1" \
  --rendezvous-count 2 --out "$tmp/rv.json" --set data.train_shards="[\"$tmp/train.bin\"]" \
  --set data.val_shards="[\"$tmp/train.bin\"]" > "$tmp/rv.out" 2>&1 && rc=0 || rc=$?
[ "$rc" = 2 ] && grep -q "rv1: not a directory" "$tmp/rv.out" && echo "ok: --rendezvous missing dir" \
  || { echo "FAIL: --rendezvous on a missing directory: exit $rc"; cat "$tmp/rv.out"; fail=1; }
mkdir -p "$tmp/rv1"
timeout 120 mpirun -np 1 "$MPTRAIN" bench "$SRC/configs/gpt2-tiny.json" --warmup 1 --steps 2 --rendezvous "$tmp/rv1" \
  --rendezvous-count 2 --rendezvous-timeout 0.4 --out "$tmp/rv.json" --set data.train_shards="[\"$tmp/train.bin\"]" \
  --set data.val_shards="[\"$tmp/train.bin\"]" > "$tmp/rv.out" 2>&1 && rc=0 || rc=$?
if [ "$rc" = 0 ] && grep -q "1 of 2 runs ready after 0.4 s; timing without the rest" "$tmp/rv.out" && ls "$tmp/rv1"/ready.* > /dev/null \
   && python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); sys.exit(0 if r["rendezvous_met"] is False and r["rendezvous_wait_s"] >= 0.4 else 1)' "$tmp/rv.json"
then echo "ok: --rendezvous timeout"; else echo "FAIL: --rendezvous timeout: exit $rc"; cat "$tmp/rv.out"; fail=1; fi
timeout 60 mpirun -np 1 "$MPTRAIN" bench "$SRC/configs/gpt2-tiny.json" --rendezvous "$tmp/rv1" > "$tmp/rv.out" 2>&1 && rc=0 || rc=$?
[ "$rc" = 2 ] && grep -q "go together" "$tmp/rv.out" && echo "ok: --rendezvous without a count" \
  || { echo "FAIL: --rendezvous without --rendezvous-count: exit $rc"; cat "$tmp/rv.out"; fail=1; }
if { python3 -c "import matplotlib" || /usr/bin/python3 -c "import matplotlib"; } 2> /dev/null && [ -f "$SRC/launch/plot.py" ]; then
  if [ "$(head -c 8 "$tmp/b/scaling.png" 2>/dev/null | od -An -tx1 | tr -d ' \n')" = "89504e470d0a1a0a" ] \
     && [ "$(stat -c %s "$tmp/b/scaling.png")" -gt 5000 ]; then echo "ok: scaling.png"; else echo "FAIL: scaling.png"; fail=1; fi
else
  echo "scaling.png not checked: python3-matplotlib or launch/plot.py missing"
fi
# --warmup-seconds adds steps until that time has passed after the --warmup steps (every rank the same
# number), and --steps-out holds every rank's per-step times: the row's median is the median over steps of
# the slowest rank, and each readback wait lies within its step.
ws=0.$((3 + RANDOM % 5))
timeout 300 mpirun -np 2 "$MPTRAIN" bench "$SRC/configs/gpt2-tiny.json" --warmup 1 --warmup-seconds $ws --steps 5 \
  --steps-out "$tmp/steps.json" --out "$tmp/row.json" --set data.train_shards="[\"$tmp/train.bin\"]" \
  --set data.val_shards="[\"$tmp/train.bin\"]" > "$tmp/steps.out" 2>&1 || { echo "FAIL: bench --steps-out"; cat "$tmp/steps.out"; fail=1; }
python3 - "$tmp/steps.json" "$tmp/row.json" "$ws" <<'PY' || fail=1
import json, statistics, sys
st, row, ws = json.load(open(sys.argv[1])), json.load(open(sys.argv[2])), float(sys.argv[3])
steps, waits, ends = st["step_ms"], st["stats_wait_ms"], st["end_unix_s"]
ok = len(steps) == len(waits) == 2 and all(len(x) == 5 for x in steps + waits) and len(ends) == 5
ok = ok and all(0 <= w <= s for ss, ww in zip(steps, waits) for s, w in zip(ss, ww))
ok = ok and all(b > a for a, b in zip(ends, ends[1:]))
ok = ok and st["sm_mhz"] == [[0] * 5, [0] * 5]  # CPU ranks: no GPU clock
slowest = [max(a, b) for a, b in zip(*steps)]
ok = ok and abs(statistics.median(slowest) - row["ms_per_step"]) < 1e-9 * row["ms_per_step"]
# Per-step exposure: each rank's steps add up to its mean, the largest of which is the row's exposure; the
# split into the least exposed rank per step and the rest (waiting for a slower rank) adds up to the mean of
# the per-step largest.
ex = st["exposed_ms"]
ok = ok and len(ex) == 2 and all(len(e) == 5 and min(e) >= 0 for e in ex)
close = lambda a, b: abs(a - b) <= 1e-9 * max(1.0, abs(b))
ok = ok and close(max(sum(e) / 5 for e in ex), row["exposed_comm_ms"])
ok = ok and close(sum(min(a, b) for a, b in zip(*ex)) / 5, row["exposed_comm_ms_min_rank"])
ok = ok and close(sum(abs(a - b) for a, b in zip(*ex)) / 5, row["peer_wait_ms"])
ok = ok and row["exposed_comm_ms_min_rank"] + row["peer_wait_ms"] >= row["exposed_comm_ms"] - 1e-9
# The warm-up: one step, then at least ws seconds more of steps.
ok = ok and row["warmup_steps"] >= 2 and row["warmup_seconds"] >= ws
if not ok:
    print("FAIL: --steps-out / --warmup-seconds", json.dumps(st)[:1500], {k: row[k] for k in ("ms_per_step", "warmup_steps", "warmup_seconds", "exposed_comm_ms", "exposed_comm_ms_min_rank", "peer_wait_ms")})
sys.exit(0 if ok else 1)
PY
# The collectives' fits on 2 CPU ranks and the projection from them and the bench above: every collective
# fitted (alpha >= 0, bandwidth > 0), the measured 2-rank run checked, 3 models x 4 sizes x 2 stages x
# overlap on/off projected, overlap never worse, ZeRO-1 and ZeRO-2 equal (the same bytes), efficiencies in (0, 1].
timeout 300 mpirun -np 2 "$MPTRAIN" bench-comm --device cpu --max-bytes 1048576 --iters 3 --out "$tmp/comm.json" \
  > "$tmp/comm.out" 2>&1 || { echo "FAIL: bench-comm"; cat "$tmp/comm.out"; fail=1; }
python3 "$SRC/launch/project.py" --bench "$tmp/b/bench.json" --comm "$tmp/comm.json" --series "fp32 ZeRO-1" \
  --out "$tmp/proj" > "$tmp/proj.out" 2>&1 || { echo "FAIL: project.py"; cat "$tmp/proj.out"; fail=1; }
python3 - "$tmp/comm.json" "$tmp/proj/projection.json" <<'PY' || fail=1
import json, sys
comm, proj = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
ok = comm["ranks"] == 2 and comm["communicator"] == "mpi"
ok = ok and all(comm["fits"][k]["alpha_us"] >= 0 and comm["fits"][k]["busbw_gbs"] > 0
                for k in ("all_reduce", "reduce_scatter", "all_gather"))
ok = ok and len(comm["rows"]) == 3 * 5 and all(r["us"] > 0 for r in comm["rows"])
rows = proj["projection"]
ok = ok and len(rows) == 3 * 4 * 2 * 2 and all(0 < r["efficiency"] <= 1 for r in rows)
key = lambda r: (r["model"], r["gpus"])
for r in rows:
    twin = [q for q in rows if key(q) == key(r) and q["zero"] == r["zero"] and q["overlap"] != r["overlap"]][0]
    other = [q for q in rows if key(q) == key(r) and q["zero"] != r["zero"] and q["overlap"] == r["overlap"]][0]
    ok = ok and (r["efficiency"] >= twin["efficiency"] if r["overlap"] else True)
    ok = ok and abs(r["efficiency"] - other["efficiency"]) < 1e-12
    ok = ok and abs(r["step_ms"] - r["compute_ms"] - r["exposed_ms"] - r["spread_ms"]) < 1e-9 * r["step_ms"]
# The spread term: E[max of N standard normals] (0.5642 at 2, 1.4236 at 8, 3.6261 at 4096) times the one-GPU
# row's sd, scaled by the square root of the projected compute over the measured one.
sr = proj["spread_rel"]
ok = ok and sr > 0
for r in rows:
    e = {8: 1.4236, 64: 2.3437, 512: 3.0439, 4096: 3.6261}[r["gpus"]]
    tc0 = proj["measured_compute_ms"]
    ok = ok and abs(r["spread_ms"] - e * sr * tc0 * (r["compute_ms"] / tc0) ** 0.5) < 2e-4 * r["spread_ms"]
ok = ok and abs(proj["checks"][0]["predicted_spread_ms"] - 0.5642 * sr * proj["measured_compute_ms"]) < 2e-4 * proj["checks"][0]["predicted_spread_ms"]
ok = ok and len(proj["checks"]) == 1 and proj["checks"][0]["gpus"] == 2
if not ok:
    print("FAIL: bench-comm / projection", json.dumps(comm)[:1500], json.dumps(proj)[:1500])
sys.exit(0 if ok else 1)
PY
[ "$fail" = 0 ] && echo "ok: bench rows, bench.json, bench.md, --steps-out, --warmup-seconds, bench-comm fits, projection"
exit $fail
