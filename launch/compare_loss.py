#!/usr/bin/env python3
"""Compares the losses of runs against a reference run, from their metrics files (log.metrics).

usage: launch/compare_loss.py REF.jsonl RUN.jsonl [RUN.jsonl ...] [--window 50] [--tol 0.01]

For each run: the relative difference of the training loss at the reference's last step, of the mean
training loss over the last `window` steps both runs have, and of the last validation loss (eval records
at the same step), plus the worst single step. Exit status 1 when a windowed mean or the validation loss
differs by more than `tol` (relative), 2 on unreadable input.
"""
import json
import sys


def load(path):
    steps, evals = {}, {}
    try:
        with open(path) as f:
            for line in f:
                r = json.loads(line)
                if r.get("type") == "step" and r.get("loss") is not None:
                    steps[r["step"]] = r["loss"]
                elif r.get("type") == "eval" and r.get("val_loss") is not None:
                    evals[r["step"]] = r["val_loss"]
    except (OSError, ValueError) as e:
        print(f"{path}: {e}", file=sys.stderr)
        sys.exit(2)
    if not steps:
        print(f"{path}: no step records", file=sys.stderr)
        sys.exit(2)
    return steps, evals


def main(argv):
    window, tol, files = 50, 0.01, []
    i = 0
    while i < len(argv):
        if argv[i] in ("--window", "--tol") and i + 1 < len(argv):
            if argv[i] == "--window":
                window = int(argv[i + 1])
            else:
                tol = float(argv[i + 1])
            i += 2
        else:
            files.append(argv[i])
            i += 1
    if len(files) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    ref_steps, ref_evals = load(files[0])
    worst_fail = False
    for path in files[1:]:
        steps, evals = load(path)
        common = sorted(set(ref_steps) & set(steps))
        if not common:
            print(f"{path}: no step in common with {files[0]}", file=sys.stderr)
            return 2
        rel = {s: abs(steps[s] - ref_steps[s]) / abs(ref_steps[s]) for s in common}
        worst = max(common, key=lambda s: rel[s])
        tail = common[-window:]
        mr = sum(ref_steps[s] for s in tail) / len(tail)
        mq = sum(steps[s] for s in tail) / len(tail)
        wrel = abs(mq - mr) / abs(mr)
        line = (f"{path}: step {common[-1]} loss {steps[common[-1]]:.4f} vs {ref_steps[common[-1]]:.4f} "
                f"({100 * rel[common[-1]]:.2f}%); mean of steps {tail[0]}..{tail[-1]} {mq:.4f} vs {mr:.4f} "
                f"({100 * wrel:.2f}%); worst step {worst} ({100 * rel[worst]:.2f}%)")
        ok = wrel <= tol
        ev = sorted(set(ref_evals) & set(evals))
        if ev:
            e = ev[-1]
            erel = abs(evals[e] - ref_evals[e]) / abs(ref_evals[e])
            line += f"; validation at step {e} {evals[e]:.4f} vs {ref_evals[e]:.4f} ({100 * erel:.2f}%)"
            ok = ok and erel <= tol
        print(line + ("" if ok else f"  OUTSIDE {100 * tol:g}%"))
        worst_fail = worst_fail or not ok
    return 1 if worst_fail else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
