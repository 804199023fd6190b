#!/usr/bin/env python3
"""Projects GPT-2 data-parallel step time and weak-scaling efficiency to large clusters from measured numbers:
the one-GPU step of the scaling benchmark (bench.json from launch/bench.sh) and the collective fits of
`mptrain bench-comm` (alpha-beta per collective) on NVLink and, optionally, on the network transport.

The model (every assumption is printed in the report):
  compute   t_c = one-GPU step of the measured model (bench.json, the --series row at 1 GPU, less its exposed
            communication) x FLOPs per token
            of the projected model / FLOPs per token of the measured one (6 x parameters + 12 x layers x T x C):
            the same MFU at every size. B and T per GPU as in the measured run; one micro-batch per step.
  traffic   ZeRO-1 and ZeRO-2 both reduce-scatter the bf16 gradients (2P bytes) and all-gather the bf16
            parameters (2P bytes) each step, in buckets of --bucket-mb; plus one 8-byte all-reduce of the
            statistics. (With one micro-batch the two stages move the same bytes; ZeRO-2 differs in memory.)
  collective t(S) = n_buckets x alpha(N) + (N-1)/N x S / bw(N)   (ring bandwidth term)
            bw(N): the NVLink bus bandwidth measured at 2 GPUs for N <= --gpus-per-node (NVSwitch: every GPU
            keeps its bandwidth); above, the smaller of that and the network's per-GPU bandwidth
            (--net-gbit x --net-eff / 8 GB/s: hierarchical collectives are bound by each GPU's NIC).
            alpha(N): the measured 2-GPU alpha, plus 2 log2(N / 2) x --hop-us (tree-like latency growth).
  overlap   with overlap the reduce-scatter hides under backward (2/3 of t_c) and the all-gather under the next
            forward (1/3 of t_c); what exceeds them is exposed, plus the last bucket of each, which nothing
            hides. Without overlap all of both is exposed.
  spread    every step ends with a collective, so it ends when the slowest GPU is done: each GPU's step time
            varies from step to step on its own (a power-capped GPU's clock wanders), taken as independent
            normal with the standard deviation of the measured one-GPU row ((p90 - p10) / 2.563), which adds
            E[max of N] = e_N x sd (e_2 = 0.56, e_8 = 1.42, e_64 = 2.34, e_512 = 3.04, e_4096 = 3.63). A longer
            step averages the fluctuations: sd grows as the square root of the step (independent
            fluctuations from one measured step's length to the next), so a model of compute t_c has
            sd = sd_measured x sqrt(t_c / t_c measured). --no-spread drops the term.
  step      t_c + exposed + the statistics all-reduce (alpha only) + spread; efficiency = t_c / step.

usage: project.py --bench bench.json --comm nvlink.json [--comm-net net.json] [--series "bf16 ZeRO-1"]
                  [--out DIR] [--net-gbit 400] [--net-eff 0.9] [--hop-us 5] [--gpus-per-node 8] [--bucket-mb 25]
                  [--no-spread]
"""
import argparse
import json
import math
import os
import sys

MODELS = {"gpt2-124m": (12, 12, 768), "gpt2-350m": (24, 16, 1024), "gpt2-1.5b": (48, 25, 1600)}
VOCAB, VOCAB_PADDED = 50257, 50304


def params(L, C, T):
    return L * (12 * C * C + 13 * C) + VOCAB_PADDED * C + T * C + 2 * C


def flops_per_token(L, C, T):
    return 6 * params(L, C, T) + 12 * L * T * C


def collective_us(fit, S, N, n_buckets, bw_gbs, hop_us):
    if N <= 1:
        return 0.0
    alpha = fit["alpha_us"] + 2 * math.log2(N / 2) * hop_us
    return n_buckets * alpha + (N - 1) / N * S / (bw_gbs * 1e3)  # bytes / (GB/s) -> us: / 1e3


def expected_max_normal(N):
    """E[max of N independent standard normals], by quadrature of x d(Phi(x)^N)."""
    if N <= 1:
        return 0.0
    h, total = 1e-3, 0.0
    for i in range(-9000, 9001):
        x = i * h
        cdf = 0.5 * (1 + math.erf(x / math.sqrt(2)))
        total += x * N * math.exp(-x * x / 2) / math.sqrt(2 * math.pi) * cdf ** (N - 1) * h
    return total


