"""Execute Assessment_Q1.ipynb and Assessment_Q2.ipynb in place with a real kernel.

    python tools/run_notebooks.py [--data SPEC | --q1-data SPEC --q2-data SPEC]
                                  [--results-root DIR] [--out-dir DIR] [--only q1|q2]

The notebooks run the pipeline's stages from their cells on the chosen source: runs that
finished earlier (results/<question>/<source>/) are read back, evaluation reruns only when
stale, so after `make q1 q2` this takes minutes. The protocol settings come from the
environment (`make notebooks` passes the Makefile's). Fails (exit 1) if any cell raises.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = {"q1": "Assessment_Q1.ipynb", "q2": "Assessment_Q2.ipynb"}
CHILD = "RUN_NOTEBOOKS_CHILD"     # set for the per-notebook processes run_children starts


def execute(path: Path, out: Path, timeout_s: int) -> None:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout_s, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT)}})
    client.execute()
    for cell in nb.cells:                 # keep the saved notebook free of run-specific noise
        cell.get("metadata", {}).pop("execution", None)
    nbformat.write(nb, out)


def main() -> None:
    """Ctrl-C ends in one line and exit status 130 (the shell's for SIGINT), not a traceback
    from every process (see run_children)."""
    try:
        run()
    except KeyboardInterrupt:
        print("\ninterrupted: the notebooks were not (all) executed; rerun make notebooks",
              file=sys.stderr)
        sys.exit(130)


def run_children(todo: list[str]) -> None:
    """Execute each notebook of `todo` in a process of its own, side by side (so that their
    kernels run in parallel), and show each process's output when it ends.

    The output is held back because Ctrl-C reaches these processes too: nbclient then shuts
    their kernels down and fails with tracebacks, which are dropped here for main's one line.
    """
    logs = {q: tempfile.TemporaryFile() for q in todo}
    children = {q: subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--only", q],
                                    env={**os.environ, CHILD: "1"}, stdout=logs[q],
                                    stderr=subprocess.STDOUT) for q in todo}
    try:
        codes = {q: child.wait() for q, child in children.items()}
    except KeyboardInterrupt:   # let them shut their kernels down first
        for child in children.values():
            child.wait()
        raise
    for q in todo:
        logs[q].seek(0)
        (sys.stderr if codes[q] else sys.stdout).write(logs[q].read().decode(errors="replace"))
    failed = [NOTEBOOKS[q] for q in todo if codes[q]]
    if failed:
        sys.exit(f"not executed: {', '.join(failed)}")


def run() -> None:
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
    os.environ.setdefault("NO_PROGRESS", "1")              # no progress bars in saved outputs:
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")    # ours and datasets',
    os.environ.setdefault("PYTHONWARNINGS", "ignore:IProgress not found")  # nor tqdm's widget note
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    todo = [args.only] if args.only else list(NOTEBOOKS)
    if not os.environ.get(CHILD):
        run_children(todo)
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
    except CellTimeoutError:
        sys.exit(f"{NOTEBOOKS[q]}: a cell ran past --timeout {args.timeout} s; train with make "
                 f"{q} first (the notebook then reads the runs back) or raise --timeout")
    except DeadKernelError as e:
        sys.exit(f"{NOTEBOOKS[q]}: the kernel died ({str(e).splitlines()[0]}), e.g. killed "
                 "for memory; nothing was saved; rerun make notebooks")
    print(f"executed {NOTEBOOKS[q]}")


if __name__ == "__main__":
    main()
