#!/usr/bin/env python3
"""Curves from an mptrain metrics file, and scaling plots from a benchmark JSON.

  python3 launch/plot.py METRICS.jsonl [--out DIR]
      PNGs in DIR (default: the metrics file's folder): loss.png (training loss, validation/test loss),
      loss_scale.png, grad_norm.png, lr.png, throughput.png, mfu.png, and overview.png with every panel;
      a panel without data is left out. Records of a resumed run replace those of the steps it re-ran.
  python3 launch/plot.py --bench BENCH.json --out scaling.png
      tokens/s against GPUs and weak-scaling efficiency against GPUs, one line per (system, label).

Bad input (a line that is not JSON, a missing or mistyped field) is one line naming the file and the
field, exit code 2. Needs python3 and matplotlib (Debian: python3-matplotlib); draws with the Agg backend.
"""
import argparse
import json
import math
import os
import sys

METRICS_SCHEMA = 1
BENCH_SCHEMA = "mptrain-bench/1"


class BadInput(Exception):
    pass


def is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def need(rec, key, where, kind="number", optional=False):
    """rec[key] checked for type; None when optional and absent (or null for a number)."""
    if key not in rec or (optional and rec[key] is None):
        if optional:
            return None
        raise BadInput(f"{where}: {key}: missing")
    v = rec[key]
    ok = {"number": is_num(v), "int": isinstance(v, int) and not isinstance(v, bool),
          "string": isinstance(v, str), "bool": isinstance(v, bool), "list": isinstance(v, list)}[kind]
    if not ok:
        raise BadInput(f"{where}: {key}: expected a {kind}, got {json.dumps(v)[:40]}")
    return v


def read_metrics(path):
    """Step series keyed by step (a later record for a step wins), evaluations, events."""
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except OSError as e:
        raise BadInput(f"{path}: cannot read: {e.strerror}")
    steps, evals, events = {}, {}, []
    unit, headers = None, 0
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise BadInput(f"{where}: not a JSON record ({e.msg})")
        if not isinstance(rec, dict):
            raise BadInput(f"{where}: not a JSON object")
        kind = need(rec, "type", where, "string")
        if kind == "header":
            headers += 1
            schema = need(rec, "schema", where, "int")
            if schema != METRICS_SCHEMA:
                raise BadInput(f"{where}: schema: {schema} is not supported (this script reads schema {METRICS_SCHEMA})")
        elif kind == "step":
            s = need(rec, "step", where, "int")
            u = need(rec, "unit", where, "string")
            if u not in ("tokens", "samples"):
                raise BadInput(f"{where}: unit: expected \"tokens\" or \"samples\", got {json.dumps(u)}")
            unit = u
            steps[s] = {
                "loss": need(rec, "loss", where, optional=True),
                "lr": need(rec, "lr", where),
                "scale": need(rec, "scale", where),
                "grad_norm": need(rec, "grad_norm", where, optional=True),
                "skipped": need(rec, "skipped", where, "bool"),
                "rate": need(rec, u + "_per_s", where),
                "mfu": need(rec, "mfu", where, optional=True),
            }
        elif kind == "eval":
            s = need(rec, "step", where, "int")
            for key in rec:
                if key.endswith("_loss") and key.split("_")[0] in ("val", "test"):
                    evals[s] = (key, need(rec, key, where, optional=True))
        elif kind == "event":
            events.append((need(rec, "event", where, "string"), need(rec, "step", where, "int")))
    if headers == 0:
        raise BadInput(f"{path}: no header record (\"type\":\"header\"): not an mptrain metrics file of schema {METRICS_SCHEMA}")
    if not steps:
        raise BadInput(f"{path}: no step records")
    return steps, evals, events, unit


def series(steps, key):
    xs, ys = [], []
    for s in sorted(steps):
        v = steps[s][key]
        if v is not None and math.isfinite(v):
            xs.append(s)
            ys.append(v)
    return xs, ys


def metric_panels(steps, evals, events, unit):
    """(file name, title, draw(ax)) for each panel that has data."""
    panels = []

    def mark_events(ax):
        for name, s in events:
            if name in ("resume", "precision_fallback"):
                ax.axvline(s, color="grey", linestyle=":", linewidth=1)

    xs, ys = series(steps, "loss")
    if xs or evals:
        def draw(ax):
            if xs:
                ax.plot(xs, ys, label="training loss", linewidth=1)
            if evals:
                es = sorted(s for s in evals if evals[s][1] is not None)
                name = evals[es[0]][0] if es else "val_loss"
                ax.plot(es, [evals[s][1] for s in es], "o-", label=name.replace("_", " "), markersize=3)
            mark_events(ax)
            ax.set_ylabel("loss")
            ax.legend()
        panels.append(("loss", "loss", draw))
    for key, name, title, log in (("scale", "loss_scale", "loss scale", True), ("grad_norm", "grad_norm", "gradient norm", True),
                                  ("lr", "lr", "learning rate", False)):
        sx, sy = series(steps, key)
        if not sx:
            continue
        def draw(ax, sx=sx, sy=sy, key=key, log=log, title=title):
            ax.plot(sx, sy, linewidth=1)
            if key == "scale":
                skipped = [s for s in sorted(steps) if steps[s]["skipped"]]
                if skipped:
                    ax.plot(skipped, [steps[s]["scale"] for s in skipped], "rx", markersize=4, label="skipped step")
                    ax.legend()
            if log and all(v > 0 for v in sy):
                ax.set_yscale("log")
            mark_events(ax)
            ax.set_ylabel(title)
        panels.append((name, title, draw))
    tx, ty = series(steps, "rate")
    if tx:
        def draw(ax):
            ax.plot(tx, ty, linewidth=1)
            ax.set_ylabel(f"{unit}/s")
        panels.append(("throughput", f"throughput ({unit}/s)", draw))
    mx, my = series(steps, "mfu")
    if mx:
        def draw(ax):
            ax.plot(mx, [100 * v for v in my], linewidth=1)
            ax.set_ylabel("MFU (%)")
        panels.append(("mfu", "model FLOPs utilisation", draw))
    return panels


