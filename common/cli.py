"""Command-line plumbing shared by every script: common flags and one-line failures."""
from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable

from common.cache import CacheError
from common.checkpoint import CheckpointError
from common.datasource import DataSourceError
from common.io import ReadError, WriteError
from common.runs import RunError
from common.runtime import ResourceError

SEED_MAX = 2**32 - 1   # numpy's largest seed: a larger one crashes np.random.seed mid-run
DEVICES = "auto, cpu, cuda, cuda:N or mps"


class DataError(ValueError):
    """The data itself is unusable (NaN, wrong shape, missing column ...); the message says where."""


def count(text: str) -> int:
    """argparse type: an integer >= 1 (epochs, batch sizes, folds ...)."""
    return _checked(int, text, lambda v: v >= 1, "an integer >= 1")


def natural(text: str) -> int:
    """argparse type: an integer >= 0 (fold indices, worker counts)."""
    return _checked(int, text, lambda v: v >= 0, "an integer >= 0")


def seed(text: str) -> int:
    """argparse type: a seed, an integer in 0..2**32-1 (what numpy, seeded with it, accepts)."""
    return _checked(int, text, lambda v: 0 <= v <= SEED_MAX, f"an integer in 0..{SEED_MAX}")


def device(text: str) -> str:
    """argparse type: auto | cpu | cuda | cuda:N | mps. Anything else is refused here, since
    select_device would otherwise run a misspelt device silently on the CPU."""
    if not re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?|mps", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use {DEVICES}")
    return text


def data_spec(text: str) -> str:
    """argparse type: a --data value. An empty one is refused at once: as a path it would be
    the current folder, whose every file would be hashed (a minute) before failing."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty value names no data: use auto, hub, demo or a folder")
    return text


def positive(text: str) -> float:
    """argparse type: a finite number > 0 (learning rates, decays ...)."""
    return _checked(float, text, lambda v: 0 < v < float("inf"), "a number > 0")


def non_negative(text: str) -> float:
    """argparse type: a finite number >= 0 (loss weights, weight decay)."""
    return _checked(float, text, lambda v: 0 <= v < float("inf"), "a number >= 0")


def fraction(text: str) -> float:
    """argparse type: a number in [0, 1) (EMA decay)."""
    return _checked(float, text, lambda v: 0 <= v < 1, "a number in [0, 1)")


def name(text: str) -> str:
    """argparse type: a run-name word (a letter or digit, then letters, digits, '-', '_', '.'),
    since it becomes part of a folder name under results/: no '/', no '..', no leading '-'."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a name: start with a letter or digit, then use letters, digits, "
            "'-', '_' and '.' only")
    return text


def auto_or(kind: Callable[[str], object]) -> Callable[[str], object]:
    """argparse type: "auto" (left to the script, which resolves it per device) or `kind`."""
    def parse(text: str):
        return "auto" if text == "auto" else kind(text)
    parse.__name__ = f"auto_or_{kind.__name__}"
    return parse


def _checked(kind, text: str, ok, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"{text} is not {what}")
    return value


def parser(description: str) -> argparse.ArgumentParser:
    """An argparse parser that shows defaults in --help and rejects unknown flags."""
    return argparse.ArgumentParser(description=description,
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=data_spec, default="auto",
                   help="auto | hub | demo | path to a local folder in the hub's schema")
    p.add_argument("--results-root", default=None,
                   help="folder holding results/<question>/<source>/ (default: ./results)")


def add_run_args(p: argparse.ArgumentParser) -> None:
    add_data_args(p)
    p.add_argument("--seed", type=seed, default=0, help="seeds data splits, init and batch order")
    p.add_argument("--device", type=device, default="auto", help="auto | cuda | cuda:N | cpu | mps")


def data_args(doc: str, argv=None) -> argparse.Namespace:
    """The parsed --data and --results-root of a stage that takes nothing else (its module
    docstring's first line is the description)."""
    p = parser(doc.splitlines()[0])
    add_data_args(p)
    return p.parse_args(argv)


def add_infer_args(p: argparse.ArgumentParser) -> None:
    """--data (what to predict), --trained-on, --out, --device: the infer stage's flags."""
    add_data_args(p)
    p.add_argument("--trained-on", type=data_spec, required=True,
                   help="the source whose deployed model (make q1-final / q2-final) predicts --data")
    p.add_argument("--out", required=True, metavar="FILE.npz", help="the prediction file to write")
    p.add_argument("--device", type=device, default="auto", help="auto | cuda | cuda:N | cpu | mps")


def add_split_args(p: argparse.ArgumentParser, schemes: tuple[str, ...], folds: int) -> None:
    """--split, --folds, --seed of the stages that follow a split file (baselines)."""
    p.add_argument("--split", choices=schemes, default=schemes[0])
    p.add_argument("--folds", type=count, default=folds, help="K of the k-fold scheme")
    p.add_argument("--seed", type=seed, default=0, help="the split's seed")
    p.add_argument("--resume", action="store_true",
                   help="keep what was already written from this split file (read nothing)")


def add_compile_args(p: argparse.ArgumentParser) -> None:
    """--compile [auto|on|off] and --no-compile; the script resolves auto per device
    (common.runtime.compile_enabled) and keeps the resolved True/False in its config."""
    p.add_argument("--compile", nargs="?", choices=["auto", "on", "off"], const="on",
                   default="auto", help="torch.compile the model: auto = on for CUDA only; "
                                        "a bare --compile means on")
    p.add_argument("--no-compile", dest="compile", action="store_const", const="off",
                   default=argparse.SUPPRESS, help="the same as --compile off")


def add_eval_args(p: argparse.ArgumentParser, infer_module: str) -> None:
    """--data, --results-root and --predictions: the evaluation stage's flags."""
    add_data_args(p)
    p.add_argument("--predictions", default=None, metavar="FILE.npz",
                   help=f"score this file of {infer_module} against --data instead of the "
                        "cross-validation's runs")


def run_main(main: Callable[[], None]) -> None:
    """Run `main`; expected failures print one clear line and exit with status 2."""
    try:
        main()
    except (DataSourceError, DataError, CheckpointError, CacheError, ReadError, WriteError, RunError,
            ResourceError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:   # e.g. a results folder that cannot be created
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\ninterrupted: rerun with --resume to continue from the last checkpoint",
              file=sys.stderr)
        sys.exit(130)
