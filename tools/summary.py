"""Print both questions' headline tables from their committed metrics.json (what the README's
"Results at a glance" shows), with the source and the commits behind them, and the training
throughput each network's runs logged (history.csv) on the device named in their summary.json.

    python -m tools.summary [--q1-data SPEC] [--q2-data SPEC]     (make summary)

Without a spec, each question's best source with results (common.report.choose_source).
"""
from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from common.datasource import PROJECT_ROOT
from common.io import read_csv, read_json
from common.report import choose_source
from q1_mri import report as q1_report
from q2_ecg import report as q2_report

TABLES = {"q1": q1_report.headline_table, "q2": q2_report.headline_table}
RATE = {"q1": "slices_per_s", "q2": "beats_per_s"}


def throughput(question: str, results: Path) -> str:
    """Per network (run folder name up to its scheme), the median over its runs of each run's
    median logged rate, with the range over runs, precision and device."""
    rates, setup = defaultdict(list), {}
    for history in sorted(results.glob("*/history.csv")):
        summary = history.parent / "summary.json"
        if not summary.exists():
            continue
        name = re.split(r"-(?:kfold\d+|lodo|beat|official)", history.parent.name)[0]
        rates[name].append(float(np.median([r[RATE[question]] for r in read_csv(history)])))
        s = read_json(summary)
        setup[name] = f"{s.get('precision')}, {s.get('device')}"
    unit = RATE[question].replace("_per_s", "/s")
    return "\n".join(f"- {name}: {np.median(v):,.0f} {unit} (runs {min(v):,.0f}-{max(v):,.0f}, "
                     f"{len(v)} runs; {setup[name]})" for name, v in rates.items())


def shown(path: Path) -> str:
    """`path` relative to the project when inside it (as the README quotes it)."""
    return str(path.relative_to(PROJECT_ROOT)) if path.is_relative_to(PROJECT_ROOT) else str(path)


def summary(question: str, spec: str | None) -> str:
    """One question's source line and headline table as markdown."""
    _, results = choose_source(question, spec)
    metrics = read_json(results / "metrics.json")
    trained = ", ".join(f"{c} ({n} runs)" for c, n in sorted(metrics.get("trained_at", {}).items()))
    head = (f"**{question.upper()}**, {metrics['data_label']}: scored at `{metrics['git_commit']}`"
            f" from `{shown(results)}`; networks trained at {trained or 'n/a'}.")
    return (f"{head}\n\n{TABLES[question](metrics).data}\n\nTraining throughput (median of each "
            f"run's logged rate):\n{throughput(question, results)}\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--q1-data", default=None)
    p.add_argument("--q2-data", default=None)
    args = p.parse_args()
    print(summary("q1", args.q1_data))
    print(summary("q2", args.q2_data))


if __name__ == "__main__":
    main()
