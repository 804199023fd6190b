#!/usr/bin/env python3
"""Joins the rows launch/bench.sh wrote (DIR/rows/*.json) into DIR/bench.json, DIR/bench.md and DIR/scaling.png.

Rows: `mptrain bench --out` (system "mptrain") and tests/reference/peer_gpt2.py --out (system "pytorch").
Weak-scaling efficiency of a row: its tokens/s / (its GPU count x tokens/s of the same series on one GPU);
a series is (system, label), and a row labelled "... net" (the network-transport run) or "... independent"
(one-rank runs at once, one per GPU, joined here from DIR/independent) is measured against its series
without the suffix. The ratio column: mptrain tokens/s / PyTorch tokens/s at the same GPU count and
precision, from the same call.

usage: bench_report.py DIR [--config CONFIG]
"""
import argparse
import datetime
import glob
import json
import os
import platform
import subprocess
import sys


def source_commit():
    """The commit the measured tree came from: MPTRAIN_COMMIT when the caller knows better (a copy of the
    tree whose .git is not its own), else git's HEAD, with "-dirty" when tracked files differ from it."""
    env = os.environ.get("MPTRAIN_COMMIT", "").strip()
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=here).stdout.strip()
        if not head:
            return "unknown"
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                 text=True, cwd=here).stdout.strip()
        return head + ("-dirty" if changed else "")
    except OSError:
        return "unknown"

def peer_row(p):
    world = p["world"]
    return {"system": "pytorch", "label": f"{p['dtype']} DDP", "gpus": world, "ranks": world, "device": p["device"],
            "precision": p["dtype"], "ms_per_step": p["median_step_ms"], "ms_p10": p.get("p10_step_ms"),
            "ms_p90": p.get("p90_step_ms"), "tokens_per_s": p["tokens_per_s"],
            "tokens_per_s_per_gpu": p["tokens_per_s"] / world, "exposed_comm_ms": None, "exposed_comm_pct": None,
            "peak_mem_gib": p["peak_gib"], "mfu": None, "versions": {"torch": p.get("torch")},
            "impl": p.get("impl")}


def series_base(label):
    """The series a row is measured against: "... net" and "... independent" against their plain series."""
    for suffix in (" net", " independent"):
        if label.endswith(suffix):
            return label[:-len(suffix)]
    return label