def project(t_c_ms, P, N, fits, a, overlap, net_fits=None, spread_rel=0.0, t_c_ref_ms=None):
    S = 2.0 * P
    t_c_ref_ms = t_c_ms if t_c_ref_ms is None else t_c_ref_ms  # the measured compute the spread was taken at
    bucket = a.bucket_mb * 2**20
    nb = max(1, math.ceil(S / bucket))
    f = fits if (N <= a.gpus_per_node or net_fits is None) else net_fits
    intra = {k: fits[k]["busbw_gbs"] for k in ("reduce_scatter", "all_gather")}
    net_bw = a.net_gbit * a.net_eff / 8
    bw = {k: (v if N <= a.gpus_per_node else min(v, net_bw)) for k, v in intra.items()}
    hop = 0.0 if N <= a.gpus_per_node else a.hop_us
    rs = collective_us(f["reduce_scatter"], S, N, nb, bw["reduce_scatter"], hop) / 1e3
    ag = collective_us(f["all_gather"], S, N, nb, bw["all_gather"], hop) / 1e3
    stats = (f["all_reduce"]["alpha_us"] + 2 * math.log2(max(N, 2) / 2) * hop) / 1e3 if N > 1 else 0.0
    if overlap:
        last_rs, last_ag = rs / nb, ag / nb
        exposed = max(0.0, rs - 2 / 3 * t_c_ms) + last_rs + max(0.0, ag - 1 / 3 * t_c_ms) + last_ag
    else:
        exposed = rs + ag
    exposed = min(exposed, rs + ag)
    spread = expected_max_normal(N) * spread_rel * math.sqrt(t_c_ms * t_c_ref_ms)
    step = t_c_ms + exposed + stats + spread
    return {"rs_ms": rs, "ag_ms": ag, "exposed_ms": exposed + stats, "spread_ms": spread, "step_ms": step,
            "efficiency": t_c_ms / step}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", required=True)
    ap.add_argument("--comm", required=True)
    ap.add_argument("--comm-net")
    ap.add_argument("--series", default="bf16 ZeRO-1")
    ap.add_argument("--out", default=".")
    ap.add_argument("--net-gbit", type=float, default=400)
    ap.add_argument("--net-eff", type=float, default=0.9)
    ap.add_argument("--hop-us", type=float, default=5.0)
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--bucket-mb", type=float, default=25)
    ap.add_argument("--no-spread", action="store_true")
    a = ap.parse_args()
    bench = json.load(open(a.bench))
    comm = json.load(open(a.comm))
    net = json.load(open(a.comm_net)) if a.comm_net else None
    fits = comm["fits"]
    for k in ("all_reduce", "reduce_scatter", "all_gather"):
        if k not in fits:
            print(f"project: {a.comm}: no fit for {k} (bench-comm ran on one rank?)", file=sys.stderr)
            return 2
    rows = [r for r in bench["rows"] if r["system"] == "mptrain"]
    one = next((r for r in rows if r["label"] == a.series and r["ranks"] == 1), None)
    if one is None:
        print(f"project: {a.bench}: no one-GPU row of series '{a.series}'", file=sys.stderr)
        return 2
    cfg_T = 1024
    # The measured model: its FLOPs per token and parameters from the bench row (whatever model it was).
    f0 = one["model_flops_per_unit"]
    P0 = one["params"]
    t_c0 = one["ms_per_step"] - (one.get("exposed_comm_ms") or 0.0)
    # The one-GPU step's relative spread (a normal's p10..p90 is 2.563 sd wide).
    spread_rel = 0.0
    if not a.no_spread and one.get("ms_p10") is not None and one.get("ms_p90") is not None:
        spread_rel = (one["ms_p90"] - one["ms_p10"]) / 2.563 / one["ms_per_step"]

    # Check against what was measured: the 2-GPU rows (NVLink, and the network-transport run).
    checks = []
    for r in rows:
        if r["ranks"] < 2 or r["label"] not in (a.series, a.series + " net"):  # the series and its network run
            continue
        use_net = r["label"].endswith(" net")
        f = net["fits"] if (use_net and net) else fits
        pred = project(t_c0, P0, r["ranks"], f, argparse.Namespace(**{**vars(a), "gpus_per_node": 10**9}), True,
                       spread_rel=spread_rel)
        meas_eff = r["tokens_per_s"] / (r["ranks"] * one["tokens_per_s"])
        # The model's exposure is communication alone: compare with the least exposed rank's where the row
        # has it (the other ranks' extra wait is for a slower rank: the spread term).
        meas_exp = r.get("exposed_comm_ms_min_rank", r.get("exposed_comm_ms"))
        checks.append({"label": r["label"], "gpus": r["ranks"], "measured_efficiency": meas_eff,
                       "predicted_efficiency": pred["efficiency"], "measured_exposed_ms": meas_exp,
                       "predicted_spread_ms": pred["spread_ms"],
                       "predicted_exposed_ms": pred["exposed_ms"], "measured_step_ms": r["ms_per_step"],
                       "predicted_step_ms": pred["step_ms"]})

    table = []
    for name, (L, H, C) in MODELS.items():
        P = params(L, C, cfg_T)
        t_c = t_c0 * flops_per_token(L, C, cfg_T) / f0
        for N in (8, 64, 512, 4096):
            for stage in (1, 2):
                for overlap in (True, False):
                    p = project(t_c, P, N, fits, a, overlap, net["fits"] if net else None, spread_rel, t_c0)
                    table.append({"model": name, "params": P, "gpus": N, "zero": stage, "overlap": overlap,
                                  "compute_ms": t_c, **p})
    doc = {"assumptions": {k: v for k, v in vars(a).items() if k not in ("bench", "comm", "comm_net", "out")},
           "measured_one_gpu_ms": one["ms_per_step"], "measured_compute_ms": t_c0, "spread_rel": spread_rel, "measured_model": one.get("model"), "fits_nvlink": fits,
           "fits_net": net["fits"] if net else None, "checks": checks, "projection": table,
           "source": {"bench": bench.get("date"), "machine": bench.get("machine")}}
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "projection.json"), "w") as f:
        json.dump(doc, f, indent=2)
    lines = [f"Projection from {bench.get('machine')} ({bench.get('date')}); series {a.series}; compute "
             f"{t_c0:.2f} ms/step at 1 GPU for {one.get('model')} ({P0 / 1e6:.1f}M parameters); NVLink fits: " +
             ", ".join(f"{k} {v['alpha_us']:.0f} us + {v['busbw_gbs']:.0f} GB/s" for k, v in fits.items()) +
             f"; inter-node {a.net_gbit:.0f} Gb/s x {a.net_eff} per GPU, +{a.hop_us} us per tree level, "
             f"{a.gpus_per_node} GPUs per node, buckets of {a.bucket_mb} MiB; per-GPU step spread sd "
             f"{100 * spread_rel:.2f}% of the step.", "",
             "Check against measurement:", "",
             "| run | GPUs | measured efficiency | predicted | measured exposed ms (least exposed rank) | predicted | predicted spread ms |", "|---|---:|---:|---:|---:|---:|---:|"]
    for c in checks:
        me = "-" if c["measured_exposed_ms"] is None else f"{c['measured_exposed_ms']:.2f}"
        lines.append(f"| {c['label']} | {c['gpus']} | {100 * c['measured_efficiency']:.1f}% | "
                     f"{100 * c['predicted_efficiency']:.1f}% | {me} | {c['predicted_exposed_ms']:.2f} | {c['predicted_spread_ms']:.2f} |")
    lines += ["", "| model | GPUs | compute ms | RS ms | AG ms | spread ms | efficiency, overlap | efficiency, no overlap |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in MODELS:
        for N in (8, 64, 512, 4096):
            ov = next(r for r in table if r["model"] == name and r["gpus"] == N and r["zero"] == 1 and r["overlap"])
            no = next(r for r in table if r["model"] == name and r["gpus"] == N and r["zero"] == 1 and not r["overlap"])
            lines.append(f"| {name} | {N} | {ov['compute_ms']:.1f} | {ov['rs_ms']:.1f} | {ov['ag_ms']:.1f} | {ov['spread_ms']:.2f} | "
                         f"{100 * ov['efficiency']:.1f}% | {100 * no['efficiency']:.1f}% |")
    lines.append("")
    lines.append("ZeRO-2 rows equal ZeRO-1 rows at one micro-batch per step (the same bytes move); see projection.json.")
    md = "\n".join(lines) + "\n"
    with open(os.path.join(a.out, "projection.md"), "w") as f:
        f.write(md)
    print(md, end="")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name in MODELS:
            for overlap, style in ((True, "-"), (False, "--")):
                pts = [r for r in table if r["model"] == name and r["zero"] == 1 and r["overlap"] == overlap]
                ax.plot([r["gpus"] for r in pts], [100 * r["efficiency"] for r in pts], style, marker="o",
                        label=f"{name} {'overlap' if overlap else 'no overlap'}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("GPUs")
        ax.set_ylabel("weak-scaling efficiency, %")
        ax.set_title("Projected data-parallel efficiency (alpha-beta model)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(a.out, "projection.png"), dpi=120)
    except ImportError:
        print("project: matplotlib missing; no projection.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
