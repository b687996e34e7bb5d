"""Helpers for the notebooks: pick the data and results folder, run the pipeline's stages from
a cell (training resumes, so finished runs are read back; evaluation reruns only when stale),
banners, listings and Markdown tables."""
from __future__ import annotations

import contextlib
import inspect
import io
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from IPython.display import Code, Markdown

from common.datasource import PROJECT_ROOT, cache_dir
from common.io import read_csv, read_json
from common.results import RESULTS_ROOT, git_commit, inputs_digest, mixed, results_dir


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


def banner(metrics: dict) -> Markdown:
    """A box naming the data source and the code behind every number: the commit that scored
    them and the commit(s) the trained runs came from, in red when these are several or
    uncommitted code; loud when it is the synthetic demo data."""
    label = metrics["data_label"]
    where = f"`{metrics['data_path']}`" if metrics.get("data_path") else metrics["data_source"]
    if metrics["data_source"] == "demo":
        text = (f"> **⚠ DEMO DATA.** Everything below comes from the built-in *synthetic* data "
                f"({label}), not from real scans or recordings. Run `make q1 q2 notebooks` with "
                "real data for meaningful numbers.")
    else:
        text = (f"> **Data source:** {label} ({where}). Scored from the runs' prediction files by "
                f"code at commit `{metrics['git_commit']}`, {metrics['created']}.")
    commits = metrics.get("trained_at", {})
    if commits:
        listed = ", ".join(f"`{c}` ({n} run{'s' * (n > 1)})" for c, n in sorted(commits.items()))
        text += f"\n>\n> **Networks trained at:** {listed}."
        if mixed(commits):
            text += (' <span style="color:red">**⚠ These tables mix runs of several states of the '
                     "code (or uncommitted code): rerun them at one commit.**</span>")
    return Markdown(text)


def demo_parquet(name: str, splits: Callable[[], dict]) -> dict[str, list[str]]:
    """{split: [file]}: a question's synthetic demo data as parquet files in the Hub's schema
    (`splits()` -> {split: datasets.Dataset}), written once to the cache as `name`/, so the
    notebook's loading cell reads it with the same `load_dataset("parquet", ...)` call as a
    local folder."""
    folder = cache_dir() / name
    if not folder.is_dir():
        cache_dir().mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=cache_dir(), prefix=f".{name}-"))
        for split, dataset in splits().items():
            dataset.to_parquet(str(staging / f"{split}.parquet"))
        staging.rename(folder)                 # all splits or none
    return {p.stem: [str(p)] for p in sorted(folder.glob("*.parquet"))}


def setting(name: str, default: str) -> str:
    """A protocol setting the notebook shares with the Makefile (SEEDS, Q2_FOLDS, Q2_ARGS...):
    the environment's value, even empty (`make notebooks` passes its own), else `default`."""
    return os.environ.get(name, default)


def quietly(fn, *args, **kwargs):
    """(fn's result, what it printed): a stage run from a notebook cell without its log."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        result = fn(*args, **kwargs)
    return result, buffer.getvalue()


def run_all(question: str, train, flag_lists: list[list[str]],
            log: dict[str, str] | None) -> list[dict]:
    """Train one run per flag list with `train` (a question's train module), or read it back
    when it finished earlier (--resume reads a finished run's files, no data); show the first
    run's epoch log as a table of the `log` columns ({history key: header}; None: no table) and
    one line for all. Returns the runs' summaries."""
    if not flag_lists:
        print("no runs of this kind in this protocol")
        return []
    runs = [train.parse_args([*flags, "--resume"]) for flags in flag_lists]
    root = results_dir(question, train.resolve_source(runs[0].data), runs[0].results_root)
    summaries, fresh = [], 0
    for k, args in enumerate(runs):
        summary_file = root / train.run_folder_name(args) / "summary.json"
        before = summary_file.read_bytes() if summary_file.exists() else None
        summary, _ = quietly(train.train, args)
        fresh += summary_file.read_bytes() != before      # rewritten: trained now
        summaries.append(summary)
        if k == 0 and log:
            print(f"{summary_file.parent.name}, epoch by epoch (inner-validation persons):")
            print(epoch_table(read_csv(summary_file.parent / "history.csv"), log))
    hours = sum(s["wall_time_s"] for s in summaries) / 3600
    epochs = [s["best_epoch"] for s in summaries]
    first = summaries[0]
    print(f"{len(summaries)} run{'s' * (len(summaries) > 1)} ({fresh} trained now, "
          f"{len(summaries) - fresh} finished earlier and read back): best epochs "
          f"{min(epochs)}-{max(epochs)}, {hours:.2f} h of training in all, "
          f"{first['precision']} on {first['device']}")
    return summaries


def epoch_table(history: list[dict], columns: dict[str, str]) -> str:
    """A run's history rows as fixed-width text: epoch and the `columns` ({key: header})."""
    heads = ["epoch", *columns.values()]
    widths = [max(len(h), 6) for h in heads]
    lines = ["  ".join(h.rjust(w) for h, w in zip(heads, widths))]
    for row in history:
        cells = [str(int(row["epoch"]))] + [f"{row[k]:.4g}" for k in columns]
        lines.append("  ".join(c.rjust(w) for c, w in zip(cells, widths)))
    return "\n".join(lines)


def evaluate(evaluator, data: str, results: Path) -> dict:
    """results/metrics.json from the evaluation stage `evaluator` (a question's eval module),
    computed anew only when stale: missing, scored by other code, or over other runs or splits
    (common.results.inputs_digest); otherwise read back."""
    path = results / "metrics.json"
    if path.exists():
        metrics = read_json(path)
        if (metrics.get("inputs_digest") == inputs_digest(results)
                and metrics.get("git_commit") == git_commit()
                and not git_commit().endswith("+dirty")):
            print(f"metrics.json is current (scored at {metrics['git_commit']} from these "
                  "runs): read back")
            return metrics
    t0 = time.time()
    metrics, _ = quietly(evaluator.main, evaluator.parse_args(
        ["--data", data, "--results-root", str(results.parents[1])]))
    print(f"evaluated anew in {time.time() - t0:.0f} s: {path}")
    return metrics


def show_code(*objects) -> Code:
    """The source of functions or classes, highlighted, straight from the modules that run
    (one source of truth: what the marker reads is what trained the models)."""
    parts = []
    for obj in objects:
        lines, start = inspect.getsourcelines(obj)
        where = Path(inspect.getsourcefile(obj)).resolve().relative_to(PROJECT_ROOT)
        parts.append(f"# {where}, line {start}\n" + "".join(lines).rstrip())
    return Code("\n\n\n".join(parts), language="python")


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
