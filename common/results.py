"""Where results land and the provenance recorded with them."""
from __future__ import annotations

import datetime as dt
import hashlib
import platform
import subprocess
from collections import Counter
from pathlib import Path

import torch

from common.cli import DataError
from common.datasource import PROJECT_ROOT, DataSource
from common.io import read_json

RESULTS_ROOT = PROJECT_ROOT / "results"


def results_dir(question: str, source: DataSource, root: Path | None = None) -> Path:
    """results/<question>/<source tag>/, created if needed."""
    path = Path(root or RESULTS_ROOT) / question / source.tag
    path.mkdir(parents=True, exist_ok=True)
    return path


def evaluation_dirs(question: str, train_source: DataSource, test_source: DataSource,
                    root: Path | None = None) -> tuple[Path, Path, bool]:
    """Where the trained runs are, where the evaluation goes, and whether it is external.

    Evaluating on another dataset than the one trained on writes to
    results/<question>/<test tag>/trained-on-<train tag>/, so nothing is overwritten.
    """
    run_dir = results_dir(question, train_source, root)
    external = train_source.tag != test_source.tag
    out = (results_dir(question, test_source, root) / f"trained-on-{train_source.tag}"
           if external else run_dir)
    return run_dir, out, external


def read_metrics(root: Path, evaluator: str) -> dict:
    """root/metrics.json, or a one-line error naming the stage that writes it."""
    if not (root / "metrics.json").exists():
        raise DataError(f"no {root / 'metrics.json'}: run python -m {evaluator} first")
    return read_json(root / "metrics.json")


CODE_PATHSPEC = (".", ":!results", ":!*.ipynb")   # what "+dirty" looks at: not the outputs


def git_commit() -> str:
    """Commit of the code that produced a result, with '+dirty' for uncommitted changes to the
    code (results and the executed notebooks, which the pipeline itself writes, do not count)."""
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=PROJECT_ROOT, capture_output=True,  # noqa: E731
                                        text=True, timeout=10)
        sha = run("rev-parse", "--short", "HEAD").stdout.strip()
        dirty = run("status", "--porcelain", "--untracked-files=no", "--",
                    *CODE_PATHSPEC).stdout.strip()
        return (sha + ("+dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def provenance(source: DataSource, device: torch.device | None, seed: int) -> dict:
    """The fields every metrics.json carries (device None: scored from files, no model run)."""
    return {
        "data_source": source.tag,
        "data_label": source.label,
        "data_path": str(source.path) if source.path else None,
        "git_commit": git_commit(),
        "device": device_name(device) if device is not None else "none (scored from files)",
        "torch": torch.__version__,
        "seed": seed,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def inputs_digest(root: Path) -> str:
    """SHA-256 over every run's summary.json (which names its prediction file by digest) and
    every split file under `root`: what an evaluation of `root` was computed from. Evaluation
    records it, so an unchanged metrics.json can be read back instead of recomputed."""
    h = hashlib.sha256()
    for path in sorted([*root.glob("*/summary.json"), *root.glob("splits/*.json")]):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def trained_at(root: Path) -> dict[str, int]:
    """{commit: runs} of the trained runs under `root` (those with an epoch history; baselines
    and ensembles, computed from files, are scored at evaluation's commit)."""
    summaries = (read_json(p) for p in sorted(root.glob("*/summary.json")))
    return dict(Counter(s.get("git_commit", "unknown") for s in summaries if "epochs_run" in s))


def mixed(commits: dict[str, int]) -> bool:
    """Whether runs ({commit: runs}) come from several states of the code or from uncommitted
    (or unknown) code: tables over them are not the result of one committed state."""
    return len(commits) > 1 or any(c.endswith("+dirty") or c == "unknown" for c in commits)


def inputs_record(root: Path) -> dict:
    """What evaluation records of its inputs: their digest (inputs_digest) and the commits the
    trained runs came from, with a warning printed when those are several commits or
    uncommitted code (a table mixing them is not the result of one state of the code)."""
    commits = trained_at(root)
    if mixed(commits):
        print(f"warning: the runs in {root} were trained at {len(commits)} states of the code "
              f"({', '.join(f'{c}: {n}' for c, n in sorted(commits.items()))}); rerun them at "
              "one commit for tables of one state of the code")
    return {"inputs_digest": inputs_digest(root), "trained_at": commits}
