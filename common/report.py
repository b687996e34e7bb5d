"""Helpers for the notebooks: pick the results to show, banners, Markdown tables.

The notebooks never train; they read results/<question>/<source>/ and run the light EDA live.
"""
from __future__ import annotations

import inspect
import os
from collections import Counter
from pathlib import Path

from IPython.display import Code, Markdown

from common.datasource import PROJECT_ROOT
from common.io import read_json
from common.results import RESULTS_ROOT


def results_root() -> Path:
    return Path(os.environ.get("RESULTS_ROOT", RESULTS_ROOT))


def choose_source(question: str, spec: str | None = None) -> tuple[str, Path]:
    """The data spec to explore and the results folder to show.

    `spec` (or $NOTEBOOK_DATA) names a source as for --data; without one, the best source whose
    results exist is used: the Hub first, then local folders that are present on this machine
    (the live EDA reads them), then the demo data.
    Returns (data spec for --data, results/<question>/<tag>/).
    """
    spec = spec or os.environ.get("NOTEBOOK_DATA")
    root = results_root() / question
    if spec:
        from common.datasource import resolve
        source = resolve(spec, hub_cached=True)
        return spec, root / source.tag
    found = sorted(p.parent.name for p in root.glob("*/metrics.json"))
    for tag in ["hub"] + [t for t in found if t.startswith("local-")] + ["demo"]:
        if tag not in found:
            continue
        if not tag.startswith("local-"):
            return tag, root / tag
        data_path = read_json(root / tag / "metrics.json").get("data_path")
        if data_path and Path(data_path).exists():
            return data_path, root / tag
    raise FileNotFoundError(f"no results under {root}: run `make {question}` (or `make demo`) first")


def run_commits(results: Path) -> Counter:
    """How many run folders under `results` were trained (or scored) at each commit."""
    return Counter(read_json(p).get("git_commit", "unknown")
                   for p in sorted(results.glob("*/summary.json")))


def banner(metrics: dict, results: Path | None = None) -> Markdown:
    """A box naming the data source and the code behind every number; loud when it is the
    synthetic demo data or when a run was trained from uncommitted code."""
    label = metrics["data_label"]
    where = f"`{metrics['data_path']}`" if metrics.get("data_path") else metrics["data_source"]
    if metrics["data_source"] == "demo":
        text = (f"> **⚠ DEMO DATA.** Everything below comes from the built-in *synthetic* data "
                f"({label}), not from real scans or recordings. Run `make q1 q2 notebooks` with "
                "real data for meaningful numbers.")
    else:
        text = (f"> **Data source:** {label} ({where}). Scored from the runs' prediction files by "
                f"code at commit `{metrics['git_commit']}`, {metrics['created']}.")
    commits = run_commits(results) if results is not None else Counter()
    if commits:
        listed = ", ".join(f"`{c}` ({n} run{'s' * (n > 1)})" for c, n in sorted(commits.items()))
        text += f"\n>\n> **Runs trained at:** {listed}."
        dirty = sum(n for c, n in commits.items() if c.endswith("+dirty") or c == "unknown")
        if dirty:
            text += (f" **⚠ {dirty} run(s) were trained from uncommitted changes** (`+dirty`): "
                     "the commit named is the closest one, not an exact record of their code.")
    return Markdown(text)


def show_code(*objects) -> Code:
    """The source of functions or classes, highlighted, straight from the modules that run
    (one source of truth: what the marker reads is what trained the models)."""
    parts = []
    for obj in objects:
        lines, start = inspect.getsourcelines(obj)
        where = Path(inspect.getsourcefile(obj)).resolve().relative_to(PROJECT_ROOT)
        parts.append(f"# {where}, line {start}\n" + "".join(lines).rstrip())
    return Code("\n\n\n".join(parts), language="python")


def settings_table(results: Path, runs: list[str], keys: list[str]) -> Markdown:
    """Hyper-parameters of the named run folders, read from each run's saved summary.json
    (its resolved command-line settings and model constructor arguments)."""
    rows = []
    for run in runs:
        summary = read_json(results / run / "summary.json")
        saved = {**summary.get("config", {}), **summary.get("model_args", {}),
                 "precision": summary.get("precision"), "device": summary.get("device"),
                 "parameters": summary.get("parameters")}
        rows.append([run] + [f"{v:g}" if isinstance(v, float) else v
                             for v in (saved.get(k) for k in keys)])
    return table(["run"] + keys, rows)


def table(headers: list[str], rows: list[list]) -> Markdown:
    """A Markdown table; floats shown with 3 significant decimals, None as a dash."""
    def cell(v):
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return Markdown("\n".join(lines))


def with_ci(stat: dict, digits: int = 3) -> str:
    """'0.812 (0.790–0.830)' from a {'value'|'mean', 'ci95'} dict."""
    value = stat.get("value", stat.get("mean"))
    low, high = stat["ci95"]
    if low != low:  # NaN: no interval
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} ({low:.{digits}f}–{high:.{digits}f})"


def project_path(*parts: str) -> Path:
    return PROJECT_ROOT.joinpath(*parts)
