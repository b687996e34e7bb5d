"""Compare two results folders number by number: what a refactor must leave unchanged.

    python tools/same_results.py results_before/ results_after/

Every prediction file (arrays bit for bit), every history.csv and every summary.json and
metrics.json (values, ignoring what only records when, where, how fast or at which commit
a number was made) must match. Prints each difference and exits 1 if there is one.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np

VOLATILE = {"created", "git_commit", "device", "torch", "data_path", "wall_time_s", "elapsed_s",
            "epoch_s", "beats_per_s", "slices_per_s", "files", "results_root", "runs_dir"}


def strip(obj):
    """`obj` without the VOLATILE keys, at any depth."""
    if isinstance(obj, dict):
        return {k: strip(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [strip(v) for v in obj]
    return obj


def differences(a: Path, b: Path) -> list[str]:
    out = []
    names = {p.relative_to(a) for p in a.rglob("*") if p.is_file()}
    names |= {p.relative_to(b) for p in b.rglob("*") if p.is_file()}
    for rel in sorted(names):
        if rel.suffix not in (".npz", ".json", ".csv"):
            continue
        x, y = a / rel, b / rel
        if not (x.exists() and y.exists()):
            out.append(f"{rel}: only in {'the first' if x.exists() else 'the second'}")
        elif rel.suffix == ".npz":
            with np.load(x) as f, np.load(y) as g:
                for k in sorted(set(f.files) | set(g.files)):
                    if k not in f.files or k not in g.files or not np.array_equal(
                            f[k], g[k], equal_nan=f[k].dtype.kind == "f"):
                        out.append(f"{rel}: array {k} differs")
        elif rel.suffix == ".json":
            texts = [json.dumps(strip(json.loads(f.read_text())), sort_keys=True) for f in (x, y)]
            if texts[0] != texts[1]:                 # compared as text: NaN equals NaN
                out.append(f"{rel}: values differ")
        else:
            rows = [[strip(r) for r in csv.DictReader(open(p))] for p in (x, y)]
            if rows[0] != rows[1]:
                out.append(f"{rel}: rows differ")
    return out


if __name__ == "__main__":
    diff = differences(Path(sys.argv[1]), Path(sys.argv[2]))
    print("\n".join(diff) if diff else "the same numbers")
    sys.exit(1 if diff else 0)
