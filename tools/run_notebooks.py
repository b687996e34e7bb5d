"""Execute Assessment_Q1.ipynb and Assessment_Q2.ipynb in place with a real kernel.

    python tools/run_notebooks.py [--data SPEC | --q1-data SPEC --q2-data SPEC]
                                  [--results-root DIR] [--out-dir DIR] [--only q1|q2]

The notebooks explore the data live (from the cache) and show the results already in
results/<question>/<source>/; they never train. Fails (exit 1) if any cell raises.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = {"q1": "Assessment_Q1.ipynb", "q2": "Assessment_Q2.ipynb"}


def execute(path: Path, out: Path, timeout_s: int) -> None:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout_s, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT)}})
    client.execute()
    for cell in nb.cells:                 # keep the saved notebook free of run-specific noise
        cell.get("metadata", {}).pop("execution", None)
    nbformat.write(nb, out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="data spec of both notebooks (default: the best "
                   "source with results)")
    p.add_argument("--q1-data", default=None, help="data spec of the Q1 notebook only")
    p.add_argument("--q2-data", default=None, help="data spec of the Q2 notebook only")
    p.add_argument("--results-root", default=None, help="folder holding results/<question>/")
    p.add_argument("--out-dir", default=str(ROOT), help="where the executed notebooks go")
    p.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    p.add_argument("--only", choices=list(NOTEBOOKS), default=None,
                   help="execute one notebook (default: both, side by side)")
    args = p.parse_args()
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    if args.results_root:
        os.environ["RESULTS_ROOT"] = str(Path(args.results_root).resolve())
    os.environ.setdefault("NO_PROGRESS", "1")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    todo = [args.only] if args.only else list(NOTEBOOKS)
    if len(todo) > 1:          # one process per notebook, so that their kernels run side by side
        children = {q: subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--only", q])
                    for q in todo}
        failed = [NOTEBOOKS[q] for q, child in children.items() if child.wait() != 0]
        if failed:
            sys.exit(f"not executed: {', '.join(failed)}")
        return
    q = todo[0]
    spec = getattr(args, f"{q}_data") or args.data
    if spec:                              # read by common.report.choose_source in the kernel
        os.environ["NOTEBOOK_DATA"] = spec
    else:
        os.environ.pop("NOTEBOOK_DATA", None)
    try:
        execute(ROOT / NOTEBOOKS[q], Path(args.out_dir) / NOTEBOOKS[q], args.timeout)
    except CellExecutionError as e:
        sys.exit(f"{NOTEBOOKS[q]}: a cell failed:\n{str(e)[-2000:]}")
    print(f"executed {NOTEBOOKS[q]}")


if __name__ == "__main__":
    main()
