"""Command-line plumbing shared by every script: common flags and one-line failures."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from common.checkpoint import CheckpointError
from common.datasource import DataSourceError


class DataError(ValueError):
    """The data itself is unusable (NaN, wrong shape, missing column ...); the message says where."""


def parser(description: str) -> argparse.ArgumentParser:
    """An argparse parser that shows defaults in --help and rejects unknown flags."""
    return argparse.ArgumentParser(description=description,
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="auto",
                   help="auto | hub | demo | path to a local folder in the hub's schema")
    p.add_argument("--results-root", default=None,
                   help="folder holding results/<question>/<source>/ (default: ./results)")


def add_run_args(p: argparse.ArgumentParser) -> None:
    add_data_args(p)
    p.add_argument("--seed", type=int, default=0, help="seeds data splits, init and batch order")
    p.add_argument("--device", default="auto", help="auto | cuda | cuda:N | cpu")


def add_eval_args(p: argparse.ArgumentParser, items: str) -> None:
    """--trained-on and --save-predictions, shared by both evaluation scripts."""
    add_run_args(p)
    p.add_argument("--trained-on", default=None,
                   help="source the models were trained on (default: --data); when it differs, "
                        f"every {items} of --data is a test {items}")
    p.add_argument("--save-predictions", default=None, metavar="FILE.npz",
                   help=f"write the chosen model's prediction for every test {items}")


def run_main(main: Callable[[], None]) -> None:
    """Run `main`; expected failures print one clear line and exit with status 2."""
    try:
        main()
    except (DataSourceError, DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\ninterrupted: rerun with --resume to continue from the last checkpoint",
              file=sys.stderr)
        sys.exit(130)