def plot_metrics(path, out, plt):
    steps, evals, events, unit = read_metrics(path)
    panels = metric_panels(steps, evals, events, unit)
    os.makedirs(out, exist_ok=True)
    written = []
    for name, title, draw in panels:
        fig, ax = plt.subplots(figsize=(7, 4))
        draw(ax)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        f = os.path.join(out, name + ".png")
        fig.savefig(f, dpi=100)
        plt.close(fig)
        written.append(f)
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(12, 3.6 * rows), squeeze=False)
    for i, (name, title, draw) in enumerate(panels):
        ax = axes[i // cols][i % cols]
        draw(ax)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    for i in range(len(panels), rows * cols):
        axes[i // cols][i % cols].axis("off")
    fig.suptitle(os.path.basename(path))
    fig.tight_layout()
    f = os.path.join(out, "overview.png")
    fig.savefig(f, dpi=90)
    plt.close(fig)
    written.append(f)
    return written


def read_bench(path):
    try:
        doc = json.load(open(path, encoding="utf-8"))
    except OSError as e:
        raise BadInput(f"{path}: cannot read: {e.strerror}")
    except json.JSONDecodeError as e:
        raise BadInput(f"{path}: not JSON ({e.msg}, line {e.lineno})")
    if not isinstance(doc, dict):
        raise BadInput(f"{path}: not a JSON object")
    schema = need(doc, "schema", path, "string")
    if schema != BENCH_SCHEMA:
        raise BadInput(f"{path}: schema: {json.dumps(schema)} is not {json.dumps(BENCH_SCHEMA)}")
    rows = need(doc, "rows", path, "list")
    if not rows:
        raise BadInput(f"{path}: rows: empty")
    lines = {}
    cpu_ranks = False
    for i, r in enumerate(rows):
        where = f"{path}: rows[{i}]"
        if not isinstance(r, dict):
            raise BadInput(f"{where}: not a JSON object")
        system = need(r, "system", where, "string")
        label = need(r, "label", where, "string")
        gpus = need(r, "gpus", where, "int")
        if gpus == 0 and isinstance(r.get("ranks"), int) and r["ranks"] >= 1:
            gpus = r["ranks"]  # CPU ranks: the x axis counts ranks
            cpu_ranks = True
        elif gpus < 1:
            raise BadInput(f"{where}: gpus: {gpus} is not >= 1")
        tps = need(r, "tokens_per_s", where)
        if not tps > 0:
            raise BadInput(f"{where}: tokens_per_s: {tps} is not > 0")
        eff = need(r, "efficiency", where, optional=True)
        lines.setdefault((system, label), []).append((gpus, tps, eff))
    for key, pts in lines.items():
        pts.sort()
        base_g, base_t, _ = pts[0]
        # A row without an efficiency: per-GPU throughput against the smallest run of its line.
        lines[key] = [(g, t, e if e is not None else (t / g) / (base_t / base_g)) for g, t, e in pts]
    title = " | ".join(str(doc[k]) for k in ("machine", "config", "date", "git_commit") if doc.get(k))
    return lines, title, ("CPU ranks" if cpu_ranks else "GPUs")


def plot_bench(path, out, plt):
    lines, title, xlabel = read_bench(path)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    all_g = sorted({g for pts in lines.values() for g, _, _ in pts})
    for (system, label), pts in sorted(lines.items()):
        g = [p[0] for p in pts]
        style = "-" if system == "mptrain" else "--"
        name = f"{system}: {label}"
        a1.plot(g, [p[1] for p in pts], style, marker="o", label=name)
        a2.plot(g, [p[2] for p in pts], style, marker="o", label=name)
    for ax in (a1, a2):
        ax.set_xlabel(xlabel)
        if len(all_g) > 1:
            ax.set_xscale("log", base=2)
        ax.set_xticks(all_g)
        ax.set_xticklabels([str(g) for g in all_g])
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    a1.set_ylabel("tokens/s")
    a1.set_title("throughput")
    a2.set_ylabel("weak-scaling efficiency")
    a2.set_title("efficiency (per-GPU tokens/s vs the smallest run)")
    a2.set_ylim(0, max(1.1, max(p[2] for pts in lines.values() for p in pts) * 1.05))
    a2.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    parent = os.path.dirname(out)
    if parent:
        os.makedirs(parent, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return [out]


def main(argv):
    ap = argparse.ArgumentParser(prog="plot.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("metrics", nargs="?", help="metrics JSONL file written by mptrain train (log.metrics)")
    ap.add_argument("--bench", help="benchmark JSON (schema mptrain-bench/1)")
    ap.add_argument("--out", help="metrics: output folder (default: the metrics file's folder); --bench: PNG file")
    a = ap.parse_args(argv)
    if bool(a.metrics) == bool(a.bench):
        ap.error("give either METRICS.jsonl or --bench BENCH.json")
    if a.bench and not a.out:
        ap.error("--bench needs --out FILE.png")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot.py: matplotlib is missing (Debian: apt-get install python3-matplotlib)", file=sys.stderr)
        return 3
    try:
        if a.bench:
            written = plot_bench(a.bench, a.out, plt)
        else:
            written = plot_metrics(a.metrics, a.out or os.path.dirname(os.path.abspath(a.metrics)), plt)
    except BadInput as e:
        print(f"plot.py: {e}", file=sys.stderr)
        return 2
    for f in written:
        print(f"plot.py: wrote {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