def independent_rows(d):
    """Joins the one-rank runs that launch/bench.sh --independent ran at once, one per GPU
    (DIR/independent/mptrain-N-K-LABEL.json, K = 0..N-1), into one row per (N, label): tokens/s the sum of
    the runs', ms/step the one that gives it (the harmonic mean of their medians), the spread from the
    fastest run's p10 to the slowest's p90, and each run's median, clock and power in the by-rank fields."""
    groups = {}
    for f in sorted(glob.glob(os.path.join(d, "independent", "mptrain-*.json"))):
        if f.endswith(".steps.json"):
            continue
        r = json.load(open(f))
        groups.setdefault(os.path.basename(f).split("-", 2)[1] + "|" + r["label"], []).append(r)
    rows = []
    for key, runs in sorted(groups.items()):
        n = int(key.split("|")[0])
        if len(runs) != n:
            raise ValueError(f"{d}/independent: {len(runs)} runs of '{runs[0]['label']}', expected {n}")
        first = runs[0]
        tps = sum(r["tokens_per_s"] for r in runs)
        ms = n / sum(1.0 / r["ms_per_step"] for r in runs)
        exposed = max(r["exposed_comm_ms"] for r in runs)
        row = dict(first)
        row.update({
            "label": first["label"] + " independent", "ranks": n, "gpus": n if first.get("gpus") else 0,
            "independent_runs": n, "ms_per_step": ms, "tokens_per_s": tps, "tokens_per_s_per_gpu": tps / n,
            "ms_p10": min(r["ms_p10"] for r in runs), "ms_p90": max(r["ms_p90"] for r in runs),
            "ms_min": min(r["ms_min"] for r in runs), "ms_max": max(r["ms_max"] for r in runs),
            "ms_per_step_by_rank": [r["ms_per_step"] for r in runs],
            "exposed_comm_ms": exposed, "exposed_comm_pct": 100 * exposed / ms,
            "exposed_comm_ms_by_site": {k: max(r["exposed_comm_ms_by_site"][k] for r in runs)
                                        for k in first["exposed_comm_ms_by_site"]},
            "exposed_comm_ms_min_rank": None, "peer_wait_ms": None,
            "host_wait_ms": max(r["host_wait_ms"] for r in runs),
            "peak_mem_gib": max(r["peak_mem_gib"] for r in runs),
            "mfu": sum(r["mfu"] for r in runs) / n if first.get("mfu") is not None else None,
            "achieved_tflops_per_gpu": (sum(r["achieved_tflops_per_gpu"] for r in runs) / n
                                        if first.get("achieved_tflops_per_gpu") is not None else None),
            "sm_clock_mhz_by_rank": [x for r in runs for x in r["sm_clock_mhz_by_rank"]],
            "power_w_by_rank": [x for r in runs for x in r["power_w_by_rank"]],
            "warmup_steps": max(r["warmup_steps"] for r in runs),
            "warmup_seconds": max(r["warmup_seconds"] for r in runs),
            "skipped_steps": max(r["skipped_steps"] for r in runs),
            "rendezvous_met": all(r.get("rendezvous_met") for r in runs),
            "rendezvous_wait_s": max(r.get("rendezvous_wait_s") or 0 for r in runs),
        })
        rows.append(row)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--config", default="")
    a = ap.parse_args()
    rows = []
    for f in sorted(glob.glob(os.path.join(a.dir, "rows", "*.json"))):
        try:
            r = json.load(open(f))
        except (OSError, ValueError) as e:
            print(f"bench_report: {f}: not a JSON row ({e})", file=sys.stderr)
            return 2
        rows.append(peer_row(r) if "median_step_ms" in r else r)
    try:
        rows += independent_rows(a.dir)
    except (OSError, ValueError, KeyError) as e:
        print(f"bench_report: {a.dir}/independent: {e}", file=sys.stderr)
        return 2
    if not rows:
        print(f"bench_report: {a.dir}/rows holds no rows", file=sys.stderr)
        return 2
    # Weak-scaling efficiency against the series' one-rank row.
    one = {(r["system"], r["label"]): r["tokens_per_s"] for r in rows if r["ranks"] == 1}
    for r in rows:
        base = one.get((r["system"], series_base(r["label"])))
        r["efficiency"] = r["tokens_per_s"] / (r["ranks"] * base) if base else None
    peer = {(r["ranks"], r["precision"]): r["tokens_per_s"] for r in rows if r["system"] == "pytorch"}
    for r in rows:
        p = peer.get((r["ranks"], r["precision"])) if r["system"] == "mptrain" and r["label"] == series_base(r["label"]) else None
        r["vs_pytorch"] = r["tokens_per_s"] / p if p else None
    rows.sort(key=lambda r: (r["system"] != "mptrain", r["label"], r["ranks"]))
    commit = source_commit()
    mrow = next((r for r in rows if r["system"] == "mptrain"), rows[0])
    versions = dict(mrow.get("versions") or {})
    for r in rows:
        if r["system"] == "pytorch" and r["versions"].get("torch"):
            versions["torch"] = r["versions"]["torch"]
    doc = {"schema": "mptrain-bench/1", "machine": f"{platform.node()}: {mrow.get('device', '?')}",
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "git_commit": commit, "config": a.config, "model": mrow.get("model"), "versions": versions,
           "rows": [{k: v for k, v in r.items() if k not in ("config", "versions")} for r in rows]}
    with open(os.path.join(a.dir, "bench.json"), "w") as f:
        json.dump(doc, f, indent=2)

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    def power(r):  # each GPU's median SM clock and mean power over the timed steps (NVML), "-" without
        mhz, watts = r.get("sm_clock_mhz_by_rank") or [], r.get("power_w_by_rank") or []
        if not mhz or any(m is None for m in mhz) or len(watts) != len(mhz):
            return "-"
        return " ".join(f"{m:.0f}/{w:.0f}" for m, w in zip(mhz, watts))
    unit = mrow.get("unit", "tokens")
    head = f"{doc['model']} | {doc['machine']} | {doc['date']} | commit {commit} | {a.config}"
    if mrow.get("power_limit_w"):
        limits = sorted({x for r in rows for x in (r.get("clock_limited_by") or "").split(", ") if x})
        head += (f" | power limit {mrow['power_limit_w']:.0f} W, SM clock ceiling {mrow.get('sm_clock_max_mhz') or 0:.0f} MHz"
                 f", clocks limited by: {', '.join(limits) or 'nothing'}")
    lines = [head, "",
             f"| system | series | GPUs/ranks | ms/step (p10-p90) | {unit}/s | per GPU | efficiency | exposed comm | "
             "least exposed rank | "
             "peak mem | MFU | vs PyTorch | SM MHz / W per GPU |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        spread = f" ({fmt(r.get('ms_p10'), '.1f')}-{fmt(r.get('ms_p90'), '.1f')})" if r.get("ms_p10") is not None else ""
        exposed = "-" if r.get("exposed_comm_ms") is None else f"{r['exposed_comm_ms']:.2f} ms ({r['exposed_comm_pct']:.1f}%)"
        # Per step the rank that waited least at the collectives (the last to arrive) waits for communication
        # alone; the other ranks' extra wait is for a slower rank.
        least = r.get("exposed_comm_ms_min_rank")
        least = "-" if least is None or r["ranks"] < 2 else f"{least:.2f} ms ({100 * least / r['ms_per_step']:.1f}%)"
        eff = "-" if r["efficiency"] is None else f"{100 * r['efficiency']:.1f}%"
        mfu = "-" if r.get("mfu") is None else f"{100 * r['mfu']:.1f}%"
        lines.append(f"| {r['system']} | {r['label']} | {r['ranks']} | {r['ms_per_step']:.2f}{spread} | "
                     f"{r['tokens_per_s']:,.0f} | {r['tokens_per_s_per_gpu']:,.0f} | {eff} | {exposed} | {least} | "
                     f"{fmt(r.get('peak_mem_gib'), '.2f')} GiB | {mfu} | {fmt(r['vs_pytorch'], '.3f')} | {power(r)} |")
    md = "\n".join(lines) + "\n"
    with open(os.path.join(a.dir, "bench.md"), "w") as f:
        f.write(md)
    print(md, end="")
    plot = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plot.py")
    png = os.path.join(a.dir, "scaling.png")
    if os.path.exists(plot):
        # A python3 with matplotlib: this one, else the system's (python3-matplotlib).
        py = sys.executable
        for cand in (sys.executable, "/usr/bin/python3"):
            if os.path.exists(cand) and subprocess.run([cand, "-c", "import matplotlib"], capture_output=True).returncode == 0:
                py = cand
                break
        rc = subprocess.run([py, plot, "--bench", os.path.join(a.dir, "bench.json"), "--out", png]).returncode
        if rc != 0:
            print(f"bench_report: {plot} --bench failed (exit {rc}); no scaling plot", file=sys.stderr)
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
