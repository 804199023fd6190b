#!/usr/bin/env python3
"""Two `mptrain profile --out` files side by side: every op's ms per step in A and in B and the difference
(B - A), the largest differences first, then the sum of the ops, the time in no op, the profiled step and the
unprofiled median, the GPUs' mean SM clock and power where NVML gave them, and the compute stream's gaps that differ most (position by position, where both files
ran the same op sequence).

    python3 launch/profile_diff.py A.json B.json [--rank-a R] [--rank-b R] [--rows 25] [--json OUT.json]

--rank-a / --rank-b pick a rank of a file profiled on several ranks (its "by_rank" entries; default 0, the
table the file's top level holds). Typical use: one GPU against two GPUs with debug.skip_bucket_comm=true
(what the ranks meeting every step costs each op), or two builds of the same config.
"""
import argparse
import json
import sys


def side(path, rank):
    try:
        p = json.load(open(path))
    except (OSError, ValueError) as e:
        sys.exit(f"profile_diff: {path}: {e}")
    if "rows" not in p or "step_ms" not in p:
        sys.exit(f"profile_diff: {path}: not an `mptrain profile --out` file (no rows / step_ms)")
    by_rank = p.get("by_rank") or []
    if rank != 0 or by_rank:
        match = [r for r in by_rank if r.get("rank") == rank]
        if not match:
            sys.exit(f"profile_diff: {path}: by_rank: no rank {rank} (the file has {len(by_rank)} rank(s))")
        r = match[0]
        return {"rows": dict(r["rows"]), "step_ms": r["step_ms"], "ops_ms": r["ops_ms"],
                "unprofiled_ms": r.get("unprofiled_step_ms", 0.0), "gaps": r.get("gaps", []),
                "sm_mhz": r.get("sm_mhz", 0.0), "watts": r.get("watts", 0.0)}
    return {"rows": {r["op"]: r["ms"] for r in p["rows"]}, "step_ms": p["step_ms"], "ops_ms": p["ops_ms"],
            "unprofiled_ms": p.get("unprofiled_step_ms", 0.0), "gaps": p.get("gaps", []), "sm_mhz": 0.0, "watts": 0.0}


def compare(a, b):
    rows = [{"op": op, "a_ms": a["rows"].get(op, 0.0), "b_ms": b["rows"].get(op, 0.0)}
            for op in sorted(set(a["rows"]) | set(b["rows"]))]
    for r in rows:
        r["diff_ms"] = r["b_ms"] - r["a_ms"]
    rows.sort(key=lambda r: -abs(r["diff_ms"]))
    total = {}
    for name, f in (("sum of the ops", lambda s: s["ops_ms"]), ("not in any op", lambda s: s["step_ms"] - s["ops_ms"]),
                    ("step, profiled", lambda s: s["step_ms"]), ("step, not profiled (median)", lambda s: s["unprofiled_ms"])):
        total[name] = {"a_ms": f(a), "b_ms": f(b), "diff_ms": f(b) - f(a)}
    if a["sm_mhz"] > 0 and b["sm_mhz"] > 0:  # NVML's means over the steps (not ms)
        for name, key in (("SM clock, MHz (not ms)", "sm_mhz"), ("board power, W (not ms)", "watts")):
            total[name] = {"a_ms": a[key], "b_ms": b[key], "diff_ms": b[key] - a[key]}
    gaps = []
    ga, gb = a["gaps"], b["gaps"]
    if ga and len(ga) == len(gb) and all(x["after"] == y["after"] and x["before"] == y["before"] for x, y in zip(ga, gb)):
        gaps = [{"position": x["position"], "after": x["after"], "before": x["before"], "a_ms": x["ms"], "b_ms": y["ms"],
                 "diff_ms": y["ms"] - x["ms"]} for x, y in zip(ga, gb)]
        gaps.sort(key=lambda g: -abs(g["diff_ms"]))
    return {"rows": rows, "totals": total, "gaps": gaps, "gaps_compared": bool(gaps)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--rank-a", type=int, default=0)
    ap.add_argument("--rank-b", type=int, default=0)
    ap.add_argument("--rows", type=int, default=25)
    ap.add_argument("--json", help="also write the comparison here")
    args = ap.parse_args()
    c = compare(side(args.a, args.rank_a), side(args.b, args.rank_b))
    print(f"A = {args.a} (rank {args.rank_a}), B = {args.b} (rank {args.rank_b}); ms per step")
    print(f"{'op (shape)':58s} {'A':>9s} {'B':>9s} {'B - A':>9s}")
    shown = c["rows"][:args.rows]
    for r in shown:
        print(f"{r['op'][:58]:58s} {r['a_ms']:9.3f} {r['b_ms']:9.3f} {r['diff_ms']:+9.3f}")
    rest = c["rows"][args.rows:]
    if rest:
        print(f"{'the other %d ops' % len(rest):58s} {sum(r['a_ms'] for r in rest):9.3f} "
              f"{sum(r['b_ms'] for r in rest):9.3f} {sum(r['diff_ms'] for r in rest):+9.3f}")
    for name, t in c["totals"].items():
        print(f"{name:58s} {t['a_ms']:9.3f} {t['b_ms']:9.3f} {t['diff_ms']:+9.3f}")
    if c["gaps"]:
        print("the compute stream's gaps that differ most (position: after -> before):")
        for g in c["gaps"][:8]:
            print(f"  {g['position']:4d}: {(g['after'] + ' -> ' + g['before'])[:70]:70s} {g['a_ms']:8.3f} {g['b_ms']:8.3f} "
                  f"{g['diff_ms']:+8.3f}")
    else:
        print("gaps: not compared (the two profiles ran different op sequences, or one has no gaps)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(c, f, indent=1)


if __name__ == "__main__":
    main()
